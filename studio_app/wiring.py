"""Which event runs which handler, under which API name and in which queue.

Two queues: "classify" (classification, the model card and the class list) and "generate". ONNX Runtime
already spreads one request over every core, so classifications side by side would only make each of them
slower; generation has its own queue, so a classification never waits behind a generation.
"""

from __future__ import annotations

import json

import gradio as gr

from studio_app.handlers import Handlers
from studio_app.layout import Components

CLASSIFY_CONCURRENCY = 1
GENERATE_CONCURRENCY = 1
QUEUE_SIZE = 64  # requests waiting beyond this are turned away with "queue full"


# Gradio 6 takes CSS at launch(), which the tests' launches and a Space's do not pass: the page adds it itself.
# The example gallery: small cells that wrap (Gradio's are at least 100 px, so a fifth column ran off a narrow
# column behind a sideways scroll) and no fixed height. Toasts at the bottom, off the title and the summary. A
# long model label ends in an ellipsis before the dropdown arrow instead of running under it (a phone).
APP_CSS = """
#lt-example-gallery .grid-wrap { min-height: 0 !important; max-height: none !important; overflow: visible !important; }
#lt-example-gallery .grid-container { grid-template-columns: repeat(auto-fill, minmax(64px, 1fr)) !important;
  grid-template-rows: none !important; grid-auto-rows: auto !important; gap: 6px !important; }
#lt-example-gallery .caption-label { max-width: 100% !important; font-size: 0.72em !important; }
#lt-example-gallery img { image-rendering: pixelated; }
.toast-wrap { top: auto !important; bottom: var(--size-4, 1rem) !important; }
#lt-model .secondary-wrap input { text-overflow: ellipsis; min-width: 0; padding-right: 28px; }
#lt-model .icon-wrap { flex-shrink: 0; }
"""

# A phone shows the results right under the upload: the examples' accordion is closed there once the page is up.
ON_LOAD = """() => {
  const style = document.createElement("style");
  style.textContent = %s;
  document.head.appendChild(style);
  if (!window.matchMedia("(max-width: 640px)").matches) return;
  const toggle = document.querySelector("#lt-examples button, #lt-examples .label-wrap");
  if (toggle && document.querySelector("#lt-example-gallery")) toggle.click();
}""" % json.dumps(APP_CSS)


def connect(demo: gr.Blocks, ui: Components, handlers: Handlers) -> None:
    """Hook the handlers to the components' events (inside the `gr.Blocks` of `ui`)."""
    connect_classify(demo, ui, handlers)
    connect_model_card(demo, ui, handlers)
    connect_generate(demo, ui, handlers)
    demo.load(None, js=ON_LOAD)


def queue(demo: gr.Blocks) -> gr.Blocks:
    return demo.queue(default_concurrency_limit=CLASSIFY_CONCURRENCY, max_size=QUEUE_SIZE)


def connect_classify(demo: gr.Blocks, ui: Components, handlers: Handlers) -> None:
    tab = ui.classify
    # The page loads with an example in the upload: it is classified at once. τ re-classifies as the slider moves
    # ("always_last": a move while one runs is answered once that one is done, the latest value only).
    gr.on(
        triggers=[demo.load, tab.button.click, tab.files.change, ui.model.change, tab.top_k.release, tab.tau.change],
        fn=handlers.classify_page,
        inputs=[ui.model, tab.files, tab.top_k, tab.tau],
        outputs=[tab.gallery, tab.results, tab.bars, tab.summary, tab.messages, tab.records, ui.state],
        api_name="classify",
        concurrency_id="classify",
        concurrency_limit=CLASSIFY_CONCURRENCY,
        trigger_mode="always_last",
    ).then(handlers.details_picker, inputs=[ui.state], outputs=[tab.details], api_visibility="private", queue=False)
    gr.on(
        triggers=[demo.load, ui.model.change, tab.tau.change],
        fn=handlers.tau_effect,
        inputs=[ui.model, tab.tau],
        outputs=[tab.tau_effect],
        api_name="tau_effect",
        concurrency_id="classify",
        trigger_mode="always_last",
    )
    tab.details.input(
        handlers.show_details, inputs=[ui.state, tab.details], outputs=[tab.results, tab.bars, tab.summary],
        api_name="show_details", api_visibility="private", queue=False,
    )
    if tab.examples is not None:
        tab.examples.select(handlers.example, outputs=[tab.files], api_name="example", api_visibility="private",
                            queue=False)


def connect_model_card(demo: gr.Blocks, ui: Components, handlers: Handlers) -> None:
    gr.on(
        triggers=[demo.load, ui.model.change],
        fn=handlers.model_card,
        inputs=[ui.model],
        outputs=[ui.card.summary, ui.card.histogram, ui.card.metrics],
        api_name="model_card",
        concurrency_id="classify",
    )
    gr.on(
        triggers=[demo.load, ui.model.change],
        fn=handlers.long_tail_pictures,
        inputs=[ui.model],
        outputs=[ui.card.pictures],
        api_name="long_tail_pictures",
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
        handlers.generate_page,
        inputs=[ui.model, tab.class_name, tab.count, tab.steps, tab.seed, tab.guidance, tab.keep_recognised],
        outputs=[tab.gallery, tab.download, tab.summary, tab.records],
        show_progress_on=[tab.gallery],
        api_name="generate",
        concurrency_id="generate",
        concurrency_limit=GENERATE_CONCURRENCY,
    )
