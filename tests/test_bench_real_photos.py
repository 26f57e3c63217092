"""bench/real_photos.py end to end on a tiny model and three made-up photos: the table counts what it should."""

import json
import subprocess
import sys

import numpy as np
from conftest import REPO_ROOT
from helpers_onnx import make_card, tiny_net_path, write_model
from PIL import Image

from inference.card import Preprocessing


def test_the_real_photo_table_counts_exact_photos_and_keeps_proxies_apart(tmp_path, tmp_path_factory):
    model = write_model(tiny_net_path(tmp_path_factory), tmp_path / "tiny.onnx", make_card())
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    rows = [("a.jpg", "cat", "exact"), ("b.jpg", "bird", "exact"), ("c.jpg", "dog", "proxy")]
    for name, _, _ in rows:
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(photos / name)
    (photos / "labels.csv").write_text("file,cifar_class,match,imagenet_det_label\n"
                                       + "".join(f"{n},{c},{m},x\n" for n, c, m in rows + [("gone.jpg", "cat", "exact")]))
    out = tmp_path / "out.json"
    result = subprocess.run([sys.executable, "bench/real_photos.py", "--photos", str(photos), str(model),
                             "--tau", "0", "1", "--json", str(out)], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "| tiny.onnx | 0 |" in result.stdout and "| tiny.onnx | 1 |" in result.stdout
    for record in json.loads(out.read_text()):
        assert record["exact"]["photos"] == 2 and record["proxy"]["photos"] == 1 and record["photos"] == 3
        assert set(record["classes"]) == {"cat", "bird"} and set(record["groups"]) == {"head", "tail"}
        assert 0 <= record["predicted_tail"] <= 3
    missing = subprocess.run([sys.executable, "bench/real_photos.py", "--photos", str(tmp_path), str(model)],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert missing.returncode != 0 and "labels.csv" in missing.stderr


def test_a_model_trained_on_enlarged_thumbnails_is_also_scored_without_them(tmp_path, tmp_path_factory):
    pre = Preprocessing(input_size=[3, 32, 32], mean=[0.5] * 3, std=[0.25] * 3, native_size=16)
    model = write_model(tiny_net_path(tmp_path_factory), tmp_path / "enlarging.onnx", make_card(preprocessing=pre))
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(photos / "a.jpg")
    (photos / "labels.csv").write_text("file,cifar_class,match,imagenet_det_label\na.jpg,cat,exact,x\n")
    result = subprocess.run([sys.executable, "bench/real_photos.py", "--photos", str(photos), str(model),
                             "--also-without-thumbnail"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert "| enlarging.onnx | 0 |" in result.stdout and "| enlarging.onnx (no thumbnail) | 0 |" in result.stdout
