"""What the app shows, as HTML and Markdown: result cards, group badges and bars, the training histogram, the
accuracy table, the model menu's labels, the card summary in plain words and the generation report. Plain
functions of the data, unit-tested; the charts (SVG) are in charts.py.

Groups are stored as many / medium / few and shown through `inference.card.group_name` (head / medium /
tail); only their colours are defined here. Everything is laid out to fit a 390 px phone: bars sit under their
labels instead of beside them, grids wrap, tables scroll inside themselves.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from PIL import Image

from inference.card import GROUPS, ModelCard, evaluation_columns, group_accuracy, group_name, group_rule_text, quantization_text
from inference.classifier import ClassScore, OnnxClassifier, Prediction, describe
from inference.service import ClassChoice, Generation

# Okabe-Ito colours: distinguishable with the common forms of colour blindness.
GROUP_COLOURS = {"many": "#0072B2", "medium": "#E69F00", "few": "#CC79A7"}
UNKNOWN_COLOUR = "#999999"

INTRO = (
    "# LongTail Studio\nA model trained on **long-tailed** data has seen some classes thousands of times "
    "(**head**) and some only a few dozen times (**tail**), and it is usually much worse on the tail. Each "
    "prediction here says which group its class is in; the **τ** slider trades head accuracy for tail accuracy "
    "live; **Generate** makes synthetic images of a tail class."
)

# The names a visitor reads, for the identifiers a card stores.
METHOD_NAMES = {"ce": "Cross-entropy", "erm": "Cross-entropy", "logit_adjusted": "Logit-adjusted CE",
                "concutmix": "ConCutMix", "dlsa": "DLSA", "sau": "SAU"}
METHOD_MEANINGS = {
    "ce": "plain cross-entropy: no long-tail correction, the baseline",
    "erm": "plain cross-entropy: no long-tail correction, the baseline",
    "logit_adjusted": "cross-entropy with the training class frequencies added to the logits, so rare classes "
                      "are not out-voted",
    "concutmix": "mixes patches of images of different classes, with labels corrected by feature similarity, "
                 "so tail classes get more varied training images",
    "dlsa": "re-balances the frozen features of a trained model with a flow model, then refits the classifier",
    "sau": "synthesises tail samples during training",
}
MODEL_NAMES = {"resnet32": "ResNet-32", "resnet50": "ResNet-50", "resnet18": "ResNet-18",
               "efficientnet_lite0": "EfficientNet-Lite0"}
DATASET_NAMES = {"cifar10_lt": "CIFAR-10-LT", "cifar100_lt": "CIFAR-100-LT", "imagenet_lt": "ImageNet-LT"}


def _plain(names: dict, key: str) -> str:
    return names.get(key, key.replace("_", " ")) if key else "–"


# --- Bars: one row per class, shared by the top classes and the histogram ---------------------------


def group_legend_html() -> str:
    items = "".join(
        f'<span style="margin-right:1em;white-space:nowrap"><span style="display:inline-block;width:0.8em;'
        f'height:0.8em;background:{GROUP_COLOURS[group]};margin-right:0.3em"></span>{group_name(group)}</span>'
        for group in GROUPS
    )
    return f'<div class="lt-legend" style="margin:0.3em 0 0.6em">{items}</div>'


def _bar_row(name: str, fraction: float, colour: str, value_text: str, extra_text: str, tooltip: str) -> str:
    """Name and value on one line, the bar under them at full width: nothing shrinks to 0 px on a phone."""
    width = max(0.0, min(1.0, fraction)) * 100
    return (
        f'<div class="lt-row" title="{html.escape(tooltip)}" style="margin:0 0 0.45em">'
        '<div style="display:flex;justify-content:space-between;gap:0.5em;font-size:0.92em">'
        f'<span style="overflow:hidden;text-overflow:ellipsis;white-space:nowrap"><b>{html.escape(name)}</b> '
        f'<span style="opacity:0.75">{html.escape(extra_text)}</span></span>'
        f'<span style="font-variant-numeric:tabular-nums;white-space:nowrap">{value_text}</span></div>'
        '<div class="lt-bar" style="background:rgba(128,128,128,0.18);height:0.7em;border-radius:2px">'
        f'<div class="lt-fill" style="height:100%;width:{width:.2f}%;min-width:3px;background:{colour};'
        'border-radius:2px"></div></div></div>'
    )


def _scroll_box(rows: str) -> str:
    return f'<div style="max-height:30em;overflow-y:auto">{rows}</div>'


def group_text(group: str | None) -> str:
    return "group unknown" if group is None else f"{group_name(group)} class"


def count_text(count: int | None) -> str:
    if count is None:
        return "count unknown"
    return f"{count:,} training image{'' if count == 1 else 's'}"


def top_classes_html(scores: list[ClassScore]) -> str:
    """The given classes, most probable first: probability bar in the group's colour, group and training count."""
    rows = []
    for score in sorted(scores, key=lambda s: -s.probability):
        colour = GROUP_COLOURS.get(score.group, UNKNOWN_COLOUR)
        extra = f"{group_text(score.group)} · {count_text(score.train_count)}"
        rows.append(_bar_row(score.name, score.probability, colour, f"{score.probability:.1%}", extra,
                             f"{score.name}: {extra}"))
    return group_legend_html() + _scroll_box("".join(rows))


