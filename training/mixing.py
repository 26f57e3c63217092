"""CutMix (Yun et al. 2019) as the long-tail methods use it (ConCutMix and SAU differ only in λ), and MixUp
(Zhang et al. 2018) as SAU uses it.

All randomness comes from torch's global generator, which the trainer reseeds every epoch, so a resumed
run mixes exactly as an uninterrupted one.
"""

from __future__ import annotations

import math

import torch


def sample_beta(concentration: float) -> float:
    """λ ~ Beta(a, a); Beta(1, 1) is uniform on [0, 1]."""
    a = torch.tensor(float(concentration))
    return float(torch.distributions.Beta(a, a).sample())


def cutmix_box(height: int, width: int, lam: float) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a box covering about 1 − λ of the image: sides H·√(1−λ) and W·√(1−λ)
    (truncated), centre uniform over the image, edges clipped to it."""
    cut_ratio = math.sqrt(1.0 - lam)
    cut_height, cut_width = int(height * cut_ratio), int(width * cut_ratio)
    centre_y = int(torch.randint(height, ()).item())
    centre_x = int(torch.randint(width, ()).item())
    top, bottom = max(centre_y - cut_height // 2, 0), min(centre_y + cut_height // 2, height)
    left, right = max(centre_x - cut_width // 2, 0), min(centre_x + cut_width // 2, width)
    return top, bottom, left, right


def paste_box(background: torch.Tensor, foreground: torch.Tensor, box) -> tuple[torch.Tensor, float]:
    """`background` with `box` replaced by the same region of `foreground`, and the share of the background
    that is left (the λ recomputed from the clipped box, as ConCutMix uses it)."""
    top, bottom, left, right = box
    mixed = background.clone()
    mixed[:, :, top:bottom, left:right] = foreground[:, :, top:bottom, left:right]
    height, width = background.shape[-2:]
    return mixed, 1.0 - (bottom - top) * (right - left) / (height * width)


def mixup(images: torch.Tensor, partners: torch.Tensor, targets: torch.Tensor, partner_targets: torch.Tensor,
          beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """m·x¹ + (1−m)·x² and m·y¹ + (1−m)·y², one m ~ Beta(a, a) for the whole batch."""
    m = sample_beta(beta)
    return m * images + (1.0 - m) * partners, m * targets + (1.0 - m) * partner_targets
