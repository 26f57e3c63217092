from pathlib import Path

import pytest
import torch

from models import create_model, get_preprocessing, list_models
from training.config import ConfigError, load_config
from training.generator_training import load_generator_config
from training.registry import method_class

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"
# configs/generator/ holds generator-training configs; every other folder holds classifier-training configs.
GENERATOR_CONFIGS = sorted((CONFIG_ROOT / "generator").rglob("*.yaml"))
CONFIGS = sorted(set(CONFIG_ROOT.rglob("*.yaml")) - set(GENERATOR_CONFIGS))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_loads(path):
    config = load_config(path)  # method_options included, parsed into the method's options
    assert isinstance(config.method_options, method_class(config.method).options_class)


@pytest.mark.parametrize("path", GENERATOR_CONFIGS, ids=lambda p: p.name)
def test_every_generator_config_loads(path):
    config = load_generator_config(path)
    assert config.image_size % 2 ** (len(config.unet.block_out_channels) - 1) == 0


def test_overrides_and_types(tmp_path):
    config = load_config(CONFIGS[0], ["optim.lr=0.05", "optim.milestones=[3, 4]", "run.channels_last=false",
                                      "data.imbalance_factor=50"])
    assert config.optim.lr == 0.05 and config.optim.milestones == [3, 4]
    assert config.run.channels_last is False and config.data.imbalance_factor == 50.0


@pytest.mark.parametrize("override, message", [
    ("optim.learning_rate=0.1", "known keys: epochs, lr"),
    ("optim.epoch=3", "did you mean 'optim.epochs'"),
    ("optim.lr=fast", "expected float"),
    ("run.channels_last=1", "expected true or false"),
    ("loss.name=focal", "loss.name must be one of"),
    ("data.imbalance_factor=0.01", "n_max / n_min"),
    ("nonsense", "key=value"),
    ("model.name=resnet34", "not registered; available: .*resnet32"),
    ("data.batch_size=0", "data.batch_size must be at least 1"),
    ("groups.head_fraction=0.8", "must not exceed 1"),
])
def test_bad_config_is_a_clear_error(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS[0], [override])


def test_unknown_key_in_a_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match="optim.epoch"):
        load_config(path)


def test_registry_lists_models_with_preprocessing():
    assert {"resnet32", "resnet32_wide", "resnet50", "resnext50_32x4d"} <= set(list_models())
    assert get_preprocessing("resnet32").input_size == [3, 32, 32]
    assert get_preprocessing("resnet50").crop_pct == 0.875
    with pytest.raises(KeyError, match="available"):
        create_model("vit_giant", 10)


def test_resnet32_is_the_standard_size():
    model = create_model("resnet32", num_classes=10)
    assert 0.45e6 < sum(p.numel() for p in model.parameters()) < 0.47e6
    wide = create_model("resnet32_wide", num_classes=10)
    assert wide.num_features == 256


@pytest.mark.parametrize("name, size", [("resnet32", 32), ("resnet32_wide", 32), ("resnet50", 64),
                                        ("resnext50_32x4d", 64)])
def test_features_then_head_equals_forward(name, size):
    model = create_model(name, num_classes=7).eval()
    images = torch.randn(2, 3, size, size)
    features = model.forward_features(images)
    assert features.shape == (2, model.num_features)
    with torch.no_grad():
        assert torch.allclose(model.forward_head(model.forward_features(images)), model(images), atol=1e-5)


def test_fp16_on_cpu_is_refused():
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        load_config(CONFIGS[0], ["run.amp=fp16", "run.device=cpu"])


@pytest.mark.parametrize("dataset, classes, n_max, expected", [
    ("cifar10_lt", 10, 5000, {"many": 3, "medium": 4, "few": 3}),
    ("cifar100_lt", 100, 500, {"many": 35, "medium": 35, "few": 30}),
])
def test_shipped_cifar_configs_give_the_standard_groups(dataset, classes, n_max, expected):
    from training.data.lt_data import long_tail_counts
    from training.groups import class_groups

    for path in CONFIGS:
        config = load_config(path)
        if config.data.dataset != dataset or config.data.imbalance_factor != 100:
            continue
        counts = long_tail_counts(n_max, classes, config.data.imbalance_factor)
        groups = class_groups(counts, config.groups)
        assert {g: groups.count(g) for g in expected} == expected, path


@pytest.mark.parametrize("override, message", [
    ("run.amp=foo", "run.amp must be one of"),  # was silently fp32
    ("data.batch_size=32", "no effect on the generator trainer; set train.batch_size"),
    ("run.channels_last=false", "run.channels_last=False has no effect"),
])
def test_generator_config_refuses_what_it_would_ignore(override, message):
    with pytest.raises(ConfigError, match=message):
        load_generator_config(GENERATOR_CONFIGS[0], [override])


def test_amp_and_device_rules_are_shared():
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        load_generator_config(GENERATOR_CONFIGS[0], ["run.amp=fp16", "run.device=cpu"])
    from training.engine import AmpStep

    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        AmpStep("fp16", torch.device("cpu"))  # run.device=auto resolved to the CPU


def test_bf16_on_a_cpu_that_emulates_it_warns_and_says_what_to_set(monkeypatch):
    import warnings

    from training import engine

    assert engine.has_native_bf16("cuda")
    monkeypatch.setattr(engine, "has_native_bf16", lambda device_type: False)
    with pytest.warns(UserWarning, match="--set run.amp=none"):
        engine.AmpStep("bf16", torch.device("cpu"))
    monkeypatch.setattr(engine, "has_native_bf16", lambda device_type: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine.AmpStep("bf16", torch.device("cpu"))
        monkeypatch.setattr(engine, "has_native_bf16", lambda device_type: False)
        engine.AmpStep("none", torch.device("cpu"))  # fp32 never warns


def test_one_schedule_for_classifier_and_generator():
    from training.config import OptimConfig
    from training.engine import learning_rate, scheduled_lr
    from training.generator_training import GeneratorTrainingConfig
    from training.generator_training import learning_rate as generator_lr

    optim = OptimConfig(epochs=10, lr=0.1, warmup_epochs=2, schedule="cosine")
    assert learning_rate(optim, 1.0) == pytest.approx(0.05) and learning_rate(optim, 10.0) == pytest.approx(0.0)
    generator = GeneratorTrainingConfig(steps=100, lr=1e-3, warmup_steps=10)
    assert [generator_lr(generator, step) for step in (0, 9, 99)] == pytest.approx([1e-4, 1e-3, 0.0])
    assert generator_lr(generator, 54) == scheduled_lr(1e-3, 55, 10, 100, "cosine")
