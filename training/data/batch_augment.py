"""The training views of in-memory (array, CIFAR-style) images, augmented a whole batch at a time on the training
device (`data.augment_on: device`, the default for array datasets).

The loader path (training/data/transforms.py) runs torchvision v2 on every image in DataLoader workers, which
on two shared cores feeds the model at about 0.7-0.9x of its speed (docs/benchmarks.md). Here the loader
yields only indices: every item names the images of its view slots (ConCutMix: the background three times and
its foreground; SAU: the anchor three times and its partner) and a view seed, and `BatchAugment` augments the
whole batch with tensor ops, the images kept as one uint8 tensor on the device.

Randomness, per image: the item's draws come from torch's generator seeded with item_seed(epoch seed, index)
(`SeededItems`, as on the loader path): first what the method draws per item (ConCutMix's foreground, as
today), then the view seed (`view_seed`). Every slot's parameters are drawn on the CPU from
`random.Random(view seed)`, slot after slot (cheap scalars), so an image gets the same augmentation in an epoch
whatever the batch, the number of processes or the device. Python's Mersenne Twister rather than a
torch.Generator: the same stream on every platform, and scalar draws cost about a fifth as much (a
torch.Generator per item took 57 ms per ConCutMix batch of 128 on the shared 2-core machine). The distributions
are those of the v2 transforms in transforms.py (tests/test_batch_augment.py compares them); the random streams
are not the loader path's, so the two paths draw different (equally distributed) augmentations.

Every op works on uint8 images as torchvision's op does on a uint8 tensor (the same truncation or rounding),
so for fixed parameters it matches `torchvision.transforms.v2.functional` image by image: exactly, or to one
grey level (colour adjustments, blur), or, for the resizing ops, to two grey levels (torch's uint8 resize works
in fixed point). AutoAugment's per-image sub-policies are applied by grouping the images that draw the same op
and magnitude and calling torchvision's own AutoAugment op on each group: its magnitudes are discrete, so this
is exact and needs no re-implementation (it uses the v2.AutoAugment instance's policy table and op dispatch,
private names of the pinned torchvision; the tests compare it with them). Colour jitter, resized crops, blur,
grey scale and Cutout have continuous per-image parameters and are written here, a few lines each. No kornia:
torchvision's own ops reproduce the loader path's AutoAugment exactly, the rest is small, and another
augmentation library would bring its own conventions to check against torchvision's op by op. RandAugment is
used only by file datasets (ImageNet-style), which keep per-image decoding and augmentation in the loader, so
it has no batched form here.

A model whose input size differs from the stored images' size (a pretrained backbone at 128 px on 32 px CIFAR)
gets every view augmented at the native size and then `fit_to_input`: resized (shorter side to
input_size / crop_pct, with the model's bilinear or bicubic interpolation, antialiased) and centre-cropped, as
`eval_transform` and the server do.
"""

from __future__ import annotations

import math
import random
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from inference.card import Preprocessing

GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


# ------------------------------------------------------------------------------- per-item randomness


def view_seed() -> int:
    """The seed of an item's view parameters, drawn from torch's generator (seeded per item by SeededItems)."""
    return int(torch.randint(2**32, ()).item())


def _uniform(generator: random.Random, low: float, high: float) -> float:
    return low + (high - low) * generator.random()


def _chance(generator: random.Random, p: float) -> bool:
    """True with probability p, as v2's `torch.rand(1) < p` tests."""
    return generator.random() < p


def _randint(generator: random.Random, high: int) -> int:
    """Uniform in 0 .. high - 1, as torch.randint(high)."""
    return generator.randrange(high)


# ------------------------------------------------------------------------------------ interpolation


def _triangle(x: torch.Tensor) -> torch.Tensor:
    return (1 - x.abs()).clamp_min(0)


def _cubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic with a = −0.5, the filter of torch's antialiased bicubic resize."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


