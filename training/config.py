"""Typed training configuration: dataclasses, YAML files under configs/, `--set key=value` overrides.

Unknown keys and ill-typed values are errors, never silently ignored. `method_options` are parsed here too,
into the registered method's options dataclass (training/registry.py), so a loaded config is fully typed and a bad
option fails before any data is read.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from models import PretrainedWeightsError, check_source, create_model, has_model, list_models
from training.errors import ConfigError
from training.registry import method_class


@dataclass
class DataConfig:
    dataset: str = "cifar10_lt"  # cifar10_lt | cifar100_lt | imagenet_lt | places_lt | imagefolder
    # CIFAR: a folder (torchvision layout or cifar-10-batches-py / cifar-100-python) or an .npz file.
    # Split-file datasets: the image root. imagefolder: a folder with one sub-folder per class.
    root: str = "data"
    download: bool = False  # CIFAR only: let torchvision download into `root`
    imbalance_factor: float = 100.0  # n_max / n_min; 1 keeps the data as it is
    profile: str = "exp"  # exp | step (long-tail profile when subsampling)
    subsample_seed: int = 0  # which images form the long-tailed subset
    val_per_class: int = 50  # balanced validation images held out of the training pool (0: none)
    train_split: str = ""  # split files: "<relative path> <label>" per line (.txt or .txt.gz)
    val_split: str = ""
    test_split: str = ""
    test_root: str = ""  # imagefolder: a separate test folder with the same class sub-folders
    batch_size: int = 128
    num_workers: int = 2
    # Where training views are augmented: auto (device for array datasets, loader for file datasets), device
    # (a batch at a time on the training device, training/data/batch_augment.py; array datasets only) or loader
    # (torchvision per image in the DataLoader workers, the old path).
    augment_on: str = "auto"


@dataclass
class ModelConfig:
    name: str = "resnet32"  # a registered model (models.list_models()) or timm:<architecture>
    # Weights to start from (models/pretrained.py): none | imagenet (the model's offline ImageNet weights:
    # efficientnet_lite0) | a .safetensors file | hf://owner/name@<commit sha>/model.safetensors (timm's layout).
    pretrained: str = "none"
    input_size: int = 0  # train and serve resolution (square); 0: the model's own (e.g. 128 for CIFAR upsampled)
    crop_pct: float = 0.0  # serving: resize the shorter side to input_size / crop_pct, centre-crop; 0: the model's
    freeze_stages: int = 0  # the first N backbone stages get no gradients and keep their BatchNorm statistics

    def build(self, num_classes: int):
        """The backbone this section describes, pretrained weights loaded and stages frozen (models.create_model);
        every method builds its network through it."""
        try:
            return create_model(self.name, num_classes, pretrained=self.pretrained, input_size=self.input_size,
                                crop_pct=self.crop_pct, freeze_stages=self.freeze_stages)
        except PretrainedWeightsError as error:
            raise ConfigError(f"model (name {self.name}, pretrained {self.pretrained}): {error}") from error


@dataclass
class LossConfig:
    name: str = "ce"  # ce | logit_adjusted | balanced_softmax
    tau: float = 1.0  # logit-adjusted temperature


@dataclass
class OptimConfig:
    epochs: int = 200
    lr: float = 0.1  # for batch_size 128; not rescaled automatically
    momentum: float = 0.9
    weight_decay: float = 2e-4
    nesterov: bool = False
    warmup_epochs: float = 5.0
    schedule: str = "step"  # step | cosine
    milestones: list[int] = field(default_factory=lambda: [160, 180])
    gamma: float = 0.1  # step decay factor at every milestone
    # A pretrained backbone's learning rate is optim.lr x this (its new classifier and heads get optim.lr), e.g.
    # 0.1 to fine-tune gently; 1 trains everything alike (training/optim.py).
    backbone_lr_scale: float = 1.0


@dataclass
class GroupConfig:
    rule: str = "count"  # count: many/medium/few by training count; rank: by the count ranking
    many_above: int = 100  # count rule: many = n > many_above
    few_below: int = 20  # count rule: few = n < few_below
    head_fraction: float = 0.3  # rank rule: the largest 30% of classes are head (many)
    tail_fraction: float = 0.3  # rank rule: the smallest 30% are tail (few)


@dataclass
class RunConfig:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "bf16"  # none | bf16 | fp16 (fp16 only on CUDA, with a gradient scaler)
    channels_last: bool = True
    deterministic: bool = False  # torch.use_deterministic_algorithms, for exact resume on GPU
    threads: int = 0  # CPU intra-op threads; 0 keeps torch's default
    eval_test_every: int = 0  # also evaluate the test set every N epochs (logged as test-oracle)
    progress: bool = True  # tqdm bars
    # Several processes (torchrun): BatchNorm statistics over the global batch, as one process computes them.
    # false: each rank normalises with its own part of the batch (per-rank statistics, rank 0's running ones).
    sync_batchnorm: bool = True
    compile: bool = False  # torch.compile the model for training and evaluation (the first steps compile it)


@dataclass
class Config:
    method: str = "erm"  # erm (ce / logit_adjusted / balanced_softmax through `loss`); methods register more
    # A mapping in YAML; after config_from_dict, an instance of the method's `options_class` dataclass.
    method_options: object = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    groups: GroupConfig = field(default_factory=GroupConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_type(value, annotation, where: str):
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        annotation = next(a for a in options if a is not type(None))
        origin = typing.get_origin(annotation)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_type,) = typing.get_args(annotation)
        return [_check_type(item, item_type, f"{where}[]") for item in value]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if not isinstance(value, annotation):
        raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")
    return value


def _unknown_key(key: str, known, where: str):
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{where}{close[0]}'?)" if close else f" (known keys: {', '.join(known)})"
    return ConfigError(f"unknown config key '{where}{key}'{hint}")


def _build(cls, values: dict, where: str = ""):
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise _unknown_key(key, hints, where)
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = _build(annotation, value, f"{where}{key}.")
        else:
            kwargs[key] = _check_type(value, annotation, f"{where}{key}")
    return cls(**kwargs)


def parse_options(cls, values: dict, where: str):
    """A dataclass from a mapping, with the same checks as the main config (`where` prefixes the key names)."""
    return _build(cls, values, where)


def parse_method_options(method: str, values) -> object:
    """`method_options` → the method's typed options (its `options_class`), checked key by key."""
    options_class = method_class(method).options_class
    if isinstance(values, dict) and values and not dataclasses.fields(options_class):
        raise ConfigError(f"method '{method}' takes no method_options (got {sorted(values)})")
    return _build(options_class, values, "method_options.")


def parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value, e.g. optim.lr=0.05")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def _apply_override(tree: dict, path: list[str], value) -> None:
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {'.'.join(path)}: '{part}' is not a section")
    node[path[-1]] = value


def apply_overrides(tree: dict, overrides=()) -> dict:
    """A copy of a config tree with `key=value` overrides applied."""
    tree = copy.deepcopy(tree)
    for override in overrides:
        key_path, value = parse_override(override)
        _apply_override(tree, key_path, value)
    return tree


def read_config_tree(path: str | Path | None = None, overrides=()) -> dict:
    """A YAML config file (or nothing) as a plain tree, with `key=value` overrides applied; not yet checked."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from error
    return apply_overrides(tree, overrides)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    return config_from_dict(read_config_tree(path, overrides))


def config_from_dict(tree: dict) -> Config:
    config = _build(Config, tree)
    config.method_options = parse_method_options(config.method, config.method_options)
    validate(config)
    return config


def validate(config: Config) -> None:
    choices = {
        "data.profile": (config.data.profile, ("exp", "step")),
        "loss.name": (config.loss.name, ("ce", "logit_adjusted", "balanced_softmax")),
        "optim.schedule": (config.optim.schedule, ("step", "cosine")),
        "groups.rule": (config.groups.rule, ("count", "rank")),
        "data.augment_on": (config.data.augment_on, ("auto", "device", "loader")),
    }
    _check_choices(choices)
    if config.data.augment_on == "device" and not config.data.dataset.startswith("cifar"):
        raise ConfigError(f"data.augment_on=device needs an in-memory (CIFAR) dataset; {config.data.dataset} "
                          "decodes its images per item in the loader (use auto or loader)")
    validate_run(config.run)
    if config.data.imbalance_factor < 1:
        raise ConfigError("data.imbalance_factor is n_max / n_min and must be >= 1 (100 means IF 100)")
    for key, value in (("optim.epochs", config.optim.epochs), ("data.batch_size", config.data.batch_size)):
        if value < 1:
            raise ConfigError(f"{key} must be at least 1")
    if config.data.num_workers < 0 or config.data.val_per_class < 0:
        raise ConfigError("data.num_workers and data.val_per_class cannot be negative")
    if config.groups.head_fraction + config.groups.tail_fraction > 1:
        raise ConfigError("groups.head_fraction + groups.tail_fraction must not exceed 1")
    validate_model(config.model)
    if config.optim.backbone_lr_scale < 0:
        raise ConfigError("optim.backbone_lr_scale cannot be negative (0 leaves the pretrained backbone as it is)")


def validate_model(model: ModelConfig) -> None:
    if not has_model(model.name):
        raise ConfigError(f"model.name '{model.name}' is not registered; available: {', '.join(list_models())}, "
                          "or timm:<architecture> for any timm network")
    if model.input_size < 0 or model.freeze_stages < 0 or not 0 <= model.crop_pct <= 1:
        raise ConfigError("model.input_size and model.freeze_stages cannot be negative, and model.crop_pct is a "
                          "fraction in (0, 1] (0: the model's own)")
    try:
        check_source(model.pretrained)
    except PretrainedWeightsError as error:
        raise ConfigError(f"model.pretrained: {error}") from error


def validate_run(run: RunConfig) -> None:
    """The `run` section, which every command shares (the classifier's and the generator's configs alike)."""
    _check_choices({"run.amp": (run.amp, ("none", "bf16", "fp16")),
                    "run.device": (run.device, ("auto", "cpu", "cuda"))})
    if run.device != "auto":  # `auto` is checked once it is resolved (training.engine.AmpStep)
        check_amp(run.amp, run.device)
    if run.threads < 0 or run.eval_test_every < 0:
        raise ConfigError("run.threads and run.eval_test_every cannot be negative")


def check_amp(amp: str, device_type: str) -> None:
    """The one rule on mixed precision and devices: fp16 (with its gradient scaler) needs CUDA."""
    if amp == "fp16" and device_type != "cuda":
        raise ConfigError("run.amp=fp16 needs CUDA; use bf16 on CPU (or none)")


def _check_choices(choices: dict) -> None:
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got '{value}'")
