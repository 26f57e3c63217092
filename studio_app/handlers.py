"""The app's event handlers: plain methods over the shared service (`inference.service.Studio`), called by
Gradio (see wiring.py) and directly by the tests.

Each handler turns what the components hold into one Studio call and its result into what the components
show (render.py). Images are loaded and classified by the Studio, as for the HTTP service; a
`RequestError` becomes a `gr.Error`, which Gradio shows as a message and its API returns as an error. The
numbers Gradio hands over (sliders, the seed; anything at all from an API caller) are checked by the one table,
`inference.limits.check`, first, so a bad one gets the sentence the HTTP API and the CLI give.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import gradio as gr

from inference.classifier import OnnxClassifier, record
from inference.images import ImageLoadError
from inference.limits import ParameterError, check
from inference.service import Generation, Progress, RequestError, Studio
from studio_app import render
from studio_app.files import OutputFiles

# (studio, model_name, class_name, count, steps, seed, guidance, progress) → the generation. app.py passes
# its own, which a ZeroGPU Space runs on a GPU lent for the call.
GenerationRunner = Callable[[Studio, str | None, str, int, int, int, float, Progress], Generation]


def generate_here(studio: Studio, model_name: str | None, class_name: str, count: int, steps: int, seed: int,
                  guidance: float, progress: Progress) -> Generation:
    """The default runner: the generation runs in this process, on whatever device the service picked."""
    return studio.generate(model_name, class_name, count=count, seed=seed, steps=steps, guidance=guidance,
                           progress=progress)


@contextmanager
def shown_as_messages() -> Iterator[None]:
    """A request the service refuses becomes a message in the UI (and an error for an API caller)."""
    try:
        yield
    except (RequestError, ParameterError) as error:
        raise gr.Error(str(error)) from error


class Handlers:
    def __init__(self, studio: Studio, run_generation: GenerationRunner = generate_here,
                 files: OutputFiles | None = None):
        self.studio = studio
        self.run_generation = run_generation
        self.files = files or OutputFiles()

    # --- Classify -----------------------------------------------------------------------------------

    def classify(self, model_name: str | None, files: list[str] | None, top_k: float):
        """Classify every uploaded image; returns gallery, top-k label, class bars, summary, messages and JSON records."""
        self._classifier(model_name)  # a model that cannot be used is reported even before an upload
        files = files or []
        if not files:
            return [], None, "", "", "Upload one or more images to classify them.", [], {"items": []}
        with shown_as_messages():
            top_k = check("top_k", top_k, self.studio.limits)
            classified = self.studio.classify_with_images(model_name, files, top_k=top_k)

        records, items, gallery, problems = [], [], [], []
        for file, item in zip(files, classified):
            name = Path(file).name
            records.append(record(name, item.result))
            if isinstance(item.result, ImageLoadError):
                gr.Warning(str(item.result))
                problems.append(str(item.result))
                continue
            items.append({"image": name, "prediction": item.result})
            gallery.append((self.files.thumbnail(item.image, name), render.caption(item.result)))

        state = {"items": items}
        label, bars, summary = self.details(state, 0)
        return gallery, label, bars, summary, render.unreadable_files_markdown(problems, len(files)), records, state

    def select_image(self, state: dict, event: gr.SelectData):
        """The details of the gallery image that was clicked."""
        return self.details(state, event.index if isinstance(event.index, int) else 0)

    @staticmethod
    def details(state: dict, index: int):
        """Top-k label, class bars and summary of image `index` of the last classification (the state)."""
        items = state.get("items") or []
        if not items:
            return None, "", ""
        item = items[max(0, min(index, len(items) - 1))]
        prediction = item["prediction"]
        return (
            {score.name: score.probability for score in prediction.top},
            render.class_bars_html(prediction.scores),
            render.prediction_markdown(item["image"], prediction),
        )

    # --- Model card ---------------------------------------------------------------------------------

    def model_card(self, model_name: str | None):
        """The model card of one model file: summary (Markdown), training histogram and accuracy table (HTML)."""
        if not model_name:
            return render.no_models_message(self.studio.catalog.models_dir), "", ""
        classifier = self._classifier(model_name)
        card = classifier.card
        return render.card_markdown(card, classifier), render.histogram_html(card), render.metrics_html(card)

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
                 guidance: float, progress=gr.Progress()):  # noqa: B008  (Gradio's way to ask for a progress bar)
        """Generate images of one class; returns gallery (captioned with what the model recognises), zip, summary, records."""
        if not class_name:
            raise gr.Error("Pick a class to generate.")
        self._classifier(model_name)

        def report(done: int, total: int) -> None:
            progress((done, total), desc="Denoising", unit="steps")

        with shown_as_messages():
            settings = self.generation_settings(count, steps, seed, guidance)
            generation = self.run_generation(self.studio, model_name, class_name, *settings, report)
        names = generation.file_names()
        gallery = [(self.files.image(image, names[i]), render.generated_caption(generation, i))
                   for i, image in enumerate(generation.images)]
        settings = generation.settings
        download = self.files.write(f"{settings['class_name']}_seed{settings['seed']}.zip", generation.zip_bytes())
        return gallery, download, render.generation_summary(generation), generation.to_dict()

    def generation_settings(self, count, steps, seed, guidance) -> tuple[int, int | None, int, float | None]:
        """(count, steps, seed, guidance) as the one table takes them; steps or guidance None: the generator's default."""
        limits = self.studio.limits
        return (check("count", count, limits), None if steps is None else check("steps", steps, limits),
                check("seed", seed, limits), None if guidance is None else check("guidance", guidance, limits))

    # ------------------------------------------------------------------------------------------------

    def _classifier(self, model_name: str | None) -> OnnxClassifier:
        if not model_name:
            raise gr.Error(f"No model selected. Put exported .onnx files in {self.studio.catalog.models_dir}.")
        with shown_as_messages():
            return self.studio.catalog.get(model_name)
