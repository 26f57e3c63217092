"""CIFAR ResNet-32 (He et al. 2016, option-A shortcuts), as in LDAM-DRW / BCL / ConCutMix, and the 4x wide
variant (64/128/256) used by GLMC and SAU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.backbone import Backbone
from models.registry import CIFAR_PREPROCESSING, register_model


class ZeroPadShortcut(nn.Module):
    """Option A: subsample spatially, zero-pad the new channels (adds no parameters)."""

    def __init__(self, in_planes: int, planes: int):
        super().__init__()
        self.pad = (planes - in_planes) // 2

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        needs_projection = stride != 1 or in_planes != planes
        self.shortcut = ZeroPadShortcut(in_planes, planes) if needs_projection else nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(Backbone):
    def __init__(self, num_classes: int, widths=(16, 32, 64), blocks_per_stage: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, in_planes = [], widths[0]
        for index, planes in enumerate(widths):
            stride = 1 if index == 0 else 2
            blocks = []
            for block_index in range(blocks_per_stage):
                blocks.append(BasicBlock(in_planes, planes, stride if block_index == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.num_features = widths[-1]
        self.fc = nn.Linear(self.num_features, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


@register_model("resnet32", CIFAR_PREPROCESSING)
def resnet32(num_classes: int) -> CifarResNet:
    return CifarResNet(num_classes, widths=(16, 32, 64))


@register_model("resnet32_wide", CIFAR_PREPROCESSING)
def resnet32_wide(num_classes: int) -> CifarResNet:
    return CifarResNet(num_classes, widths=(64, 128, 256))
