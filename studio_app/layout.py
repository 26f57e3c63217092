"""The app's components, declared tab by tab (called inside a `gr.Blocks`); what they do is in wiring.py.

`StartingView` is everything the page shows before the first event: the models on offer, the generator's
note and defaults, the class picker for the default model, the examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from inference.limits import PARAMETERS
from inference.service import Limits
from studio_app import render

MAX_TOP_K = PARAMETERS["top_k"].high


def bounds(name: str, limits: Limits) -> tuple[float, float]:
    """A parameter's (lowest, highest) value in the one table (inference/limits.py), as the slider offers it."""
    parameter = PARAMETERS[name]
    return parameter.low, parameter.upper(limits)


def checked_by_the_handler(component: gr.Slider | gr.Number) -> gr.Slider | gr.Number:
    """The component hands its value to the handler as sent, which checks it against the one table as HTTP and the
    CLI do. Gradio's own check would answer an API caller's 17 with its own sentence and None with a TypeError, and
    precision=0 would round 1.5 to 2 silently. (Per instance: a subclass of a Gradio component makes Gradio write
    a .pyi stub next to this file on import.)"""
    component.preprocess = _as_sent
    return component


def _as_sent(payload):
    return payload


@dataclass(frozen=True)
class StartingView:
    model_names: list[str]
    default_model: str | None
    notices: list[str]  # Markdown above the model picker: no models, Hub models that could not be fetched
    generator_note: str
    class_options: list[tuple[str, str]]  # (label, class name) for the default model
    first_class: str | None
    default_steps: int
    default_guidance: float
    examples: list[Path]
    limits: Limits


@dataclass
class ClassifyTab:
    files: gr.File
    top_k: gr.Slider
    button: gr.Button
    messages: gr.Markdown
    gallery: gr.Gallery
    summary: gr.Markdown
    label: gr.Label
    bars: gr.HTML
    records: gr.JSON


@dataclass
class GenerateTab:
    class_name: gr.Dropdown
    count: gr.Slider
    steps: gr.Slider
    seed: gr.Number
    guidance: gr.Slider
    button: gr.Button
    gallery: gr.Gallery
    summary: gr.Markdown
    download: gr.File
    records: gr.JSON


@dataclass
class CardTab:
    summary: gr.Markdown
    histogram: gr.HTML
    metrics: gr.HTML


@dataclass
class Components:
    model: gr.Dropdown
    state: gr.State  # the last classification, for showing the details of a clicked gallery image
    classify: ClassifyTab
    generate: GenerateTab
    card: CardTab


def lay_out(view: StartingView) -> Components:
    gr.Markdown(render.INTRO)
    for notice in view.notices:
        gr.Markdown(notice)
    model = gr.Dropdown(choices=view.model_names, value=view.default_model, label="Model", interactive=True)
    state = gr.State({"items": []})
    with gr.Tab("Classify"):
        classify = classify_tab(view)
    with gr.Tab("Generate"):
        generate = generate_tab(view)
    with gr.Tab("Model card"):
        card = card_tab()
    return Components(model, state, classify, generate, card)


def classify_tab(view: StartingView) -> ClassifyTab:
    with gr.Row():
        with gr.Column(scale=1):
            # Any file: the service recognises images by their bytes, not their names, and answers file by file, so a
            # file without an extension, cat.png.exe or a TGA gets its own answer and the other files still get theirs.
            files = gr.File(file_count="multiple", label="Images")
            top_k = checked_by_the_handler(gr.Slider(*bounds("top_k", view.limits), value=5, step=1,
                                                     label="Top-k classes"))
            button = gr.Button("Classify", variant="primary")
            messages = gr.Markdown(label="Messages")
            if view.examples:
                # Not cached: the result depends on the model picked above.
                gr.Examples([[[str(p)]] for p in view.examples], inputs=[files], cache_examples=False)
        with gr.Column(scale=2):
            gallery = gr.Gallery(label="Images (click one for details)", columns=4, allow_preview=False)
            summary = gr.Markdown(label="Summary")
            # Shows what it is given: the top-k of the selected image (k from the slider).
            label = gr.Label(num_top_classes=MAX_TOP_K, label="Top classes")
            bars = gr.HTML(label="All classes")
    records = gr.JSON(label="Raw predictions (all images)")
    return ClassifyTab(files, top_k, button, messages, gallery, summary, label, bars, records)


def generate_tab(view: StartingView) -> GenerateTab:
    gr.Markdown(view.generator_note)
    with gr.Row():
        with gr.Column(scale=1):
            # Custom values are allowed so an API caller may name any class of another model; the
            # service checks the name against the generator with a clear message.
            class_name = gr.Dropdown(view.class_options, value=view.first_class, label="Class (tail classes first)",
                                     interactive=True, allow_custom_value=True)
            count = checked_by_the_handler(gr.Slider(*bounds("count", view.limits), value=4, step=1,
                                                     label="Number of images"))
            steps = checked_by_the_handler(gr.Slider(*bounds("steps", view.limits), value=view.default_steps, step=1,
                                                     label="Denoising steps"))
            seed_low, seed_high = bounds("seed", view.limits)
            seed = checked_by_the_handler(gr.Number(value=0, precision=0, minimum=seed_low, maximum=seed_high,
                                                    label="Seed"))
            guidance = checked_by_the_handler(gr.Slider(*bounds("guidance", view.limits), value=view.default_guidance,
                                                        step=0.5, label="Guidance (1 = none; higher follows the class "
                                                                        "more closely)"))
            button = gr.Button("Generate", variant="primary")
        with gr.Column(scale=2):
            gallery = gr.Gallery(label="Generated images, as the model recognises them", columns=4,
                                 object_fit="contain", height="auto")
            summary = gr.Markdown()
            download = gr.File(label="Download (PNGs + generation.json)")
    records = gr.JSON(label="Seeds and recognition (all images)")
    return GenerateTab(class_name, count, steps, seed, guidance, button, gallery, summary, download, records)


def card_tab() -> CardTab:
    summary = gr.Markdown(label="Card")
    gr.Markdown("#### Training images per class")
    histogram = gr.HTML(label="Histogram")
    gr.Markdown("#### Accuracy per group")
    metrics = gr.HTML(label="Accuracy")
    return CardTab(summary, histogram, metrics)
