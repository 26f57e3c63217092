import gzip
import pickle

import numpy as np
import pytest
from PIL import Image

from tests.conftest import CLASS_NAMES, make_images, require_shared
from training.config import ConfigError, DataConfig
from training.data.lt_data import build_datasets, long_tail_counts, split_off_balanced


def test_cifar10_if100_counts_match_the_formula():
    assert long_tail_counts(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


@pytest.mark.parametrize("imbalance, total, smallest", [(100, 10847, 5), (50, 12608, 10), (10, 19573, 50)])
def test_cifar100_totals(imbalance, total, smallest):
    counts = long_tail_counts(500, 100, imbalance)
    assert sum(counts) == total and counts[0] == 500 and counts[-1] == smallest


def test_step_profile_and_balanced():
    assert long_tail_counts(500, 10, 10, "step") == [500] * 5 + [50] * 5
    assert long_tail_counts(500, 10, 1) == [500] * 10
    with pytest.raises(ValueError):
        long_tail_counts(500, 10, 10, "linear")


def test_balanced_split_leaves_at_least_one():
    labels = np.array([0] * 10 + [1] * 3)
    held, rest = split_off_balanced(labels, 5, np.random.default_rng(0))
    assert np.bincount(labels[held]).tolist() == [5, 2]
    assert np.bincount(labels[rest]).tolist() == [5, 1]
    assert not set(held) & set(rest)


def test_cifar_lt_from_npz(tiny_cifar_npz):
    config = DataConfig(root=str(tiny_cifar_npz), imbalance_factor=10, val_per_class=5)
    bundle = build_datasets(config)
    # val is drawn first, so class 0 keeps 60 - 5; the others keep the exact formula count
    assert bundle.train_counts == [55] + long_tail_counts(60, 10, 10)[1:]
    assert np.bincount(bundle.val.labels).tolist() == [5] * 10
    assert np.bincount(bundle.test.labels).tolist() == [10] * 10  # the test set stays balanced
    train_images = {bundle.train.images[i].tobytes() for i in range(len(bundle.train))}
    assert not any(bundle.val.images[i].tobytes() in train_images for i in range(len(bundle.val)))
    image, label = bundle.train[0]
    assert tuple(image.shape) == (3, 32, 32) and isinstance(label, int)
    assert bundle.class_names == CLASS_NAMES


def test_subsample_is_seeded(tiny_cifar_npz):
    def train_images(seed):
        config = DataConfig(root=str(tiny_cifar_npz), imbalance_factor=10, val_per_class=5, subsample_seed=seed)
        return build_datasets(config).train.images

    assert np.array_equal(train_images(1), train_images(1))
    assert not np.array_equal(train_images(1), train_images(2))


def _write_cifar10_pickles(folder, per_class=20):
    folder.mkdir(parents=True)
    labels = np.repeat(np.arange(10), per_class)
    images = make_images(labels).transpose(0, 3, 1, 2).reshape(len(labels), -1)
    chunks = np.array_split(np.arange(len(labels)), 5)
    for index, chunk in enumerate(chunks, 1):
        with open(folder / f"data_batch_{index}", "wb") as handle:
            pickle.dump({b"data": images[chunk], b"labels": labels[chunk].tolist()}, handle)
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({b"data": images[:50], b"labels": labels[:50].tolist()}, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": CLASS_NAMES}, handle)
    return labels


def test_cifar_python_pickle_folder(tmp_path):
    labels = _write_cifar10_pickles(tmp_path / "cifar-10-batches-py")
    bundle = build_datasets(DataConfig(root=str(tmp_path), imbalance_factor=1, val_per_class=2))
    assert bundle.train_counts == [18] * 10 and len(bundle.test) == 50
    assert bundle.class_names == CLASS_NAMES
    assert np.bincount(bundle.train.labels).sum() + 20 == len(labels)


class _Exploit:
    def __reduce__(self):
        return (print, ("owned",))


def test_cifar_pickle_with_code_is_refused(tmp_path):
    _write_cifar10_pickles(tmp_path / "cifar-10-batches-py")
    with open(tmp_path / "cifar-10-batches-py" / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": _Exploit()}, handle)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        build_datasets(DataConfig(root=str(tmp_path), imbalance_factor=1))


def test_missing_cifar_gives_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="data.download=true"):
        build_datasets(DataConfig(root=str(tmp_path)))


def test_split_files(tmp_path):
    labels = np.repeat(np.arange(3), [12, 6, 3])
    lines = []
    for index, (image, label) in enumerate(zip(make_images(labels, size=36), labels)):
        relative = f"train/{CLASS_NAMES[label]}/{index}.jpg"
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / relative)
        lines.append(f"{relative} {label}\n")
    with gzip.open(tmp_path / "train.txt.gz", "wt") as handle:
        handle.writelines(lines)
    (tmp_path / "val.txt").write_text("".join(lines[::4]))
    (tmp_path / "test.txt").write_text("".join(lines[1::4]))
    config = DataConfig(dataset="places_lt", root=str(tmp_path), train_split=str(tmp_path / "train.txt.gz"),
                        val_split=str(tmp_path / "val.txt"), test_split=str(tmp_path / "test.txt"))
    bundle = build_datasets(config)
    assert bundle.train_counts == [12, 6, 3]
    assert bundle.class_names == CLASS_NAMES[:3]
    image, label = bundle.train[0]
    assert image.size == (36, 36) and label == 0


def test_split_file_with_bad_line(tmp_path):
    (tmp_path / "train.txt").write_text("a.jpg 0\nno-label-here\n")
    config = DataConfig(dataset="imagenet_lt", root=str(tmp_path), train_split=str(tmp_path / "train.txt"),
                        val_split=str(tmp_path / "train.txt"), test_split=str(tmp_path / "train.txt"))
    with pytest.raises(ConfigError, match="train.txt:2"):
        build_datasets(config)


@pytest.mark.parametrize("line, message", [("../../etc/passwd 0", "inside data.root"),
                                           ("/abs/a.jpg 1", "inside data.root"),
                                           ("a.jpg -1", "label >= 0")])
def test_split_file_paths_stay_inside_the_root(tmp_path, line, message):
    (tmp_path / "train.txt").write_text(f"a.jpg 0\n{line}\n")
    config = DataConfig(dataset="places_lt", root=str(tmp_path), train_split=str(tmp_path / "train.txt"),
                        val_split=str(tmp_path / "train.txt"), test_split=str(tmp_path / "train.txt"))
    with pytest.raises(ConfigError, match=message):
        build_datasets(config)


def test_npz_with_the_wrong_layout_is_refused(tmp_path):
    labels = np.arange(10)
    channels_first = make_images(labels).transpose(0, 3, 1, 2)
    np.savez(tmp_path / "bad.npz", x_train=channels_first, y_train=labels, x_test=channels_first, y_test=labels,
             class_names=np.array(CLASS_NAMES))
    with pytest.raises(ConfigError, match="uint8 N x H x W x 3"):
        build_datasets(DataConfig(root=str(tmp_path / "bad.npz")))
    np.savez(tmp_path / "partial.npz", x_train=channels_first)
    with pytest.raises(ConfigError, match="lacks the arrays"):
        build_datasets(DataConfig(root=str(tmp_path / "partial.npz")))


def test_image_folder_without_test_root_needs_a_hold_out(image_folder):
    with pytest.raises(ConfigError, match="val_per_class >= 1"):
        build_datasets(DataConfig(dataset="imagefolder", root=str(image_folder), val_per_class=0))


def test_image_folder_holds_out_val_and_test_and_subsamples(image_folder):
    config = DataConfig(dataset="imagefolder", root=str(image_folder), val_per_class=4, imbalance_factor=5)
    bundle = build_datasets(config)
    assert np.bincount(bundle.test.labels).tolist() == [4, 4, 4]
    assert np.bincount(bundle.val.labels).tolist() == [4, 4, 4]
    assert bundle.train_counts == long_tail_counts(22, 3, 5)
    every = [*bundle.train.paths, *bundle.val.paths, *bundle.test.paths]
    assert len(every) == len(set(every))


def test_image_folder_test_root_must_have_every_class(image_folder, tmp_path):
    (tmp_path / "red").mkdir()
    config = DataConfig(dataset="imagefolder", root=str(image_folder), test_root=str(tmp_path))
    with pytest.raises(ConfigError, match="lacks the class folders"):
        build_datasets(config)


def test_shared_cifar10_if100():
    path = require_shared("cifar10.npz")
    bundle = build_datasets(DataConfig(root=str(path), val_per_class=0))
    assert bundle.train_counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert len(bundle.test) == 10000 and bundle.val is None
