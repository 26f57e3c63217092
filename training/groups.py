"""Class groups (many / medium / few) and the one shot-accuracy helper.

Two rules: `count` (the literature's: many n > 100, medium 20 <= n <= 100, few n < 20, thresholds
configurable) and `rank` (head / medium / tail by the count ranking, e.g. 3/4/3 on CIFAR-10-LT, which
has no few-shot class under the count rule). Every model records the rule it uses.
"""

from __future__ import annotations

import numpy as np

from inference.card import GROUPS
from training.config import GroupConfig


def groups_by_count(counts, many_above: int = 100, few_below: int = 20) -> list[str]:
    return ["many" if n > many_above else "few" if n < few_below else "medium" for n in counts]


def groups_by_rank(counts, head_fraction: float = 0.3, tail_fraction: float = 0.3) -> list[str]:
    num_classes = len(counts)
    num_head = int(round(num_classes * head_fraction))
    num_tail = int(round(num_classes * tail_fraction))
    order = np.argsort(-np.asarray(counts), kind="stable")  # largest first; ties keep label order
    groups = ["medium"] * num_classes
    for rank, class_index in enumerate(order):
        if rank < num_head:
            groups[class_index] = "many"
        elif rank >= num_classes - num_tail:
            groups[class_index] = "few"
    return groups


def rule_description(config: GroupConfig) -> dict:
    if config.rule == "count":
        return {"rule": "count", "many_above": config.many_above, "few_below": config.few_below}
    return {"rule": "rank", "head_fraction": config.head_fraction, "tail_fraction": config.tail_fraction}


def class_groups(counts, config: GroupConfig, rule: str | None = None) -> list[str]:
    if (rule or config.rule) == "count":
        return groups_by_count(counts, config.many_above, config.few_below)
    return groups_by_rank(counts, config.head_fraction, config.tail_fraction)


def per_class_accuracy(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Percent correct per class; NaN for a class absent from the evaluated labels."""
    correct = np.bincount(labels[predictions == labels], minlength=num_classes)
    total = np.bincount(labels, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 100.0 * correct / np.maximum(total, 1), np.nan)


def shot_accuracy(predictions, labels, train_counts, config: GroupConfig) -> dict:
    """Overall accuracy, per-class accuracy and the mean per-class accuracy of each group, under both rules.

    Group accuracy is the mean of the per-class accuracies in the group (equal to the sample accuracy on a
    balanced test set); a group without classes is None.
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    per_class = per_class_accuracy(predictions, labels, len(train_counts))
    result = {
        "overall": float(100.0 * np.mean(predictions == labels)) if len(labels) else float("nan"),
        "num_samples": int(len(labels)),
        "groups": {},
        "per_class": [None if np.isnan(a) else round(float(a), 4) for a in per_class],
    }
    for rule in ("count", "rank"):
        groups = np.array(class_groups(train_counts, config, rule))
        result["groups"][rule] = {}
        for group in GROUPS:
            values = per_class[(groups == group) & ~np.isnan(per_class)]
            result["groups"][rule][group] = float(values.mean()) if len(values) else None
    return result
