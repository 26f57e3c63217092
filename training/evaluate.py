"""`python -m training evaluate --checkpoint DIR`: rebuild a trained model and print its accuracy table."""

from __future__ import annotations

from inference.card import group_name
from training.config import ConfigError
from training.data.lt_data import build_datasets
from training.data.transforms import eval_transform
from training.engine import evaluate
from training.run import format_metrics_table, start_run
from training.trained import load_trained


def evaluate_checkpoint(checkpoint, which: str = "best", split: str = "test", overrides=()) -> dict:
    trained = load_trained(checkpoint, which, overrides)
    config, model, info = trained.config, trained.model, trained.info
    device = start_run(config.run)
    model.to(device)
    bundle = build_datasets(config.data)
    dataset = bundle.test if split == "test" else bundle.val
    if dataset is None:
        raise ConfigError(f"this run has no {split} split (data.val_per_class was 0)")
    result = evaluate(trained.classifier, dataset.with_transform(eval_transform(model.preprocessing)), config,
                      info["class_counts"], device, split)
    rule = info["group_rule"]["rule"]
    print(f"{info['path']} (epoch {info['epoch']}, {split} split, {result['num_samples']} images)")
    kind = "val_selected" if trained.is_val_selected else "last_epoch"
    print(format_metrics_table({kind: {"epoch": info["epoch"], "test": result}}, rule))
    other = "rank" if rule == "count" else "count"
    print(f"groups under the {other} rule: " + ", ".join(
        f"{group_name(group)} {'-' if value is None else f'{value:.2f}'}"
        for group, value in result["groups"][other].items()))
    print("per class:")
    for name, count, group, accuracy in zip(info["class_names"], info["class_counts"], info["class_groups"],
                                            result["per_class"]):
        shown = "-" if accuracy is None else f"{accuracy:.2f}"
        print(f"  {name:24s} {count:7d} train  {group_name(group):7s} {shown:>7s}")
    return result