FILTERS = {"bilinear": (_triangle, 1.0), "bicubic": (_cubic, 2.0)}  # filter, half-width in output pixels


def interpolation_matrix(size: int, output: int, start: torch.Tensor, length: torch.Tensor,
                         mode: str = "bilinear") -> torch.Tensor:
    """(B, output, size) weights that resize the span [start, start + length) of a dimension of `size` pixels to
    `output` pixels, one span per image, with antialiasing: the filters of torch's `_upsample_bilinear2d_aa` /
    `_upsample_bicubic2d_aa` (torchvision's resize with antialias=True)."""
    kernel, half_width = FILTERS[mode]
    start, length = start.double()[:, None, None], length.double()[:, None, None]
    scale = length / output
    stretch = scale.clamp_min(1.0)  # the filter widens when shrinking
    support = half_width * stretch
    centre = scale * (torch.arange(output, dtype=torch.float64)[None, :, None] + 0.5)
    first = (centre - support + 0.5).floor().clamp_min(0)
    last = torch.minimum((centre + support + 0.5).floor(), length)
    position = torch.arange(size, dtype=torch.float64)[None, None, :] - start
    weights = kernel((position - centre + 0.5) / stretch) * ((position >= first) & (position < last))
    return (weights / weights.sum(dim=2, keepdim=True)).float()


def _resample(images: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) → uint8 (B, C, h, w): rows (B, h, H) and columns (B, w, W) weights. Width first, rounded
    to uint8 in between, as torch's uint8 resize on the CPU (torchvision's kernel for uint8 images) does in fixed
    point: within two grey levels of it (tests/test_batch_augment.py; the fewest differing pixels of the orders
    tried: one pass, height first)."""
    rows, columns = rows.to(images.device), columns.to(images.device)
    across = torch.einsum("bchw,bjw->bchj", images.float(), columns).round_().clamp_(0, 255)
    return torch.einsum("bih,bchj->bcij", rows, across).round_().clamp_(0, 255).to(torch.uint8)


def fit_to_input(images: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """The eval / serving geometry on a batch: shorter side resized to preprocessing.resize_to with the model's
    interpolation (bilinear or bicubic), centre crop to the input size (v2.Resize(int) + v2.CenterCrop). A no-op
    when the images already have the input size."""
    height, width = images.shape[-2:]
    out_height, out_width = preprocessing.input_size[1:]
    if (height, width) == (out_height, out_width):
        return images
    short = preprocessing.resize_to
    resized = (short, int(short * width / height)) if height <= width else (int(short * height / width), short)
    top, left = int(round((resized[0] - out_height) / 2.0)), int(round((resized[1] - out_width) / 2.0))
    batch, mode = len(images), preprocessing.interpolation.lower()
    rows = interpolation_matrix(height, resized[0], torch.zeros(1), torch.full((1,), height), mode)
    columns = interpolation_matrix(width, resized[1], torch.zeros(1), torch.full((1,), width), mode)
    rows, columns = rows[0, top:top + out_height], columns[0, left:left + out_width]
    return _resample(images, rows.expand(batch, -1, -1), columns.expand(batch, -1, -1))


# ---------------------------------------------------------------------------------------------- ops
# Each op draws one image's parameters as a list of numbers (`draw`) and applies a batch's parameters, a
# (B, K) float64 CPU tensor, to a uint8 (B, C, H, W) batch (`apply`).


class PadCrop:
    """v2.RandomCrop(size of the image, padding=`padding`, fill 0): a shifted window of the zero-padded image."""

    def __init__(self, padding: int = 4):
        self.padding = padding

    def draw(self, generator, height: int, width: int) -> list:
        return [_randint(generator, 2 * self.padding + 1), _randint(generator, 2 * self.padding + 1)]

    def apply(self, images, params):
        batch, _, height, width = images.shape
        padded = torch.nn.functional.pad(images, [self.padding] * 4)
        top, left = params[:, 0].long().to(images.device), params[:, 1].long().to(images.device)
        rows = top[:, None] + torch.arange(height, device=images.device)
        columns = left[:, None] + torch.arange(width, device=images.device)
        batch_index = torch.arange(batch, device=images.device)[:, None, None]
        picked = padded[batch_index, :, rows[:, :, None], columns[:, None, :]]
        return picked.permute(0, 3, 1, 2).contiguous()


class Flip:
    """v2.RandomHorizontalFlip(p)."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def draw(self, generator, height, width) -> list:
        return [float(_chance(generator, self.p))]

    def apply(self, images, params):
        flip = params[:, 0].bool().to(images.device)[:, None, None, None]
        return torch.where(flip, images.flip(-1), images)


