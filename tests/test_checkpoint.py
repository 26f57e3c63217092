import json

import pytest
import torch
from safetensors.torch import load_file

import training.train as trainer
from models import create_model
from training.checkpoint import (CheckpointError, load_checkpoint, restore_model, restore_optimizer,
                                 save_checkpoint)
from training.config import ConfigError, load_config

from conftest import train_interrupted_and_resumed

CONFIG = "configs/cifar10_lt/ce.yaml"


def test_round_trip_restores_model_and_optimizer(tmp_path):
    model = create_model("resnet32", 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path / "last", model, {"epoch": 3, "class_names": list("abcdefghij")}, optimizer)

    tensors, info = load_checkpoint(tmp_path, "last")
    assert info["epoch"] == 3
    clone = create_model("resnet32", 10)
    restore_model(clone, tensors, info)
    for key, value in model.state_dict().items():
        assert torch.equal(value, clone.state_dict()[key])

    clone_optimizer = torch.optim.SGD(clone.parameters(), lr=0.1, momentum=0.9)
    restore_optimizer(clone_optimizer, tensors, info)
    for original, restored in zip(model.parameters(), clone.parameters()):
        assert torch.equal(optimizer.state[original]["momentum_buffer"],
                           clone_optimizer.state[restored]["momentum_buffer"])


def test_damaged_checkpoints_are_clear_errors(tmp_path):
    model = create_model("resnet32", 10)
    save_checkpoint(tmp_path / "last", model, {"epoch": 1})
    with pytest.raises(CheckpointError, match="does not fit this model"):
        restore_model(create_model("resnet32", 5), *load_checkpoint(tmp_path, "last"))

    (tmp_path / "torn").mkdir()
    save_checkpoint(tmp_path / "torn" / "last", model, {"epoch": 1})
    save_checkpoint(tmp_path / "torn" / "other", model, {"epoch": 2})
    last_weights = tmp_path / "torn" / json.loads((tmp_path / "torn" / "last.json").read_text())["weights"]
    next((tmp_path / "torn").glob("other.*.safetensors")).replace(last_weights)
    with pytest.raises(CheckpointError, match="different saves"):
        load_checkpoint(tmp_path / "torn", "last")

    weights = next(tmp_path.glob("last.*.safetensors"))
    weights.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="missing or corrupt"):
        load_checkpoint(tmp_path, "last")
    (tmp_path / "last.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path, "last")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "empty", "best")


def test_a_crash_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import training.checkpoint as checkpoint

    model = create_model("resnet32", 10)
    save_checkpoint(tmp_path / "last", model, {"epoch": 1})

    def crash(path, text):
        raise KeyboardInterrupt  # killed after the new weights were written, before the JSON commit

    monkeypatch.setattr(checkpoint, "atomic_write_text", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "last", model, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(tmp_path, "last")[1]["epoch"] == 1
    save_checkpoint(tmp_path / "last", model, {"epoch": 3})
    assert load_checkpoint(tmp_path, "last")[1]["epoch"] == 3
    assert len(list(tmp_path.glob("last.*.safetensors"))) == 1  # the orphan and the old file are gone


def test_nothing_is_pickled(tmp_path):
    model = create_model("resnet32", 10)
    save_checkpoint(tmp_path / "last", model, {"epoch": 1}, torch.optim.SGD(model.parameters(), lr=0.1))
    info = json.loads((tmp_path / "last.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["last.json", info["weights"]])
    assert load_file(tmp_path / info["weights"])


def test_training_writes_everything_needed(tmp_path, tiny_config_overrides):
    summary = trainer.train(load_config(CONFIG, tiny_config_overrides), tmp_path / "run")
    run = tmp_path / "run"
    for name in ("config.yaml", "last.json", "best.json", "metrics.jsonl", "summary.json"):
        assert (run / name).is_file(), name
    assert len(list(run.glob("last.*.safetensors"))) == len(list(run.glob("best.*.safetensors"))) == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert {"last_epoch", "val_selected"} <= set(summary)
    info = json.loads((run / "best.json").read_text())
    assert info["class_groups"] == ["many"] * 3 + ["medium"] * 4 + ["few"] * 3  # the rank rule of ce.yaml
    assert info["metrics"]["val_selected"]["epoch"] == info["epoch"]
    assert info["git_revision"]
    with pytest.raises(CheckpointError, match="already holds a run"):
        trainer.train(load_config(CONFIG, tiny_config_overrides), run)


def test_resume_reaches_the_same_weights(tmp_path, tiny_config_overrides, monkeypatch):
    straight, resumed = train_interrupted_and_resumed(CONFIG, tiny_config_overrides + ["optim.epochs=3"], tmp_path,
                                                      monkeypatch)
    straight_tensors, resumed_tensors = load_checkpoint(straight, "last")[0], load_checkpoint(resumed, "last")[0]
    assert straight_tensors.keys() == resumed_tensors.keys()
    for key in straight_tensors:
        assert torch.equal(straight_tensors[key], resumed_tensors[key]), key
    lines = (resumed / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_resume_keeps_the_saved_config(tmp_path, tiny_config_overrides):
    run = tmp_path / "run"
    trainer.train(load_config(CONFIG, tiny_config_overrides + ["optim.epochs=1"]), run)
    same_command = tiny_config_overrides + ["optim.epochs=1"]
    assert trainer.resume_config(run, CONFIG, same_command).optim.epochs == 1
    with pytest.raises(ConfigError, match="differs from it in optim.lr; only data.root"):
        trainer.resume_config(run, CONFIG, same_command + ["optim.lr=0.3"])
    with pytest.raises(ConfigError, match="differs from it in optim.lr"):
        trainer.resume_config(run, None, ["optim.lr=0.3"])
    config = trainer.resume_config(run, None, ["run.threads=1", "data.root=elsewhere.npz"])
    assert config.run.threads == 1 and config.data.root == "elsewhere.npz" and config.optim.epochs == 1
