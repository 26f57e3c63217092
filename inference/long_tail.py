"""The long-tail pictures of a classifier, computed from its test-set logits: what post-hoc logit adjustment (τ)
does to head and tail, accuracy per class against its training count, which classes absorb which, and how well
calibrated each group is.

    adjusted = adjust_logits(logits, log_prior(card.class_counts), tau=1.0)
    curve = tau_curve(logits, labels, card.class_counts, card.class_groups)     # ModelCard.tau_curve
    report = long_tail_report(logits, labels, card.class_groups)                # ModelCard.long_tail

Post-hoc logit adjustment (Menon et al. 2021, the test-time form of the loss in docs/methods.md §4.6): the logits
minus τ·log π, π the training class counts normalised. τ = 0 is the model as trained, τ > 0 moves predictions
towards the tail, τ < 0 back towards the head (a model trained with the adjustment built into its loss is
over-corrected at τ = 1).

Conventions, as the rest of the card: accuracies and ECE in percent. A group's accuracy is the mean of its classes'
accuracies (training/groups.py `shot_accuracy`); its calibration is over the test images whose true class is in it.
Groups are keyed by their display names (head / medium / tail), as the app shows them. Only numpy, so serving and
training both import it.
"""

from __future__ import annotations

import numpy as np

from inference.card import GROUPS, group_name

TAU_GRID = tuple(float(t) for t in np.arange(-1.0, 2.0 + 1e-9, 0.25))  # −1 … 2 in steps of 0.25, 13 points
CALIBRATION_BINS = 15  # equal-width confidence bins, as Guo et al. 2017 use for ECE


class PriorUnavailableError(ValueError):
    """τ ≠ 0 asked of a model whose training counts are unknown (or zero for some class)."""


def log_prior(class_counts) -> np.ndarray:
    """log π, π the training class counts normalised; PriorUnavailableError when a class has no count."""
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.size == 0 or np.any(counts <= 0):
        raise PriorUnavailableError("τ (post-hoc logit adjustment) needs every class's training count, and this "
                                    "model does not have them; use τ = 0")
    return np.log(counts / counts.sum())


def adjust_logits(logits: np.ndarray, prior_log: np.ndarray | None, tau: float) -> np.ndarray:
    """logits − τ·log π in float64; the logits themselves (as float64) at τ = 0, whatever the prior."""
    logits = np.asarray(logits, dtype=np.float64)
    if tau == 0:
        return logits
    if prior_log is None:
        raise PriorUnavailableError("τ (post-hoc logit adjustment) needs the training class counts, and this model "
                                    "does not have them; use τ = 0")
    return logits - tau * prior_log


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------------ the figures


def class_accuracy(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Percent correct per class; NaN for a class absent from the labels."""
    correct = np.bincount(labels[predictions == labels], minlength=num_classes)
    total = np.bincount(labels, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 100.0 * correct / np.maximum(total, 1), np.nan)


def group_accuracies(per_class: np.ndarray, class_groups) -> dict[str, float | None]:
    """Mean class accuracy per group (display names); None for a group without classes in the test set."""
    groups = np.asarray(class_groups)
    result = {}
    for group in GROUPS:
        values = per_class[(groups == group) & ~np.isnan(per_class)]
        result[group_name(group)] = round(float(values.mean()), 4) if len(values) else None
    return result


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """ECE (percent) and the reliability diagram of these images: `bins` equal-width bins of top-class confidence
    ([0, 1/bins), …, [1 − 1/bins, 1]), each with its mean confidence and accuracy (percent) and its image count.
    An empty bin is kept, count 0, with its centre as confidence and accuracy 0; ECE is None without images.

    ECE = Σ_bins (images in bin / images) · |accuracy − confidence| (Guo et al. 2017)."""
    confidence = probabilities.max(axis=1) if len(probabilities) else np.zeros(0)
    correct = probabilities.argmax(axis=1) == labels if len(probabilities) else np.zeros(0, dtype=bool)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    entries, gap = [], 0.0
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        if count:
            mean_confidence, accuracy = float(confidence[inside].mean()), float(correct[inside].mean())
            gap += count * abs(accuracy - mean_confidence)
        else:
            mean_confidence, accuracy = (b + 0.5) / bins, 0.0
        entries.append({"confidence": round(100 * mean_confidence, 4), "accuracy": round(100 * accuracy, 4),
                        "count": count})
    ece = round(100 * gap / len(labels), 4) if len(labels) else None
    return {"ece": ece, "bins": entries}


def group_members(labels: np.ndarray, class_groups) -> dict[str, np.ndarray]:
    """Per group (display names): which test images have a true class in it."""
    groups_of_labels = np.asarray(class_groups)[labels]
    return {group_name(group): groups_of_labels == group for group in GROUPS}


def tau_point_at(logits: np.ndarray, labels: np.ndarray, prior_log: np.ndarray, class_groups, tau: float) -> dict:
    """One entry of the τ curve: overall and group accuracy, overall and group ECE, after adjusting by τ."""
    probabilities = softmax(adjust_logits(logits, prior_log, tau))
    predictions = probabilities.argmax(axis=1)
    per_class = class_accuracy(predictions, labels, len(class_groups))
    members = group_members(labels, class_groups)
    return {"tau": float(tau), "overall": round(float(100.0 * np.mean(predictions == labels)), 4),
            "groups": group_accuracies(per_class, class_groups),
            "ece": reliability(probabilities, labels)["ece"],
            "group_ece": {group: reliability(probabilities[inside], labels[inside])["ece"]
                          for group, inside in members.items()}}


def tau_curve(logits, labels, class_counts, class_groups, grid=TAU_GRID) -> list[dict]:
    """The τ curve (ModelCard.tau_curve): one `tau_point_at` per τ of the grid."""
    logits, labels = _checked(logits, labels, class_groups)
    prior_log = log_prior(class_counts)
    return [tau_point_at(logits, labels, prior_log, class_groups, tau) for tau in grid]


def long_tail_report(logits, labels, class_groups) -> dict:
    """ModelCard.long_tail, of the model as trained (τ = 0): accuracy per class (percent, None for a class absent
    from the test set), the confusion matrix (rows = true class, columns = predicted) and calibration per group."""
    logits, labels = _checked(logits, labels, class_groups)
    num_classes = len(class_groups)
    probabilities = softmax(logits)
    predictions = probabilities.argmax(axis=1)
    per_class = class_accuracy(predictions, labels, num_classes)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    return {"class_accuracy": [None if np.isnan(a) else round(float(a), 4) for a in per_class],
            "confusion": confusion.tolist(),
            "calibration": {group: reliability(probabilities[inside], labels[inside])
                            for group, inside in group_members(labels, class_groups).items()}}


def _checked(logits, labels, class_groups) -> tuple[np.ndarray, np.ndarray]:
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or logits.shape[1] != len(class_groups) or len(labels) != len(logits):
        raise ValueError(f"logits of shape {logits.shape} and {len(labels)} labels do not fit {len(class_groups)} "
                         "classes: expected (images, classes) logits and one label per image")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_groups)):
        raise ValueError(f"labels must be class indices from 0 to {len(class_groups) - 1}")
    return logits, labels
