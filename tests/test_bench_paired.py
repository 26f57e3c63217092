"""bench/paired_test.py: McNemar's exact test and the paired interval, then the script on two tiny models."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT
from helpers_onnx import export_tiny_net, make_card, write_model

from training.config import load_config

spec = importlib.util.spec_from_file_location("paired_test", REPO_ROOT / "bench" / "paired_test.py")
paired_test = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paired_test)


def test_mcnemar_p_is_the_two_sided_binomial_tail_of_the_discordant_images():
    assert paired_test.mcnemar_p(0, 0) == 1.0 and paired_test.mcnemar_p(7, 7) == 1.0
    assert paired_test.mcnemar_p(0, 5) == pytest.approx(2 / 32) == paired_test.mcnemar_p(5, 0)
    assert paired_test.mcnemar_p(1, 9) == pytest.approx(2 * (1 + 10) / 1024)
    assert paired_test.mcnemar_p(294, 280) == pytest.approx(0.587, abs=1e-3)  # thousands of images: exact still


def test_the_paired_difference_counts_only_the_images_the_models_disagree_on():
    a = np.array([True] * 60 + [False] * 40)
    b = np.array([True] * 50 + [False] * 10 + [True] * 5 + [False] * 35)
    row = paired_test.compare(a, b)
    assert (row["only_a"], row["only_b"], row["images"]) == (10, 5, 100)
    assert row["accuracy_a"] == pytest.approx(60) and row["accuracy_b"] == pytest.approx(55) and row["difference"] == pytest.approx(5)
    low, high = row["interval"]
    assert low < 5 < high and high - low == pytest.approx(2 * 1.96 * np.sqrt((0.15 - 0.05 ** 2) / 100) * 100)
    assert paired_test.compare(a, a)["interval"] == [0, 0]


def test_the_script_compares_two_models_on_their_test_set_per_group(tmp_path, tmp_path_factory, tiny_cifar_npz):
    config = load_config("configs/cifar10_lt/ce.yaml", [f"data.root={tiny_cifar_npz}", "data.imbalance_factor=10",
                                                        "data.val_per_class=5", "data.num_workers=0"])
    card = make_card(class_names=[f"class{i}" for i in range(10)], class_counts=[60, 45, 34, 26, 19, 14, 11, 8, 6, 6],
                     class_groups=["many"] * 3 + ["medium"] * 4 + ["few"] * 3, config=config.to_dict())
    tiny = export_tiny_net(tmp_path_factory.mktemp("net") / "tiny10.onnx", num_classes=10)
    a, b = write_model(tiny, tmp_path / "a.onnx", card), write_model(tiny, tmp_path / "b.onnx", card)
    out = tmp_path / "paired.json"
    result = subprocess.run([sys.executable, "bench/paired_test.py", str(a), str(b), "--tau", "1", "--json", str(out)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "| all | 100 |" in result.stdout and "| tail | 30 |" in result.stdout
    groups = json.loads(out.read_text())["groups"]
    assert set(groups) == {"all", "head", "medium", "tail"}
    assert all(row["only_a"] == row["only_b"] == 0 and row["p_value"] == 1.0 for row in groups.values())  # one model

    other = write_model(tiny, tmp_path / "other.onnx", make_card(class_names=[f"k{i}" for i in range(10)],
                                                                 class_counts=[1] * 10, class_groups=["many"] * 10))
    refused = subprocess.run([sys.executable, "bench/paired_test.py", str(a), str(other)], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=120, check=False)
    assert refused.returncode != 0 and "do not classify the same classes" in refused.stderr
    gone = subprocess.run([sys.executable, "bench/paired_test.py", str(a), str(b), "--data", str(tmp_path / "no.npz")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert gone.returncode != 0 and "error:" in gone.stderr and "Traceback" not in gone.stderr