class ResizedCrop:
    """v2.RandomResizedCrop(size of the image, scale, ratio=(3/4, 4/3), `mode` interpolation, antialias): the same
    10 tries, then the same central fallback."""

    def __init__(self, scale: tuple[float, float], ratio: tuple[float, float] = (3 / 4, 4 / 3), mode="bilinear"):
        self.scale, self.ratio, self.mode = scale, ratio, mode
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))

    def draw(self, generator, height, width) -> list:
        area = height * width
        for _ in range(10):
            target_area = area * _uniform(generator, *self.scale)
            aspect = math.exp(_uniform(generator, *self.log_ratio))
            w, h = int(round(math.sqrt(target_area * aspect))), int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return [_randint(generator, height - h + 1), _randint(generator, width - w + 1), h, w]
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            w, h = int(round(height * max(self.ratio))), height
        else:
            w, h = width, height
        return [(height - h) // 2, (width - w) // 2, h, w]

    def apply(self, images, params):
        height, width = images.shape[-2:]
        rows = interpolation_matrix(height, height, params[:, 0], params[:, 2], self.mode)
        columns = interpolation_matrix(width, width, params[:, 1], params[:, 3], self.mode)
        return _resample(images, rows, columns)


def _grey(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) float luma, computed as torchvision computes it."""
    r, g, b = images.float().unbind(dim=-3)
    return r.mul(GREY_WEIGHTS[0]).add_(g, alpha=GREY_WEIGHTS[1]).add_(b, alpha=GREY_WEIGHTS[2]).unsqueeze(-3)


def _blend(images: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """torchvision's uint8 blend: ratio · image + (1 − ratio) · other, clamped, truncated to uint8."""
    # (1 − ratio) in float64, then float32, as torchvision's scalar alpha
    alpha, ratio = ((x.float().to(images.device)[:, None, None, None]) for x in (1 - ratio, ratio))
    return (images.float() * ratio).addcmul_(other, alpha).clamp_(0, 255).to(torch.uint8)


def adjust_brightness(images, factor):
    return (images.float() * factor.float().to(images.device)[:, None, None, None]).clamp_(0, 255).to(torch.uint8)


def adjust_contrast(images, factor):
    mean = _grey(images).floor_().mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(images, mean, factor)


def adjust_saturation(images, factor):
    return _blend(images, _grey(images).floor_(), factor)


def adjust_hue(images, factor):
    # torchvision's own (batched) colour-space conversions, so the hue arithmetic is exactly v2.adjust_hue's
    from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv

    hsv = _rgb_to_hsv(TF.to_dtype(images, torch.float32, scale=True))
    h, s, v = hsv.unbind(dim=-3)
    h = (h + factor.float().to(images.device)[:, None, None]).remainder_(1.0)
    return TF.to_dtype(_hsv_to_rgb(torch.stack((h, s, v), dim=-3)), torch.uint8, scale=True)


class ColorJitter:
    """v2.RandomApply([v2.ColorJitter(b, c, s, h)], p): factors uniform in [1 − x, 1 + x] (hue in [−h, h]),
    the four adjustments in a random order per image."""

    def __init__(self, brightness, contrast, saturation, hue, p: float = 1.0):
        self.ranges = [(1 - brightness, 1 + brightness), (1 - contrast, 1 + contrast),
                       (1 - saturation, 1 + saturation), (-hue, hue)]
        self.p = p
        self.adjustments = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)

    def draw(self, generator, height, width) -> list:
        if not _chance(generator, self.p):
            return [0.0] * 9
        order = generator.sample(range(4), 4)
        return [1.0, *order, *(_uniform(generator, *bounds) for bounds in self.ranges)]

    def apply(self, images, params):
        images = images.clone()
        applied = params[:, 0].bool()
        for position in range(4):
            for adjustment in range(4):
                chosen = torch.nonzero(applied & (params[:, 1 + position] == adjustment)).flatten()
                if len(chosen) and self.ranges[adjustment] != (1.0, 1.0) and self.ranges[adjustment] != (0.0, 0.0):
                    on_device = chosen.to(images.device)
                    images[on_device] = self.adjustments[adjustment](images[on_device], params[chosen, 5 + adjustment])
        return images