def histogram_html(card: ModelCard) -> str:
    """Training images per class, most frequent first, coloured by group."""
    if card.group_rule.get("rule") == "unknown":
        return "<p>This model has no training statistics.</p>"
    largest = max(card.class_counts, default=0) or 1
    order = sorted(range(card.num_classes), key=lambda i: (-card.class_counts[i], i))
    rows = "".join(
        _bar_row(card.class_names[i], card.class_counts[i] / largest, GROUP_COLOURS[card.class_groups[i]],
                 f"{card.class_counts[i]:,}", group_name(card.class_groups[i]),
                 f"{card.class_names[i]}: {count_text(card.class_counts[i])}, {group_name(card.class_groups[i])} class")
        for i in order
    )
    return group_legend_html() + _scroll_box(rows)


# --- The model: its menu label and its card ---------------------------------------------------------


def shipped_test_accuracy(card: ModelCard) -> dict | None:
    """The test evaluation of the weights in the file (val-selected or last epoch), None when not recorded."""
    key = "last_epoch" if card.checkpoint.get("which") == "last" else "val_selected"
    return ((card.metrics or {}).get(key) or {}).get("test") or None


def model_label(name: str, card: ModelCard | None) -> str:
    """The model menu's entry, e.g. "ConCutMix · ResNet-32 · CIFAR-10-LT · 60 epochs · 76% test, 82% tail": the
    training budget says which of two runs of one recipe this is, "(pretrained)" that a backbone started from
    ImageNet weights."""
    if card is None:
        return name
    backbone = _plain(MODEL_NAMES, card.model_name) + (" (pretrained)" if card.pretrained_weights else "")
    parts = [_plain(METHOD_NAMES, card.method), backbone, _plain(DATASET_NAMES, card.dataset)]
    if card.quantization:
        parts.append("int8")
    epochs = ((card.config or {}).get("optim") or {}).get("epochs")
    if isinstance(epochs, int) and card.method != "dlsa":  # DLSA's budget is its stages', not optim.epochs
        parts.append(f"{epochs} epochs")
    evaluation = shipped_test_accuracy(card)
    if evaluation and evaluation.get("overall") is not None:
        tail = group_accuracy(evaluation, card.group_rule.get("rule"), "few")
        parts.append(f"{evaluation['overall']:.0f}% test" + ("" if tail is None else f", {tail:.0f}% tail"))
    return " · ".join(part for part in parts if part and part != "–") or name


def _percent(value) -> str:
    return "–" if value is None else f"{value:.1f}%"


CHECKPOINT_LABELS = {"last epoch": "Last epoch", "val-selected": "Val-selected (chosen on validation)",
                     "test-selected, oracle": "Test-selected (optimistic)"}
CELL = "text-align:right;padding:0.1em 0.35em;font-variant-numeric:tabular-nums"


