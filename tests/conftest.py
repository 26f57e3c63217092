"""Shared test setup: offline environment, the torchvision compat fix, and small generated data sets.

Tests never download anything. The few that use ../shared/data skip with a reason when it is absent.
"""

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

REPO_ROOT = Path(__file__).resolve().parents[1]
# The packages import from this checkout even when it is not installed (`pip install -e .`), in this process and
# in the subprocesses the tests start (the CLI, torchrun ranks, servers).
sys.path.insert(0, str(REPO_ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

import torchvision_compat  # noqa: E402,F401  (before anything imports torchvision)

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
CLASS_NAMES = ["red", "green", "blue", "yellow", "cyan", "magenta", "white", "black", "orange", "purple"]
COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 230, 30), (30, 220, 220), (220, 30, 220),
           (235, 235, 235), (15, 15, 15), (240, 140, 20), (120, 40, 160)]


def make_images(labels: np.ndarray, size: int = 32, seed: int = 0) -> np.ndarray:
    """Noisy images whose dominant colour is the class: easy enough to learn in a few steps."""
    rng = np.random.default_rng(seed)
    colours = np.array(COLOURS, dtype=np.float32)[labels % len(COLOURS)]
    noise = rng.normal(0, 25, size=(len(labels), size, size, 3))
    return np.clip(colours[:, None, None, :] + noise, 0, 255).astype(np.uint8)


def write_cifar_like_npz(path: Path, train_per_class: int = 60, test_per_class: int = 10,
                         num_classes: int = 10) -> Path:
    y_train = np.repeat(np.arange(num_classes), train_per_class)
    y_test = np.repeat(np.arange(num_classes), test_per_class)
    np.savez(path, x_train=make_images(y_train, seed=1), y_train=y_train, x_test=make_images(y_test, seed=2),
             y_test=y_test, class_names=np.array(CLASS_NAMES[:num_classes]))
    return path


@pytest.fixture(scope="session")
def tiny_cifar_npz(tmp_path_factory) -> Path:
    return write_cifar_like_npz(tmp_path_factory.mktemp("data") / "tiny_cifar.npz")


@pytest.fixture
def tiny_config_overrides(tiny_cifar_npz):
    """Overrides that turn configs/cifar10_lt/ce.yaml into a seconds-long run on generated data."""
    return [f"data.root={tiny_cifar_npz}", "data.imbalance_factor=10", "data.val_per_class=5",
            "data.batch_size=32", "data.num_workers=0", "optim.epochs=2", "optim.warmup_epochs=1",
            "optim.lr=0.05", "run.progress=false"]


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """<root>/<class>/<n>.png with 30 images per class for 3 classes."""
    root = tmp_path_factory.mktemp("folder")
    labels = np.repeat(np.arange(3), 30)
    for index, (image, label) in enumerate(zip(make_images(labels, size=40, seed=3), labels)):
        folder = root / CLASS_NAMES[label]
        folder.mkdir(exist_ok=True)
        Image.fromarray(image).save(folder / f"{index}.png")
    return root


def write_synthetic_set(root, class_names, per_class, size=32, seed=5):
    """A synthetic set as `synthesize` writes it: PNGs of the class colour, listed in images.jsonl."""
    from training.data.synthetic_set import append_records, class_folder, start_synthetic_set

    synthetic = start_synthetic_set(root, {"class_names": list(class_names), "target_counts": list(per_class),
                                           "generator": {"kind": "test"}})
    labels = np.repeat(np.arange(len(class_names)), per_class)
    records = []
    for index, (image, label) in enumerate(zip(make_images(labels, size=size, seed=seed), labels)):
        file = f"{class_folder(int(label), class_names[label])}/{index}.png"
        (root / file).parent.mkdir(exist_ok=True)
        Image.fromarray(image).save(root / file)
        records.append({"file": file, "class_index": int(label), "seed": index, "prompt": ""})
    append_records(synthetic, records)
    return root


def require_shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is not present (it exists only on the project's dev machines)")
    return path


def train_interrupted_and_resumed(config_path: str, overrides: list[str], work: Path, monkeypatch,
                                  die_in_epoch: int = 3) -> tuple[Path, Path]:
    """Trains `config_path` straight through into work/straight, and again into work/resumed with a
    KeyboardInterrupt during epoch `die_in_epoch` (before its checkpoint, like a kill) followed by --resume."""
    import training.train as trainer
    from training.config import load_config
    from training.run import resume_config

    trainer.train(load_config(config_path, overrides), work / "straight")
    real_epoch, calls = trainer.train_one_epoch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == die_in_epoch:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(load_config(config_path, overrides), work / "resumed")
    monkeypatch.setattr(trainer, "train_one_epoch", real_epoch)
    trainer.train(resume_config(work / "resumed", config_path, overrides), work / "resumed", resume=True)
    return work / "straight", work / "resumed"


def write_tiny_generator(folder, class_names, size=16):
    """A random, untrained class-conditional generator in the format `train-generator` writes (unet/,
    scheduler/, generator.json, README.md): seconds to build and to sample from, useless pictures."""
    import json

    import torch
    from diffusers import DDIMScheduler, UNet2DModel

    from inference.generators import GENERATOR_FORMAT

    folder = Path(folder)
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=size, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=8, num_class_embeds=len(class_names) + 1)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    DDIMScheduler(num_train_timesteps=100, steps_offset=1, clip_sample=True).save_pretrained(folder / "scheduler")
    info = {"format": GENERATOR_FORMAT, "name": "tiny_generator", "class_names": list(class_names),
            "class_counts": [10] * len(class_names), "dataset": "toy-lt", "image_size": size,
            "null_class_index": len(class_names), "default_steps": 2, "default_guidance": 1.0}
    (folder / "generator.json").write_text(json.dumps(info, indent=1))
    (folder / "README.md").write_text("# tiny_generator\n\nRandom weights, for tests.\n")
    return folder
