"""Train / eval transforms from a model's preprocessing config.

The eval transform of file datasets is exactly the server's preprocessing (inference/classifier.py):
resize the shorter side to size / crop_pct, centre-crop, scale to [0, 1], normalise.

`kind` is the dataset kind: "array" (CIFAR-style, in memory, at the native size) or "files" (ImageNet-style).
The strong views used by the contrastive methods follow BCL / ConCutMix / SAU (docs/methods.md §1.5, §3.3).
`native_size` is the (height, width) of array images: when it is not the model's input size (a 128 px backbone on
32 px CIFAR), a view augments at the native size and then fits the result to the input as `eval_transform` does
(shorter side to input_size / crop_pct, centre crop). training/data/batch_augment.py holds the same views
applied a batch at a time on the training device.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torchvision.transforms import InterpolationMode, v2

from inference.card import Preprocessing


def _interpolation(name: str) -> InterpolationMode:
    return InterpolationMode(name.lower())


class Cutout:
    """Zero one `size` x `size` square whose centre is uniform over the image, clipped at the borders (DeVries &
    Taylor 2017). Applied to the [0, 1] tensor before normalising, as in the released SAU / GLMC code."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        centre_y, centre_x = int(torch.randint(height, ()).item()), int(torch.randint(width, ()).item())
        half = self.size // 2
        image = image.clone()
        image[..., max(centre_y - half, 0):min(centre_y + half, height),
              max(centre_x - half, 0):min(centre_x + half, width)] = 0
        return image


def _fit_to_input(preprocessing: Preprocessing, native_size=None) -> list:
    """Resize + centre crop of an array view augmented at a native size other than the input size."""
    if native_size is None or tuple(native_size) == tuple(preprocessing.input_size[1:]):
        return []
    return [v2.Resize(preprocessing.resize_to, interpolation=_interpolation(preprocessing.interpolation),
                      antialias=True), v2.CenterCrop(preprocessing.input_size[1:])]


def _to_normalised_tensor(preprocessing: Preprocessing, cutout: int = 0, native_size=None) -> list:
    erase = [Cutout(cutout)] if cutout else []
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), *erase, *_fit_to_input(preprocessing, native_size),
            v2.Normalize(preprocessing.mean, preprocessing.std)]


def _view_size(preprocessing: Preprocessing, kind: str, native_size=None) -> list[int]:
    return list(native_size) if kind == "array" and native_size is not None else preprocessing.input_size[1:]


def _crop(preprocessing: Preprocessing, kind: str, scale=(0.08, 1.0), native_size=None) -> list:
    size = _view_size(preprocessing, kind, native_size)
    if kind == "array":  # CIFAR-style: pad-and-crop at the native size
        return [v2.RandomCrop(size, padding=4)]
    return [v2.RandomResizedCrop(size, scale=scale, interpolation=_interpolation(preprocessing.interpolation),
                                 antialias=True)]


def train_transform(preprocessing: Preprocessing, kind: str, native_size=None) -> v2.Compose:
    return v2.Compose(_crop(preprocessing, kind, native_size=native_size) + [v2.RandomHorizontalFlip()]
                      + _to_normalised_tensor(preprocessing, native_size=native_size))


def strong_classification_transform(preprocessing: Preprocessing, kind: str, cutout: int = 0,
                                    native_size=None) -> v2.Compose:
    """The classification view of BCL-style training. CIFAR: crop + flip + AutoAugment (CIFAR-10 policy).
    ImageNet-style: random-resized crop + flip + colour jitter + RandAugment (n=2, m=10).
    `cutout` > 0 adds one Cutout square of that side (SAU's second CIFAR view: 16 pixels)."""
    if kind == "array":
        augment = [v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)]
    else:
        augment = [v2.ColorJitter(0.4, 0.4, 0.4, 0.0), v2.RandAugment(num_ops=2, magnitude=10)]
    return v2.Compose(_crop(preprocessing, kind, native_size=native_size) + [v2.RandomHorizontalFlip()] + augment
                      + _to_normalised_tensor(preprocessing, cutout, native_size))


def contrastive_transform(preprocessing: Preprocessing, kind: str, native_size=None) -> v2.Compose:
    """The SimCLR-style view: random-resized crop (scale 0.2-1 on CIFAR), flip, colour jitter p=0.8,
    grayscale p=0.2, and on CIFAR a Gaussian blur (sigma 0.1-2) with p=0.5."""
    size = _view_size(preprocessing, kind, native_size)
    scale = (0.2, 1.0) if kind == "array" else (0.08, 1.0)
    steps = [v2.RandomResizedCrop(size, scale=scale, interpolation=_interpolation(preprocessing.interpolation),
                                  antialias=True),
             v2.RandomHorizontalFlip(),
             v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
             v2.RandomGrayscale(p=0.2)]
    if kind == "array":
        # PIL's GaussianBlur(radius=sigma) has no kernel size; 2*ceil(3*sigma_max)+1 covers the same support.
        kernel = 2 * math.ceil(3 * 2.0) + 1
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5))
    return v2.Compose(steps + _to_normalised_tensor(preprocessing, native_size=native_size))


def native_size(bundle) -> tuple[int, int] | None:
    """(height, width) of the images of an array dataset; None for file datasets (decoded at any size)."""
    return tuple(bundle.train.images.shape[1:3]) if bundle.kind == "array" else None


def served_preprocessing(preprocessing: Preprocessing, bundle) -> Preprocessing:
    """The preprocessing the exported model states: the model's own, with `native_size` when it learns from
    square array images smaller than its input (32 px CIFAR enlarged to 128), so that serving first reduces an
    upload to such an image, as the training images were, before enlarging it the same way."""
    size = native_size(bundle)
    if size is None or size[0] != size[1] or size[0] >= min(preprocessing.input_size[1:]):
        return preprocessing
    return dataclasses.replace(preprocessing, native_size=int(size[0]))


class MultipleViews:
    """One image → a tuple of views, one per transform (a class, not a lambda, so DataLoader workers can
    pickle it)."""

    def __init__(self, *transforms):
        self.transforms = transforms

    def __call__(self, image) -> tuple:
        return tuple(transform(image) for transform in self.transforms)


def eval_transform(preprocessing: Preprocessing) -> v2.Compose:
    """Resizing is a no-op for in-memory CIFAR images that are already at the input (or native) size."""
    interpolation = _interpolation(preprocessing.interpolation)
    native = preprocessing.native_size
    thumbnail = [v2.Resize(native, interpolation=interpolation, antialias=True), v2.CenterCrop(native)] if native else []
    return v2.Compose([
        *thumbnail,
        v2.Resize(preprocessing.resize_to, interpolation=interpolation, antialias=True),
        v2.CenterCrop(preprocessing.input_size[1:]),
        *_to_normalised_tensor(preprocessing),
    ])