def metrics_html(card: ModelCard) -> str:
    """Test accuracy (%) overall and per group under the card's own rule: one row per checkpoint, a "–" explained.
    Narrow enough for a phone; on a narrower screen it scrolls inside itself."""
    columns = evaluation_columns(card.metrics, splits=("test",))
    if not columns:
        return "<p>No evaluation results in this model card.</p>"
    rule = card.group_rule.get("rule")
    head = "".join(f"<th style='{CELL}'>{h}</th>" for h in ("overall", *(group_name(g) for g in GROUPS)))
    body = ""
    for label, epoch, evaluation in columns:
        values = [evaluation.get("overall"), *(group_accuracy(evaluation, rule, g) for g in GROUPS)]
        body += (f"<tr><td style='padding:0.1em 0.35em'>{CHECKPOINT_LABELS.get(label, label)}, epoch {epoch}</td>"
                 + "".join(f"<td style='{CELL}'>{'–' if v is None else f'{v:.1f}'}</td>" for v in values) + "</tr>")
    table = (f"<div class='lt-table' style='overflow-x:auto;max-width:100%'><table style='font-size:0.92em'>"
             f"<thead><tr><th style='text-align:left;padding:0.1em 0.35em'>test accuracy, %</th>{head}</tr></thead>"
             f"<tbody>{body}</tbody></table></div>")
    return table + _metrics_note(card, columns)


def _metrics_note(card: ModelCard, columns) -> str:
    notes = ["Top-1 accuracy on the test set, as a mean over each group's classes."]
    if any(label == "val-selected" for label, _, _ in columns):
        notes[0] += " <em>Val-selected</em>: the epoch picked on held-out training data, the fair estimate."
    if any(label.startswith("test-selected") for label, _, _ in columns):
        notes.append("<em>Test-selected</em> is the epoch picked on the test set itself, as many papers report it; it is "
                     "optimistic.")
    empty = [group_name(g) for g in GROUPS if g not in card.class_groups]
    if empty:
        notes.append(f"“–”: no class is in the {' or '.join(empty)} group under this model's grouping rule.")
    return "".join(f"<p style='opacity:0.8;margin:0.3em 0'>{note}</p>" for note in notes)


def _provider_text(provider: str) -> str:
    device = "GPU" if "CUDA" in provider else "CPU"
    return f"{device}, with ONNX Runtime"


def card_markdown(card: ModelCard, classifier: OnnxClassifier, label: str | None = None) -> str:
    """The card in plain words: each term with what it means, in one line."""
    pre = card.preprocessing
    imbalance = ("–" if card.imbalance_factor is None else
                 f"{card.imbalance_factor:g} — the most frequent class has {card.imbalance_factor:g}× the training "
                 "images of the rarest")
    weights = (f"{card.checkpoint.get('which')} checkpoint, epoch {card.checkpoint.get('epoch')} — "
               + ("the epoch with the best validation accuracy" if card.checkpoint.get("which") == "val-selected"
                  else "the final epoch")) if card.checkpoint else ""
    source = card.pretrained_weights
    fine_tuned_from = (f" — fine-tuned from {'ImageNet' if source == 'imagenet' else 'pretrained'} weights"
                       if source else "")
    rows = [
        ("Method", f"{_plain(METHOD_NAMES, card.method)} — {METHOD_MEANINGS.get(card.method, 'as recorded at training')}"
         if card.method else ""),
        ("Dataset", f"{_plain(DATASET_NAMES, card.dataset)} (`{card.dataset}`) — its training set is long-tailed "
                    "on purpose" if card.dataset else ""),
        ("Imbalance factor", imbalance),
        ("Network", _plain(MODEL_NAMES, card.model_name) + fine_tuned_from),
        ("Weights", weights),
        ("Classes", str(card.num_classes)),
        ("Input", f"{pre.describe()}, classified"),
        ("Runs on", _provider_text(classifier.provider)),
        ("Precision", quantization_text(card) or "float32"),
    ]
    fields = "\n".join(f"- **{key}:** {value or '–'}" for key, value in rows)
    title = label or model_label(classifier.path.name, card)
    return f"### {title}\n\n`{classifier.path.name}`\n\n{fields}\n\n{group_rule_text(card)}"


def no_models_message(models_dir: Path) -> str:
    return (
        f"**No models found.** There are no `.onnx` files in the models folder (`{Path(models_dir).name}`). Export "
        "one with `python -m training export` into that folder, or point `LONGTAIL_MODELS_DIR` at a folder of "
        "exported models."
    )


def hub_problem_message(problem: str) -> str:
    return f"**A Hub model could not be loaded:** {problem}"


# --- Classification ---------------------------------------------------------------------------------


WARNING_MARK = "⚠ see the warning"  # on the caption of a prediction that may mean little; the text is below
SMALL_IMAGE = 96  # pixels: images up to this size are shown enlarged without smoothing (crisp pixels)


