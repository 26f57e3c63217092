"""τ, post-hoc logit adjustment, on every surface: the classifier, the Studio, the HTTP API (`tau`) and the CLI
(`--tau`). Each applies logits − τ·log(training prior), says in every record which τ it applied, refuses a bad τ
with the limits table's sentence, and refuses τ ≠ 0 on a model without training counts with one sentence. A model
exported before the τ curve existed still takes τ."""

import io
import json
import math
import re

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from inference.__main__ import main
from inference.card import ModelCard, Preprocessing
from inference.classifier import OnnxClassifier
from inference.limits import ParameterError, check, number_from_text
from inference.long_tail import PriorUnavailableError
from inference.server import create_app
from inference.service import ModelCatalog, RequestError, Studio
from tests.helpers_onnx import CLASS_COUNTS, CLASS_NAMES, make_card, tiny_net_path, write_model

BAD_TAUS = [math.nan, math.inf, True, "1", None, 5.5, -5.01]
BAD_TAU_TEXTS = ["nan", "inf", "true", "one", "5.5", "-6"]  # an empty form field is absent: the default, as for top_k


def refusal(value) -> str:
    with pytest.raises(ParameterError) as refused:
        check("tau", value)
    return str(refused.value)


def png_bytes(seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tau_zoo")
    raw = tiny_net_path(tmp_path_factory)
    write_model(raw, folder / "tiny.onnx", make_card())  # exported before the τ curve: no tau_curve, no long_tail
    unknown = ModelCard.without_training_data(CLASS_NAMES, Preprocessing([3, 32, 32], [0.5] * 3, [0.25] * 3))
    write_model(raw, folder / "no_counts.onnx", unknown)
    return folder


@pytest.fixture(scope="module")
def classifier(models_dir):
    return OnnxClassifier(models_dir / "tiny.onnx")


@pytest.fixture(scope="module")
def studio(models_dir):
    return Studio(ModelCatalog(models_dir))


@pytest.fixture(scope="module")
def http(studio):
    with TestClient(create_app(studio)) as client:
        yield client


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tau_images")
    paths = []
    for seed in range(3):
        paths.append(folder / f"noise{seed}.png")
        paths[-1].write_bytes(png_bytes(seed))
    return paths


# --- the classifier ----------------------------------------------------------------------------------------


def test_tau_adjusts_the_logits_by_the_log_prior_of_the_card(classifier, images):
    pictures = [Image.open(path) for path in images]
    tensors = [classifier.input_tensor(picture) for picture in pictures]
    logits = classifier.tensor_logits(tensors).astype(np.float64)
    log_prior = np.log(np.array(CLASS_COUNTS) / sum(CLASS_COUNTS))
    for tau in (0.0, 1.0, -0.5):
        expected = np.exp(logits - tau * log_prior)
        expected /= expected.sum(axis=1, keepdims=True)
        predictions = classifier.predict(pictures, top_k=3, tau=tau)
        got = np.array([[score.probability for score in p.scores] for p in predictions])
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
        assert all(p.tau == tau and p.to_dict()["tau"] == tau for p in predictions)
    plain = classifier.predict(pictures)  # the default is the model as trained
    assert [p.to_dict() for p in plain] == [p.to_dict() for p in classifier.predict(pictures, tau=0.0)]


def test_a_large_tau_hands_every_image_to_the_tail_class_and_a_negative_one_to_the_head(classifier, images):
    assert {p.top[0].name for p in classifier.classify_files(images, tau=5.0)} == {"bird"}  # 7 training images
    assert {p.top[0].name for p in classifier.classify_files(images, tau=-5.0)} == {"cat"}  # 500


def test_the_classifier_refuses_a_bad_tau_and_tau_without_counts(classifier, models_dir, images):
    for value in BAD_TAUS:
        with pytest.raises(ParameterError, match=re.escape(refusal(value))):
            classifier.classify_files(images, tau=value)
    foreign = OnnxClassifier(models_dir / "no_counts.onnx")
    with pytest.raises(PriorUnavailableError, match="no training class counts"):
        foreign.classify_files(images, tau=1.0)
    [prediction, *_] = foreign.classify_files(images, tau=0.0)
    assert prediction.tau == 0.0 and prediction.top[0].group is None


# --- the Studio and HTTP ---------------------------------------------------------------------------------


def test_the_studio_applies_tau_and_refuses_bad_values_with_the_tables_sentence(studio, classifier):
    [adjusted] = studio.classify("tiny.onnx", [png_bytes()], top_k=3, tau=1.0)
    [direct] = classifier.predict([Image.open(io.BytesIO(png_bytes()))], top_k=3, tau=1.0)
    assert adjusted.to_dict() == direct.to_dict() and adjusted.tau == 1.0
    [with_image] = studio.classify_with_images("tiny.onnx", [png_bytes()], top_k=3, tau=1.0)
    assert with_image.result.to_dict() == direct.to_dict()
    for value in BAD_TAUS:
        with pytest.raises(RequestError, match=re.escape(refusal(value))) as refused:
            studio.classify("tiny.onnx", [png_bytes()], tau=value)
        assert refused.value.status == 422
    with pytest.raises(RequestError, match="no_counts.onnx has no training class counts") as refused:
        studio.classify("no_counts.onnx", [png_bytes()], tau=0.5)
    assert refused.value.status == 422 and "\n" not in str(refused.value)


def test_http_takes_tau_as_a_form_field(http, studio):
    response = http.post("/v1/classify", files=[("files", ("a.png", png_bytes(), "image/png"))],
                         data={"tau": "1.5", "top_k": "2", "model": "tiny.onnx"})
    assert response.status_code == 200, response.text
    [record] = response.json()["results"]
    [expected] = studio.classify("tiny.onnx", [png_bytes()], top_k=2, tau=1.5)
    assert record["tau"] == 1.5 and record["prediction"] == expected.top[0].name
    assert record["probability"] == pytest.approx(expected.top[0].probability)
    default = http.post("/v1/classify", files=[("files", ("a.png", png_bytes(), "image/png"))],
                        data={"model": "tiny.onnx"}).json()
    assert default["results"][0]["tau"] == 0.0


@pytest.mark.parametrize("text", BAD_TAU_TEXTS)
def test_a_bad_tau_gets_the_same_sentence_from_http_and_the_cli(text, http, models_dir, images, capsys):
    expected = refusal(number_from_text(text))  # what the text spells: "5.5" is 5.5, "true" stays text
    response = http.post("/v1/classify", files=[("files", ("a.png", png_bytes(), "image/png"))],
                         data={"tau": text, "model": "tiny.onnx"})
    assert (response.status_code, response.json()) == (422, {"detail": expected})

    with pytest.raises(SystemExit) as exited:
        main(["predict", "--model", str(models_dir / "tiny.onnx"), "--tau", text, str(images[0])])
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().endswith(f"argument --tau: {expected}")


def test_tau_on_a_model_without_counts_is_one_sentence_over_http_and_in_the_cli(http, models_dir, images, capsys):
    response = http.post("/v1/classify", files=[("files", ("a.png", png_bytes(), "image/png"))],
                         data={"tau": "1", "model": "no_counts.onnx"})
    assert response.status_code == 422
    assert response.json() == {"detail": "no_counts.onnx has no training class counts, so post-hoc logit adjustment "
                                         "(tau) cannot be applied to it; use tau 0"}
    assert main(["predict", "--model", str(models_dir / "no_counts.onnx"), "--tau", "1", str(images[0])]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.strip() == f"error: {response.json()['detail']}"


# --- the CLI --------------------------------------------------------------------------------------------


def test_the_cli_applies_tau_and_says_so_in_every_record(models_dir, images, classifier, capsys):
    assert main(["predict", "--model", str(models_dir / "tiny.onnx"), "--tau", "-1", "--top-k", "3",
                 *map(str, images)]) == 0
    records = json.loads(capsys.readouterr().out)
    expected = classifier.classify_files(images, top_k=3, tau=-1.0)
    assert [r["tau"] for r in records] == [-1.0] * len(images)
    assert [{k: v for k, v in r.items() if k != "image"} for r in records] == [p.to_dict() for p in expected]
