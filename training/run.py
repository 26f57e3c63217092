"""What every command does before and around its work, so each `run.*` key means the same everywhere: train, DLSA
fitting, generator training, feature extraction, evaluate, export and synthesize all start with `start_run`.

    device = start_run(config.run)              # threads, determinism, device, seeds
    config = resume_config(output_dir, ...)     # a saved run's config; only RESUMABLE_OVERRIDES may change
    card = describe_training(config, bundle, model)
    print(format_metrics_table(metrics, config.groups.rule))
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from inference.card import GROUPS, ModelCard, evaluation_columns, group_accuracy, group_name
from training.checkpoint import git_revision
from training.config import Config, ConfigError, RunConfig, apply_overrides, config_from_dict, read_config_tree
from training.data.transforms import served_preprocessing
from training.groups import class_groups, rule_description
from training.run_dir import RunDir

# Settings that may change when a run resumes (on another machine, say); all others must stay as saved.
RESUMABLE_OVERRIDES = ("data.root", "data.num_workers", "run.threads", "run.progress", "run.device", "run.compile")


def start_run(run: RunConfig) -> torch.device:
    """Apply a run's settings (CPU threads, deterministic algorithms, the seed) and return its device."""
    if run.threads:
        torch.set_num_threads(run.threads)
    if run.deterministic:
        torch.use_deterministic_algorithms(True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
    device = resolve_device(run.device)
    seed_epoch(run.seed, -1)
    return device


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device=cuda but no CUDA device is available")
    return torch.device(name)


def seed_epoch(seed: int, epoch: int) -> int:
    """Reseed every RNG at each epoch start, so a resumed run replays exactly what it would have done."""
    epoch_seed = seed * 100_003 + epoch
    random.seed(epoch_seed)
    np.random.seed(epoch_seed % 2**32)
    torch.manual_seed(epoch_seed)
    return epoch_seed


# ---------------------------------------------------------------------------------------------------- resume


def resume_config(output_dir: str | Path, config_path: str | None = None, overrides=(), build=config_from_dict):
    """The saved config of a run (its config.yaml). Re-running the original command with --resume is fine;
    anything that would change the run other than RESUMABLE_OVERRIDES (paths, workers, threads, device) is an
    error. `build` turns a tree into a checked config (the generator trainer passes its own)."""
    saved_tree, given_tree = RunDir(output_dir).config_tree(), None
    if config_path:
        given_tree = read_config_tree(config_path, overrides)
    if build is config_from_dict and "augment_on" not in saved_tree.get("data", {}):
        # A run saved before data.augment_on existed augmented in the loader: it goes on doing so, whatever the
        # default is now, unless the given config says otherwise (and is then refused as a change).
        saved_tree = apply_overrides(saved_tree, ["data.augment_on=loader"])
        if given_tree is not None and "augment_on" not in given_tree.get("data", {}):
            given_tree = apply_overrides(given_tree, ["data.augment_on=loader"])
    saved = build(saved_tree).to_dict()
    given = build(given_tree if given_tree is not None else apply_overrides(saved, overrides))
    check_unchanged(given, saved, output_dir)
    given_flat = _flatten(given.to_dict())
    allowed = [f"{key}={json.dumps(given_flat[key])}" for key in RESUMABLE_OVERRIDES if key in given_flat]
    return build(apply_overrides(saved, allowed))


def check_unchanged(given, saved: dict, output_dir: str | Path) -> None:
    """A resumed run may change only RESUMABLE_OVERRIDES relative to the config tree it saved."""
    given_flat, saved_flat = _flatten(given.to_dict()), _flatten(saved)
    differing = sorted(k for k in given_flat if given_flat[k] != saved_flat.get(k) and k not in RESUMABLE_OVERRIDES)
    if differing:
        raise ConfigError(f"--resume continues the run saved in {output_dir}, but the given config differs from it in "
                          f"{', '.join(differing)}; only {', '.join(RESUMABLE_OVERRIDES)} may change")


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "method_options":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# ---------------------------------------------------------------------------------------------- what it learnt


def describe_training(config: Config, bundle, model) -> ModelCard:
    """The model card of a run: the data it learns from, its groups and preprocessing, its provenance. Every
    checkpoint stores it (`ModelCard.to_checkpoint_info`) and the export writes it into the ONNX file."""
    counts = bundle.train_counts
    return ModelCard(
        class_names=bundle.class_names, class_counts=counts, class_groups=class_groups(counts, config.groups),
        group_rule=rule_description(config.groups), preprocessing=served_preprocessing(model.preprocessing, bundle),
        model_name=config.model.name, method=config.method if config.method != "erm" else config.loss.name,
        dataset=config.data.dataset, imbalance_factor=config.data.imbalance_factor, config=config.to_dict(),
        git_revision=git_revision())


# -------------------------------------------------------------------------------------------------- tables


def _percent(value) -> str:
    return "   -  " if value is None else f"{value:6.2f}"


def format_metrics_table(metrics: dict, rule: str) -> str:
    """Test accuracy of every evaluation in `metrics` (last epoch, val-selected, oracle), overall and per group."""
    header = f"{'':32s}{'overall':>8s}" + "".join(f"{group_name(g):>8s}" for g in GROUPS)
    lines = [header + f"   (groups: {rule} rule)"]
    for label, epoch, evaluation in evaluation_columns(metrics, splits=("test",)):
        lines.append(f"{label + ' (epoch ' + str(epoch) + ')':32s}{_percent(evaluation['overall']):>8s}"
                     + "".join(f"{_percent(group_accuracy(evaluation, rule, g)):>8s}" for g in GROUPS))
    return "\n".join(lines)


def format_epoch_line(record: dict, epochs: int) -> str:
    train = record["train"]
    line = (f"epoch {record['epoch']}/{epochs}  loss {train['loss']:.4f}  lr {train['lr']:.4f}  "
            f"{train['images_per_second']:.0f} img/s")
    if "val" in record:
        line += f"  val {record['val']['overall']:.2f}"
    if "test_oracle" in record:
        line += f"  test {record['test_oracle']['overall']:.2f}"
    return line
