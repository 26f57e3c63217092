"""`python -m inference predict` against hostile inputs: files that are not files, files too large to read, names
too long for the file system. Each is one clear line (a record's error, or a usage error on stderr), never a
traceback or a hang, and the exit status means what the help says."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT
from helpers_onnx import make_card, tiny_net_path, write_model
from PIL import Image

from inference.__main__ import main


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_model(tiny_net_path(tmp_path_factory), tmp_path_factory.mktemp("zoo") / "tiny.onnx", make_card())


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(path)
    return path


def run_predict(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inference", "predict", *map(str, args)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_files_that_are_not_regular_or_too_large_are_refused_unread(model, image, tmp_path):
    """A FIFO hung the read; /dev/zero and a 2 GB sparse file were read whole before any check. Now each is refused
    from its stat, the good image is still classified, and the status is 1 (some input unreadable)."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    sparse = tmp_path / "sparse.png"
    with open(sparse, "wb") as handle:
        handle.truncate(2 * 2**30)
    result = run_predict("--model", model, fifo, "/dev/zero", sparse, image, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    records = json.loads(result.stdout)
    assert [r.get("error") for r in records[:3]] == [
        f"{fifo} is a named pipe, not an image file; only regular files are read.",
        "/dev/zero is a character device, not an image file; only regular files are read.",
        f"{sparse} is 2048.0 MB; the limit is 25 MB per file; nothing of it was read.",
    ]
    assert records[3]["image"] == str(image) and "prediction" in records[3]


def test_the_file_size_limit_can_be_set(model, tmp_path, capsys):
    noisy = tmp_path / "noisy.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(noisy)  # ~0.19 MB
    assert main(["predict", "--model", str(model), "--max-file-mb", "0.125", str(noisy)]) == 1
    [record] = json.loads(capsys.readouterr().out)
    assert record["error"] == f"{noisy} is 0.2 MB; the limit is 0.125 MB per file; nothing of it was read."
    assert main(["predict", "--model", str(model), str(noisy)]) == 0


def test_names_too_long_for_the_file_system_are_one_line(model, image, tmp_path, capsys):
    long_model = tmp_path / ("m" * 300 + ".onnx")
    assert main(["predict", "--model", str(long_model), str(image)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: cannot open model ")
    assert captured.err.strip().endswith("File name too long") and len(captured.err.splitlines()) == 1

    long_image = tmp_path / ("i" * 300 + ".png")
    assert main(["predict", "--model", str(model), str(long_image), str(image)]) == 1
    unreadable, classified = json.loads(capsys.readouterr().out)
    assert unreadable["error"] == f"{long_image} cannot be read (File name too long)." and "prediction" in classified


def test_a_long_list_of_class_names_is_not_taken_for_a_file(image, tmp_path_factory, capsys):
    """is_file() on a list longer than a file name may be raised "File name too long"."""
    bare = write_model(tiny_net_path(tmp_path_factory), tmp_path_factory.mktemp("bare") / "bare.onnx", None)
    names = [f"class_number_{i}_{'with_a_long_name_' * 6}" for i in range(3)]  # 3 classes, 330 bytes in all
    assert main(["predict", "--model", str(bare), "--class-names", ",".join(names), str(image)]) == 0
    [record] = json.loads(capsys.readouterr().out)
    assert record["prediction"] in names


@pytest.mark.parametrize("args, message", [
    (["--top-k", "0"], "argument --top-k: top_k must be an integer from 1 to 20 (classes listed per image); got 0"),
    (["--top-k", "many"], "argument --top-k: top_k must be an integer from 1 to 20 (classes listed per image); got 'many'"),
    (["--max-file-mb", "-3"], "argument --max-file-mb: must be a positive number; got '-3'"),
])
def test_bad_options_are_usage_errors_with_status_2(model, image, args, message, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["predict", "--model", str(model), *args, str(image)])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.strip().endswith(message)


def test_the_help_documents_the_exit_status():
    result = run_predict("--help")
    assert result.returncode == 0
    assert "exit status:" in result.stdout
    for line in ("0  every image was classified", "1  some input could not be read", "2  a usage error"):
        assert line in result.stdout
