"""timm networks as our backbones: the trunk without its classifier, our own `fc`, pretrained weights, frozen stages.

    create_model("timm:convnext_atto", num_classes=10, pretrained="hf://timm/convnext_atto.d2_in1k@<sha>/model.safetensors")
    create_model("efficientnet_lite0", num_classes=10, pretrained="imagenet")   # models/efficientnet_lite.py

`timm:<architecture>` names any network timm builds (with an optional `.tag`, e.g. `timm:resnet18.a1_in1k`, whose
pretrained config gives the preprocessing). timm itself never downloads anything here: the network is built with
random weights and pretrained tensors come only from a source we read ourselves (models/pretrained.py).
timm is imported on first use, so `import models` (and the app, which serves ONNX files) does not pay for it.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from inference.card import Preprocessing
from models.backbone import Backbone
from models.pretrained import PretrainedWeightsError, read_weights

TIMM_PREFIX = "timm:"


def _timm():
    import timm  # lazy: see the module docstring

    return timm


class TimmBackbone(Backbone):
    """`trunk`: the timm network with `num_classes=0` (pooled, pre-logit features); `fc`: our classifier. The
    split every method relies on (forward_features / forward_head, `.fc`, `num_features`, models/__init__.py)."""

    def __init__(self, architecture: str, num_classes: int,
                 imagenet_weights: Callable[[nn.Module], dict] | None = None):
        super().__init__()
        self.architecture = architecture
        self.trunk = _timm().create_model(architecture, pretrained=False, num_classes=0)
        self.num_features = self.trunk.num_features
        self.fc = nn.Linear(self.num_features, num_classes)
        self._imagenet_weights = imagenet_weights  # the offline ImageNet tensors of this entry, if it has any
        self.pretrained_source = "none"
        self.frozen_stages = 0

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    # ------------------------------------------------------------------------------------------ pretrained weights

    def load_pretrained(self, source: str) -> None:
        """`imagenet` (this entry's offline weights), a .safetensors file or an hf:// reference to one, in timm's
        key layout (a Hub `timm/...` repo's model.safetensors); the ImageNet classifier in it is dropped."""
        if source == "imagenet":
            if self._imagenet_weights is None:
                raise PretrainedWeightsError(_no_offline_weights(self.architecture))
            tensors = self._imagenet_weights(self.trunk)
        else:
            tensors = read_weights(source)
        self._load_trunk(tensors, source)
        self.pretrained_source = source

    def _load_trunk(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        classifier = self.trunk.pretrained_cfg.get("classifier") or ()
        classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
        tensors = {k: v for k, v in tensors.items() if not any(k.startswith(f"{c}.") for c in classifier)}
        expected = self.trunk.state_dict()
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise PretrainedWeightsError(
                f"{source} does not hold {self.architecture} weights in timm's layout: "
                f"{len(missing)} tensors missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        wrong = [k for k, v in tensors.items() if v.shape != expected[k].shape]
        if wrong:
            raise PretrainedWeightsError(f"{source}: {len(wrong)} tensors have other shapes than {self.architecture}'s, "
                                         f"e.g. {wrong[0]} {tuple(tensors[wrong[0]].shape)} vs "
                                         f"{tuple(expected[wrong[0]].shape)}")
        self.trunk.load_state_dict(tensors)

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """The parameters that start from pretrained weights (optim.backbone_lr_scale applies to them)."""
        return list(self.trunk.parameters()) if self.pretrained_source != "none" else []

    # ------------------------------------------------------------------------------------------------ freezing

    def stages(self) -> list[list[str]]:
        """The trunk's module names, stage by stage from the input: timm's coarse parameter groups, the ones its
        layer-wise decay uses (EfficientNet: the stem, then one group per block stage, the last with the head conv)."""
        from timm.models import group_modules

        groups = group_modules(self.trunk, self.trunk.group_matcher(coarse=True))
        return [groups[key] for key in sorted(groups)]

    def freeze_stages(self, count: int) -> None:
        """Freeze the first `count` stages: no gradients, and their BatchNorm layers keep the pretrained running
        statistics (they stay in eval mode whatever `train()` is called with)."""
        stages = self.stages()
        if not 0 <= count <= len(stages):
            raise PretrainedWeightsError(f"{self.architecture} has {len(stages)} stages; cannot freeze {count}")
        self.frozen_stages = count
        for name in (name for stage in stages[:count] for name in stage):
            for parameter in self.trunk.get_submodule(name).parameters():
                parameter.requires_grad_(False)
        self.train(self.training)

    def _frozen_modules(self):
        for stage in self.stages()[:self.frozen_stages]:
            for name in stage:
                yield self.trunk.get_submodule(name)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen_stages:
            for module in self._frozen_modules():
                module.eval()
        return self


def _no_offline_weights(architecture: str) -> str:
    hub_id = (_timm().models.get_pretrained_cfg(architecture) or {})
    hub_id = getattr(hub_id, "hf_hub_id", None)
    example = f"hf://{hub_id}@<commit sha>/model.safetensors" if hub_id else "hf://owner/name@<commit sha>/model.safetensors"
    return (f"timm:{architecture} ships no offline ImageNet weights; set model.pretrained to a .safetensors file "
            f"or a pinned Hub reference, e.g. {example}")


def timm_architecture(name: str) -> str | None:
    """`timm:<architecture>` → the architecture if timm knows it, else None (also for names without the prefix)."""
    if not name.startswith(TIMM_PREFIX):
        return None
    architecture = name[len(TIMM_PREFIX):]
    return architecture if _timm().is_model(architecture.split(".")[0]) else None


def timm_preprocessing(architecture: str) -> Preprocessing:
    """The preprocessing timm's pretrained config gives the architecture (input size, mean, std, interpolation,
    crop fraction): what its pretrained weights expect."""
    cfg = _timm().models.get_pretrained_cfg(architecture)
    if cfg is None:
        raise KeyError(f"timm has no pretrained config for '{architecture}'")
    return Preprocessing(input_size=list(cfg.input_size), mean=[float(v) for v in cfg.mean],
                         std=[float(v) for v in cfg.std], interpolation=cfg.interpolation or "bilinear",
                         crop_pct=float(cfg.crop_pct))
