"""torchvision ResNet-50 / ResNeXt-50 (32x4d) for ImageNet-scale data, with the features/head split."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet50 as tv_resnet50
from torchvision.models import resnext50_32x4d as tv_resnext50_32x4d

from models.backbone import Backbone
from models.registry import IMAGENET_PREPROCESSING, register_model


class TorchvisionResNet(Backbone):
    def __init__(self, trunk: nn.Module, num_classes: int):
        super().__init__()
        self.num_features = trunk.fc.in_features
        trunk.fc = nn.Identity()  # the trunk now returns pooled features
        self.trunk = trunk
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)


@register_model("resnet50", IMAGENET_PREPROCESSING)
def resnet50(num_classes: int) -> TorchvisionResNet:
    return TorchvisionResNet(tv_resnet50(weights=None), num_classes)


@register_model("resnext50_32x4d", IMAGENET_PREPROCESSING)
def resnext50_32x4d(num_classes: int) -> TorchvisionResNet:
    return TorchvisionResNet(tv_resnext50_32x4d(weights=None), num_classes)
