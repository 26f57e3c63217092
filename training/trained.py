"""Reopening a trained run: the config, method and model a checkpoint was saved with, ready to evaluate, export or
build on (DLSA uses a base run's backbone).

    trained = load_trained("runs/ce", "best")
    trained.model, trained.card, trained.config
    config, method, model, info = trained     # it is a named tuple
"""

from __future__ import annotations

from typing import NamedTuple

from torch import nn

from inference.card import ModelCard
from training.checkpoint import load_checkpoint, restore_model
from training.config import Config, apply_overrides, config_from_dict
from training.registry import build_method


class TrainedModel(NamedTuple):
    config: Config
    method: object  # the run's training.methods.base.Method
    model: nn.Module  # the train-time module, in eval mode on the CPU
    info: dict  # the checkpoint's JSON (training/checkpoint.py), with its "path"

    @property
    def classifier(self) -> nn.Module:
        """images → logits: what is evaluated and exported."""
        return self.method.classifier(self.model)

    @property
    def card(self) -> ModelCard:
        return ModelCard.from_checkpoint_info(self.info)

    @property
    def is_val_selected(self) -> bool:
        return self.card.checkpoint["which"] == "val-selected"


def load_trained(checkpoint, which: str = "best", overrides=()) -> TrainedModel:
    """A run directory (its `which` checkpoint) or a checkpoint file → the trained model. `overrides` may change
    data settings, e.g. data.root on another machine; the model is rebuilt from the saved config, without its
    pretrained weights (`model.pretrained: none`): the checkpoint holds every weight, and the file or Hub reference
    the run started from need not exist where it is reopened."""
    tensors, info = load_checkpoint(checkpoint, which)
    config = config_from_dict(apply_overrides(info["config"], ["model.pretrained=none", *overrides]))
    method = build_method(config, info["class_counts"])
    model = method.build_model()
    restore_model(model, tensors, info)
    return TrainedModel(config, method, model.eval(), info)
