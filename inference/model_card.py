"""The model card as text: the group rule in words, and a Markdown document for a model's README.

    python -m inference card --model model_zoo/cifar10_lt_ce_resnet32.onnx > model_zoo/cifar10_lt_ce_resnet32.md
"""

from __future__ import annotations

from inference.metadata import GROUP_DISPLAY, GROUPS, ModelCard


def group_rule_text(card: ModelCard) -> str:
    """How the classes were split into head/medium/tail, in words, with the class count per group."""
    rule = dict(card.group_rule)
    kind = rule.pop("rule", None)
    if kind == "unknown":
        return "This model has no LongTail Studio metadata, so its training counts and groups are unknown."
    if kind == "count" and {"many_above", "few_below"} <= rule.keys():
        text = (
            f"Groups by training images per class: head (many-shot) = more than {rule.pop('many_above')}, "
            f"tail (few-shot) = fewer than {rule.pop('few_below')}, medium = the rest."
        )
    elif kind == "rank" and {"head_fraction", "tail_fraction"} <= rule.keys():
        text = (
            f"Groups by rank of training count: head = the {rule.pop('head_fraction'):.0%} of classes with the "
            f"most training images, tail = the {rule.pop('tail_fraction'):.0%} with the fewest, medium = the rest."
        )
    else:
        text = f"Groups by rule {kind!r}."
    if rule:
        text += " Parameters: " + ", ".join(f"{key} = {value}" for key, value in rule.items()) + "."
    sizes = ", ".join(f"{GROUP_DISPLAY[g]}: {card.class_groups.count(g)}" for g in GROUPS)
    return f"{text} Classes per group: {sizes}."


# (key in the metrics dict, split, label): the evaluations a run records, in display order.
EVALUATIONS = (
    ("last_epoch", "test", "last epoch"),
    ("val_selected", "test", "val-selected"),
    ("val_selected", "val", "val-selected, on validation"),
    ("test_oracle_best", "test", "test-selected, oracle"),
)


def evaluation_columns(metrics: dict, splits=("test", "val")) -> list[tuple[str, object, dict]]:
    """(label, epoch, evaluation) for every evaluation present in `metrics` on the given splits."""
    columns = []
    for key, split, label in EVALUATIONS:
        entry = (metrics or {}).get(key) or {}
        if split in splits and entry.get(split):
            columns.append((label, entry.get("epoch", "?"), entry[split]))
    return columns


def group_accuracy(evaluation: dict, rule: str, group: str):
    return ((evaluation.get("groups") or {}).get(rule) or {}).get(group)


def _percent(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def markdown_document(card: ModelCard, title: str) -> str:
    """Everything in the card, for people: data, groups, accuracy (last vs val-selected), provenance."""
    pre = card.preprocessing
    weights = card.checkpoint
    lines = [
        f"# {title}", "",
        f"- **Weights:** {weights.get('which', '?')} checkpoint, epoch {weights.get('epoch', '?')}  " if weights
        else "- **Weights:** not recorded  ",
        f"- **Method:** {card.method}  ",
        f"- **Model:** {card.model_name}  ",
        f"- **Dataset:** {card.dataset}, imbalance factor {card.imbalance_factor:g}  " if card.imbalance_factor
        else f"- **Dataset:** {card.dataset}  ",
        f"- **Input:** {pre.interpolation} resize to {pre.resize_to}, centre crop {pre.input_size[1]}x"
        f"{pre.input_size[2]}, mean {pre.mean}, std {pre.std}  ",
        f"- **Git revision:** `{card.git_revision}`", "",
        "## Training data", "", group_rule_text(card), "",
        "| class | training images | group |", "|---|---:|---|",
    ]
    lines += [f"| {name} | {count} | {GROUP_DISPLAY[group]} |"
              for name, count, group in zip(card.class_names, card.class_counts, card.class_groups)]
    rule = card.group_rule.get("rule", "count")
    columns = evaluation_columns(card.metrics, splits=("test",))
    if columns:
        lines += ["", "## Test accuracy (%)", "",
                  "| checkpoint | epoch | overall | " + " | ".join(GROUP_DISPLAY[g] for g in GROUPS) + " |",
                  "|---|---:|---:|" + "---:|" * len(GROUPS)]
        for label, epoch, evaluation in columns:
            lines.append(f"| {label} | {epoch} | {_percent(evaluation.get('overall'))} | "
                         + " | ".join(_percent(group_accuracy(evaluation, rule, g)) for g in GROUPS) + " |")
        lines += ["", f"Groups by the {rule} rule. The val-selected checkpoint was chosen on a held-out validation "
                  "split; the oracle row picks the best test epoch, as the papers do, and is not a fair estimate."]
    return "\n".join(lines) + "\n"
