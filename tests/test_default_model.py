"""The models shipped in model_zoo/: complete metadata, and real CIFAR-10 test images classified as well as
its card says (the card's accuracy was measured in PyTorch on the JPEG-decoded test set; here the ONNX
classifier with its own PIL preprocessing sees the bit-exact original pixels)."""

import numpy as np
import pytest
from PIL import Image

from inference.classifier import OnnxClassifier
from tests.conftest import REPO_ROOT, require_shared

ZOO = REPO_ROOT / "model_zoo"
MODEL = ZOO / "cifar10_lt_concutmix_efficientnet_lite0.onnx"
SHIPPED = sorted(ZOO.glob("*.onnx"))
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def classifier():
    return OnnxClassifier(MODEL)


def test_the_default_is_shipped():
    assert MODEL in SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_model_has_a_complete_card(path):
    card = OnnxClassifier(path).card
    assert card.class_names == CIFAR10
    assert card.class_counts == [4950, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert card.class_groups == ["many"] * 3 + ["medium"] * 4 + ["few"] * 3 and card.group_rule["rule"] == "rank"
    assert card.method in path.name and card.dataset == "cifar10_lt" and card.imbalance_factor == 100
    if not card.pretrained_weights:  # trained from scratch at CIFAR's own size
        assert card.preprocessing.input_size == [3, 32, 32] and card.preprocessing.native_size == 0
    else:  # a pretrained backbone on CIFAR enlarged: uploads become 32 px thumbnails first, as its training images
        assert card.preprocessing.native_size == 32 and card.preprocessing.input_size[1] > 32
    assert {"last_epoch", "val_selected"} <= set(card.metrics)
    assert card.checkpoint["which"] == "val-selected"
    assert card.git_revision not in ("", "unknown")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_model_card_document_is_current(path):
    from inference.card import markdown_document

    assert path.with_suffix(".md").read_text() == markdown_document(OnnxClassifier(path).card, path.stem)


def test_examples_are_classified(classifier):
    paths = sorted((REPO_ROOT / "examples").glob("cifar10_test_*.png"))
    assert len(paths) == 10
    predictions = classifier.classify_files(paths)
    truth = [path.stem.split("_", 3)[3] for path in paths]
    correct = sum(p.top[0].name == t for p, t in zip(predictions, truth))
    assert correct >= 6, [(t, p.top[0].name) for p, t in zip(predictions, truth)]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_accuracy_on_real_test_images_matches_the_card(path):
    classifier = OnnxClassifier(path)
    exact = np.load(require_shared("cifar10_test_exact_subset.npz"))
    labels = np.load(require_shared("cifar10.npz"))["y_test"][exact["test_idx"]]
    images = [Image.fromarray(array) for array in exact["x_test"]]
    predictions = classifier.predict(images, top_k=1)
    accuracy = 100 * np.mean([p.top[0].index == label for p, label in zip(predictions, labels)])
    expected = classifier.card.metrics["val_selected"]["test"]["overall"]
    # 1017 images: about ±1.5 points of noise. The models trained from scratch at 32 px score the same on the
    # original and the JPEG-decoded pixels; the pretrained ones, whose 32 px input is enlarged 4x (JPEG blocks
    # with it), score 4-7 points higher on the originals (docs/results.md).
    assert expected - 4 < accuracy < expected + (10 if classifier.card.pretrained_weights else 4), (accuracy, expected)
