"""OnnxClassifier, preprocessing parity with torchvision, model resolution and the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference.card import MissingMetadataError, Preprocessing
from inference.classifier import (
    BATCH_SIZE,
    ClassScore,
    IncompatibleModelError,
    OnnxClassifier,
    describe,
    list_models,
    preprocess,
    resolve_model,
)
from inference.images import ImageLoadError
from tests.helpers_onnx import CLASS_COUNTS, CLASS_GROUPS, CLASS_NAMES, identity_model, make_card, tiny_net_path, write_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    raw = tiny_net_path(tmp_path_factory)
    folder = tmp_path_factory.mktemp("models")
    return {
        "dir": folder,
        "card": write_model(raw, folder / "tiny.onnx", make_card()),
        "bare": write_model(raw, folder / "bare.onnx", None),
    }


@pytest.fixture(scope="module")
def classifier(models):
    return OnnxClassifier(models["card"], threads=1)


def random_image(seed, size=(50, 37)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_predict(classifier):
    predictions = classifier.predict([random_image(0), random_image(1, (20, 90))], top_k=2)
    assert len(predictions) == 2
    for prediction in predictions:
        assert len(prediction.top) == 2
        assert [s.index for s in prediction.scores] == [0, 1, 2]
        assert sum(s.probability for s in prediction.scores) == pytest.approx(1.0, abs=1e-9)
        assert prediction.top[0].probability >= prediction.top[1].probability
        assert prediction.top[0] == prediction.scores[prediction.top[0].index]
        for score in prediction.scores:
            assert score.name == CLASS_NAMES[score.index]
            assert score.train_count == CLASS_COUNTS[score.index]
            assert score.group == CLASS_GROUPS[score.index]
    record = predictions[0].to_dict()
    assert record["prediction"] == predictions[0].top[0].name
    assert len(record["top_k"]) == 2 and len(record["classes"]) == 3
    json.dumps(record)


def test_predict_matches_onnxruntime_on_preprocessed_batch(classifier):
    images = [random_image(seed) for seed in range(BATCH_SIZE + 3)]  # more than one batch
    predictions = classifier.predict(images, top_k=10)
    assert len(predictions) == len(images)
    assert len(predictions[0].top) == 3  # top_k is capped at the number of classes
    logits = classifier.session.run(None, {classifier.input_name: classifier.preprocess(images)})[0]
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    got = np.array([[s.probability for s in p.scores] for p in predictions])
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_classifier_reports_its_provider_and_card(classifier):
    assert classifier.provider == "CPUExecutionProvider"
    assert classifier.class_names == CLASS_NAMES
    assert classifier.card.method == "ce"


def test_describe():
    assert describe(ClassScore(0, "cat", 0.8, 387, "few")) == "cat · tail class · 387 training images"
    assert describe(ClassScore(0, "dog", 0.8, 1200, "many")) == "dog · head class · 1,200 training images"
    assert describe(ClassScore(0, "cow", 0.8, None, None)) == "cow · training counts unknown"


def test_classify_files_keeps_going_after_a_bad_file(classifier, tmp_path):
    good = tmp_path / "good.png"
    random_image(3).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    results = classifier.classify_files([bad, good, bad], top_k=1)
    assert isinstance(results[0], ImageLoadError) and isinstance(results[2], ImageLoadError)
    assert results[1].top[0].name in CLASS_NAMES


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest", "lanczos"])
@pytest.mark.parametrize(
    "input_size, crop_pct, image_size",
    [
        ([3, 32, 32], 0.875, (50, 37)),  # landscape, resize then crop
        ([3, 32, 32], 1.0, (33, 71)),  # portrait, odd crop offset
        ([3, 24, 40], 1.0, (30, 30)),  # non-square input: padding on one axis
        ([3, 32, 32], 1.0, (32, 32)),  # already the right size
    ],
)
def test_preprocess_matches_torchvision_eval_transform(interpolation, input_size, crop_pct, image_size):
    from torchvision import transforms

    config = Preprocessing(input_size=input_size, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225],
                           interpolation=interpolation, crop_pct=crop_pct)
    reference = transforms.Compose([
        transforms.Resize(config.resize_to, interpolation=transforms.InterpolationMode(interpolation)),
        transforms.CenterCrop(input_size[1:]),
        transforms.ToTensor(),
        transforms.Normalize(config.mean, config.std),
    ])
    image = random_image(7, image_size)
    ours = preprocess([image], config)
    assert ours.shape == (1, *input_size) and ours.dtype == np.float32
    np.testing.assert_allclose(ours[0], reference(image).numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_preprocess_matches_the_training_eval_transform(interpolation):
    # The transform the exported model was evaluated with.
    from training.data import transforms as training_transforms

    config = Preprocessing(input_size=[3, 32, 32], mean=[0.49, 0.48, 0.45], std=[0.25, 0.24, 0.26],
                           interpolation=interpolation, crop_pct=0.875)
    image = random_image(8, (45, 61))
    expected = training_transforms.eval_transform(config)(image).numpy()
    np.testing.assert_allclose(preprocess([image], config)[0], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("image_size", [(45, 61), (300, 200), (32, 32)])
def test_a_native_size_reduces_an_upload_to_a_training_sized_thumbnail_first(image_size):
    """A model trained on 32 px images enlarged to 128 sees an upload as such an image: shorter side to 32, centre
    square, then enlarged as the training images were; the training eval transform does the same."""
    from torchvision import transforms

    from training.data import transforms as training_transforms

    config = Preprocessing(input_size=[3, 128, 128], mean=[0.5] * 3, std=[0.5] * 3, interpolation="bicubic",
                           native_size=32)
    bicubic = transforms.InterpolationMode.BICUBIC
    reference = transforms.Compose([
        transforms.Resize(32, interpolation=bicubic), transforms.CenterCrop(32),
        transforms.Resize(128, interpolation=bicubic), transforms.CenterCrop(128),
        transforms.ToTensor(), transforms.Normalize(config.mean, config.std),
    ])
    image = random_image(9, image_size)
    ours = preprocess([image], config)[0]
    np.testing.assert_allclose(ours, reference(image).numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours, training_transforms.eval_transform(config)(image).numpy(), rtol=0, atol=1e-6)
    thumbnail = image.resize((32, 32), Image.Resampling.BICUBIC) if image_size[0] == image_size[1] else None
    if thumbnail is not None:  # a square upload: exactly its 32 px thumbnail, enlarged
        np.testing.assert_allclose(ours, preprocess([thumbnail], config)[0], rtol=0, atol=1e-6)
    assert config.describe() == ("shorter side to 32 px (bicubic), centre 32×32 px (the size of its training images), "
                                 "then to 128 px, centre 128×128 px")


# --- refusing models ------------------------------------------------------------------------


def test_model_without_metadata_is_refused_with_a_clear_message(models):
    with pytest.raises(MissingMetadataError, match="bare.onnx has no LongTail Studio metadata.*--class-names"):
        OnnxClassifier(models["bare"])


def test_model_without_metadata_works_with_class_names(models, caplog):
    classifier = OnnxClassifier(models["bare"], class_names=["a", "b", "c"])
    assert "guessing preprocessing" in caplog.text
    assert classifier.card.preprocessing.input_size == [3, 32, 32]
    assert classifier.card.group_rule == {"rule": "unknown"}
    [prediction] = classifier.predict([random_image(0)])
    assert {s.name for s in prediction.scores} == {"a", "b", "c"}
    assert all(s.train_count is None and s.group is None for s in prediction.scores)


def test_wrong_number_of_class_names_is_refused(models):
    with pytest.raises(IncompatibleModelError, match="outputs 3 classes but has 2 class names"):
        OnnxClassifier(models["bare"], class_names=["a", "b"])


def test_class_names_that_contradict_the_card_are_refused(models):
    with pytest.raises(ValueError, match="carries its own class names"):
        OnnxClassifier(models["card"], class_names=["x", "y", "z"])
    assert OnnxClassifier(models["card"], class_names=CLASS_NAMES).class_names == CLASS_NAMES


def test_card_with_wrong_class_count_is_refused(models, tmp_path_factory, tmp_path):
    card = make_card(class_names=["a", "b"], class_counts=[5, 1], class_groups=["many", "few"])
    path = write_model(tiny_net_path(tmp_path_factory), tmp_path / "two.onnx", card)
    with pytest.raises(IncompatibleModelError, match="outputs 3 classes but has 2 class names"):
        OnnxClassifier(path)


@pytest.mark.parametrize(
    "shape, message",
    [([1, 3 * 32 * 32], "expected \\(batch, 3, height, width\\)"), ([1, 1, 32, 32], "expected \\(batch, 3, height, width\\)")],
)
def test_input_that_is_not_a_colour_image_batch_is_refused(tmp_path, shape, message):
    path = identity_model(tmp_path / "odd.onnx", shape)
    with pytest.raises(IncompatibleModelError, match=message):
        OnnxClassifier(path, class_names=["a", "b", "c"])


def test_dynamic_input_size_without_metadata_is_refused(tmp_path):
    path = identity_model(tmp_path / "dynamic.onnx", ["batch", 3, "height", "width"])
    with pytest.raises(MissingMetadataError, match="dynamic input size"):
        OnnxClassifier(path, class_names=["a", "b", "c"])


def test_file_that_is_not_onnx_is_refused(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"definitely not protobuf")
    with pytest.raises(IncompatibleModelError, match="could not be loaded by ONNX Runtime"):
        OnnxClassifier(path)


# --- model folder ---------------------------------------------------------------------------


def test_list_and_resolve_models(models, tmp_path):
    assert [p.name for p in list_models(models["dir"])] == ["bare.onnx", "tiny.onnx"]
    assert list_models(tmp_path / "missing") == []
    assert resolve_model(models["dir"], "tiny.onnx") == models["dir"] / "tiny.onnx"


@pytest.mark.parametrize(
    "name, message",
    [
        ("../tiny.onnx", "not a model file name"),
        ("/etc/passwd", "not a model file name"),
        ("sub/tiny.onnx", "not a model file name"),
        ("..", "not a model file name"),
        ("", "not a model file name"),
        ("notes.txt", "not an .onnx file"),
        ("absent.onnx", "not found"),
    ],
)
def test_resolve_model_refuses_names_outside_the_folder(models, name, message):
    with pytest.raises(ValueError, match=message):
        resolve_model(models["dir"], name)


def test_symlink_out_of_the_models_folder_is_refused(models, tmp_path):
    folder = tmp_path / "zoo"
    folder.mkdir()
    (folder / "escape.onnx").symlink_to(models["card"])
    with pytest.raises(ValueError, match="outside the models folder"):
        resolve_model(folder, "escape.onnx")
    assert list_models(folder) == []


# --- command line ---------------------------------------------------------------------------


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "inference", "predict", *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_cli_prints_json_and_reports_bad_images(models, tmp_path):
    good = tmp_path / "good.png"
    random_image(0).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    result = run_cli("--model", models["card"], good, bad, "--top-k", "2", "--threads", "1")
    assert result.returncode == 1, result.stderr
    records = json.loads(result.stdout)
    assert [r["image"] for r in records] == [str(good), str(bad)]
    assert records[0]["prediction"] in CLASS_NAMES
    assert records[0]["group"] in ("many", "medium", "few")
    assert len(records[0]["top_k"]) == 2 and len(records[0]["classes"]) == 3
    assert "empty" in records[1]["error"]


def test_cli_refuses_model_without_metadata(models, tmp_path):
    image = tmp_path / "x.png"
    random_image(0).save(image)
    result = run_cli("--model", models["bare"], image)
    assert result.returncode == 2
    assert "no LongTail Studio metadata" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""

    names = tmp_path / "names.txt"
    names.write_text("red\ngreen\n\nblue\n")
    result = run_cli("--model", models["bare"], image, "--class-names", names)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["prediction"] in ("red", "green", "blue")
