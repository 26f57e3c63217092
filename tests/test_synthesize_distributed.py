"""`synthesize` in several processes (torchrun, gloo on CPU) writes the folder one process writes, file for
file and byte for byte: without a filter, with the confidence filter (where how many images a class tries
depends on the images), and after a rank dies mid-run and one process resumes it. The round planner itself
is checked for 1 to 5 processes and for resumes from every point."""

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, make_images, write_tiny_generator

from training.__main__ import main
from training.synthesize import (
    ClassState,
    keep_in_index_order,
    plan_round,
    states_from_records,
)

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FILTER_MODEL = "model_zoo/cifar10_lt_ce_resnet32.onnx"  # predicts CIFAR10, so the data carry those names


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny 32-px data set named like CIFAR-10, and a random tiny generator of 32-px images for it."""
    work = tmp_path_factory.mktemp("synthesize_ddp")
    train, test = np.repeat(np.arange(10), 20), np.repeat(np.arange(10), 2)
    np.savez(work / "data.npz", x_train=make_images(train, seed=1), y_train=train, x_test=make_images(test, seed=2),
             y_test=test, class_names=np.array(CIFAR10))
    return work, write_tiny_generator(work / "generator", CIFAR10, size=32)


@pytest.fixture
def one_thread_again():
    """The in-process runs set torch's thread count (run.threads=1): give it back to the other tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def synthesize_args(setup, output, *extra) -> list[str]:
    work, generator = setup
    data = [f"data.root={work / 'data.npz'}", "data.imbalance_factor=10", "data.val_per_class=2",
            "data.num_workers=0", "run.threads=1", "run.device=cpu"]
    return ["synthesize", "--generator", str(generator), "--config", "configs/cifar10_lt/ce.yaml",
            *[a for d in data for a in ("--set", d)], "--per-class", "20", "--steps", "2", "--batch-size", "4",
            "--output", str(output), *extra]


FILTERED = ["--classes", "airplane,bird,deer,frog", "--filter-model", FILTER_MODEL, "--filter-threshold", "0.1"]


def torchrun(*args, script: str = "-m training") -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               *script.split(), *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240, check=False)


def one_process(*args) -> None:
    """`python -m training ...` in this process (the same code path, without another interpreter's start-up)."""
    assert main(list(args)) == 0


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def folder_files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def records(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "images.jsonl").read_text().splitlines()]


def test_two_processes_write_the_files_one_process_writes(setup, tmp_path, one_thread_again):
    classes = ["--classes", "cat,dog,truck"]
    out = ok(torchrun(*synthesize_args(setup, tmp_path / "two", *classes)))
    one_process(*synthesize_args(setup, tmp_path / "one", *classes))
    one, two = folder_files(tmp_path / "one"), folder_files(tmp_path / "two")
    assert len([name for name in one if name.endswith(".png")]) == 44  # 20 − (9, 5, 2) real images
    assert one.keys() == two.keys() and [name for name in one if one[name] != two[name]] == []
    assert out.count("44 synthetic images") == 1 and "on 2 processes" in out  # rank 0 alone reports


def test_filtered_run_killed_on_two_processes_and_resumed_on_one_writes_what_one_process_writes(
        setup, tmp_path, one_thread_again):
    """Rank 0, the one that writes images.jsonl, dies as its 3rd chunk starts: two rounds are kept."""
    one_process(*synthesize_args(setup, tmp_path / "one", *FILTERED))
    expected = records(tmp_path / "one")
    tried = {r["class_index"]: r["index"] for r in expected}
    assert len(expected) == 2 + 9 + 13 + 16 and any(tried[c] + 1 > sum(r["class_index"] == c for r in expected)
                                                    for c in tried)  # the filter turned images away
    assert all(r["score"] >= 0.1 for r in expected)

    killed = tmp_path / "killed"
    died = torchrun("0", "3", *synthesize_args(setup, killed, *FILTERED), script="tests/helpers_synthesize.py")
    assert died.returncode != 0
    kept_before = records(killed)
    assert 0 < len(kept_before) < len(expected)
    assert all(record in expected for record in kept_before)  # each class's first kept images, nothing else

    one_process(*synthesize_args(setup, killed, *FILTERED))
    one, resumed = folder_files(tmp_path / "one"), folder_files(killed)
    assert one.keys() == resumed.keys() and [name for name in one if one[name] != resumed[name]] == []


