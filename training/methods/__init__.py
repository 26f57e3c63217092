"""Training methods. A method owns what differs between papers and nothing else:

    method = build_method(config, class_counts)
    model = method.build_model()                       # train-time module (backbone + any heads)
    dataset = method.train_dataset(bundle, preprocessing)
    loss = method.training_loss(model, batch)          # called under autocast by train_one_epoch
    method.classifier(model)                           # images → logits, for evaluation and ONNX export

The trainer, checkpoints, evaluation and export are shared. A new method is one module registered here.
"""

from __future__ import annotations

from training.config import ConfigError
from training.methods.erm import ErmMethod

METHODS = {"erm": ErmMethod}


def build_method(config, class_counts):
    if config.method not in METHODS:
        raise ConfigError(f"unknown method '{config.method}'; available: {', '.join(sorted(METHODS))}")
    return METHODS[config.method](config, class_counts)
