"""The method protocol: what differs between papers, and nothing else. The trainer, checkpoints, evaluation and
export are shared; a method is one module under training/methods/ with a class registered by name:

    @register_method("mine")
    class MyMethod(Method):
        options_class = MyOptions                      # a dataclass: `method_options` in the config

        def build_model(self): ...                     # train-time module (backbone + any heads)
        def train_dataset(self, bundle, preprocessing): ...
        def training_loss(self, model, batch, epoch): ...   # under autocast, from train_one_epoch

A method that does not train end to end (DLSA, on a base run's frozen features) sets `fits_itself = True` and
implements the classmethod `fit`, which `training.train.train` calls instead of its epoch loop; its
`build_model()` and `classifier(model)` still serve evaluation and export.
"""

from __future__ import annotations

import dataclasses

from torch import nn


@dataclasses.dataclass
class NoOptions:
    """A method without `method_options`."""


class Method:
    name: str  # set by @register_method
    options_class: type = NoOptions
    fits_itself: bool = False  # True: `fit` replaces the trainer's epoch loop

    def __init__(self, config, class_counts):
        self.config = config
        self.options = config.method_options  # typed when the config was loaded (training/config.py)
        self.num_classes = len(class_counts)

    def build_model(self) -> nn.Module:
        """The train-time module; it has `preprocessing` and `model_name`, as every registered model."""
        raise NotImplementedError

    def train_dataset(self, bundle, preprocessing):
        """The training set as this method's steps consume it (views, partners, synthetic images...)."""
        raise NotImplementedError

    def training_loss(self, model: nn.Module, batch, epoch: int):
        """The scalar a step minimises, for one batch of `train_dataset`."""
        raise NotImplementedError

    def batch_size(self, batch) -> int:
        """Images in a batch of `train_dataset` (for the loss average and images/s)."""
        return len(batch[1])

    def start_epoch(self, model: nn.Module, epoch: int, device) -> None:
        """Work a method needs before each epoch, after the trainer reseeds the RNGs and before the epoch's
        loader starts (SAU: class prototypes and the MixUp partners). Nothing by default."""

    def classifier(self, model: nn.Module) -> nn.Module:
        """images → logits, for evaluation and ONNX export."""
        return model

    @classmethod
    def fit(cls, config, output_dir, resume: bool = False) -> dict:
        """The whole run, for a method with `fits_itself`; returns the final metrics as the trainer does."""
        raise NotImplementedError(f"method '{cls.name}' trains end to end with the shared trainer")
