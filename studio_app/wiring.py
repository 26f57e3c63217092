"""Which event runs which handler, under which API name and in which queue.

Two queues: "classify" (classification, the model card and the class list) and "generate". ONNX Runtime
already spreads one request over every core, so classifications side by side would only make each of them
slower; generation has its own queue, so a classification never waits behind a generation.
"""

from __future__ import annotations

import gradio as gr

from studio_app.handlers import Handlers
from studio_app.layout import Components

CLASSIFY_CONCURRENCY = 1
GENERATE_CONCURRENCY = 1
QUEUE_SIZE = 64  # requests waiting beyond this are turned away with "queue full"


def connect(demo: gr.Blocks, ui: Components, handlers: Handlers) -> None:
    """Hook the handlers to the components' events (inside the `gr.Blocks` of `ui`)."""
    connect_classify(ui, handlers)
    connect_model_card(demo, ui, handlers)
    connect_generate(demo, ui, handlers)


def queue(demo: gr.Blocks) -> gr.Blocks:
    return demo.queue(default_concurrency_limit=CLASSIFY_CONCURRENCY, max_size=QUEUE_SIZE)


def connect_classify(ui: Components, handlers: Handlers) -> None:
    tab = ui.classify
    gr.on(
        triggers=[tab.button.click, tab.files.change, ui.model.change, tab.top_k.release],
        fn=handlers.classify,
        inputs=[ui.model, tab.files, tab.top_k],
        outputs=[tab.gallery, tab.label, tab.bars, tab.summary, tab.messages, tab.records, ui.state],
        api_name="classify",
        concurrency_id="classify",
        concurrency_limit=CLASSIFY_CONCURRENCY,
    )
    tab.gallery.select(
        handlers.select_image, inputs=[ui.state], outputs=[tab.label, tab.bars, tab.summary], api_name="select_image",
        api_visibility="private", queue=False,
    )


def connect_model_card(demo: gr.Blocks, ui: Components, handlers: Handlers) -> None:
    gr.on(
        triggers=[demo.load, ui.model.change],
        fn=handlers.model_card,
        inputs=[ui.model],
        outputs=[ui.card.summary, ui.card.histogram, ui.card.metrics],
        api_name="model_card",
        concurrency_id="classify",
    )


def connect_generate(demo: gr.Blocks, ui: Components, handlers: Handlers) -> None:
    tab = ui.generate
    gr.on(
        triggers=[demo.load, ui.model.change],
        fn=handlers.generator_classes,
        inputs=[ui.model],
        outputs=[tab.class_name],
        api_name="generator_classes",
        concurrency_id="classify",
    )
    tab.button.click(
        handlers.generate,
        inputs=[ui.model, tab.class_name, tab.count, tab.steps, tab.seed, tab.guidance],
        outputs=[tab.gallery, tab.download, tab.summary, tab.records],
        show_progress_on=[tab.gallery],
        api_name="generate",
        concurrency_id="generate",
        concurrency_limit=GENERATE_CONCURRENCY,
    )
