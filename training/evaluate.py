"""`python -m training evaluate --checkpoint DIR`: rebuild a trained model and print its accuracy table."""

from __future__ import annotations

from pathlib import Path

from training.checkpoint import load_checkpoint, restore_model
from training.config import ConfigError, apply_overrides, config_from_dict
from training.lt_data import build_datasets
from training.methods import build_method
from training.train import evaluate_split, format_metrics_table, resolve_device
from training.transforms import eval_transform


def load_trained(checkpoint, which: str = "best", overrides=()):
    """(config, method, model in eval mode on CPU, checkpoint info) from a run directory or file."""
    tensors, info = load_checkpoint(checkpoint, which)
    config = config_from_dict(apply_overrides(info["config"], overrides))  # e.g. data.root on another machine
    method = build_method(config, info["class_counts"])
    model = method.build_model()
    restore_model(model, tensors, info)
    return config, method, model.eval(), info


def evaluate_checkpoint(checkpoint, which: str = "best", split: str = "test", overrides=()) -> dict:
    config, method, model, info = load_trained(checkpoint, which, overrides)
    device = resolve_device(config.run.device)
    model.to(device)
    bundle = build_datasets(config.data)
    dataset = bundle.test if split == "test" else bundle.val
    if dataset is None:
        raise ConfigError(f"this run has no {split} split (data.val_per_class was 0)")
    result = evaluate_split(method.classifier(model), dataset.with_transform(eval_transform(model.preprocessing)),
                            config, info["class_counts"], device, split)
    rule = info["group_rule"]["rule"]
    print(f"{info['path']} (epoch {info['epoch']}, {split} split, {result['num_samples']} images)")
    kind = "val_selected" if Path(info["path"]).name == "best" else "last_epoch"
    print(format_metrics_table({kind: {"epoch": info["epoch"], "test": result}}, rule))
    other = "rank" if rule == "count" else "count"
    print(f"groups under the {other} rule: " + ", ".join(
        f"{group} {'-' if value is None else f'{value:.2f}'}" for group, value in result["groups"][other].items()))
    print("per class:")
    for name, count, group, accuracy in zip(info["class_names"], info["class_counts"], info["class_groups"],
                                            result["per_class"]):
        shown = "-" if accuracy is None else f"{accuracy:.2f}"
        print(f"  {name:24s} {count:7d} train  {group:7s} {shown:>7s}")
    return result
