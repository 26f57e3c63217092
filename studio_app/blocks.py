"""The whole app from a Studio: the handlers, the starting view, the components and their events."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from inference.service import Studio
from studio_app import render, wiring
from studio_app.handlers import GenerationRunner, Handlers, generate_here
from studio_app.layout import StartingView, lay_out

EXAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg")


def build_blocks(studio: Studio, examples_dir: Path, run_generation: GenerationRunner = generate_here,
                 project_dir: Path | None = None) -> gr.Blocks:
    """The app over `studio`, queued and ready to launch. Generator sources inside `project_dir` are shown
    relative to it."""
    handlers = Handlers(studio, run_generation)
    view = starting_view(studio, handlers, examples_dir, project_dir)
    with gr.Blocks(title="LongTail Studio", delete_cache=(3600, 3600)) as demo:
        wiring.connect(demo, lay_out(view), handlers)
    return wiring.queue(demo)


def starting_view(studio: Studio, handlers: Handlers, examples_dir: Path, project_dir: Path | None) -> StartingView:
    catalog = studio.catalog
    model_names = catalog.names()
    notices = [] if model_names else [render.no_models_message(catalog.models_dir)]
    notices += [render.hub_problem_message(problem) for problem in catalog.problems]
    class_options, first_class = handlers.class_options(catalog.default())
    default_steps, default_guidance = studio.generator.defaults()
    return StartingView(
        model_names=model_names,
        default_model=catalog.default(),
        notices=notices,
        generator_note=render.generator_status_markdown(studio.generator.describe(), project_dir),
        class_options=class_options,
        first_class=first_class,
        default_steps=default_steps,
        default_guidance=default_guidance,
        examples=example_images(examples_dir),
        limits=studio.limits,
    )


def example_images(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).glob("*") if p.suffix.lower() in EXAMPLE_SUFFIXES)
