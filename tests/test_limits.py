"""The one table of request parameters (inference/limits.py): what `check` takes and refuses, and that a bad value
gets the same sentence from the CLI (`python -m inference predict`), the HTTP API and the app (its handlers, and
once through a launched Gradio server, whose own checks must not answer first)."""

import io
import json
import math
import re

import gradio as gr
import pytest
from conftest import REPO_ROOT, write_tiny_generator
from fastapi.testclient import TestClient
from PIL import Image

import app
from inference.__main__ import main
from inference.limits import PARAMETERS, Limits, ParameterError, check, check_text, markdown_table
from inference.server import create_app
from inference.service import GeneratorService, ModelCatalog, RequestError, Studio
from studio_app.handlers import Handlers
from tests.helpers_onnx import make_card, tiny_net_path, write_model
from tests.helpers_servers import gradio_launched

LIMITS = Limits(max_generate=3, max_steps=5)


def refusal(name: str, value, limits: Limits = LIMITS) -> str:
    with pytest.raises(ParameterError) as refused:
        check(name, value, limits)
    return str(refused.value)


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


# --- The table ----------------------------------------------------------------------------------------


def test_check_returns_the_canonical_value():
    assert check("top_k", 3) == 3 and check("top_k", 3.0) == 3 and type(check("top_k", 3.0)) is int
    assert check("guidance", 3) == 3.0 and type(check("guidance", 3)) is float
    assert check("count", 3, LIMITS) == 3 and check("steps", 5, LIMITS) == 5
    assert check("seed", 2**62 - 1) == 2**62 - 1 and check("guidance", 30) == 30.0  # both ends are allowed
    assert check_text("top_k", " 7 ") == 7 and check_text("guidance", "2.5") == 2.5


@pytest.mark.parametrize("name, value", [
    ("top_k", 0), ("top_k", -1), ("top_k", 21), ("top_k", 10**9), ("top_k", 1.5), ("top_k", True), ("top_k", "3"),
    ("top_k", None), ("count", 4), ("count", False), ("steps", 6), ("seed", -1), ("seed", 2**62),
    ("guidance", math.nan), ("guidance", math.inf), ("guidance", 30.5), ("guidance", 10**400), ("tau", 5.1),
])
def test_check_refuses_with_one_sentence_naming_the_parameter(name, value):
    sentence = refusal(name, value)
    assert sentence.startswith(f"{name} must be ") and "\n" not in sentence
    assert PARAMETERS[name].meaning in sentence


def test_the_sentence_says_what_is_accepted_and_quotes_little_of_what_came():
    assert refusal("top_k", 0) == "top_k must be an integer from 1 to 20 (classes listed per image); got 0"
    assert refusal("count", 4) == "count must be an integer from 1 to 3 (images per generation); got 4"
    assert len(refusal("top_k", "9" * 10**6)) < 200  # a megabyte where a number belongs is not echoed back
    assert refusal("top_k", "1.5") != refusal("top_k", 1.5)  # text is not a number to `check`...
    with pytest.raises(ParameterError, match=re.escape(refusal("top_k", 1.5))):
        check_text("top_k", "1.5")  # ... but typed text is read as the number it spells


def test_the_readme_has_the_table():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert "### Limits" in readme
    assert markdown_table(Limits()) in readme


# --- The same sentence everywhere ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    write_model(tiny_net_path(tmp_path_factory), folder / "tiny.onnx", make_card())
    return folder


@pytest.fixture(scope="module")
def studio(models_dir, tmp_path_factory):
    generator = write_tiny_generator(tmp_path_factory.mktemp("generator") / "tiny", ["cat", "dog", "bird"])
    return Studio(ModelCatalog(models_dir), GeneratorService(generator, device="cpu"), LIMITS)


@pytest.fixture(scope="module")
def http(studio):
    with TestClient(create_app(studio)) as client:
        yield client


@pytest.fixture(scope="module")
def handlers(studio):
    return Handlers(studio)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "red.png"
    path.write_bytes(png_bytes())
    return path


