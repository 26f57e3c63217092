"""LongTail Studio demo: classify images with an exported model, read its model card, and generate
synthetic samples of its tail classes.

    python app.py                                   # http://127.0.0.1:7860
    LONGTAIL_MODELS_DIR=runs/exports python app.py  # another folder of .onnx files
    GRADIO_SERVER_NAME=0.0.0.0 GRADIO_SERVER_PORT=8080 python app.py

Configuration (environment variables, also the "Variables" of a Hugging Face Space):

    LONGTAIL_MODELS_DIR          folder of exported .onnx models (default: model_zoo/)
    LONGTAIL_HUB_MODELS          comma-separated hf://owner/repo@<commit>/file.onnx models, fetched at start-up
    LONGTAIL_GENERATOR           the tail-sample generator: our class-conditional folder (default:
                                 model_zoo/cifar10_lt_generator), an hf:// reference to one, or a diffusers
                                 text-to-image model (local folder or Hub id)
    LONGTAIL_GENERATOR_REVISION  the commit of a text-to-image Hub model
    LONGTAIL_PROMPT_TEMPLATE     the text-to-image prompt, default "A photo of a {class}."

API (gradio_client), one call for any number of images:

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    gallery, label, bars, summary, messages, records = client.predict(
        "cifar10_lt_ce_resnet32.onnx", [handle_file("cat.png")], 5, api_name="/classify")
    gallery, zip_file, summary, records = client.predict(
        "cifar10_lt_ce_resnet32.onnx", "frog", 4, 10, 0, 3.0, api_name="/generate")

`records` of /classify is the same JSON as `python -m inference predict` prints: one object per image;
/generate's says, for every image, its seed and what the model recognises in it.
`client.predict("cifar10_lt_ce_resnet32.onnx", api_name="/model_card")` returns the card's
summary (Markdown), class histogram and accuracy table (HTML).
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home at launch

import collections  # noqa: E402
import html  # noqa: E402
import logging  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402
from PIL import Image  # noqa: E402

import torchvision_compat  # noqa: E402,F401  (must run before anything imports torchvision)
from inference.card import GROUPS, ModelCard, evaluation_columns, group_accuracy, group_name, group_rule_text  # noqa: E402
from inference.classifier import ClassScore, OnnxClassifier, Prediction, describe, record  # noqa: E402
from inference.images import ImageLoadError  # noqa: E402
from inference.service import (  # noqa: E402
    ClassChoice,
    Generation,
    GeneratorService,
    Limits,
    ModelCatalog,
    RequestError,
    Studio,
    png_bytes,
)

try:  # Hugging Face ZeroGPU Spaces lend a GPU only to functions decorated with spaces.GPU
    import spaces

    on_gpu = spaces.GPU
except ImportError:
    def on_gpu(function):
        return function

APP_DIR = Path(__file__).resolve().parent
DEFAULT_MODELS_DIR = APP_DIR / "model_zoo"
DEFAULT_GENERATOR = APP_DIR / "model_zoo" / "cifar10_lt_generator"
DEFAULT_EXAMPLES_DIR = APP_DIR / "examples"
EXAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg")
# ONNX Runtime already spreads one request over every core, so running classifications side by side
# would only make each of them slower. Generation has its own queue, so a classification never waits
# behind a generation.
CLASSIFY_CONCURRENCY = 1
GENERATE_CONCURRENCY = 1
QUEUE_SIZE = 64  # requests waiting beyond this are turned away with "queue full"
MAX_TOP_K = 20
LIMITS = Limits(max_upload_bytes=25 * 2**20, max_batch=64, max_generate=16, max_steps=100)
MAX_UPLOAD_SIZE = f"{LIMITS.max_upload_bytes // 2**20}mb"  # larger uploads are refused by Gradio itself
MAX_GUIDANCE = 15.0
KEPT_FILES = 1024  # thumbnails, generated images and zips kept on disk for the browser to fetch
THUMBNAIL_SIZE = (384, 384)
# Okabe-Ito colours: distinguishable with the common forms of colour blindness.
GROUP_COLOURS = {"many": "#0072B2", "medium": "#E69F00", "few": "#CC79A7"}
UNKNOWN_COLOUR = "#999999"


# --- HTML and Markdown rendering (plain functions of the data, unit-tested) -----------------


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
            label = f"{group_name(group)} classes (by {rule}{', primary' if rule == primary else ''})"
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


# --- Generation rendering ---------------------------------------------------------------------


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


# --- The app --------------------------------------------------------------------------------


def build_studio(models_dir: str | Path | None = None, generator: str | Path | None = None) -> Studio:
    """The app's backend from arguments, else the environment (see the module docstring), else the defaults."""
    models_dir = Path(models_dir or os.environ.get("LONGTAIL_MODELS_DIR") or DEFAULT_MODELS_DIR)
    hub_refs = [ref.strip() for ref in os.environ.get("LONGTAIL_HUB_MODELS", "").split(",") if ref.strip()]
    generator = generator or os.environ.get("LONGTAIL_GENERATOR") or (
        DEFAULT_GENERATOR if DEFAULT_GENERATOR.is_dir() else None)
    options = {}
    if os.environ.get("LONGTAIL_PROMPT_TEMPLATE"):
        options["prompt_template"] = os.environ["LONGTAIL_PROMPT_TEMPLATE"]
    service = GeneratorService(generator, revision=os.environ.get("LONGTAIL_GENERATOR_REVISION") or None,
                               text_to_image_options=options)
    return Studio(ModelCatalog(models_dir, hub_refs), service, LIMITS)


