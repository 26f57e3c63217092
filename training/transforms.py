"""Train / eval transforms from a model's preprocessing config.

The eval transform of file datasets is exactly the server's preprocessing (inference/classifier.py):
resize the shorter side to size / crop_pct, centre-crop, scale to [0, 1], normalise.
"""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

from inference.metadata import Preprocessing


def _interpolation(name: str) -> InterpolationMode:
    return InterpolationMode(name.lower())


def _to_normalised_tensor(preprocessing: Preprocessing) -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(preprocessing.mean, preprocessing.std)]


def train_transform(preprocessing: Preprocessing, kind: str) -> v2.Compose:
    size = preprocessing.input_size[1:]
    if kind == "array":  # CIFAR-style: pad-and-crop at the native size
        crop = [v2.RandomCrop(size, padding=4)]
    else:
        crop = [v2.RandomResizedCrop(size, interpolation=_interpolation(preprocessing.interpolation), antialias=True)]
    return v2.Compose(crop + [v2.RandomHorizontalFlip()] + _to_normalised_tensor(preprocessing))


def eval_transform(preprocessing: Preprocessing) -> v2.Compose:
    """Resizing is a no-op for in-memory CIFAR images that are already at the input size."""
    return v2.Compose([
        v2.Resize(preprocessing.resize_to, interpolation=_interpolation(preprocessing.interpolation), antialias=True),
        v2.CenterCrop(preprocessing.input_size[1:]),
        *_to_normalised_tensor(preprocessing),
    ])
