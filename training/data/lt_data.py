"""The one long-tailed dataset builder: CIFAR-10/100-LT, ImageNet-LT / Places-LT split files, image folders.

Every source ends up as the same `DatasetBundle`: train / val / test datasets, class names and the
training class counts. Validation data never comes from the test set: it is the official val split
when there is one, otherwise a balanced hold-out drawn from the training pool *before* the long-tailed
subset is taken (so the tail keeps its exact formula count; only classes that need every image, such as
CIFAR class 0, lose `val_per_class` images).
"""

from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from inference.images import ImageLoadError, load_image
from training.config import ConfigError, DataConfig

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def long_tail_counts(n_max: int, num_classes: int, imbalance_factor: float, profile: str = "exp") -> list[int]:
    """Per-class counts of a long-tailed subset (LDAM-DRW convention: class 0 is the largest).

    exp:  n_i = floor(n_max * (1/IF)^(i/(C-1)));  step: the first half keeps n_max, the rest n_max/IF.
    """
    if num_classes == 1 or imbalance_factor == 1:
        return [n_max] * num_classes
    if profile == "exp":
        return [int(n_max * (1.0 / imbalance_factor) ** (i / (num_classes - 1))) for i in range(num_classes)]
    if profile == "step":
        half = num_classes // 2
        return [n_max] * half + [int(n_max / imbalance_factor)] * (num_classes - half)
    raise ValueError(f"unknown long-tail profile '{profile}' (expected exp or step)")


def take_per_class(labels: np.ndarray, counts: list[int], rng: np.random.Generator) -> np.ndarray:
    """Indices of a random `counts[c]` images of every class c (sorted); fewer if a class has fewer."""
    chosen = []
    for class_index, count in enumerate(counts):
        members = np.flatnonzero(labels == class_index)
        chosen.append(rng.choice(members, size=min(count, len(members)), replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def split_off_balanced(labels: np.ndarray, per_class: int, rng: np.random.Generator, keep_at_least: int = 1):
    """(held_out, rest): `per_class` images of each class, leaving at least `keep_at_least` behind."""
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    sizes = np.bincount(labels, minlength=num_classes)
    counts = [int(max(0, min(per_class, size - keep_at_least))) for size in sizes]
    held_out = take_per_class(labels, counts, rng)
    rest = np.setdiff1d(np.arange(len(labels)), held_out)
    return held_out, rest


# ----------------------------------------------------------------------------------------- datasets


class ArrayDataset(Dataset):
    """Images in memory (uint8, N x H x W x 3), returned as uint8 CHW tensors through `transform`."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable | None = None):
        self.images, self.labels, self.transform = images, np.asarray(labels, dtype=np.int64), transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        image = torch.from_numpy(self.images[index]).permute(2, 0, 1)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def with_transform(self, transform):
        return ArrayDataset(self.images, self.labels, transform)


class FileListDataset(Dataset):
    """Images on disk, listed as (path, label); decoded with the same loader the server uses."""

    def __init__(self, paths: list[Path], labels: np.ndarray, transform: Callable | None = None):
        self.paths, self.labels, self.transform = list(paths), np.asarray(labels, dtype=np.int64), transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        try:
            image = load_image(self.paths[index])
        except ImageLoadError as error:
            raise ImageLoadError(f"{self.paths[index]}: {error}") from error
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def with_transform(self, transform):
        return FileListDataset(self.paths, self.labels, transform)


def subset(dataset, indices: np.ndarray):
    if isinstance(dataset, ArrayDataset):
        return ArrayDataset(dataset.images[indices], dataset.labels[indices], dataset.transform)
    return FileListDataset([dataset.paths[i] for i in indices], dataset.labels[indices], dataset.transform)


@dataclass
class DatasetBundle:
    train: Dataset
    val: Dataset | None
    test: Dataset
    class_names: list[str]
    kind: str  # "array" (in-memory, CIFAR) or "files"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def train_counts(self) -> list[int]:
        return np.bincount(self.train.labels, minlength=self.num_classes).tolist()


# -------------------------------------------------------------------------------------------- CIFAR

CIFAR_FOLDERS = {"cifar10_lt": "cifar-10-batches-py", "cifar100_lt": "cifar-100-python"}


class _CifarUnpickler(pickle.Unpickler):
    """CIFAR ships as pickles; allow only the numpy pieces they contain, so a tampered file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR file")
        return super().find_class(module, name)


def _read_cifar_pickle(path: Path) -> dict:
    with open(path, "rb") as handle:
        data = _CifarUnpickler(handle, encoding="latin1").load()
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in data.items()}


def _cifar_from_pickle_folder(folder: Path, dataset: str):
    def images(batch):
        return np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)

    if dataset == "cifar10_lt":
        train = [_read_cifar_pickle(folder / f"data_batch_{i}") for i in range(1, 6)]
        test = _read_cifar_pickle(folder / "test_batch")
        names = _read_cifar_pickle(folder / "batches.meta")["label_names"]
        key = "labels"
    else:
        train = [_read_cifar_pickle(folder / "train")]
        test = _read_cifar_pickle(folder / "test")
        names = _read_cifar_pickle(folder / "meta")["fine_label_names"]
        key = "fine_labels"
    x_train = np.concatenate([images(batch) for batch in train])
    y_train = np.concatenate([np.asarray(batch[key]) for batch in train])
    return x_train, y_train, images(test), np.asarray(test[key]), list(names)


