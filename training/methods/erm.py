"""Empirical risk minimisation with a (long-tail aware) classification loss: CE, logit-adjusted CE or
balanced softmax, chosen by `loss.name`. The baseline every other method is compared with."""

from __future__ import annotations

from torch import nn

from training.data.batch_augment import augments_on_device, single_view_set, train_view
from training.data.transforms import native_size, train_transform
from training.losses import build_loss
from training.methods.base import Method
from training.registry import register_method


@register_method("erm")
class ErmMethod(Method):
    """No method_options: the loss is chosen with loss.name / loss.tau."""

    def __init__(self, config, class_counts):
        super().__init__(config, class_counts)
        self.loss = build_loss(config.loss.name, class_counts, config.loss.tau)

    def build_model(self) -> nn.Module:
        return self.config.model.build(self.num_classes)

    def train_dataset(self, bundle, preprocessing):
        if augments_on_device(self.config.data.augment_on, bundle.kind):
            return single_view_set(bundle.train.images, bundle.train.labels, train_view(preprocessing))
        return bundle.train.with_transform(train_transform(preprocessing, bundle.kind, native_size(bundle)))

    def training_loss(self, model, batch, epoch: int):
        images, labels = batch
        return self.loss.to(images.device)(model(images), labels)
