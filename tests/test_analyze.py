"""`python -m training analyze FOLDER`: counts, imbalance, groups, bad and duplicate files, sizes, the suggestion,
and one-sentence errors with exit status 2 for a folder it cannot analyse."""

import json
import shlex
import shutil

import numpy as np
import pytest
from conftest import make_images
from PIL import Image

from training.__main__ import main as cli
from training.analyze import analyze_folder, gini, imbalance_factor
from training.config import load_config

COUNTS = {"ant": 30, "bee": 12, "cow": 4}


@pytest.fixture
def folder(tmp_path):
    """3 classes of 30 / 12 / 4 images of 40x56 px, plus a truncated PNG, a text file renamed .jpg, an exact copy
    of an image in another class, a README training ignores and a note beside the class folders."""
    root = tmp_path / "my_images"
    for index, (name, count) in enumerate(COUNTS.items()):
        (root / name).mkdir(parents=True)
        for n, pixels in enumerate(make_images(np.full(count, index), size=56, seed=index)):
            Image.fromarray(pixels[:40]).save(root / name / f"{n}.png")
    (root / "bee" / "broken.png").write_bytes((root / "bee" / "0.png").read_bytes()[:200])
    (root / "cow" / "notes.jpg").write_text("not an image")
    shutil.copy(root / "ant" / "0.png", root / "cow" / "copy_of_ant.png")
    (root / "ant" / "README.txt").write_text("ants")
    (root / "labels.txt").write_text("beside the classes")
    return root


def test_the_report_counts_groups_and_problem_files(folder):
    report = analyze_folder(folder)
    counts = {entry["name"]: entry["images"] for entry in report["classes"]}
    assert counts == {"ant": 30, "bee": 12, "cow": 5}  # the copy counts (it is readable); the two bad files do not
    assert report["images"] == 47 and report["imbalance_factor"] == 6.0
    assert report["gini"] == pytest.approx(gini([30, 12, 5]))
    groups = {entry["name"]: (entry["group_count_rule"], entry["group_rank_rule"]) for entry in report["classes"]}
    assert groups == {"ant": ("medium", "many"), "bee": ("few", "medium"), "cow": ("few", "few")}
    assert sorted(entry["file"] for entry in report["unreadable"]) == ["bee/broken.png", "cow/notes.jpg"]
    assert all(entry["reason"] for entry in report["unreadable"])
    assert report["duplicates"] == [{"files": ["ant/0.png", "cow/copy_of_ant.png"], "across_classes": True}]
    assert report["ignored_files"] == ["labels.txt", "ant/README.txt"]
    assert report["image_sizes"]["width"] == {"min": 56, "median": 56, "max": 56}
    assert report["image_sizes"]["shorter_side"]["median"] == 40


def test_the_suggested_command_is_a_valid_config_for_this_folder(folder):
    suggestion = analyze_folder(folder)["suggestion"]
    assert (suggestion["loss"], suggestion["backbone"], suggestion["input_size"]) == ("logit_adjusted",
                                                                                     "efficientnet_lite0", 128)
    assert suggestion["crop_pct"] == 1.0  # 40 px images: upsampled whole, as CIFAR is
    args = shlex.split(suggestion["command"])
    assert args[:5] == ["python", "-m", "training", "train", "--config"]
    overrides = [args[i + 1] for i, arg in enumerate(args) if arg == "--set"]
    config = load_config(args[5], overrides)
    assert config.data.root == str(folder) and config.model.input_size == 128 and config.model.pretrained == "imagenet"
    assert config.data.val_per_class == 1  # the smallest class has 5 readable images


def test_a_balanced_folder_gets_plain_cross_entropy(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for n, pixels in enumerate(make_images(np.zeros(10, dtype=int), size=200, seed=ord(name))):
            Image.fromarray(pixels).save(tmp_path / name / f"{n}.jpg")
    report = analyze_folder(tmp_path)
    assert report["imbalance_factor"] == 1.0 and report["gini"] == 0.0
    assert report["suggestion"]["loss"] == "ce" and report["suggestion"]["input_size"] == 160
    assert report["suggestion"]["crop_pct"] is None


def test_imbalance_and_gini_helpers():
    assert imbalance_factor([100, 10, 1]) == 100 and imbalance_factor([5, 0]) is None
    assert gini([7, 7, 7]) == 0.0 and gini([0, 0, 9]) == pytest.approx(2 / 3)


def test_the_cli_prints_a_table_or_json(folder, capsys):
    assert cli(["analyze", str(folder)]) == 0
    table = capsys.readouterr().out
    assert "imbalance factor 6.0" in table and "cow/notes.jpg" in table and "(in different classes)" in table
    assert "python -m training train --config" in table
    assert cli(["analyze", str(folder), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_classes"] == 3 and len(report["unreadable"]) == 2


def class_folder_without_images(root):
    (root / "cat").mkdir()
    (root / "cat" / "a.txt").write_text("x")
    return root


@pytest.mark.parametrize("make, message", [
    (lambda root: root / "missing", "image folder not found"),
    (lambda root: root, "has no class sub-folders"),
    (class_folder_without_images, "holds no images"),
])
def test_a_folder_it_cannot_analyse_is_one_sentence_and_exit_status_2(tmp_path, capsys, make, message):
    assert cli(["analyze", str(make(tmp_path))]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and message in error and "\n" not in error
