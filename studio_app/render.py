"""What the app shows, as HTML and Markdown: captions, group badges and bars, the training histogram, the
accuracy table, the card summary and the generation report. Plain functions of the data, unit-tested.

Groups are stored as many / medium / few and shown through `inference.card.group_name` (head / medium /
tail); only their colours are defined here.
"""

from __future__ import annotations

import html
from pathlib import Path

from inference.card import GROUPS, ModelCard, evaluation_columns, group_accuracy, group_name, group_rule_text, quantization_text
from inference.classifier import ClassScore, OnnxClassifier, Prediction, describe
from inference.service import ClassChoice, Generation

# Okabe-Ito colours: distinguishable with the common forms of colour blindness.
GROUP_COLOURS = {"many": "#0072B2", "medium": "#E69F00", "few": "#CC79A7"}
UNKNOWN_COLOUR = "#999999"

INTRO = (
    "# LongTail Studio\nClassify images with a model trained on long-tailed data. Each prediction "
    "says whether the class was a **head** (many training images), **medium** or **tail** "
    "(few training images) class, because accuracy on tail classes is usually much lower. "
    "**Generate** makes synthetic images of a class, to top up its tail."
)


# --- Bars: one row per class, shared by the class bars and the histogram ---------------------------


def group_legend_html() -> str:
    items = "".join(
        f'<span style="margin-right:1em"><span style="display:inline-block;width:0.8em;height:0.8em;'
        f'background:{GROUP_COLOURS[group]};margin-right:0.3em"></span>{group_name(group)}</span>'
        for group in GROUPS
    )
    return f'<div class="lt-legend" style="margin:0.3em 0 0.6em">{items}</div>'


def _bar_row(name: str, fraction: float, colour: str, value_text: str, extra_text: str, tooltip: str) -> str:
    width = max(0.0, min(1.0, fraction)) * 100
    return (
        f'<div class="lt-row" title="{html.escape(tooltip)}" style="display:grid;'
        'grid-template-columns:minmax(6em,10em) 1fr 4.5em 7em;gap:0.5em;align-items:center;margin:2px 0">'
        f'<span style="overflow:hidden;text-overflow:ellipsis;white-space:nowrap">{html.escape(name)}</span>'
        '<span style="background:rgba(128,128,128,0.15);height:0.9em;border-radius:2px">'
        f'<span style="display:block;height:100%;width:{width:.2f}%;background:{colour};border-radius:2px"></span></span>'
        f'<span style="text-align:right;font-variant-numeric:tabular-nums">{value_text}</span>'
        f'<span style="opacity:0.75;font-variant-numeric:tabular-nums">{extra_text}</span>'
        "</div>"
    )


def _scroll_box(rows: str) -> str:
    return f'<div style="max-height:28em;overflow-y:auto">{rows}</div>'


def class_bars_html(scores: list[ClassScore]) -> str:
    """Every class in class order: probability bar coloured by head/medium/tail, training count."""
    rows = []
    for score in scores:
        colour = GROUP_COLOURS.get(score.group, UNKNOWN_COLOUR)
        count = "count unknown" if score.train_count is None else f"{score.train_count:,} train"
        group = "group unknown" if score.group is None else f"{group_name(score.group)} class"
        rows.append(
            _bar_row(score.name, score.probability, colour, f"{score.probability:.1%}", count, f"{score.name}: {group}")
        )
    return group_legend_html() + _scroll_box("".join(rows))


def histogram_html(card: ModelCard) -> str:
    """Training images per class, most frequent first, coloured by group."""
    if card.group_rule.get("rule") == "unknown":
        return "<p>This model has no training statistics.</p>"
    largest = max(card.class_counts, default=0) or 1
    order = sorted(range(card.num_classes), key=lambda i: (-card.class_counts[i], i))
    rows = "".join(
        _bar_row(
            card.class_names[i],
            card.class_counts[i] / largest,
            GROUP_COLOURS[card.class_groups[i]],
            f"{card.class_counts[i]:,}",
            f"{group_name(card.class_groups[i])}",
            f"{card.class_names[i]}: {card.class_counts[i]:,} training images, {group_name(card.class_groups[i])} class",
        )
        for i in order
    )
    return group_legend_html() + _scroll_box(rows)


# --- The model card ---------------------------------------------------------------------------------


def _percent(value) -> str:
    return "–" if value is None else f"{value:.1f}%"


def _metric_rows(card: ModelCard, columns: list[tuple[str, dict]]) -> list[tuple[str, list]]:
    """Overall, then every group under every grouping rule the evaluations used, the card's own rule first."""
    primary = card.group_rule.get("rule")
    rules = sorted(
        {rule for _, evaluation in columns for rule in (evaluation.get("groups") or {})},
        key=lambda rule: (rule != primary, rule),
    )
    rows = [("Overall", [evaluation.get("overall") for _, evaluation in columns])]
    for rule in rules:
        for group in GROUPS:
            label = f"{group_name(group)} classes (by {rule}{', primary' if rule == primary else ''})"
            rows.append((label, [group_accuracy(evaluation, rule, group) for _, evaluation in columns]))
    return rows


def _metrics_note(card: ModelCard) -> str:
    note = (
        "Top-1 accuracy. <em>Last epoch</em> is the final checkpoint; <em>val-selected</em> is the epoch "
        "chosen on the validation set."
    )
    if ((card.metrics or {}).get("test_oracle_best") or {}).get("test"):
        note += (
            " <em>Test-selected</em> is the epoch with the best test accuracy, as many papers report it; "
            "it is optimistic, not a fair estimate."
        )
    return f"<p style='opacity:0.75'>{note}</p>"


