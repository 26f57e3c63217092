"""Create models by name; every entry carries its preprocessing config (as timm's default_cfg).

    create_model("resnet32", num_classes=10)
    create_model("efficientnet_lite0", num_classes=10, pretrained="imagenet", input_size=128, freeze_stages=2)
    create_model("timm:convnext_atto", num_classes=10, pretrained="weights/convnext_atto.safetensors")

Registered names come from the modules under models/; `timm:<architecture>` names any timm network
(models/timm_backbone.py), with timm's preprocessing for its pretrained weights.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Callable

from torch import nn

from inference.card import Preprocessing
from models.pretrained import PretrainedWeightsError
from models.timm_backbone import TimmBackbone, timm_architecture, timm_preprocessing

CIFAR_PREPROCESSING = Preprocessing(
    input_size=[3, 32, 32], mean=[0.4914, 0.4822, 0.4465], std=[0.2470, 0.2435, 0.2616],
    interpolation="bilinear", crop_pct=1.0,
)
IMAGENET_PREPROCESSING = Preprocessing(
    input_size=[3, 224, 224], mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225],
    interpolation="bilinear", crop_pct=0.875,
)

_REGISTRY: dict[str, tuple[Callable[..., nn.Module], Preprocessing]] = {}


def register_model(name: str, preprocessing: Preprocessing):
    def decorator(factory):
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice")
        _REGISTRY[name] = (factory, preprocessing)
        return factory

    return decorator


def list_models() -> list[str]:
    """The registered names (any `timm:<architecture>` works too)."""
    return sorted(_REGISTRY)


def has_model(name: str) -> bool:
    return name in _REGISTRY or timm_architecture(name) is not None


def _entry(name: str):
    if name in _REGISTRY:
        return _REGISTRY[name]
    architecture = timm_architecture(name)
    if architecture is None:
        raise KeyError(f"unknown model '{name}'; available: {', '.join(list_models())}, or timm:<architecture>")
    return partial(TimmBackbone, architecture), timm_preprocessing(architecture)


def get_preprocessing(name: str) -> Preprocessing:
    return replace(_entry(name)[1])


def create_model(name: str, num_classes: int, *, pretrained: str = "none", input_size: int = 0,
                 crop_pct: float = 0.0, freeze_stages: int = 0, **kwargs) -> nn.Module:
    """The network `name` with `num_classes` outputs. `pretrained`: a weights source (models/pretrained.py);
    `input_size` / `crop_pct`: the train and serve resolution and centre-crop fraction instead of the entry's (0:
    the entry's); `freeze_stages`: the first stages get no gradients and keep their BatchNorm statistics."""
    factory, preprocessing = _entry(name)
    model = factory(num_classes=num_classes, **kwargs)
    model.preprocessing = resized(preprocessing, input_size, crop_pct)
    model.model_name = name
    if pretrained != "none" or freeze_stages:
        if not hasattr(model, "load_pretrained"):
            raise PretrainedWeightsError(f"model '{name}' takes no pretrained weights or frozen stages; "
                                         "use efficientnet_lite0 or a timm:<architecture> model")
        if pretrained != "none":
            model.load_pretrained(pretrained)
        if freeze_stages:
            model.freeze_stages(freeze_stages)
    return model


def resized(preprocessing: Preprocessing, input_size: int = 0, crop_pct: float = 0.0) -> Preprocessing:
    """The entry's preprocessing at another square input size and/or crop fraction (0 keeps the entry's)."""
    channels = preprocessing.input_size[0]
    size = [channels, input_size, input_size] if input_size else list(preprocessing.input_size)
    return replace(preprocessing, input_size=size, crop_pct=crop_pct or preprocessing.crop_pct)