def _download_cifar(root: Path, dataset: str) -> None:
    from torchvision.datasets import CIFAR10, CIFAR100
    from torchvision.datasets.utils import download_and_extract_archive

    source = CIFAR10 if dataset == "cifar10_lt" else CIFAR100
    download_and_extract_archive(source.url, str(root), filename=source.filename, md5=source.tgz_md5)


def load_cifar_arrays(dataset: str, root: str, download: bool):
    """(x_train, y_train, x_test, y_test, class_names) from an .npz file or the python-pickle folder."""
    path = Path(root)
    if path.suffix == ".npz":
        if not path.is_file():
            raise ConfigError(f"data.root: no such file {path}")
        with np.load(path) as arrays:
            missing = {"x_train", "y_train", "x_test", "y_test", "class_names"} - set(arrays.files)
            if missing:
                raise ConfigError(f"{path} lacks the arrays {sorted(missing)}")
            data = (arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                    [str(name) for name in arrays["class_names"]])
        for images, labels in ((data[0], data[1]), (data[2], data[3])):
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(labels):
                raise ConfigError(f"{path}: images must be uint8 N x H x W x 3 with one label each; got "
                                  f"{images.dtype} {images.shape} and {len(labels)} labels")
            if len(labels) and (labels.min() < 0 or labels.max() >= len(data[4])):
                raise ConfigError(f"{path}: labels must lie in 0..{len(data[4]) - 1}")
        return data
    folder = path / CIFAR_FOLDERS[dataset] if (path / CIFAR_FOLDERS[dataset]).is_dir() else path
    marker = "batches.meta" if dataset == "cifar10_lt" else "meta"
    if not (folder / marker).is_file():
        if not download:
            raise ConfigError(
                f"no {dataset.removesuffix('_lt')} data under {path}: point data.root at an .npz file or "
                f"a folder holding {CIFAR_FOLDERS[dataset]}/, or set data.download=true to fetch it"
            )
        path.mkdir(parents=True, exist_ok=True)
        _download_cifar(path, dataset)
        folder = path / CIFAR_FOLDERS[dataset]
    return _cifar_from_pickle_folder(folder, dataset)


def build_cifar_lt(config: DataConfig) -> DatasetBundle:
    x_train, y_train, x_test, y_test, class_names = load_cifar_arrays(config.dataset, config.root, config.download)
    y_train = np.asarray(y_train, dtype=np.int64)
    rng = np.random.default_rng(config.subsample_seed)
    val_idx, pool = split_off_balanced(y_train, config.val_per_class, rng)
    n_max = int(np.bincount(y_train).max())
    counts = long_tail_counts(n_max, len(class_names), config.imbalance_factor, config.profile)
    train_idx = pool[take_per_class(y_train[pool], counts, rng)]
    full = ArrayDataset(x_train, y_train)
    return DatasetBundle(
        train=subset(full, train_idx),
        val=subset(full, val_idx) if len(val_idx) else None,
        test=ArrayDataset(x_test, np.asarray(y_test, dtype=np.int64)),
        class_names=class_names,
        kind="array",
    )


# ------------------------------------------------------------------------------ split files / folders


