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
    model_choices: list[tuple[str, str]]  # (label from the card, file name)
    default_model: str | None
    notices: list[str]  # Markdown above the model picker: no models, Hub models that could not be fetched
    generator_note: str
    class_options: list[tuple[str, str]]  # (label, class name) for the default model
    first_class: str | None
    default_steps: int
    default_guidance: float
    examples: list[tuple[str, str]]  # (enlarged thumbnail, caption such as "truck ★" for a tail class), one per example file
    first_example: Path | None  # classified when the page loads, so a visitor sees a result at once
    limits: Limits


@dataclass
class ClassifyTab:
    files: gr.File
    top_k: gr.Slider
    tau: gr.Slider
    tau_effect: gr.HTML
    button: gr.Button
    messages: gr.Markdown
    examples: gr.Gallery | None
    gallery: gr.Gallery
    results: gr.HTML
    details: gr.Dropdown
    summary: gr.Markdown
    bars: gr.HTML
    records: gr.JSON


@dataclass
class GenerateTab:
    class_name: gr.Dropdown
    count: gr.Slider
    steps: gr.Slider
    seed: gr.Number
    guidance: gr.Slider
    keep_recognised: gr.Checkbox
    button: gr.Button
    gallery: gr.HTML
    summary: gr.Markdown
    download: gr.File
    records: gr.JSON


@dataclass
class CardTab:
    summary: gr.Markdown
    histogram: gr.HTML
    metrics: gr.HTML
    pictures: gr.HTML


@dataclass
class Components:
    model: gr.Dropdown
    state: gr.State  # the last classification, for showing the details of another image
    classify: ClassifyTab
    generate: GenerateTab
    card: CardTab


def lay_out(view: StartingView) -> Components:
    gr.Markdown(render.INTRO)
    for notice in view.notices:
        gr.Markdown(notice)
    model = gr.Dropdown(choices=view.model_choices, value=view.default_model, label="Model", interactive=True,
                        elem_id="lt-model")
    state = gr.State({"items": []})
    with gr.Tab("Classify"):
        classify = classify_tab(view)
    with gr.Tab("Generate"):
        generate = generate_tab(view)
    with gr.Tab("Model card"):
        card = card_tab()
    return Components(model, state, classify, generate, card)


TAU_RANGE = (-1.0, 2.0)  # the slider's range: the model card's curve covers it; the API takes −5 … 5


def classify_tab(view: StartingView) -> ClassifyTab:
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=260):
            # Any file: the service recognises images by their bytes, not their names, and answers file by file, so a
            # file without an extension, cat.png.exe or a TGA gets its own answer and the other files still get theirs.
            # At most 240 px high (a long list scrolls inside), so on a phone the results stay close under it.
            files = gr.File(file_count="multiple", label="Images", height=240,
                            value=[str(view.first_example)] if view.first_example else None)
            with gr.Row():
                top_k = checked_by_the_handler(gr.Slider(*bounds("top_k", view.limits), value=5, step=1,
                                                         label="Top classes shown", min_width=140))
                button = gr.Button("Classify", variant="primary", min_width=100)
            messages = gr.Markdown()
            examples = example_gallery(view)
        with gr.Column(scale=2, min_width=260):
            # The (thumbnail, caption) pairs of the API's /classify; the page shows the cards instead.
            gallery = gr.Gallery(label="Images", visible=False)
            results = gr.HTML(elem_id="lt-results")
            details = gr.Dropdown(choices=[], label="Details for", visible=False, interactive=True)
            tau = checked_by_the_handler(gr.Slider(*TAU_RANGE, value=0.0, step=0.05, elem_id="lt-tau",
                                                   label="τ: trade head accuracy for tail accuracy (0 = as trained)",
                                                   info="Post-hoc logit adjustment: logits − τ·log(training share of "
                                                        "the class). τ > 0 favours tail classes, τ < 0 head classes."))
            tau_effect = gr.HTML(elem_id="lt-tau-effect")
            summary = gr.Markdown()
            bars = gr.HTML(elem_id="lt-top-classes")
    with gr.Accordion("Raw predictions (JSON, as the API returns them)", open=False):
        records = gr.JSON(show_label=False)
    return ClassifyTab(files, top_k, tau, tau_effect, button, messages, examples, gallery, results, details, summary,
                       bars, records)


def example_gallery(view: StartingView) -> gr.Gallery | None:
    """The example pictures, one per class, tail classes marked; collapsed on a phone (blocks.COLLAPSE_ON_PHONES)."""
    if not view.examples:
        return None
    with gr.Accordion("Examples: click one (★ = tail class)", open=True, elem_id="lt-examples"):
        return gr.Gallery(view.examples, columns=5, allow_preview=False, show_label=False, object_fit="contain",
                          elem_id="lt-example-gallery")


def generate_tab(view: StartingView) -> GenerateTab:
    gr.Markdown(view.generator_note)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=260):
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
            keep_recognised = gr.Checkbox(False, label="Keep only samples the model recognises as the class",
                                          info="Samples on until enough pass, at most 4× the number asked for.")
            button = gr.Button("Generate", variant="primary")
        with gr.Column(scale=2, min_width=260):
            gallery = gr.HTML(elem_id="lt-generated")
            summary = gr.Markdown()
            download = gr.File(label="Download (PNGs + generation.json)")
    with gr.Accordion("Seeds and recognition (JSON, all images)", open=False):
        records = gr.JSON(show_label=False)
    return GenerateTab(class_name, count, steps, seed, guidance, keep_recognised, button, gallery, summary, download,
                       records)


def card_tab() -> CardTab:
    with gr.Row(equal_height=False):
        with gr.Column(min_width=280):
            summary = gr.Markdown()
            gr.Markdown("#### Training images per class")
            histogram = gr.HTML(elem_id="lt-histogram")
        with gr.Column(min_width=280):
            gr.Markdown("#### Test accuracy per group")
            metrics = gr.HTML(elem_id="lt-metrics")
            gr.Markdown("#### The long-tail pictures")
            pictures = gr.HTML(elem_id="lt-pictures")
    return CardTab(summary, histogram, metrics, pictures)