@on_gpu
def run_generation(studio: Studio, model_name, class_name, count, steps, seed, guidance, progress) -> Generation:
    """The only function that needs a GPU: on ZeroGPU Spaces it is lent one for the duration of the call."""
    return studio.generate(model_name, class_name, count=count, seed=seed, steps=steps, guidance=guidance,
                           progress=progress)


def build_app(models_dir: str | Path | None = None, examples_dir: str | Path | None = None,
              generator: str | Path | None = None, studio: Studio | None = None) -> gr.Blocks:
    studio = studio or build_studio(models_dir, generator)
    catalog = studio.catalog
    examples_dir = Path(examples_dir or DEFAULT_EXAMPLES_DIR)
    model_names = catalog.names()
    output_files = OutputFiles(KEPT_FILES)

    def load_model(model_name: str | None) -> OnnxClassifier:
        if not model_name:
            raise gr.Error(f"No model selected. Put exported .onnx files in {catalog.models_dir}.")
        try:
            return catalog.get(model_name)
        except RequestError as error:
            raise gr.Error(str(error)) from error

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
        if not files:
            state = {"items": []}
            return [], None, "", "", "Upload one or more images to classify them.", [], state
        try:
            loaded = studio.load_images(files)
        except RequestError as error:
            raise gr.Error(str(error)) from error
        results = classifier.predict_loaded(loaded, top_k=int(top_k))

        records, items, gallery, problems = [], [], [], []
        for file, image, prediction in zip(files, loaded, results):
            name = Path(file).name
            if isinstance(prediction, ImageLoadError):
                gr.Warning(str(prediction))
                problems.append(str(prediction))
                records.append(record(name, prediction))
                continue
            records.append(record(name, prediction))
            items.append({"image": name, "prediction": prediction})
            thumbnail = image.copy()
            thumbnail.thumbnail(THUMBNAIL_SIZE, Image.Resampling.LANCZOS)
            gallery.append((output_files.image(thumbnail, name), caption(prediction)))

        messages = ""
        if problems:
            messages = f"**Could not read {len(problems)} of {len(files)} files:**\n\n" + "\n".join(
                f"- {problem}" for problem in problems
            )
        state = {"items": items}
        label, bars, summary = selected_outputs(state, 0)
        return gallery, label, bars, summary, messages, records, state

    def select_image(state: dict, event: gr.SelectData):
        return selected_outputs(state, event.index if isinstance(event.index, int) else 0)

    def model_card(model_name: str | None):
        """The model card of one model file: summary (Markdown), training histogram and accuracy table (HTML)."""
        if not model_name:
            return no_models_message(catalog.models_dir), "", ""
        classifier = load_model(model_name)
        card = classifier.card
        return card_markdown(card, classifier), histogram_html(card), metrics_html(card)

    def class_options(model_name: str | None) -> tuple[list[tuple[str, str]], str | None]:
        options = [(class_choice_label(choice), choice.name) for choice in studio.class_choices(model_name)]
        return options, options[0][1] if options else None

    def generator_classes(model_name: str | None):
        """The classes the generator can make, tail classes first, marked with the model's training counts."""
        options, first = class_options(model_name)
        return gr.Dropdown(choices=options, value=first)

    def generate(model_name: str | None, class_name: str | None, count: float, steps: float, seed: float,
                 guidance: float, progress=gr.Progress()):  # noqa: B008  (Gradio's way to ask for a progress bar)
        """Generate images of one class; returns gallery (captioned with what the model recognises), zip, summary, records."""
        if not class_name:
            raise gr.Error("Pick a class to generate.")
        load_model(model_name)

        def report(done: int, total: int) -> None:
            progress((done, total), desc="Denoising", unit="steps")

        try:
            generation = run_generation(studio, model_name, class_name, int(count), int(steps), int(seed),
                                        float(guidance), report)
        except RequestError as error:
            raise gr.Error(str(error)) from error
        names = generation.file_names()
        gallery = [(output_files.image(image, names[i]), generated_caption(generation, i))
                   for i, image in enumerate(generation.images)]
        settings = generation.settings
        download = output_files.write(f"{settings['class_name']}_seed{settings['seed']}.zip", generation.zip_bytes())
        return gallery, download, generation_summary(generation), generation.to_dict()

    default_steps, default_guidance = studio.generator.defaults()
    generator_note = generator_status_markdown(studio)

    with gr.Blocks(title="LongTail Studio", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# LongTail Studio\nClassify images with a model trained on long-tailed data. Each prediction "
            "says whether the class was a **head** (many training images), **medium** or **tail** "
            "(few training images) class, because accuracy on tail classes is usually much lower. "
            "**Generate** makes synthetic images of a class, to top up its tail."
        )
        if not model_names:
            gr.Markdown(no_models_message(catalog.models_dir))
        for problem in catalog.problems:
            gr.Markdown(f"**A Hub model could not be loaded:** {problem}")
        model = gr.Dropdown(choices=model_names, value=catalog.default(), label="Model", interactive=True)
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

        with gr.Tab("Generate"):
            gr.Markdown(generator_note)
            with gr.Row():
                with gr.Column(scale=1):
                    # Custom values are allowed so an API caller may name any class of another model; the
                    # service checks the name against the generator with a clear message.
                    options, first = class_options(catalog.default())
                    class_name = gr.Dropdown(options, value=first, label="Class (tail classes first)",
                                             interactive=True, allow_custom_value=True)
                    count = gr.Slider(1, LIMITS.max_generate, value=4, step=1, label="Number of images")
                    steps = gr.Slider(1, LIMITS.max_steps, value=default_steps, step=1, label="Denoising steps")
                    seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
                    guidance = gr.Slider(0, MAX_GUIDANCE, value=default_guidance, step=0.5,
                                         label="Guidance (1 = none; higher follows the class more closely)")
                    generate_button = gr.Button("Generate", variant="primary")
                with gr.Column(scale=2):
                    generated = gr.Gallery(label="Generated images, as the model recognises them", columns=4,
                                           object_fit="contain", height="auto")
                    generation_text = gr.Markdown()
                    download = gr.File(label="Download (PNGs + generation.json)")
            generation_records = gr.JSON(label="Seeds and recognition (all images)")

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
            concurrency_id="classify",
            concurrency_limit=CLASSIFY_CONCURRENCY,
        )
        gallery.select(
            select_image, inputs=[state], outputs=[label, bars, summary], api_name="select_image",
            api_visibility="private", queue=False,
        )
        gr.on(
            triggers=[demo.load, model.change],
            fn=model_card,
            inputs=[model],
            outputs=[card_summary, histogram, metrics],
            api_name="model_card",
            concurrency_id="classify",
        )
        gr.on(
            triggers=[demo.load, model.change],
            fn=generator_classes,
            inputs=[model],
            outputs=[class_name],
            api_name="generator_classes",
            concurrency_id="classify",
        )
        generate_button.click(
            generate,
            inputs=[model, class_name, count, steps, seed, guidance],
            outputs=[generated, download, generation_text, generation_records],
            show_progress_on=[generated],
            api_name="generate",
            concurrency_id="generate",
            concurrency_limit=GENERATE_CONCURRENCY,
        )

    demo.queue(default_concurrency_limit=CLASSIFY_CONCURRENCY, max_size=QUEUE_SIZE)
    return demo


