"""The optimiser of a run: SGD over the trainable parameters, a pretrained backbone at its own learning rate.

    optimizer = build_optimizer(model, config)

Fine-tuning an ImageNet-pretrained backbone usually wants it to move more slowly than the new classifier (and
method heads) on top of it: `optim.backbone_lr_scale` multiplies the scheduled learning rate of every parameter
that started from pretrained weights (`pretrained_parameters()` of models/timm_backbone.py); everything else
gets `optim.lr`. Frozen parameters (`model.freeze_stages`) are left out. One scale for the whole backbone, not
layer-wise decay: one number to tune, and `freeze_stages` covers the "leave the early layers alone" case.
"""

from __future__ import annotations

import torch
from torch import nn

from training.config import Config, ConfigError


class ScaledSGD(torch.optim.SGD):
    """SGD whose parameter groups carry an `lr_scale`. The trainer sets every group's `lr` from the schedule
    before each step (training/engine.py); the scale applies on top, for that step only, so the schedule stays
    the one place learning rates are decided and the saved state holds the scheduled value."""

    def step(self, closure=None):
        scheduled = [group["lr"] for group in self.param_groups]
        for group in self.param_groups:
            group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
        try:
            return super().step(closure)
        finally:
            for group, lr in zip(self.param_groups, scheduled):
                group["lr"] = lr


def parameter_groups(model: nn.Module, backbone_lr_scale: float) -> list[dict]:
    """[pretrained backbone, everything else], trainable parameters only, empty groups dropped; always in this
    order, so a resumed run's optimizer state lines up."""
    pretrained = {id(p) for module in model.modules() if hasattr(module, "pretrained_parameters")
                  for p in module.pretrained_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    backbone = [p for p in trainable if id(p) in pretrained]
    rest = [p for p in trainable if id(p) not in pretrained]
    groups = [{"params": backbone, "lr_scale": backbone_lr_scale}, {"params": rest, "lr_scale": 1.0}]
    return [group for group in groups if group["params"]]


def build_optimizer(model: nn.Module, config: Config) -> torch.optim.Optimizer:
    optim = config.optim
    groups = parameter_groups(model, optim.backbone_lr_scale)
    if optim.backbone_lr_scale != 1.0 and not any(group["lr_scale"] != 1.0 for group in groups):
        raise ConfigError(f"optim.backbone_lr_scale={optim.backbone_lr_scale:g} applies to a pretrained backbone, "
                          f"but model.pretrained is {config.model.pretrained} (or every backbone stage is frozen)")
    return ScaledSGD(groups, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay,
                     nesterov=optim.nesterov)