class Greyscale:
    """v2.RandomGrayscale(p): the luma, truncated to uint8, in all three channels."""

    def __init__(self, p: float):
        self.p = p

    def draw(self, generator, height, width) -> list:
        return [float(_chance(generator, self.p))]

    def apply(self, images, params):
        grey = _grey(images).to(torch.uint8).expand_as(images)
        return torch.where(params[:, 0].bool().to(images.device)[:, None, None, None], grey, images)


def gaussian_kernels(size: int, sigma: torch.Tensor) -> torch.Tensor:
    """(B, size) 1-D kernels with torchvision's formula (v2.functional._misc._get_gaussian_kernel1d)."""
    limit = (size - 1) / (2.0 * math.sqrt(2.0))
    x = torch.linspace(-limit, limit, size, dtype=torch.float32)
    return torch.softmax(-(x[None, :] / sigma.float()[:, None]).pow(2), dim=1)


class Blur:
    """v2.RandomApply([v2.GaussianBlur(size, sigma=(low, high))], p): sigma uniform, reflect padding, rounded."""

    def __init__(self, size: int, sigma: tuple[float, float], p: float):
        self.size, self.sigma, self.p = size, sigma, p

    def draw(self, generator, height, width) -> list:
        return [1.0, _uniform(generator, *self.sigma)] if _chance(generator, self.p) else [0.0, 1.0]

    def apply(self, images, params):
        chosen = torch.nonzero(params[:, 0].bool()).flatten()
        if not len(chosen):
            return images
        on_device = chosen.to(images.device)
        selected = images[on_device].float()
        batch, channels, height, width = selected.shape
        kernel = gaussian_kernels(self.size, params[chosen, 1]).to(images.device)
        kernel = kernel.repeat_interleave(channels, dim=0)  # one per image and channel
        half = self.size // 2
        flat = torch.nn.functional.pad(selected.reshape(1, batch * channels, height, width), [half] * 4, mode="reflect")
        # separable: a row pass and a column pass, 2 x 13 taps instead of torchvision's 13 x 13 (the same sums)
        across = torch.nn.functional.conv2d(flat, kernel[:, None, None, :], groups=batch * channels)
        blurred = torch.nn.functional.conv2d(across, kernel[:, None, :, None], groups=batch * channels)
        blurred = blurred.reshape(selected.shape)
        images = images.clone()
        images[on_device] = blurred.round_().clamp_(0, 255).to(torch.uint8)
        return images


