"""Several processes (torchrun, gloo on CPU) train what one process trains: the same global batches, global
BatchNorm statistics, averaged gradients; rank 0 alone writes the run; a killed run resumes under torchrun
and its checkpoints load without DDP. ConCutMix (foreground pairing and BCL over the global batch) too.

Split batches add their sums in another order, and a ResNet amplifies float noise (a ReLU input that lands
on the other side of 0 moves a whole term of the gradient): two single-process runs that differ only in
run.channels_last drift apart as much as 1 and 2 processes do. So these runs are fp32 with a small learning
rate, where that noise stays in the last digits of the losses and about 1 % of the weight update."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import CLASS_NAMES, REPO_ROOT, write_cifar_like_npz, write_synthetic_set

from models import create_model
from training import distributed
from training.checkpoint import load_checkpoint
from training.config import ConfigError, load_config
from training.data.loading import GlobalBatchSampler, SeededItems
from training.run import seed_epoch
from training.train import check_process_count
from training.trained import load_trained

CE = "configs/cifar10_lt/ce.yaml"
CONCUTMIX = "configs/cifar10_lt/concutmix.yaml"
EXACT = ["run.threads=1", "run.amp=none", "run.deterministic=true", "run.channels_last=false", "optim.lr=0.0001"]


def torchrun(*args, processes: int = 2, script: str = "-m training") -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               *script.split(), *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240, check=False)


def single(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=240, check=False)


def train_args(config: str, overrides: list[str], output_dir) -> list[str]:
    return ["train", "--config", config, *[a for o in overrides for a in ("--set", o)], "--output-dir", str(output_dir)]


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def weights(run) -> dict:
    tensors, _ = load_checkpoint(run, "last")
    return {name: tensor for name, tensor in tensors.items() if name.startswith("model.")}


def history(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ce_runs(tmp_path_factory, tiny_cifar_npz):
    """The tiny CE run in one process (no torchrun) and in two (torchrun, gloo), and the stdout of the latter."""
    work = tmp_path_factory.mktemp("ddp")
    overrides = [f"data.root={tiny_cifar_npz}", "data.imbalance_factor=10", "data.val_per_class=5",
                 "data.batch_size=32", "data.num_workers=0", "optim.epochs=2", "optim.warmup_epochs=1",
                 "run.progress=false", *EXACT]
    ok(single(*train_args(CE, overrides, work / "one")))
    out = ok(torchrun(*train_args(CE, overrides, work / "two")))
    return work / "one", work / "two", overrides, out


def test_two_processes_train_what_one_process_trains(ce_runs):
    one, two, _, _ = ce_runs
    first, second = history(one), history(two)
    assert [sorted(r) for r in first] == [sorted(r) for r in second] and len(second) == 2
    for a, b in zip(first, second):
        assert b["train"]["loss"] == pytest.approx(a["train"]["loss"], rel=1e-4)  # measured: up to 4e-6
        assert abs(b["val"]["overall"] - a["val"]["overall"]) <= 2.0  # at most one of 50 images
    a, b = weights(one), weights(two)
    assert a.keys() == b.keys()
    trained = [k for k in a if "running" not in k and "num_batches" not in k]
    statistics = [k for k in a if "running" in k]
    # measured: weights within 7e-5, running means and variances within 2e-4 and 8e-4
    assert [k for k in trained if not torch.allclose(a[k], b[k], rtol=0, atol=5e-4)] == []
    assert [k for k in statistics if not torch.allclose(a[k], b[k], rtol=1e-2, atol=2e-3)] == []
    seed_epoch(0, -1)  # as the trainer does before it builds the model
    initial = {f"model.{k}": v for k, v in create_model("resnet32", 10).state_dict().items()}
    update = sum(float((a[k] - initial[k]).double().norm() ** 2) for k in trained) ** 0.5
    difference = sum(float((a[k] - b[k]).double().norm() ** 2) for k in trained) ** 0.5
    # measured: 1.0e-2 (two single-process runs, channels_last on and off: 1.6e-2; per-rank BatchNorm: 0.27)
    assert update > 0.03 and difference / update < 0.05


def test_rank_zero_alone_prints_and_writes(ce_runs):
    one, two, _, out = ce_runs
    assert sorted(p.name.split(".")[0] + p.suffix for p in one.iterdir()) == \
        sorted(p.name.split(".")[0] + p.suffix for p in two.iterdir())
    assert [r["epoch"] for r in history(two)] == [1, 2]
    assert out.count("epoch 2/2") == 1 and out.count("last epoch (epoch 2)") == 1
    assert "2 processes x 16 images per batch" in out
    assert json.loads((two / "summary.json").read_text())["last_epoch"]["epoch"] == 2


def test_checkpoints_hold_the_plain_model(ce_runs):
    _, two, _, _ = ce_runs
    assert not any(".module." in name for name in weights(two))
    _, _, model, info = load_trained(two, "last")  # a plain (not converted, not wrapped) model
    assert type(model.bn1).__name__ == "BatchNorm2d" and info["epoch"] == 2


def test_a_killed_run_resumes_under_torchrun_and_in_one_process(ce_runs, tmp_path):
    _, two, overrides, _ = ce_runs
    killed = tmp_path / "killed"
    died = torchrun("1", "2", *train_args(CE, overrides, killed), script="tests/helpers_ddp.py")
    assert died.returncode != 0 and json.loads((killed / "last.json").read_text())["epoch"] == 1
    shutil.copytree(killed, tmp_path / "alone")
    ok(torchrun("train", "--output-dir", str(killed), "--resume"))
    assert [r["epoch"] for r in history(killed)] == [1, 2]
    expected, resumed = weights(two), weights(killed)
    assert [k for k in expected if not torch.equal(expected[k], resumed[k])] == []
    ok(single("train", "--output-dir", str(tmp_path / "alone"), "--resume"))  # a DDP checkpoint, one process
    assert history(tmp_path / "alone")[1]["train"]["loss"] == pytest.approx(history(two)[1]["train"]["loss"], rel=1e-4)


def test_concutmix_pairs_and_contrasts_over_the_global_batch(tmp_path, tiny_cifar_npz):
    """Mixing every step (the foregrounds gathered and paired over the global batch), rectified labels from
    the first epoch, BCL over the gathered embeddings: the losses of 1 and 2 processes agree."""
    overrides = [f"data.root={tiny_cifar_npz}", "data.imbalance_factor=50", "data.val_per_class=5",
                 "data.batch_size=32", "data.num_workers=0", "optim.epochs=1", "optim.warmup_epochs=0",
                 "run.progress=false", *EXACT, "method_options.cutmix_prob=1.0",
                 "method_options.label_warmup_epochs=-1", "method_options.hidden_dim=32", "method_options.feat_dim=16"]
    ok(single(*train_args(CONCUTMIX, overrides, tmp_path / "one")))
    ok(torchrun(*train_args(CONCUTMIX, overrides, tmp_path / "two")))
    (a,), (b,) = history(tmp_path / "one"), history(tmp_path / "two")
    # measured: 8e-7 (BCL over each rank's half alone: 8e-3)
    assert sorted(a) == sorted(b) and b["train"]["loss"] == pytest.approx(a["train"]["loss"], rel=1e-4)
    assert (tmp_path / "two" / "summary.json").is_file()


def test_the_global_batch_must_split_evenly_and_dlsa_runs_in_one_process(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="must divide evenly among the 3 processes"):
        check_process_count(load_config(CE), own_loop=False)
    check_process_count(load_config(CE, ["data.batch_size=129"]), own_loop=False)
    with pytest.raises(ConfigError, match="runs in one process"):
        check_process_count(load_config(CE), own_loop=True)


def test_sau_prototypes_partners_and_supcon_over_the_global_batch(tmp_path):
    """Prototypes from every rank's share of the real images, partners and the label check over the global
    batch, SupCon over the gathered embeddings: the losses of 1 and 2 processes agree."""
    npz = write_cifar_like_npz(tmp_path / "tiny4.npz", train_per_class=20, test_per_class=5, num_classes=4)
    synthetic = write_synthetic_set(tmp_path / "synthetic", CLASS_NAMES[:4], [2, 8, 12, 15])
    overrides = [f"data.root={npz}", "data.imbalance_factor=4", "data.val_per_class=2", "data.batch_size=36",
                 "data.num_workers=0", "optim.epochs=1", "run.progress=false", "model.name=resnet32", *EXACT,
                 f"method_options.synthetic_dir={synthetic}", "method_options.hidden_dim=32", "method_options.feat_dim=16"]
    ok(single(*train_args("configs/cifar10_lt/sau.yaml", overrides, tmp_path / "one")))
    out = ok(torchrun(*train_args("configs/cifar10_lt/sau.yaml", overrides, tmp_path / "two")))
    assert out.count("SAU: 42 real + 30 synthetic") == 1
    (a,), (b,) = history(tmp_path / "one"), history(tmp_path / "two")
    assert b["train"]["loss"] == pytest.approx(a["train"]["loss"], rel=1e-5)  # measured: 2e-7 (per-rank SupCon: 4e-2)


def test_ranks_split_every_global_batch_and_images_draw_their_own_randomness(monkeypatch):
    one = list(GlobalBatchSampler(70, 16, shuffle=True, seed=5, drop_last=True))
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    parts = []
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        sampler = GlobalBatchSampler(70, 16, shuffle=True, seed=5, drop_last=True, shard=True)
        parts.append(list(sampler))
        assert len(sampler) == len(one) == 4 and all(len(part) == 8 for part in parts[-1])
    assert [a + b for a, b in zip(*parts)] == one  # contiguous halves of the same global batches

    class Noise(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return torch.rand(3)

    items = SeededItems(Noise())
    first = [items[(i, 7)] for i in range(4)]
    assert all(torch.equal(items[(i, 7)], first[i]) for i in reversed(range(4)))  # any order, same draws
    assert not torch.equal(items[(0, 8)], first[0])  # another epoch, other draws
    state = torch.get_rng_state()
    items[(1, 7)]
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left as it was
