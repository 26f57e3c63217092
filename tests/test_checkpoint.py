import json

import pytest
import torch
from safetensors.torch import load_file

import training.train as trainer
from models import create_model
from training.checkpoint import (CheckpointError, load_checkpoint, restore_model, restore_optimizer,
                                 save_checkpoint)
from training.config import load_config

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
    (tmp_path / "torn" / "other.safetensors").replace(tmp_path / "torn" / "last.safetensors")
    with pytest.raises(CheckpointError, match="different saves"):
        load_checkpoint(tmp_path / "torn", "last")

    (tmp_path / "last.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="missing or corrupt"):
        load_checkpoint(tmp_path, "last")
    (tmp_path / "last.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path, "last")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "empty", "best")


def test_nothing_is_pickled(tmp_path):
    model = create_model("resnet32", 10)
    save_checkpoint(tmp_path / "last", model, {"epoch": 1}, torch.optim.SGD(model.parameters(), lr=0.1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.json", "last.safetensors"]
    json.loads((tmp_path / "last.json").read_text())
    assert load_file(tmp_path / "last.safetensors")


def test_training_writes_everything_needed(tmp_path, tiny_config_overrides):
    summary = trainer.train(load_config(CONFIG, tiny_config_overrides), tmp_path / "run")
    run = tmp_path / "run"
    for name in ("config.yaml", "last.json", "last.safetensors", "best.json", "best.safetensors",
                 "metrics.jsonl", "summary.json"):
        assert (run / name).is_file(), name
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert {"last_epoch", "val_selected"} <= set(summary)
    info = json.loads((run / "best.json").read_text())
    assert info["class_groups"] == ["many"] * 3 + ["medium"] * 4 + ["few"] * 3  # the rank rule of ce.yaml
    assert info["metrics"]["val_selected"]["epoch"] == info["epoch"]
    assert info["git_revision"]
    with pytest.raises(CheckpointError, match="already holds a run"):
        trainer.train(load_config(CONFIG, tiny_config_overrides), run)


def test_resume_reaches_the_same_weights(tmp_path, tiny_config_overrides, monkeypatch):
    overrides = tiny_config_overrides + ["optim.epochs=3"]
    trainer.train(load_config(CONFIG, overrides), tmp_path / "straight")

    real_epoch, calls = trainer.train_one_epoch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # dies in the middle of the third epoch
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(load_config(CONFIG, overrides), tmp_path / "resumed")
    monkeypatch.setattr(trainer, "train_one_epoch", real_epoch)
    assert load_checkpoint(tmp_path / "resumed", "last")[1]["epoch"] == 2
    trainer.train(load_config(CONFIG, overrides), tmp_path / "resumed", resume=True)

    straight = load_file(tmp_path / "straight" / "last.safetensors")
    resumed = load_file(tmp_path / "resumed" / "last.safetensors")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
