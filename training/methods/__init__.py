"""Training methods. A method owns what differs between papers and nothing else:

    method = build_method(config, class_counts)
    model = method.build_model()                       # train-time module (backbone + any heads)
    dataset = method.train_dataset(bundle, preprocessing)
    method.start_epoch(model, epoch, device)           # per-epoch work before training (SAU: prototypes); default none
    loss = method.training_loss(model, batch, epoch)   # called under autocast by train_one_epoch
    method.classifier(model)                           # images → logits, for evaluation and ONNX export

The trainer, checkpoints, evaluation and export are shared. A new method is one module registered here,
whose class derives from `base.Method` (config, typed options, class count, default `start_epoch` and
`classifier`). A method that does not train end to end (DLSA, on a base run's frozen features) defines a
classmethod `fit(config, output_dir, resume)` that `training.train.train` calls instead of its epoch loop;
its `build_model()` and `classifier(model)` still serve evaluation and export.
"""

from __future__ import annotations

import dataclasses

from training.config import ConfigError, parse_options
from training.methods.concutmix import ConCutMixMethod
from training.methods.dlsa import DlsaMethod
from training.methods.erm import ErmMethod
from training.methods.sau import SauMethod

METHODS = {"erm": ErmMethod, "concutmix": ConCutMixMethod, "dlsa": DlsaMethod, "sau": SauMethod}


def build_method(config, class_counts):
    return method_class(config)(config, class_counts)


def method_class(config):
    """The method's class, after checking its `method_options` (before any data is read)."""
    if config.method not in METHODS:
        raise ConfigError(f"unknown method '{config.method}'; available: {', '.join(sorted(METHODS))}")
    cls = METHODS[config.method]
    if config.method_options and not dataclasses.fields(cls.options_class):
        raise ConfigError(f"method '{config.method}' takes no method_options (got {sorted(config.method_options)})")
    parse_options(cls.options_class, config.method_options, "method_options.")
    return cls