class CifarAutoAugment:
    """v2.AutoAugment(AutoAugmentPolicy.CIFAR10): per image one of the 25 sub-policies, each of its two ops
    applied with its probability, signed magnitudes negated with probability 1/2. Applied by grouping the
    images with the same op and magnitude and running torchvision's op on each group (the magnitudes are
    discrete), in the two stages of the sub-policy."""

    def __init__(self):
        self.torchvision = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
        self.policies = self.torchvision._policies

    def draw(self, generator, height, width) -> list:
        index = _randint(generator, len(self.policies))
        params = [index]
        for name, probability, _ in self.policies[index]:
            applied = generator.random() <= probability
            signed = applied and self.torchvision._AUGMENTATION_SPACE[name][1]
            params += [float(applied), float(signed and generator.random() <= 0.5)]
        return params

    def magnitude(self, name: str, bin_index, negate: bool, height: int, width: int) -> float:
        magnitudes_of, signed = self.torchvision._AUGMENTATION_SPACE[name]
        magnitudes = magnitudes_of(10, height, width)
        if magnitudes is None:
            return 0.0
        return -float(magnitudes[bin_index]) if negate and signed else float(magnitudes[bin_index])

    def apply(self, images, params):
        height, width = images.shape[-2:]
        images = images.clone()
        for stage in range(2):
            groups: dict[tuple, list[int]] = {}
            for item, row in enumerate(params.tolist()):
                if row[1 + 2 * stage]:
                    name, _, bin_index = self.policies[int(row[0])][stage]
                    key = (name, self.magnitude(name, bin_index, bool(row[2 + 2 * stage]), height, width))
                    groups.setdefault(key, []).append(item)
            for (name, magnitude), items in groups.items():
                chosen = torch.as_tensor(items, device=images.device)
                images[chosen] = self.torchvision._apply_image_or_video_transform(
                    images[chosen], name, magnitude, interpolation=InterpolationMode.NEAREST,
                    fill=self.torchvision._fill)
        return images


class Cutout:
    """transforms.Cutout(size): one size x size square zeroed, its centre uniform over the image, clipped."""

    def __init__(self, size: int):
        self.size = size

    def draw(self, generator, height, width) -> list:
        return [_randint(generator, height), _randint(generator, width)]

    def apply(self, images, params):
        height, width = images.shape[-2:]
        half = self.size // 2
        centre_y, centre_x = (params[:, i].long().to(images.device)[:, None] for i in (0, 1))
        rows = torch.arange(height, device=images.device)[None, :]
        columns = torch.arange(width, device=images.device)[None, :]
        inside_rows = (rows >= centre_y - half) & (rows < centre_y + half)
        inside_columns = (columns >= centre_x - half) & (columns < centre_x + half)
        square = inside_rows[:, :, None] & inside_columns[:, None, :]
        return images.masked_fill(square[:, None], 0)


# -------------------------------------------------------------------------------------------- views