def test_filtered_two_processes_write_the_files_one_process_writes(setup, tmp_path, one_thread_again):
    ok(torchrun(*synthesize_args(setup, tmp_path / "two", *FILTERED)))
    one_process(*synthesize_args(setup, tmp_path / "one", *FILTERED))
    one, two = folder_files(tmp_path / "one"), folder_files(tmp_path / "two")
    assert one.keys() == two.keys() and [name for name in one if one[name] != two[name]] == []


def test_only_train_and_synthesize_run_under_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as exit:
        main(["evaluate", "--checkpoint", "nowhere"])
    assert exit.value.code == 2 and "only `train` and `synthesize` run in several processes" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ the planner

BATCH = 4


def passes(class_index: int, index: int) -> bool:
    """A stand-in filter: a fixed pseudo-random third of the candidates pass, per class."""
    return (index * 7 + class_index * 3) % 3 == 0


def simulate(wanted: list[int], ranks: int, filtered: bool = True, records=()) -> tuple[list, list]:
    """synthesize's loop without images: (the kept (class, index) pairs in order, the plans of every round)."""
    states = states_from_records(list(records), wanted)
    kept, rounds = [], []
    while plan := plan_round(states, BATCH, filtered, ranks, [f"c{c}" for c in range(len(wanted))]):
        scores = [[float(passes(chunk.class_index, i)) if filtered else None for i in chunk.candidates]
                  for chunk in plan]
        chosen = keep_in_index_order(plan, scores, states, 0.5 if filtered else None)
        kept += sorted((chunk.class_index, index) for chunk, indices in zip(plan, chosen) for index in indices)
        rounds.append(plan)
    assert [state.missing for state in states] == [0] * len(wanted)
    return sorted(kept), rounds


def test_every_process_count_keeps_the_first_passing_images_of_each_class():
    wanted = [5, 0, 11, 2]
    expected = sorted((c, i) for c, target in enumerate(wanted) for i in
                      [i for i in range(1000) if passes(c, i)][:target])
    for ranks in range(1, 6):
        kept, rounds = simulate(wanted, ranks)
        assert kept == expected, ranks
        for plan in rounds:
            assert len(plan) <= ranks
            tried = [(chunk.class_index, i) for chunk in plan for i in chunk.candidates]
            assert len(tried) == len(set(tried))  # disjoint shares
            assert all(chunk.first % BATCH == 0 and chunk.count == BATCH for chunk in plan)  # always the same batches
    assert len(simulate(wanted, 5)[1]) < len(simulate(wanted, 1)[1])  # more processes, fewer rounds


def test_a_resume_from_any_kept_prefix_with_any_process_count_keeps_the_same_images():
    wanted = [5, 0, 11, 2]
    straight, _ = simulate(wanted, 3)
    per_class = [[pair for pair in straight if pair[0] == c] for c in range(len(wanted))]
    for cuts in itertools.product(*[range(len(kept) + 1) for kept in per_class]):
        # images.jsonl as a run killed mid-round leaves it: for every class, the first of its kept images
        done = sorted(pair for kept, cut in zip(per_class, cuts) for pair in kept[:cut])
        for ranks in (1, 2):
            rest, rounds = simulate(wanted, ranks, records=[{"class_index": c, "index": i} for c, i in done])
            assert sorted(done + rest) == straight
            # a class that resumes mid-batch makes that whole batch again, so its images are the same bytes
            assert all(chunk.first % BATCH == 0 for plan in rounds for chunk in plan)


def test_without_a_filter_each_class_makes_exactly_its_missing_images():
    kept, rounds = simulate([6, 3], 2, filtered=False)
    assert kept == [(0, i) for i in range(6)] + [(1, i) for i in range(3)]
    assert [[(c.class_index, c.first, c.count) for c in plan] for plan in rounds] == [[(0, 0, 4), (0, 4, 2)],
                                                                                       [(1, 0, 3)]]
    state = ClassState(target=6, have=5, next_index=5)  # resumed inside the last batch: that batch again
    assert [(c.first, c.count, list(c.candidates)) for c in plan_round([state], 4, False, 2, ["c0"])] == [(4, 2, [5])]