def caption(prediction: Prediction) -> str:
    best = prediction.top[0]
    text = f"{describe(best)} · {best.probability:.2f}"
    return text if prediction.warning is None else f"{text} · {WARNING_MARK}"


def image_data_uri(image: Image.Image, longest: int = 256) -> str:
    """The image inline in the page: a small one as it is (the browser enlarges it pixel by pixel), a large
    one shrunk and JPEG-compressed so a page of 32 results stays light."""
    if max(image.size) <= SMALL_IMAGE:
        buffer, kind = io.BytesIO(), "png"
        image.save(buffer, format="PNG")
    else:
        small = image.convert("RGB")
        small.thumbnail((longest, longest), Image.Resampling.LANCZOS)
        buffer, kind = io.BytesIO(), "jpeg"
        small.save(buffer, format="JPEG", quality=85)
    return f"data:image/{kind};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def picture(image: Image.Image) -> dict:
    """What a result card needs of an image: its data URI, and whether it is small enough to enlarge crisply."""
    return {"uri": image_data_uri(image), "small": max(image.size) <= SMALL_IMAGE}


def group_badge(group: str | None) -> str:
    colour = GROUP_COLOURS.get(group, UNKNOWN_COLOUR)
    text = "group unknown" if group is None else group_name(group)
    return (f'<span class="lt-badge" style="background:{colour};color:#fff;border-radius:0.6em;padding:0 0.5em;'
            f'font-size:0.85em;white-space:nowrap">{text}</span>')


def result_card(shown: dict, lines: list[str], colour: str, title: str, selected: bool = False) -> str:
    """One image (`picture`) with its caption lines under it; the caption wraps, so nothing is cut."""
    pixelated = "image-rendering:pixelated;" if shown["small"] else ""
    outline = "box-shadow:0 0 0 2px var(--color-accent, #f97316);" if selected else ""
    text = "".join(f'<div style="margin-top:0.15em">{line}</div>' for line in lines)
    return (
        f'<figure class="lt-card" title="{html.escape(title)}" style="margin:0;border:1px solid rgba(128,128,128,0.3);'
        f'border-top:4px solid {colour};border-radius:6px;overflow:hidden;min-width:0;{outline}">'
        f'<img alt="{html.escape(title)}" src="{shown["uri"]}" style="display:block;width:100%;'
        f'aspect-ratio:1/1;object-fit:contain;background:rgba(128,128,128,0.08);{pixelated}">'
        f'<figcaption class="lt-caption" style="padding:0.3em 0.45em 0.45em;font-size:0.9em;line-height:1.3;'
        f'overflow-wrap:anywhere">{text}</figcaption></figure>'
    )


def cards_grid(cards: list[str], min_width: str = "9.5em") -> str:
    return (f'<div class="lt-cards" style="display:grid;grid-template-columns:repeat(auto-fill,minmax(min({min_width},'
            f'100%),1fr));gap:0.6em">{"".join(cards)}</div>')


def prediction_lines(prediction: Prediction) -> list[str]:
    best = prediction.top[0]
    lines = [f"<b>{html.escape(best.name)}</b> {group_badge(best.group)}",
             f"{html.escape(count_text(best.train_count))} · <b>{best.probability:.0%}</b>"]
    if prediction.warning is not None:
        lines.append(f'<span style="opacity:0.8">{WARNING_MARK}</span>')
    return lines


def results_html(items: list[dict], selected: int = 0) -> str:
    """One card per classified image: the picture, the prediction, its group badge, training count, probability."""
    if not items:
        return ""
    cards = []
    for index, item in enumerate(items):
        prediction = item["prediction"]
        best = prediction.top[0]
        cards.append(result_card(item, prediction_lines(prediction),
                                 GROUP_COLOURS.get(best.group, UNKNOWN_COLOUR), f"{item['image']}: {caption(prediction)}",
                                 selected=len(items) > 1 and index == selected))
    return cards_grid(cards)


def prediction_markdown(image_name: str, prediction: Prediction, tau: float = 0.0) -> str:
    best = prediction.top[0]
    name, _, details = describe(best).partition(" · ")
    adjusted = "" if tau == 0 else f", with τ = {tau:g}"
    text = f"**{name}** · {details}  \nprobability {best.probability:.2f} for `{image_name}`{adjusted}"
    return text if prediction.warning is None else f"{text}\n\n⚠ {prediction.warning}"