class OutputFiles:
    """The images and zips the app returns, as files written whole under their own folder and handed to
    Gradio by path. Gradio copies a returned file into its cache atomically, but re-encodes a returned PIL
    image into a path named after its content and overwrites it in place: two requests returning the same
    picture then race, and a browser can fetch a half-written file (seen under bench/load_test.py as h11's
    "Too little data for declared Content-Length"). The oldest files are deleted beyond `keep`."""

    def __init__(self, keep: int):
        self.folder = Path(tempfile.mkdtemp(prefix="longtail_app_"))
        self.keep = keep
        self._recent: collections.deque[Path] = collections.deque()
        self._lock = threading.Lock()

    def write(self, name: str, data: bytes) -> str:
        path = Path(tempfile.mkdtemp(dir=self.folder)) / name.replace("/", "_")
        path.write_bytes(data)
        with self._lock:
            self._recent.append(path)
            while len(self._recent) > self.keep:
                old = self._recent.popleft()
                old.unlink(missing_ok=True)
                old.parent.rmdir()
        return str(path)

    def image(self, image: Image.Image, name: str) -> str:
        return self.write(f"{Path(name).stem}.png", png_bytes(image))


def generator_status_markdown(studio: Studio) -> str:
    status = studio.generator.describe()
    if not status["available"]:
        return (f"**Generation is not available:** {status['error']}. Set `LONGTAIL_GENERATOR` to a generator "
                "folder, an hf:// reference or a text-to-image model id (see README).")
    source = Path(status["source"])
    shown = source.relative_to(APP_DIR) if source.is_absolute() and source.is_relative_to(APP_DIR) else source
    return (f"Generator: `{shown}`. Each image is classified by the model picked above: "
            "*recognised as frog · 0.82* means the model takes it for a frog with probability 0.82.")


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
