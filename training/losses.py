"""Classification losses for long-tailed training. All predict with the raw logits at test time."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LogitAdjustedLoss(nn.Module):
    """CE(logits + tau * log prior, y) (Menon et al. 2021). tau=0 is plain cross-entropy."""

    def __init__(self, class_counts, tau: float = 1.0):
        super().__init__()
        counts = torch.as_tensor(class_counts, dtype=torch.float64)
        self.register_buffer("adjustment", (tau * torch.log(counts / counts.sum())).float())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_cross_entropy(logits.float() + self.adjustment, target)


class BalancedSoftmaxLoss(nn.Module):
    """CE(logits + log n_c, y) (Ren et al. 2020), with +1e-6 inside the log as in DLSA."""

    def __init__(self, class_counts):
        super().__init__()
        counts = torch.as_tensor(class_counts, dtype=torch.float64)
        self.register_buffer("log_counts", torch.log(counts + 1e-6).float())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_cross_entropy(logits.float() + self.log_counts, target)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with hard labels (N,) or soft labels (N, C), in fp32 even under autocast."""
    logits = logits.float()
    if target.dim() == 1:
        return F.cross_entropy(logits, target)
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


class CrossEntropyLoss(nn.Module):
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_cross_entropy(logits, target)


def build_loss(name: str, class_counts, tau: float = 1.0) -> nn.Module:
    if name == "ce":
        return CrossEntropyLoss()
    if name == "logit_adjusted":
        return LogitAdjustedLoss(class_counts, tau)
    if name == "balanced_softmax":
        return BalancedSoftmaxLoss(class_counts)
    raise ValueError(f"unknown loss '{name}' (expected ce, logit_adjusted or balanced_softmax)")