def read_split_file(path: str | Path) -> list[tuple[str, int]]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"split file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    samples = []
    with opener(path, "rt") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].isdigit():
                raise ConfigError(f"{path}:{line_number}: expected '<relative path> <label>' with a label >= 0, "
                                  f"got {line.strip()!r}")
            relative = Path(parts[0])
            if relative.is_absolute() or ".." in relative.parts:
                raise ConfigError(f"{path}:{line_number}: image paths must stay inside data.root, got {parts[0]!r}")
            samples.append((parts[0], int(parts[1])))
    return samples


def _class_names_from_paths(samples: list[tuple[str, int]], num_classes: int) -> list[str]:
    names = [f"class_{index}" for index in range(num_classes)]
    for relative_path, label in samples:
        names[label] = Path(relative_path).parent.name or names[label]
    return names


def build_split_file_dataset(config: DataConfig) -> DatasetBundle:
    for key in ("train_split", "val_split", "test_split"):
        if not getattr(config, key):
            raise ConfigError(f"data.{key} is required for {config.dataset} (a '<path> <label>' list)")
    root = Path(config.root)
    splits = {key: read_split_file(getattr(config, key)) for key in ("train_split", "val_split", "test_split")}
    num_classes = 1 + max(label for samples in splits.values() for _, label in samples)

    def to_dataset(samples):
        return FileListDataset([root / p for p, _ in samples], np.array([label for _, label in samples]))

    return DatasetBundle(
        train=to_dataset(splits["train_split"]), val=to_dataset(splits["val_split"]), test=to_dataset(splits["test_split"]),
        class_names=_class_names_from_paths(splits["train_split"], num_classes), kind="files",
    )


def _scan_image_folder(root: Path, class_names: list[str] | None = None):
    if not root.is_dir():
        raise ConfigError(f"image folder not found: {root}")
    found = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    class_names = class_names or found
    if not class_names:
        raise ConfigError(f"{root} has no class sub-folders (expected {root}/<class name>/<image files>)")
    missing = sorted(set(class_names) - set(found))
    if missing:
        raise ConfigError(f"{root} lacks the class folders {missing}")
    paths, labels = [], []
    for label, name in enumerate(class_names):
        files = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise ConfigError(f"{root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths, np.array(labels, dtype=np.int64), class_names


def build_image_folder(config: DataConfig) -> DatasetBundle:
    paths, labels, class_names = _scan_image_folder(Path(config.root))
    rng = np.random.default_rng(config.subsample_seed)
    pool = FileListDataset(paths, labels)
    if config.test_root:
        test_paths, test_labels, _ = _scan_image_folder(Path(config.test_root), class_names)
        test = FileListDataset(test_paths, test_labels)
    else:  # no separate test folder: hold out a balanced test set too
        if config.val_per_class < 1:
            raise ConfigError("an image folder without data.test_root needs data.val_per_class >= 1: that many "
                              "images per class are held out for validation and again for testing")
        test_idx, rest = split_off_balanced(labels, config.val_per_class, rng, keep_at_least=2)
        test, pool = subset(pool, test_idx), subset(pool, rest)
    val_idx, rest = split_off_balanced(pool.labels, config.val_per_class, rng)
    val, pool = subset(pool, val_idx), subset(pool, rest)
    if config.imbalance_factor > 1:
        sizes = np.bincount(pool.labels, minlength=len(class_names))
        counts = long_tail_counts(int(sizes.max()), len(class_names), config.imbalance_factor, config.profile)
        pool = subset(pool, take_per_class(pool.labels, counts, rng))
    return DatasetBundle(train=pool, val=val if len(val) else None, test=test,
                         class_names=class_names, kind="files")


BUILDERS = {
    "cifar10_lt": build_cifar_lt,
    "cifar100_lt": build_cifar_lt,
    "imagenet_lt": build_split_file_dataset,
    "places_lt": build_split_file_dataset,
    "imagefolder": build_image_folder,
}


def build_datasets(config: DataConfig) -> DatasetBundle:
    if config.dataset not in BUILDERS:
        raise ConfigError(f"data.dataset must be one of {', '.join(BUILDERS)}; got '{config.dataset}'")
    bundle = BUILDERS[config.dataset](config)
    empty = [c for c, n in zip(bundle.class_names, bundle.train_counts) if n == 0]
    if empty:
        raise ConfigError(f"classes without training images: {empty}")
    return bundle