@pytest.mark.parametrize("value", [0, -1, 21, 10**9, 1.5])
def test_a_bad_top_k_gets_the_same_sentence_from_the_cli_http_and_the_app(value, models_dir, image, http, handlers,
                                                                            capsys):
    expected = refusal("top_k", value)

    with pytest.raises(SystemExit) as exited:
        main(["predict", "--model", str(models_dir / "tiny.onnx"), "--top-k", str(value), str(image)])
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().endswith(f"argument --top-k: {expected}")

    response = http.post("/v1/classify", files=[("files", ("red.png", png_bytes(), "image/png"))],
                         data={"top_k": str(value)})
    assert (response.status_code, response.json()) == (422, {"detail": expected})

    with pytest.raises(gr.Error, match=re.escape(expected)):
        handlers.classify("tiny.onnx", [str(image)], value)


GENERATION = {"count": 1, "steps": 1, "seed": 0, "guidance": 1.0}


@pytest.mark.parametrize("name, value", [
    ("count", 0), ("count", 4), ("count", 1.5), ("count", True), ("steps", 0), ("steps", 6), ("steps", 2.5),
    ("seed", -1), ("seed", 0.5), ("seed", None), ("guidance", -0.5), ("guidance", 31), ("guidance", math.nan),
])
def test_a_bad_generation_setting_gets_the_same_sentence_over_http_and_in_the_app(name, value, studio, http,
                                                                                   handlers):
    expected = refusal(name, value)
    settings = {**GENERATION, name: value}

    # json.dumps writes NaN as NaN, which Python's JSON reader (and so FastAPI's) takes.
    response = http.post("/v1/generate", content=json.dumps({"class_name": "cat", **settings}),
                         headers={"Content-Type": "application/json"})
    assert (response.status_code, response.json()) == (422, {"detail": expected})

    with pytest.raises(gr.Error, match=re.escape(expected)):
        handlers.generate("tiny.onnx", "cat", settings["count"], settings["steps"], settings["seed"],
                          settings["guidance"], lambda *args, **kwargs: None)

    # And the Studio itself, so nothing reaches the generator unchecked whatever the front end.
    with pytest.raises(RequestError, match=re.escape(expected)) as refused:
        studio.generate("tiny.onnx", "cat", **settings)
    assert refused.value.status == 422


def test_values_the_app_used_to_refuse_or_change_are_taken_as_the_table_says(studio, http, handlers):
    """Guidance up to 30 everywhere (the app stopped at 15), and 3.0 is the integer 3."""
    response = http.post("/v1/generate", json={"class_name": "cat", "count": 1, "steps": 1, "guidance": 20})
    assert response.status_code == 200 and response.json()["guidance"] == 20.0
    records = handlers.generate("tiny.onnx", "cat", 1.0, 1.0, 3.0, 20, lambda *args, **kwargs: None)[3]
    assert (records["count"], records["seed"], records["guidance"]) == (1, 3, 20.0)


# --- Through a launched app: Gradio's own checks must not answer first ---------------------------------


@pytest.fixture(scope="module")
def served(studio, tmp_path_factory):
    from gradio_client import Client

    with gradio_launched(app.build_app(studio=studio, examples_dir=tmp_path_factory.mktemp("no_examples"))) as url:
        yield Client(url, verbose=False)


def test_the_launched_app_answers_bad_values_with_the_tables_sentence(served, image):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    # Gradio's slider would say "Value 17 is greater than maximum value 3.", its number box would round 0.5 to 0,
    # and None made its bounds check raise a TypeError.
    for name, value in [("count", 17), ("seed", 0.5), ("seed", None), ("guidance", 31)]:
        settings = {**GENERATION, name: value}
        with pytest.raises(AppError, match=re.escape(refusal(name, value))):
            served.predict("tiny.onnx", "cat", settings["count"], settings["steps"], settings["seed"],
                           settings["guidance"], api_name="/generate")
    with pytest.raises(AppError, match=re.escape(refusal("top_k", 1.5))):
        served.predict("tiny.onnx", [handle_file(image)], 1.5, api_name="/classify")
    assert served.predict("tiny.onnx", [handle_file(image)], 2, api_name="/classify")[-1][0]["prediction"]
