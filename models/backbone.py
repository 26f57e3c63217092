"""What every model of the registry is: pooled features, then one linear classifier (timm's split).

Methods build on the split: ConCutMix and SAU attach their projection heads to `forward_features`, DLSA fits on
its output, and export takes `forward` (images → logits).
"""

from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    """Subclasses set `num_features` and `fc` (an nn.Linear from num_features to the classes) and define
    `forward_features` (images → pooled features, shape (batch, num_features))."""

    num_features: int
    fc: nn.Linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
