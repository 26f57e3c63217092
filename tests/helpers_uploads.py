"""What the upload tests share (tests/test_uploads.py: formats and sizes; tests/test_hostile_images.py: files built
to break a decoder): building image files, writing each case's file under its upload name, the tiny model they
are classified with, the reference record of each case, and the app and HTTP surfaces over that model.

A case is anything with `id`, `file_name`, `error` and `build() -> (file bytes, reference image)`.
"""

from __future__ import annotations

import contextlib
import io
import struct
import zlib
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from inference.classifier import OnnxClassifier
from inference.images import load_image
from inference.service import GeneratorService, Limits, ModelCatalog, Studio
from tests.helpers_onnx import make_card, tiny_net_path, write_model
from tests.helpers_servers import uvicorn_in_thread

MODEL = "tiny.onnx"


def encode(image: Image.Image, image_format: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **params)
    return buffer.getvalue()


def picture(width: int = 40, height: int = 24) -> Image.Image:
    """Gradients with a red block at the top left: no symmetry, so a rotation or a wrong frame shows."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (3 * x + 5 * y) % 256], -1).astype(np.uint8)
    pixels[: height // 3, : width // 4] = (250, 20, 20)
    return Image.fromarray(pixels)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_uploads(folder: Path, cases) -> dict[str, Path]:
    """Every case's file, built once, under its upload name (one sub-folder per case: names may repeat)."""
    paths = {}
    for case in cases:
        (folder / case.id).mkdir()
        paths[case.id] = folder / case.id / case.file_name
        paths[case.id].write_bytes(case.build()[0])
    return paths


def tiny_model_folder(tmp_path_factory) -> Path:
    """A model folder holding the tiny classifier as MODEL, with its card."""
    folder = tmp_path_factory.mktemp("zoo")
    write_model(tiny_net_path(tmp_path_factory), folder / MODEL, make_card())
    return folder


def reference_records(models_dir: Path, cases) -> dict[str, dict]:
    """For each case that must be classified: its reference image's record, uploaded as an 8-bit PNG (through PNG
    bytes and the loader, as an upload of the reference would go), straight from the classifier."""
    classifier = OnnxClassifier(models_dir / MODEL)
    return {case.id: classifier.predict([load_image(encode(case.build()[1], "PNG"))], top_k=3)[0].to_dict()
            for case in cases if case.error is None}


def app_handlers_over(models_dir: Path):
    """The app's handlers over the app's own Studio (app.build_studio), called directly."""
    import app
    from studio_app.handlers import Handlers

    return Handlers(app.build_studio(models_dir))


@contextlib.contextmanager
def http_client(models_dir: Path):
    """A client of the HTTP service over `models_dir`, served in a thread for as long as the block runs."""
    from inference.server import create_app

    studio = Studio(ModelCatalog(models_dir), GeneratorService(None), Limits())
    with uvicorn_in_thread(create_app(studio)) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client