def details_choices(items: list[dict]) -> list[tuple[str, int]]:
    return [(f"{i + 1}. {item['image']} — {item['prediction'].top[0].name}", i) for i, item in enumerate(items)]


def unreadable_files_markdown(problems: list[str], total: int) -> str:
    """The files of an upload that could not be read, with the reason for each; empty when all were read."""
    if not problems:
        return ""
    return f"**Could not read {len(problems)} of {total} files:**\n\n" + "\n".join(f"- {p}" for p in problems)


# --- Examples ---------------------------------------------------------------------------------------


TAIL_MARK = "★"


def example_caption(path: Path, card: ModelCard | None) -> str:
    """"truck ★" for an example of a tail class named like cifar10_test_0011_truck.png (the group from the card),
    the class name alone otherwise: short enough for a thumbnail's caption."""
    name = Path(path).stem.rsplit("_", 1)[-1]
    if card is None or name not in card.class_names:
        return name
    return f"{name} {TAIL_MARK}" if card.class_groups[card.class_names.index(name)] == "few" else name


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


def generated_cards_html(pictures: list[dict], captions: list[str], matches: list[bool]) -> str:
    """The generated images (`picture`) as cards: a green edge for one the model recognises as the class, grey
    otherwise."""
    cards = [result_card(shown, [html.escape(text)], "#009E73" if match else UNKNOWN_COLOUR, text)
             for shown, text, match in zip(pictures, captions, matches)]
    return cards_grid(cards, min_width="7.5em")


def recognised_verdict(recognised: int, total: int, wanted: str, model: str) -> str:
    """"k of n recognised as <class>", and what that means, right for 0, 1 and many."""
    head = f"**{recognised} of {total}** recognised as {wanted} by {model}"
    if recognised == 0:
        return (f"{head}: none of these looks like a {wanted} to the model, so none would help as extra tail data "
                "(try more steps, a higher guidance or another seed, or keep only recognised samples).")
    if recognised == total:
        return f"{head}: all of them are samples likely to help as extra tail data."
    which = "that one is the sample" if recognised == 1 else "those are the samples"
    return f"{head}: {which} most likely to help as extra tail data."


def generation_summary(generation: Generation, tried: int | None = None, model_label_text: str | None = None) -> str:
    """The verdict and the settings; `tried` when only the recognised samples of `tried` were kept."""
    settings = generation.settings
    wanted = settings["class_name"]
    model = model_label_text or settings["model"]
    recognised = sum(r.matches for r in generation.recognitions)
    if tried is not None:
        verdict = (f"Kept **{len(generation.images)}** of {tried} samples tried: the ones the model ({model}) "
                   f"recognises as {wanted}" + (" (none passed; try more steps or a higher guidance)." if not generation.images
                                  else "."))
    elif all(r.intended_probability is None for r in generation.recognitions):
        verdict = f"{model} does not know the class {wanted}, so it cannot judge these images."
    else:
        verdict = recognised_verdict(recognised, len(generation.images), wanted, model)
    count = settings["count"]
    images = "1 image" if count == 1 else f"{count} images"
    return (f"{verdict}  \n{images} asked for, seed {settings['seed']}, {settings['steps']} steps, "
            f"guidance {settings['guidance']:g}, generator `{settings['generator'].get('model_id')}`.")


def generator_status_markdown(status: dict, project_dir: Path | None = None) -> str:
    """The Generate tab's note from `GeneratorService.describe()`; a source is shown relative to `project_dir`
    (the shipped generator reads `model_zoo/cifar10_lt_generator`), or by its name alone: never a server path."""
    if not status["available"]:
        return (f"**Generation is not available:** {status['error']}. Set `LONGTAIL_GENERATOR` to a generator "
                "folder, an hf:// reference or a text-to-image model id (see README).")
    return (f"Generator: `{shown_path(status['source'], project_dir)}`. Each image is classified by the model picked "
            "above: *recognised as frog · 0.82* means the model takes it for a frog with probability 0.82.")


def shown_path(source: str, project_dir: Path | None) -> str:
    """A path as the page may show it: relative to the project, else its last part (a Hub id stays as it is)."""
    path = Path(source)
    if not path.is_absolute():
        return source
    if project_dir is not None and path.is_relative_to(project_dir):
        return str(path.relative_to(project_dir))
    return path.name
