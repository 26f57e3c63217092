"""The app's event handlers: plain methods over the shared service (`inference.service.Studio`), called by
Gradio (see wiring.py) and directly by the tests.

Each handler turns what the components hold into one Studio call and its result into what the components
show (render.py, charts.py). Images are loaded and classified by the Studio, as for the HTTP service; a
`RequestError` becomes a `gr.Error`, which Gradio shows as a message and its API returns as an error. The
numbers Gradio hands over (sliders, the seed; anything at all from an API caller) are checked by the one table,
`inference.limits.check`, first, so a bad one gets the sentence the HTTP API and the CLI give.

`classify` and `generate` return the images as (file, caption) pairs, for Python callers and the tests;
`classify_page` and `generate_page` are what the page (and the API) get: the same results as HTML cards, whose
captions wrap instead of being cut (/classify keeps the pairs too, in a gallery the page hides).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
from PIL import Image

from inference.classifier import OnnxClassifier, record
from inference.images import ImageLoadError
from inference.limits import ParameterError, check
from inference.service import Generation, Progress, RequestError, Studio
from studio_app import charts, render
from studio_app.files import OutputFiles, zip_of

log = logging.getLogger(__name__)

# (studio, model_name, class_name, count, steps, seed, guidance, progress, first_index) → the generation. app.py
# passes its own, which a ZeroGPU Space runs on a GPU lent for the call.
GenerationRunner = Callable[[Studio, str | None, str, int, int, int, float, Progress, int], Generation]
WARNING_SECONDS = 4  # how long a toast about an unreadable file stays up
KEEP_TRIES = 4  # "keep only recognised samples" samples at most this many times the count asked for


def generate_here(studio: Studio, model_name: str | None, class_name: str, count: int, steps: int, seed: int,
                  guidance: float, progress: Progress, first_index: int = 0) -> Generation:
    """The default runner: the generation runs in this process, on whatever device the service picked."""
    return studio.generate(model_name, class_name, count=count, seed=seed, steps=steps, guidance=guidance,
                           first_index=first_index, progress=progress)


@contextmanager
def shown_as_messages() -> Iterator[None]:
    """A request the service refuses becomes a message in the UI (and an error for an API caller)."""
    try:
        yield
    except (RequestError, ParameterError) as error:
        raise gr.Error(str(error)) from error


def warm_generator(studio: Studio) -> threading.Thread | None:
    """Open the generator in the background (torch and the UNet take seconds), so the first generation starts at
    once; a generator that cannot be opened is remembered by the service and the Generate tab says why."""
    if studio.generator.source is None:
        return None

    def open_it() -> None:
        try:
            classifier = studio.catalog.get(None) if studio.catalog.default() else None
            studio.generator.generator(classifier)
        except RequestError as error:
            log.warning("%s", error)

    thread = threading.Thread(target=open_it, name="generator-warm-up", daemon=True)
    thread.start()
    return thread


@dataclass
class Kept:
    """The samples of a "keep only recognised" run: each image with its index within the class and seed."""

    images: list[Image.Image] = field(default_factory=list)
    recognitions: list = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    tried: int = 0


class Handlers:
    def __init__(self, studio: Studio, run_generation: GenerationRunner = generate_here,
                 files: OutputFiles | None = None, examples: list[Path] | None = None,
                 project_dir: Path | None = None):
        self.studio = studio
        self.project_dir = project_dir  # paths inside it are shown relative to it
        self.run_generation = run_generation
        self.files = files or OutputFiles()
        self.examples = list(examples or [])

    # --- Classify -----------------------------------------------------------------------------------

    def classify(self, model_name: str | None, files: list[str] | None, top_k: float, tau: float = 0.0):
        """Classify every uploaded image after adjusting the logits by τ; returns gallery ((file, caption) pairs),
        the details picker, top classes chart, summary, messages, JSON records and the state."""
        self._classifier(model_name)  # a model that cannot be used is reported even before an upload
        files = files or []
        if not files:
            return [], None, "", "", "Upload one or more images to classify them.", [], {"items": []}
        with shown_as_messages():
            top_k = check("top_k", top_k, self.studio.limits)
            tau = check("tau", tau, self.studio.limits)
            classified = self.studio.classify_with_images(model_name, files, top_k=top_k, tau=tau)

        records, items, gallery, problems = [], [], [], []
        for file, item in zip(files, classified):
            name = Path(getattr(file, "name", None) or str(file)).name
            records.append(record(name, item.result))
            if isinstance(item.result, ImageLoadError):
                # Also in the messages under the upload; the toast is brief and kept off the results (APP_CSS).
                gr.Warning(str(item.result), duration=WARNING_SECONDS)
                problems.append(str(item.result))
                continue
            items.append({"image": name, "prediction": item.result, **render.picture(item.image)})
            gallery.append((self.files.thumbnail(item.image, name), render.caption(item.result)))

        state = {"items": items, "tau": tau}
        top = {s.name: s.probability for s in items[0]["prediction"].top} if items else None
        bars, summary = self.details(state, 0)
        return gallery, top, bars, summary, render.unreadable_files_markdown(problems, len(files)), records, state

    def classify_page(self, model_name: str | None, files: list[str] | None, top_k: float, tau: float = 0.0):
        """`classify` as the page shows it: the gallery pairs (for API callers; hidden on the page), the images as
        result cards (picture, prediction, group badge, training count, probability), top classes, summary,
        messages, records and the state."""
        gallery, _, *rest = self.classify(model_name, files, top_k, tau)
        return gallery, render.results_html(rest[-1]["items"]), *rest

    @staticmethod
    def details_picker(state: dict):
        """The picker of the image whose details are shown: hidden for a single image."""
        choices = render.details_choices(state.get("items") or [])
        return gr.Dropdown(choices=choices, value=0 if choices else None, visible=len(choices) > 1)

    def show_details(self, state: dict, index: int | None):
        """The result cards with image `index` marked, and its top classes and summary (the details picker)."""
        index = index if isinstance(index, int) else 0
        return (render.results_html(state.get("items") or [], index), *self.details(state, index))

    @staticmethod
    def details(state: dict, index: int):
        """Top classes chart and summary of image `index` of the last classification (the state)."""
        items = state.get("items") or []
        if not items:
            return "", ""
        item = items[max(0, min(index, len(items) - 1))]
        prediction = item["prediction"]
        return (render.top_classes_html(prediction.top),
                render.prediction_markdown(item["image"], prediction, state.get("tau", 0.0)))

    def tau_effect(self, model_name: str | None, tau: float):
        """What τ does on the test set, from the model card's stored curve (or why there is none)."""
        if not model_name:
            return ""
        with shown_as_messages():
            tau = check("tau", tau, self.studio.limits)
        return charts.tau_effect_html(self._classifier(model_name).card, tau)

    def example(self, event: gr.SelectData):
        """The example picture that was clicked, as the upload's files (which classifies it)."""
        index = event.index if isinstance(event.index, int) else 0
        return [str(self.examples[index])] if 0 <= index < len(self.examples) else None

    # --- Model card ---------------------------------------------------------------------------------

    def model_card(self, model_name: str | None):
        """The card of one model file: summary (Markdown), training histogram and accuracy table (HTML)."""
        if not model_name:
            return render.no_models_message(self.studio.catalog.models_dir), "", ""
        classifier = self._classifier(model_name)
        card = classifier.card
        return render.card_markdown(card, classifier), render.histogram_html(card), render.metrics_html(card)

    def long_tail_pictures(self, model_name: str | None) -> str:
        """The card's long-tail pictures (HTML): accuracy per class against its count, confusion, calibration."""
        return charts.long_tail_html(self._classifier(model_name).card) if model_name else ""

    def model_choices(self) -> list[tuple[str, str]]:
        """The model menu: (label from the card, file name); a model that cannot be opened keeps its file name."""
        choices = []
        for name in self.studio.catalog.names():
            try:
                card = self.studio.catalog.get(name).card
            except RequestError:
                card = None
            choices.append((render.model_label(name, card), name))
        return choices

    def model_label(self, model_name: str | None) -> str:
        try:
            return render.model_label(model_name, self.studio.catalog.get(model_name).card)
        except RequestError:
            return str(model_name)

    # --- Generate -----------------------------------------------------------------------------------

    def class_options(self, model_name: str | None) -> tuple[list[tuple[str, str]], str | None]:
        """The class picker's (label, class name) entries, tail classes first, and the one picked at first."""
        options = [(render.class_choice_label(choice), choice.name) for choice in self.studio.class_choices(model_name)]
        return options, options[0][1] if options else None

    def generator_classes(self, model_name: str | None):
        """The classes the generator can make, tail classes first, marked with the model's training counts."""
        options, first = self.class_options(model_name)
        return gr.Dropdown(choices=options, value=first)

    def generate(self, model_name: str | None, class_name: str | None, count: float, steps: float, seed: float,
                 guidance: float, progress=gr.Progress(), keep_recognised: bool = False):  # noqa: B008  (Gradio's way to ask for a progress bar)
        """Generate images of one class; returns gallery (captioned with what the model recognises), zip, summary,
        records. With `keep_recognised`, samples on until `count` are recognised as the class (at most
        KEEP_TRIES × count tried) and keeps only those."""
        if not class_name:
            raise gr.Error("Pick a class to generate.")
        self._classifier(model_name)
        loaded = self.studio.generator.describe().get("loaded")
        progress(0.0, desc="Starting" if loaded else "Loading the generator (the first time takes a few seconds)")
        with shown_as_messages():
            settings = self.generation_settings(count, steps, seed, guidance)
            if keep_recognised:
                return self._generate_kept(model_name, class_name, settings, progress)
            generation = self.run_generation(self.studio, model_name, class_name, *settings,
                                             self._reporter(progress, "Denoising"), 0)
        names = generation.file_names()
        gallery = [(self.files.image(image, names[i]), render.generated_caption(generation, i))
                   for i, image in enumerate(generation.images)]
        shown = generation.settings
        download = self.files.write(f"{shown['class_name']}_seed{shown['seed']}.zip", generation.zip_bytes())
        summary = render.generation_summary(generation, model_label_text=self.model_label(model_name))
        return gallery, download, summary, self._public_record(generation.to_dict())

    def _generate_kept(self, model_name: str | None, class_name: str, settings: tuple, progress):
        count, steps, seed, guidance = settings
        kept, last = Kept(), None
        while len(kept.images) < count and kept.tried < KEEP_TRIES * count:
            batch = min(count, KEEP_TRIES * count - kept.tried)
            round_text = f"Round {kept.tried // count + 1}: denoising ({len(kept.images)} of {count} kept so far)"
            last = self.run_generation(self.studio, model_name, class_name, batch, steps, seed, guidance,
                                       self._reporter(progress, round_text), kept.tried)
            for i, (image, recognition) in enumerate(zip(last.images, last.recognitions)):
                if recognition.matches and len(kept.images) < count:
                    kept.images.append(image)
                    kept.recognitions.append(recognition)
                    kept.indices.append(kept.tried + i)
                    kept.seeds.append(last.settings["seeds"][i])
            kept.tried += batch
        return self._kept_outputs(model_name, kept, last.settings | {"count": count})

    def _kept_outputs(self, model_name: str | None, kept: Kept, settings: dict):
        generation = Generation(kept.images, kept.recognitions, settings)
        name = settings["class_name"].replace("/", "_")
        names = [f"{name}_seed{settings['seed']}_{index:03d}.png" for index in kept.indices]
        gallery = [(self.files.image(image, names[i]), render.generated_caption(generation, i))
                   for i, image in enumerate(kept.images)]
        records = {**settings, "first_index": 0, "seeds": kept.seeds, "keep_recognised": True, "tried": kept.tried,
                   "kept": len(kept.images),
                   "images": [{"index": index, "seed": seed, **recognition.to_dict()}
                              for index, seed, recognition in zip(kept.indices, kept.seeds, kept.recognitions)]}
        download = self.files.write(f"{name}_seed{settings['seed']}_recognised.zip",
                                    zip_of(dict(zip(names, kept.images)), records))
        summary = render.generation_summary(generation, tried=kept.tried, model_label_text=self.model_label(model_name))
        return gallery, download, summary, self._public_record(records)

    def generate_page(self, model_name, class_name, count, steps, seed, guidance, keep_recognised=False,
                      progress=gr.Progress()):  # noqa: B008
        """`generate` as the page shows it: the images as cards, captions wrapping instead of being cut."""
        gallery, download, summary, records = self.generate(model_name, class_name, count, steps, seed, guidance,
                                                            progress, keep_recognised)
        pictures = [render.picture(Image.open(path)) for path, _ in gallery]
        matches = [image["matches"] for image in records["images"]]
        return render.generated_cards_html(pictures, [text for _, text in gallery], matches), download, summary, records

    @staticmethod
    def _reporter(progress, text: str) -> Progress:
        def report(done: int, total: int) -> None:
            progress((done, total), desc=text, unit="steps")

        return report

    def generation_settings(self, count, steps, seed, guidance) -> tuple[int, int | None, int, float | None]:
        """(count, steps, seed, guidance) as the one table takes them; steps or guidance None: the generator's default."""
        limits = self.studio.limits
        return (check("count", count, limits), None if steps is None else check("steps", steps, limits),
                check("seed", seed, limits), None if guidance is None else check("guidance", guidance, limits))

    def _public_record(self, records: dict) -> dict:
        """A generation's record as the page shows it: the generator's source as a relative path or a name, and
        without its training provenance (a server path, a working-tree revision); the zip keeps everything."""
        generator = dict(records.get("generator") or {})
        generator.pop("trained", None)
        if generator.get("source"):
            generator["source"] = render.shown_path(str(generator["source"]), self.project_dir)
        return {**records, "generator": generator}

    # ------------------------------------------------------------------------------------------------

    def _classifier(self, model_name: str | None) -> OnnxClassifier:
        if not model_name:
            raise gr.Error("No model selected. Put exported .onnx files in the models folder "
                           f"({Path(self.studio.catalog.models_dir).name}).")
        with shown_as_messages():
            return self.studio.catalog.get(model_name)
