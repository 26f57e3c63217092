import json
import shutil

import pytest
import torch
import yaml
from conftest import train_interrupted_and_resumed
from safetensors.torch import load_file

import training.train as trainer
from models import create_model
from training.checkpoint import CheckpointError, load_checkpoint, restore_model, restore_optimizer, save_checkpoint
from training.config import ConfigError, load_config
from training.run import resume_config

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
    assert resume_config(run, CONFIG, same_command).optim.epochs == 1
    with pytest.raises(ConfigError, match="differs from it in optim.lr; only data.root"):
        resume_config(run, CONFIG, same_command + ["optim.lr=0.3"])
    with pytest.raises(ConfigError, match="differs from it in optim.lr"):
        resume_config(run, None, ["optim.lr=0.3"])
    config = resume_config(run, None, ["run.threads=1", "data.root=elsewhere.npz"])
    assert config.run.threads == 1 and config.data.root == "elsewhere.npz" and config.optim.epochs == 1


def test_a_run_saved_before_device_augmentation_resumes_in_the_loader(tmp_path, tiny_config_overrides):
    """Its config.yaml has no data.augment_on: it augmented in the loader, and a resume goes on doing so, with the
    original command too (whose config does not name augment_on either)."""
    run = tmp_path / "run"
    trainer.train(load_config(CONFIG, tiny_config_overrides + ["optim.epochs=1"]), run)
    tree = yaml.safe_load((run / "config.yaml").read_text())
    del tree["data"]["augment_on"]
    (run / "config.yaml").write_text(yaml.safe_dump(tree))
    same_command = tiny_config_overrides + ["optim.epochs=1"]
    assert resume_config(run, CONFIG, same_command).data.augment_on == "loader"
    assert resume_config(run, None, ["run.threads=1"]).data.augment_on == "loader"
    with pytest.raises(ConfigError, match="differs from it in data.augment_on"):
        resume_config(run, CONFIG, same_command + ["data.augment_on=device"])


# A training process that SIGKILLs itself in the middle of an epoch: after `kill_at_step` optimizer steps of
# epoch `die_in_epoch`, with weights and optimizer state half-updated in memory, like a preempted machine.
KILLED_MID_EPOCH = """
import os, signal, sys
import training.train as trainer
from training.__main__ import main

real_epoch, calls = trainer.train_one_epoch, []

class DyingLoader:
    def __init__(self, loader):
        self.loader = loader
    def __len__(self):
        return len(self.loader)
    def __iter__(self):
        for step, batch in enumerate(self.loader):
            if step == {kill_at_step}:
                os.kill(os.getpid(), signal.SIGKILL)
            yield batch

def dying_epoch(model, method, loader, *args, **kwargs):
    calls.append(1)
    return real_epoch(model, method, DyingLoader(loader) if len(calls) == {die_in_epoch} else loader, *args, **kwargs)

trainer.train_one_epoch = dying_epoch
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_mid_epoch_then_resume_reaches_the_same_weights(tmp_path, tiny_config_overrides):
    import subprocess
    import sys

    from conftest import REPO_ROOT

    overrides = [item for pair in tiny_config_overrides + ["optim.epochs=3", "run.deterministic=true", "run.threads=1"]
                 for item in ("--set", pair)]

    def train(output_dir, *extra, script=None):
        command = [sys.executable, "-c", script] if script else [sys.executable, "-m", "training"]
        return subprocess.run([*command, "train", "--config", CONFIG, *overrides, "--output-dir", str(output_dir),
                               *extra], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)

    straight = train(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = train(tmp_path / "resumed", script=KILLED_MID_EPOCH.format(root=str(REPO_ROOT), die_in_epoch=2,
                                                                         kill_at_step=2))
    assert killed.returncode == -9, killed.stderr[-2000:]  # really killed, no chance to clean up
    # What the kill left on disk is the complete epoch-1 checkpoint, nothing half-written.
    assert load_checkpoint(tmp_path / "resumed", "last")[1]["epoch"] == 1
    assert not [p.name for p in (tmp_path / "resumed").iterdir() if ".tmp" in p.name]

    resumed = train(tmp_path / "resumed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout and "after epoch 1" in resumed.stdout
    expected, got = load_checkpoint(tmp_path / "straight", "last")[0], load_checkpoint(tmp_path / "resumed", "last")[0]
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_the_cli_turns_bad_checkpoints_and_configs_into_one_line_errors(tmp_path, tiny_config_overrides, capsys):
    from training.__main__ import main

    sets = [item for pair in tiny_config_overrides + ["optim.epochs=1"] for item in ("--set", pair)]
    run = tmp_path / "run"
    assert main(["train", "--config", CONFIG, *sets, "--output-dir", str(run)]) == 0
    capsys.readouterr()

    def fails_with(argv, message):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err

    fails_with(["train", "--config", CONFIG, *sets, "--set", "optim.lrr=0.1", "--output-dir", str(tmp_path / "x")],
               "optim.lrr")
    fails_with(["train", "--config", CONFIG, *sets, "--output-dir", str(run)], "already holds a run")

    mismatched = tmp_path / "mismatched"
    shutil.copytree(run, mismatched)
    info = json.loads((mismatched / "last.json").read_text())
    save_checkpoint(mismatched / "last", create_model("resnet32", 5), info)  # another model's weights
    for argv in (["train", "--output-dir", str(mismatched), "--resume"],
                 ["evaluate", "--checkpoint", str(mismatched), "--which", "last"],
                 ["export", "--checkpoint", str(mismatched), "--which", "last", "--output", str(tmp_path / "m.onnx")]):
        fails_with(argv, "does not fit this model")

    (run / "last.json").write_text("{not json")
    for argv in (["train", "--output-dir", str(run), "--resume"],
                 ["evaluate", "--checkpoint", str(run), "--which", "last"]):
        fails_with(argv, "corrupt")