class BatchView:
    """A sequence of ops at the images' native size, then `fit_to_input`, [0, 1] scaling and normalisation:
    uint8 (B, C, H, W) → float32 (B, C, h, w) ready for the model."""

    def __init__(self, ops: list, preprocessing: Preprocessing):
        self.ops, self.preprocessing = ops, preprocessing

    def draw(self, generator: random.Random, height: int, width: int) -> list[list]:
        return [op.draw(generator, height, width) for op in self.ops]

    def apply(self, images: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        for op, op_params in zip(self.ops, params):
            images = op.apply(images, op_params)
        return normalise(fit_to_input(images, self.preprocessing), self.preprocessing)


def normalise(images: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    mean = torch.tensor(preprocessing.mean, device=images.device)[:, None, None]
    std = torch.tensor(preprocessing.std, device=images.device)[:, None, None]
    return (TF.to_dtype(images, torch.float32, scale=True) - mean) / std


def train_view(preprocessing: Preprocessing) -> BatchView:
    """transforms.train_transform for array datasets: pad-and-crop, flip, normalise."""
    return BatchView([PadCrop(4), Flip()], preprocessing)


def strong_classification_view(preprocessing: Preprocessing, cutout: int = 0) -> BatchView:
    """transforms.strong_classification_transform for array datasets: crop, flip, AutoAugment (+ Cutout)."""
    return BatchView([PadCrop(4), Flip(), CifarAutoAugment()] + ([Cutout(cutout)] if cutout else []), preprocessing)


def contrastive_view(preprocessing: Preprocessing) -> BatchView:
    """transforms.contrastive_transform for array datasets: resized crop (0.2-1), flip, jitter p=0.8, grey p=0.2,
    blur p=0.5."""
    return BatchView([ResizedCrop((0.2, 1.0), mode=preprocessing.interpolation.lower()), Flip(),
                      ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8), Greyscale(0.2),
                      Blur(2 * math.ceil(3 * 2.0) + 1, (0.1, 2.0), p=0.5)], preprocessing)


def eval_view(preprocessing: Preprocessing) -> BatchView:
    """transforms.eval_transform for array datasets: no randomness."""
    return BatchView([], preprocessing)


def evaluates_on_device(preprocessing: Preprocessing, image_size) -> bool:
    """Whether eval_view reproduces eval_transform (and so the server) for images of `image_size`: always at the
    input size; after a resize with the interpolations fit_to_input implements (bilinear, bicubic)."""
    return tuple(image_size) == tuple(preprocessing.input_size[1:]) or preprocessing.interpolation.lower() in FILTERS


class BatchAugment:
    """Augments batches of ((image indices (B, S), view seeds (B,)), targets) into (views, targets): view slot s
    of every item is views[s] of images[indices[:, s]], on the images' device (the one given, copied once).
    With `single`, one slot, returned as the tensor itself (ERM's (images, labels) batches)."""

    def __init__(self, images: np.ndarray, views: tuple[BatchView, ...], single: bool = False):
        self.host_images = torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).contiguous()  # N, C, H, W
        self.views, self.single = views, single
        self.images = self.host_images

    def to(self, device: torch.device) -> BatchAugment:
        if self.images.device != torch.device(device):
            self.images = self.host_images.to(device).contiguous()
        return self

    def draw(self, seeds: list[int]) -> list[list[torch.Tensor]]:
        """Per slot and op, the (B, K) parameters of every item, each item drawn from its own generator."""
        height, width = self.images.shape[-2:]
        per_item = []
        for seed in seeds:
            generator = random.Random(seed)
            per_item.append([view.draw(generator, height, width) for view in self.views])
        return [[torch.tensor([item[slot][op] for item in per_item], dtype=torch.float64)
                 for op in range(len(view.ops))] for slot, view in enumerate(self.views)]

    def __call__(self, batch):
        (indices, seeds), targets = batch
        params = self.draw(torch.as_tensor(seeds).tolist())
        indices = torch.as_tensor(indices).to(self.images.device)
        views = tuple(view.apply(self.images[indices[:, slot]], params[slot]) for slot, view in enumerate(self.views))
        return (views[0] if self.single else views), targets


class OnDeviceViews(Dataset):
    """The device path of a training (or evaluation) set: item i is ((image indices of its view slots, its view
    seed), targets), from `pick(i)` → (indices, targets); `augment` turns a loaded batch into its views.
    make_loader loads it in the main process (no workers: an item is a few integers)."""

    def __init__(self, size: int, pick: Callable[[int], tuple], augment: BatchAugment, labels: np.ndarray):
        self.size, self.pick, self.augment, self.labels = size, pick, augment, labels

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        indices, targets = self.pick(index)
        return (torch.as_tensor(indices), view_seed()), targets


def single_view_set(images: np.ndarray, labels: np.ndarray, view: BatchView) -> OnDeviceViews:
    """Item i: image i in `view`, with its label (ERM's training set; an evaluation set with eval_view)."""
    labels = np.asarray(labels, dtype=np.int64)
    return OnDeviceViews(len(labels), lambda index: ([index], int(labels[index])),
                         BatchAugment(images, (view,), single=True), labels)


def augments_on_device(setting: str, kind: str) -> bool:
    """data.augment_on: `device`, or `auto` on an array dataset (file datasets always augment in the loader)."""
    return setting == "device" or (setting == "auto" and kind == "array")
