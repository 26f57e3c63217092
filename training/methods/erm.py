"""Empirical risk minimisation with a (long-tail aware) classification loss: CE, logit-adjusted CE or
balanced softmax, chosen by `loss.name`. The baseline every other method is compared with."""

from __future__ import annotations

import dataclasses

from torch import nn

from models import create_model
from training.losses import build_loss
from training.methods.base import Method
from training.transforms import train_transform


@dataclasses.dataclass
class ErmOptions:
    """None: the loss is chosen with loss.name / loss.tau."""


class ErmMethod(Method):
    options_class = ErmOptions

    def __init__(self, config, class_counts):
        super().__init__(config, class_counts)
        self.loss = build_loss(config.loss.name, class_counts, config.loss.tau)

    @property
    def name(self) -> str:
        return self.config.loss.name

    def build_model(self) -> nn.Module:
        return create_model(self.config.model.name, self.num_classes)

    def train_dataset(self, bundle, preprocessing):
        return bundle.train.with_transform(train_transform(preprocessing, bundle.kind))

    def training_loss(self, model, batch, epoch: int):
        images, labels = batch
        return self.loss.to(images.device)(model(images), labels)

    @staticmethod
    def batch_size(batch) -> int:
        return len(batch[1])
