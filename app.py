"""LongTail Studio demo: classify images with an exported model and read its model card.

    python app.py                                   # http://127.0.0.1:7860
    LONGTAIL_MODELS_DIR=runs/exports python app.py  # another folder of .onnx files
    GRADIO_SERVER_NAME=0.0.0.0 GRADIO_SERVER_PORT=8080 python app.py

API (gradio_client), one call for any number of images:

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    gallery, label, bars, summary, messages, records = client.predict(
        "cifar10_lt_ce_resnet32.onnx", [handle_file("cat.png")], 5, api_name="/classify")

`records` is the same JSON as `python -m inference predict` prints: one object per image.
`client.predict("cifar10_lt_ce_resnet32.onnx", api_name="/model_card")` returns the card's
summary (Markdown), class histogram and accuracy table (HTML).
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home at launch

import torchvision_compat  # noqa: E402,F401  (must run before anything imports torchvision)

import html  # noqa: E402
import logging  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402
from PIL import Image  # noqa: E402

from inference.classifier import (  # noqa: E402
    ClassScore,
    MODEL_ERRORS,
    OnnxClassifier,
    Prediction,
    describe,
    list_models,
    load_images,
    resolve_model,
)
from inference.images import ImageLoadError  # noqa: E402
from inference.metadata import GROUP_DISPLAY, GROUPS, ModelCard  # noqa: E402
from inference.model_card import evaluation_columns, group_accuracy, group_rule_text  # noqa: E402

APP_DIR = Path(__file__).resolve().parent
DEFAULT_MODELS_DIR = APP_DIR / "model_zoo"
DEFAULT_MODEL = "cifar10_lt_ce_resnet32.onnx"
DEFAULT_EXAMPLES_DIR = APP_DIR / "examples"
EXAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg")
# ONNX Runtime already spreads one request over every core, so running requests side by side
# would only make each of them slower.
CONCURRENCY_LIMIT = 1
MAX_TOP_K = 20
MAX_UPLOAD_SIZE = "25mb"  # per file; larger uploads are refused by Gradio before they reach us
THUMBNAIL_SIZE = (384, 384)
# Okabe-Ito colours: distinguishable with the common forms of colour blindness.
GROUP_COLOURS = {"many": "#0072B2", "medium": "#E69F00", "few": "#CC79A7"}
UNKNOWN_COLOUR = "#999999"


# --- HTML and Markdown rendering (plain functions of the data, unit-tested) -----------------


def group_legend_html() -> str:
    items = "".join(
        f'<span style="margin-right:1em"><span style="display:inline-block;width:0.8em;height:0.8em;'
        f'background:{GROUP_COLOURS[group]};margin-right:0.3em"></span>{GROUP_DISPLAY[group]}</span>'
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
        group = "group unknown" if score.group is None else f"{GROUP_DISPLAY[score.group]} class"
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
            f"{GROUP_DISPLAY[card.class_groups[i]]}",
            f"{card.class_names[i]}: {card.class_counts[i]:,} training images, {GROUP_DISPLAY[card.class_groups[i]]} class",
        )
        for i in order
    )
    return group_legend_html() + _scroll_box(rows)


def _percent(value) -> str:
    return "–" if value is None else f"{value:.1f}%"


def metrics_html(card: ModelCard) -> str:
    """Accuracy overall and per group, last epoch next to the epoch chosen on validation
    (and the test-selected "oracle" epoch when the card has it, labelled as such)."""
    columns = [(f"{label[0].upper()}{label[1:]} (epoch {epoch})", evaluation)
               for label, epoch, evaluation in evaluation_columns(card.metrics)]
    oracle = (card.metrics or {}).get("test_oracle_best") or {}
    if not columns:
        return "<p>No evaluation results in this model card.</p>"

    primary = card.group_rule.get("rule")
    rules = sorted(
        {rule for _, evaluation in columns for rule in (evaluation.get("groups") or {})},
        key=lambda rule: (rule != primary, rule),
    )
    rows = [("Overall", [evaluation.get("overall") for _, evaluation in columns])]
    for rule in rules:
        for group in GROUPS:
            label = f"{GROUP_DISPLAY[group]} classes (by {rule}{', primary' if rule == primary else ''})"
            rows.append((label, [group_accuracy(evaluation, rule, group) for _, evaluation in columns]))

    head = "".join(f"<th style='text-align:right;padding:0 0.8em'>{html.escape(h)}</th>" for h, _ in columns)
    body = "".join(
        f"<tr><td style='padding:0 0.8em'>{html.escape(label)}</td>"
        + "".join(f"<td style='text-align:right;padding:0 0.8em'>{_percent(v)}</td>" for v in values)
        + "</tr>"
        for label, values in rows
    )
    note = (
        "Top-1 accuracy. <em>Last epoch</em> is the final checkpoint; <em>val-selected</em> is the epoch "
        "chosen on the validation set."
    )
    if oracle.get("test"):
        note += (
            " <em>Test-selected</em> is the epoch with the best test accuracy, as many papers report it; "
            "it is optimistic, not a fair estimate."
        )
    note = f"<p style='opacity:0.75'>{note}</p>"
    return f"<table><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>{note}"


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
    ]
    fields = "\n".join(f"- **{key}:** {value or '–'}" for key, value in rows)
    return f"### {classifier.path.name}\n\n{fields}\n\n{group_rule_text(card)}"


def caption(prediction: Prediction) -> str:
    best = prediction.top[0]
    return f"{describe(best)} · {best.probability:.2f}"


def prediction_markdown(image_name: str, prediction: Prediction) -> str:
    best = prediction.top[0]
    name, _, details = describe(best).partition(" · ")
    return f"**{name}** · {details}  \nprobability {best.probability:.2f} for `{image_name}`"


# --- Model loading --------------------------------------------------------------------------


class ModelCache:
    """One `OnnxClassifier` per model file, reloaded when the file changes."""

    def __init__(self, models_dir: Path):
        self.models_dir = models_dir
        self._loaded: dict[Path, tuple[int, OnnxClassifier]] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return [path.name for path in list_models(self.models_dir)]

    def get(self, name: str) -> OnnxClassifier:
        path = resolve_model(self.models_dir, name)
        mtime = path.stat().st_mtime_ns
        with self._lock:
            cached = self._loaded.get(path)
            if cached is None or cached[0] != mtime:
                cached = (mtime, OnnxClassifier(path))
                self._loaded[path] = cached
            return cached[1]


# --- The app --------------------------------------------------------------------------------


def build_app(models_dir: str | Path | None = None, examples_dir: str | Path | None = None) -> gr.Blocks:
    models_dir = Path(models_dir or os.environ.get("LONGTAIL_MODELS_DIR") or DEFAULT_MODELS_DIR)
    examples_dir = Path(examples_dir or DEFAULT_EXAMPLES_DIR)
    cache = ModelCache(models_dir)
    model_names = cache.names()

    def load_model(model_name: str | None) -> OnnxClassifier:
        if not model_name:
            raise gr.Error(f"No model selected. Put exported .onnx files in {models_dir}.")
        try:
            return cache.get(model_name)
        except MODEL_ERRORS as error:
            raise gr.Error(f"Cannot use model {model_name}: {error}") from error

    def selected_outputs(state: dict, index: int):
        items = state.get("items") or []
        if not items:
            return None, "", ""
        item = items[max(0, min(index, len(items) - 1))]
        prediction = item["prediction"]
        return (
            {score.name: score.probability for score in prediction.top},
            class_bars_html(prediction.scores),
            prediction_markdown(item["image"], prediction),
        )

    def classify(model_name: str | None, files: list[str] | None, top_k: float):
        """Classify every uploaded image; returns gallery, top-k label, class bars, summary, messages and JSON records."""
        classifier = load_model(model_name)
        files = files or []
        loaded = load_images(files)
        results = classifier.predict_loaded(loaded, top_k=int(top_k))

        records, items, gallery, problems = [], [], [], []
        for file, image, prediction in zip(files, loaded, results):
            name = Path(file).name
            if isinstance(prediction, ImageLoadError):
                gr.Warning(str(prediction))
                problems.append(str(prediction))
                records.append({"image": name, "error": str(prediction)})
                continue
            records.append({"image": name, **prediction.to_dict()})
            items.append({"image": name, "prediction": prediction})
            thumbnail = image.copy()
            thumbnail.thumbnail(THUMBNAIL_SIZE, Image.Resampling.LANCZOS)
            gallery.append((thumbnail, caption(prediction)))

        if problems:
            messages = f"**Could not read {len(problems)} of {len(files)} files:**\n\n" + "\n".join(
                f"- {problem}" for problem in problems
            )
        elif not files:
            messages = "Upload one or more images to classify them."
        else:
            messages = ""
        state = {"items": items}
        label, bars, summary = selected_outputs(state, 0)
        return gallery, label, bars, summary, messages, records, state

    def select_image(state: dict, event: gr.SelectData):
        return selected_outputs(state, event.index if isinstance(event.index, int) else 0)

    def model_card(model_name: str | None):
        """The model card of one model file: summary (Markdown), training histogram and accuracy table (HTML)."""
        if not model_name:
            return no_models_message(models_dir), "", ""
        classifier = load_model(model_name)
        card = classifier.card
        return card_markdown(card, classifier), histogram_html(card), metrics_html(card)

    with gr.Blocks(title="LongTail Studio") as demo:
        gr.Markdown(
            "# LongTail Studio\nClassify images with a model trained on long-tailed data. Each prediction "
            "says whether the class was a **head** (many training images), **medium** or **tail** "
            "(few training images) class, because accuracy on tail classes is usually much lower."
        )
        if not model_names:
            gr.Markdown(no_models_message(models_dir))
        default = DEFAULT_MODEL if DEFAULT_MODEL in model_names else next(iter(model_names), None)
        model = gr.Dropdown(choices=model_names, value=default, label="Model", interactive=True)
        state = gr.State({"items": []})

        with gr.Tab("Classify"):
            with gr.Row():
                with gr.Column(scale=1):
                    files = gr.File(file_count="multiple", file_types=["image"], label="Images")
                    top_k = gr.Slider(1, MAX_TOP_K, value=5, step=1, label="Top-k classes")
                    button = gr.Button("Classify", variant="primary")
                    messages = gr.Markdown(label="Messages")
                    examples = sorted(p for p in examples_dir.glob("*") if p.suffix.lower() in EXAMPLE_SUFFIXES)
                    if examples:
                        # Not cached: the result depends on the model picked above.
                        gr.Examples([[[str(p)]] for p in examples], inputs=[files], cache_examples=False)
                with gr.Column(scale=2):
                    gallery = gr.Gallery(label="Images (click one for details)", columns=4, allow_preview=False)
                    summary = gr.Markdown(label="Summary")
                    # Shows what it is given: the top-k of the selected image (k from the slider).
                    label = gr.Label(num_top_classes=MAX_TOP_K, label="Top classes")
                    bars = gr.HTML(label="All classes")
            records = gr.JSON(label="Raw predictions (all images)")

        with gr.Tab("Model card"):
            card_summary = gr.Markdown(label="Card")
            gr.Markdown("#### Training images per class")
            histogram = gr.HTML(label="Histogram")
            gr.Markdown("#### Accuracy per group")
            metrics = gr.HTML(label="Accuracy")

        gr.on(
            triggers=[button.click, files.change, model.change, top_k.release],
            fn=classify,
            inputs=[model, files, top_k],
            outputs=[gallery, label, bars, summary, messages, records, state],
            api_name="classify",
        )
        gallery.select(
            select_image, inputs=[state], outputs=[label, bars, summary], api_name="select_image", api_visibility="private"
        )
        gr.on(
            triggers=[demo.load, model.change],
            fn=model_card,
            inputs=[model],
            outputs=[card_summary, histogram, metrics],
            api_name="model_card",
        )

    demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT)
    return demo


def no_models_message(models_dir: Path) -> str:
    return (
        f"**No models found.** There are no `.onnx` files in `{models_dir}`. Export one with "
        "`python -m training export` into that folder, or point `LONGTAIL_MODELS_DIR` at a folder of exported models."
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    demo = build_app()
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        max_file_size=MAX_UPLOAD_SIZE,
    )


if __name__ == "__main__":
    main()
