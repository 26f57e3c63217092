"""Create models by name; every entry carries its preprocessing config (as timm's default_cfg)."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from torch import nn

from inference.card import Preprocessing

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
    return sorted(_REGISTRY)


def _entry(name: str):
    if name not in _REGISTRY:
        raise KeyError(f"unknown model '{name}'; available: {', '.join(list_models())}")
    return _REGISTRY[name]


def get_preprocessing(name: str) -> Preprocessing:
    return replace(_entry(name)[1])


def create_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    factory, preprocessing = _entry(name)
    model = factory(num_classes=num_classes, **kwargs)
    model.preprocessing = replace(preprocessing)
    model.model_name = name
    return model
