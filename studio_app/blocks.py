"""The whole app from a Studio: the handlers, the starting view, the components and their events."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from inference.service import RequestError, Studio
from studio_app import render, wiring
from studio_app.handlers import GenerationRunner, Handlers, generate_here
from studio_app.layout import StartingView, lay_out

EXAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg")


def build_blocks(studio: Studio, examples_dir: Path, run_generation: GenerationRunner = generate_here,
                 project_dir: Path | None = None, first_example: str | None = None) -> gr.Blocks:
    """The app over `studio`, queued and ready to launch. Paths inside `project_dir` are shown relative to it;
    `first_example` (a file name in `examples_dir`) is the picture classified when the page loads, by default the
    first example of a tail class."""
    examples = example_images(examples_dir)
    handlers = Handlers(studio, run_generation, examples=examples, project_dir=project_dir)
    view = starting_view(studio, handlers, examples, project_dir, first_example)
    with gr.Blocks(title="LongTail Studio", delete_cache=(3600, 3600)) as demo:
        wiring.connect(demo, lay_out(view), handlers)
    return wiring.queue(demo)


def starting_view(studio: Studio, handlers: Handlers, examples: list[Path], project_dir: Path | None,
                  first_example: str | None = None) -> StartingView:
    catalog = studio.catalog
    model_names = catalog.names()
    notices = [] if model_names else [render.no_models_message(catalog.models_dir)]
    notices += [render.hub_problem_message(problem) for problem in catalog.problems]
    class_options, first_class = handlers.class_options(catalog.default())
    default_steps, default_guidance = studio.generator.defaults()
    card = default_card(studio)
    captions = [render.example_caption(path, card) for path in examples]
    return StartingView(
        model_choices=handlers.model_choices(),
        default_model=catalog.default(),
        notices=notices,
        generator_note=render.generator_status_markdown(studio.generator.describe(), project_dir),
        class_options=class_options,
        first_class=first_class,
        default_steps=default_steps,
        default_guidance=default_guidance,
        examples=[(handlers.files.example_thumbnail(path), text) for path, text in zip(examples, captions)],
        first_example=pick_first_example(examples, captions, first_example),
        limits=studio.limits,
    )


def default_card(studio: Studio):
    try:
        return studio.catalog.get(None).card if studio.catalog.default() else None
    except RequestError:
        return None


def pick_first_example(examples: list[Path], captions: list[str], name: str | None) -> Path | None:
    """The example named `name`, else the first of a tail class (its caption ends in the tail mark), else the first."""
    named = [path for path in examples if path.name == name]
    tail = [path for path, text in zip(examples, captions) if text.endswith(render.TAIL_MARK)]
    return next(iter(named + tail + examples), None)


def example_images(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).glob("*") if p.suffix.lower() in EXAMPLE_SUFFIXES)
