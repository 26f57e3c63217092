"""What every method shares: its config, its typed `method_options` and the number of classes."""

from __future__ import annotations

from torch import nn

from training.config import parse_options


class Method:
    options_class: type  # a dataclass; `method_options` in the config must fit it
    name: str

    def __init__(self, config, class_counts):
        self.config = config
        self.options = parse_options(self.options_class, config.method_options, "method_options.")
        self.num_classes = len(class_counts)

    def start_epoch(self, model: nn.Module, epoch: int, device) -> None:
        """Work a method needs before each epoch, after the trainer reseeds the RNGs and before the epoch's
        loader starts (SAU: class prototypes and the MixUp partners). Nothing by default."""

    def classifier(self, model: nn.Module) -> nn.Module:
        """images → logits, for evaluation and ONNX export."""
        return model