def metrics_html(card: ModelCard) -> str:
    """Accuracy overall and per group, last epoch next to the epoch chosen on validation
    (and the test-selected "oracle" epoch when the card has it, labelled as such)."""
    columns = [(f"{label[0].upper()}{label[1:]} (epoch {epoch})", evaluation)
               for label, epoch, evaluation in evaluation_columns(card.metrics)]
    if not columns:
        return "<p>No evaluation results in this model card.</p>"
    head = "".join(f"<th style='text-align:right;padding:0 0.8em'>{html.escape(h)}</th>" for h, _ in columns)
    body = "".join(
        f"<tr><td style='padding:0 0.8em'>{html.escape(label)}</td>"
        + "".join(f"<td style='text-align:right;padding:0 0.8em'>{_percent(v)}</td>" for v in values)
        + "</tr>"
        for label, values in _metric_rows(card, columns)
    )
    return f"<table><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>{_metrics_note(card)}"


def card_markdown(card: ModelCard, classifier: OnnxClassifier) -> str:
    pre = card.preprocessing
    imbalance = "–" if card.imbalance_factor is None else f"{card.imbalance_factor:g}"
    rows = [
        ("Method", card.method),
        ("Dataset", card.dataset),
        ("Imbalance factor", imbalance),
        ("Model", card.model_name),
        ("Git revision", f"`{card.git_revision}`" if card.git_revision else ""),
        ("Weights", f"{card.checkpoint.get('which')} checkpoint, epoch {card.checkpoint.get('epoch')}"
         if card.checkpoint else ""),
        ("Classes", str(card.num_classes)),
        ("Input", f"{pre.interpolation} resize to {pre.resize_to}, centre crop {pre.input_size[1]}×{pre.input_size[2]}"),
        ("Runs on", classifier.provider),
        ("Precision", quantization_text(card) or "float32"),
    ]
    fields = "\n".join(f"- **{key}:** {value or '–'}" for key, value in rows)
    return f"### {classifier.path.name}\n\n{fields}\n\n{group_rule_text(card)}"


def no_models_message(models_dir: Path) -> str:
    return (
        f"**No models found.** There are no `.onnx` files in `{models_dir}`. Export one with "
        "`python -m training export` into that folder, or point `LONGTAIL_MODELS_DIR` at a folder of exported models."
    )


def hub_problem_message(problem: str) -> str:
    return f"**A Hub model could not be loaded:** {problem}"


# --- Classification ---------------------------------------------------------------------------------


WARNING_MARK = "⚠ see the warning"  # on the caption of a prediction that may mean little; the text is below


def caption(prediction: Prediction) -> str:
    best = prediction.top[0]
    text = f"{describe(best)} · {best.probability:.2f}"
    return text if prediction.warning is None else f"{text} · {WARNING_MARK}"


def prediction_markdown(image_name: str, prediction: Prediction) -> str:
    best = prediction.top[0]
    name, _, details = describe(best).partition(" · ")
    text = f"**{name}** · {details}  \nprobability {best.probability:.2f} for `{image_name}`"
    return text if prediction.warning is None else f"{text}\n\n⚠ {prediction.warning}"


def unreadable_files_markdown(problems: list[str], total: int) -> str:
    """The files of an upload that could not be read, with the reason for each; empty when all were read."""
    if not problems:
        return ""
    return f"**Could not read {len(problems)} of {total} files:**\n\n" + "\n".join(f"- {p}" for p in problems)


# --- Generation -------------------------------------------------------------------------------------


def class_choice_label(choice: ClassChoice) -> str:
    """The class picker's entry, e.g. "frog · tail · 232 training images"."""
    if choice.group is None:
        return choice.name
    noun = "image" if choice.train_count == 1 else "images"
    return f"{choice.name} · {group_name(choice.group)} · {choice.train_count:,} training {noun}"


def generated_caption(generation: Generation, index: int) -> str:
    recognition = generation.recognitions[index]
    text = recognition.caption()
    if not recognition.matches and recognition.intended_probability is not None:
        text += f" ({generation.settings['class_name']} {recognition.intended_probability:.2f})"
    return text


def generation_summary(generation: Generation) -> str:
    settings = generation.settings
    wanted = settings["class_name"]
    recognised = sum(r.matches for r in generation.recognitions)
    if all(r.intended_probability is None for r in generation.recognitions):
        verdict = f"`{settings['model']}` does not know the class {wanted}, so it cannot judge these images."
    else:
        verdict = (f"**{recognised} of {len(generation.images)}** recognised as {wanted} by `{settings['model']}`: "
                   "those are the samples most likely to help as extra tail data.")
    images = "1 image" if settings["count"] == 1 else f"{settings['count']} images"
    return (f"{verdict}  \n{images}, seed {settings['seed']}, {settings['steps']} steps, "
            f"guidance {settings['guidance']:g}, generator `{settings['generator'].get('model_id')}`.")


def generator_status_markdown(status: dict, project_dir: Path | None = None) -> str:
    """The Generate tab's note from `GeneratorService.describe()`; a source inside `project_dir` is shown
    relative to it (the shipped generator reads `model_zoo/cifar10_lt_generator`, not a machine's path)."""
    if not status["available"]:
        return (f"**Generation is not available:** {status['error']}. Set `LONGTAIL_GENERATOR` to a generator "
                "folder, an hf:// reference or a text-to-image model id (see README).")
    source = Path(status["source"])
    inside = project_dir is not None and source.is_absolute() and source.is_relative_to(project_dir)
    shown = source.relative_to(project_dir) if inside else source
    return (f"Generator: `{shown}`. Each image is classified by the model picked above: "
            "*recognised as frog · 0.82* means the model takes it for a frog with probability 0.82.")
