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
    # top 5 classes, τ = 0.5 (post-hoc logit adjustment; 0 = as trained)
    gallery, cards, top_classes, summary, messages, records = client.predict(
        "cifar10_lt_ce_resnet32.onnx", [handle_file("cat.png")], 5, 0.5, api_name="/classify")
    # 4 frog images, 7 steps, seed 0, guidance 7; True: keep only those the model recognises as frogs
    cards, zip_file, summary, records = client.predict(
        "cifar10_lt_ce_resnet32.onnx", "frog", 4, 7, 0, 7.0, False, api_name="/generate")

`records` of /classify is the same JSON as `python -m inference predict` prints: one object per image;
/generate's says, for every image, its seed and what the model recognises in it. The other outputs are the
page's HTML (result cards, charts) and Markdown.
`client.predict("cifar10_lt_ce_resnet32.onnx", api_name="/model_card")` returns the card's summary (Markdown),
class histogram, accuracy table and long-tail pictures (HTML); `client.predict(model, 0.5, api_name="/tau_effect")`
what τ = 0.5 does on the test set.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from inference.service import Generation, GeneratorService, Limits, ModelCatalog, Progress, Studio
from studio_app.blocks import build_blocks
from studio_app.handlers import warm_generator

# No calls home: Gradio reads this when the Blocks are built and launched, so after the imports is early enough.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

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
LIMITS = Limits()  # the HTTP service's own: the app takes no more files, pixels or steps per request than it does
MAX_UPLOAD_SIZE = f"{LIMITS.max_upload_bytes // 2**20}mb"  # larger uploads are refused by Gradio itself


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
def run_generation(studio: Studio, model_name: str | None, class_name: str, count: int, steps: int, seed: int,
                   guidance: float, progress: Progress, first_index: int = 0) -> Generation:
    """The only function that needs a GPU: on ZeroGPU Spaces it is lent one for the duration of the call."""
    return studio.generate(model_name, class_name, count=count, seed=seed, steps=steps, guidance=guidance,
                           first_index=first_index, progress=progress)


def build_app(models_dir: str | Path | None = None, examples_dir: str | Path | None = None,
              generator: str | Path | None = None, studio: Studio | None = None):
    """The Gradio Blocks of the app, over `studio` or one built by `build_studio`."""
    return build_blocks(studio or build_studio(models_dir, generator), Path(examples_dir or DEFAULT_EXAMPLES_DIR),
                        run_generation=run_generation, project_dir=APP_DIR)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    studio = build_studio()
    demo = build_app(studio=studio)
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        max_file_size=MAX_UPLOAD_SIZE,
        prevent_thread_lock=True,
    )
    # Once the page is served, so start-up is not slowed: the generator opens in the background (torch and its
    # weights take seconds) and the first generation starts at once.
    warm_generator(studio)
    demo.block_thread()


if __name__ == "__main__":
    main()
