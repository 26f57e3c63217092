"""Batched augmentation on the training device (training/data/batch_augment.py): for fixed parameters every op
matches torchvision's per-image op: exactly (crop, flip, grey, Cutout, AutoAugment), within one grey level (colour
adjustments, blur), or, for the resizing ops, within two grey levels on at most a quarter of an image's pixels
(torch's uint8 resize works in fixed point); the parameters follow the v2 transforms' distributions; an image gets the same
augmentation whatever its batch; a 64 px model on 32 px images gets 64 px views on both paths; run.compile."""

import dataclasses
import math
import random

import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from inference.card import Preprocessing
from models.registry import CIFAR_PREPROCESSING
from training import distributed
from training.config import ConfigError, load_config
from training.data import batch_augment as B
from training.data.loading import make_loader
from training.data.transforms import Cutout, contrastive_transform, eval_transform, train_transform

CE = "configs/cifar10_lt/ce.yaml"
# A fake backbone preprocessing at 64 px whose eval crop is not the whole resized image (73 px → centre 64).
PREPROCESSING_64 = Preprocessing(input_size=[3, 64, 64], mean=CIFAR_PREPROCESSING.mean, std=CIFAR_PREPROCESSING.std,
                                 interpolation="bilinear", crop_pct=0.875)


def images(count: int = 16, seed: int = 0) -> torch.Tensor:
    """Smooth-ish uint8 images (B, 3, 32, 32): noise plus gradients, so that every op changes something."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 180, 32)[None, :, None, None] + np.linspace(0, 60, 32)[None, None, :, None]
    noise = rng.integers(0, 70, (count, 32, 32, 3))
    pixels = np.clip(ramp * rng.uniform(0.3, 1.0, (count, 1, 1, 3)) + noise, 0, 255).astype(np.uint8)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()


def params(*columns) -> torch.Tensor:
    return torch.tensor(list(zip(*columns)), dtype=torch.float64)


def max_difference(a: torch.Tensor, b: torch.Tensor) -> int:
    return int((a.int() - b.int()).abs().max())


def resized_alike(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The tolerance of the resizing ops (measured: at most 2 levels, on up to 16 % of a small crop's pixels)."""
    return max_difference(a, b) <= 2 and (a != b).double().mean() <= 0.25


# ------------------------------------------------------------------------- fixed parameters: op by op


def test_pad_crop_flip_greyscale_and_cutout_equal_torchvision_exactly():
    batch = images()
    tops, lefts = [i % 9 for i in range(16)], [(5 * i) % 9 for i in range(16)]
    cropped = B.PadCrop(4).apply(batch, params(tops, lefts))
    expected = [TF.crop(TF.pad(image, [4]), top, left, 32, 32) for image, top, left in zip(batch, tops, lefts)]
    assert torch.equal(cropped, torch.stack(expected))

    flips = [i % 2 for i in range(16)]
    flipped = B.Flip().apply(batch, params(flips))
    assert torch.equal(flipped, torch.stack([TF.horizontal_flip(x) if f else x for x, f in zip(batch, flips)]))

    greys = B.Greyscale(0.2).apply(batch, params(flips))
    assert torch.equal(greys, torch.stack([TF.rgb_to_grayscale(x, 3) if f else x for x, f in zip(batch, flips)]))

    holes = B.Cutout(16).apply(batch, params(tops, [3 * i % 32 for i in range(16)]))
    for image, hole, top, left in zip(batch, holes, tops, [3 * i % 32 for i in range(16)]):
        torch.manual_seed(0)  # transforms.Cutout draws its centre from torch's generator: replay it
        centre_y, centre_x = int(torch.randint(32, ())), int(torch.randint(32, ()))
        moved = B.Cutout(16).apply(image[None], params([centre_y], [centre_x]))[0]
        torch.manual_seed(0)
        assert torch.equal(moved, Cutout(16)(image))
        assert torch.equal(hole, B.Cutout(16).apply(image[None], params([top], [left]))[0])


def test_resized_crop_and_blur_match_torchvision_within_one_grey_level():
    batch = images()
    boxes = [(i % 7, (3 * i) % 9, 8 + i, 32 - (3 * i) % 9 - i % 3) for i in range(16)]  # top, left, height, width
    for mode in ("bilinear", "bicubic"):
        ours = B.ResizedCrop((0.2, 1.0), mode=mode).apply(batch, params(*zip(*boxes)))
        for image, got, (top, left, height, width) in zip(batch, ours, boxes):
            expected = TF.resized_crop(image, top, left, height, width, [32, 32], InterpolationMode(mode),
                                       antialias=True)
            assert resized_alike(got, expected)

    sigmas = [0.1 + 0.12 * i for i in range(16)]
    blurred = B.Blur(13, (0.1, 2.0), 0.5).apply(batch, params([1.0] * 16, sigmas))
    for image, got, sigma in zip(batch, blurred, sigmas):
        assert max_difference(got, TF.gaussian_blur(image, [13, 13], [sigma, sigma])) <= 1


@pytest.mark.parametrize("adjustment, torchvision_op, factors", [
    (B.adjust_brightness, TF.adjust_brightness, [0.6 + 0.05 * i for i in range(16)]),
    (B.adjust_contrast, TF.adjust_contrast, [0.6 + 0.05 * i for i in range(16)]),
    (B.adjust_saturation, TF.adjust_saturation, [0.6 + 0.05 * i for i in range(16)]),
    (B.adjust_hue, TF.adjust_hue, [-0.1 + 0.0125 * i for i in range(16)]),
])
def test_colour_adjustments_match_torchvision(adjustment, torchvision_op, factors):
    batch = images()
    ours = adjustment(batch, torch.tensor(factors, dtype=torch.float64))
    for image, got, factor in zip(batch, ours, factors):
        assert max_difference(got, torchvision_op(image, factor)) <= 1


def test_colour_jitter_applies_the_four_adjustments_in_each_images_order():
    batch = images(4)
    orders = [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]]
    factors = [1.3, 0.7, 1.2, 0.05]
    rows = torch.tensor([[1.0, *order, *factors] for order in orders], dtype=torch.float64)
    ours = B.ColorJitter(0.4, 0.4, 0.4, 0.1).apply(batch, rows)
    ops = [lambda x: TF.adjust_brightness(x, factors[0]), lambda x: TF.adjust_contrast(x, factors[1]),
           lambda x: TF.adjust_saturation(x, factors[2]), lambda x: TF.adjust_hue(x, factors[3])]
    for image, got, order in zip(batch, ours, orders):
        for index in order:
            image = ops[index](image)
        assert max_difference(got, image) <= 1


def test_autoaugment_equals_torchvision_sub_policy_by_sub_policy():
    augment = B.CifarAutoAugment()
    batch = images(50, seed=3)
    rows = [[i % 25, 1.0, float(i % 2), 1.0, float(i // 25)] for i in range(50)]  # every op, both signs
    ours = augment.apply(batch, torch.tensor(rows, dtype=torch.float64))
    for image, got, row in zip(batch, ours, rows):
        for stage in range(2):
            name, _, bin_index = augment.policies[row[0]][stage]
            magnitude = augment.magnitude(name, bin_index, bool(row[2 + 2 * stage]), 32, 32)  # unsigned ops: kept
            image = augment.torchvision._apply_image_or_video_transform(
                image, name, magnitude, interpolation=InterpolationMode.NEAREST, fill=augment.torchvision._fill)
        assert torch.equal(got, image)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_fit_to_input_is_the_eval_resize_and_centre_crop(interpolation):
    preprocessing = dataclasses.replace(PREPROCESSING_64, interpolation=interpolation)
    batch = images(8)
    fitted = B.fit_to_input(batch, preprocessing)
    resize = v2.Compose([v2.Resize(73, interpolation=InterpolationMode(interpolation), antialias=True),
                         v2.CenterCrop(64)])
    assert fitted.shape == (8, 3, 64, 64)
    assert all(resized_alike(got, resize(image)) for got, image in zip(fitted, batch))
    evaluated = B.eval_view(preprocessing).apply(batch, [])
    expected = torch.stack([eval_transform(preprocessing)(image) for image in batch])
    std = torch.tensor(preprocessing.std)[:, None, None]
    assert ((evaluated - expected).abs() * std).max() <= 2 / 255 + 1e-6
    assert B.evaluates_on_device(preprocessing, (32, 32)) and B.evaluates_on_device(CIFAR_PREPROCESSING, (32, 32))
    assert not B.evaluates_on_device(dataclasses.replace(preprocessing, interpolation="nearest"), (32, 32))


# ----------------------------------------------------------------------------------- distributions


def draws(op, count: int = 3000) -> torch.Tensor:
    generator = random.Random(0)
    return torch.tensor([op.draw(generator, 32, 32) for _ in range(count)], dtype=torch.float64)


def test_crop_flip_and_cutout_parameters_are_uniform_as_in_torchvision():
    offsets = draws(B.PadCrop(4))
    assert offsets.min() == 0 and offsets.max() == 8
    frequencies = torch.bincount(offsets[:, 0].long(), minlength=9) / len(offsets)
    assert (frequencies - 1 / 9).abs().max() < 0.025  # 3000 draws: standard error 0.006
    assert abs(draws(B.Flip())[:, 0].mean() - 0.5) < 0.03
    centres = draws(B.Cutout(16))
    assert centres.min() == 0 and centres.max() == 31 and abs(centres.mean() - 15.5) < 0.6


def test_resized_crop_boxes_follow_random_resized_crop():
    ours = draws(B.ResizedCrop((0.2, 1.0)))
    reference = v2.RandomResizedCrop(32, scale=(0.2, 1.0))
    torch.manual_seed(0)
    theirs = torch.tensor([[p["top"], p["left"], p["height"], p["width"]] for p in
                           (reference.make_params([torch.zeros(3, 32, 32)]) for _ in range(3000))], dtype=torch.float64)
    quantiles = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    for column in range(4):  # means within 4 standard errors, deciles and medians within a pixel
        spread = theirs[:, column].std() / math.sqrt(3000)
        assert abs(ours[:, column].mean() - theirs[:, column].mean()) < 4 * spread + 0.05
        assert (ours[:, column].quantile(quantiles) - theirs[:, column].quantile(quantiles)).abs().max() <= 1
    assert ours[:, 2:].min() >= 1 and ours[:, 2:].max() == 32 and (ours[:, 0] + ours[:, 2]).max() <= 32


def test_jitter_greyscale_and_blur_probabilities_and_ranges():
    jitter = draws(B.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8))
    applied = jitter[jitter[:, 0] == 1]
    assert abs(len(applied) / len(jitter) - 0.8) < 0.03
    assert all(sorted(row) == [0, 1, 2, 3] for row in applied[:, 1:5].tolist())  # a permutation per image
    assert (applied[:, 1] == 0).double().mean().sub(0.25).abs() < 0.04  # every order position uniform
    for column, (low, high) in zip(range(5, 9), [(0.6, 1.4)] * 3 + [(-0.1, 0.1)]):
        values = applied[:, column]
        assert low <= values.min() < low + 0.01 and high - 0.01 < values.max() <= high
        assert abs(values.mean() - (low + high) / 2) < 0.01
    assert abs(draws(B.Greyscale(0.2))[:, 0].mean() - 0.2) < 0.03
    blur = draws(B.Blur(13, (0.1, 2.0), 0.5))
    assert abs(blur[:, 0].mean() - 0.5) < 0.03
    sigmas = blur[blur[:, 0] == 1, 1]
    assert 0.1 <= sigmas.min() < 0.15 and 1.95 < sigmas.max() <= 2.0 and abs(sigmas.mean() - 1.05) < 0.05


def test_autoaugment_sub_policies_and_op_probabilities_follow_the_cifar10_policy():
    augment = B.CifarAutoAugment()
    rows = draws(augment, 10000)
    counts = torch.bincount(rows[:, 0].long(), minlength=25)
    assert (counts / len(rows) - 1 / 25).abs().max() < 0.012
    for index, policy in enumerate(augment.policies):
        chosen = rows[rows[:, 0] == index]
        for stage, (name, probability, _) in enumerate(policy):
            assert abs(chosen[:, 1 + 2 * stage].mean() - probability) < 0.1  # about 400 draws each
            signed = augment.torchvision._AUGMENTATION_SPACE[name][1]
            negated = chosen[chosen[:, 1 + 2 * stage] == 1, 2 + 2 * stage]
            if not signed:
                assert negated.sum() == 0
            elif len(negated) > 100:
                assert abs(negated.mean() - 0.5) < 0.15


# ------------------------------------------------------------------------------------- per image


def augmented_by_index(dataset, batch_size: int, seed: int, shard: bool = False) -> dict:
    out = {}
    loader = make_loader(dataset, batch_size, 0, shuffle=True, seed=seed, shard=shard)
    order = [index for batch in loader.batch_sampler for index, _ in batch]
    position = 0
    for views, _ in loader:
        for row in range(len(views[0])):
            out[order[position]] = tuple(view[row] for view in views)
            position += 1
    return out


def test_an_image_gets_the_same_augmentation_whatever_its_batch_or_process(monkeypatch):
    pixels = images(24).permute(0, 2, 3, 1).numpy()
    labels = np.arange(24) % 3
    views = (B.strong_classification_view(CIFAR_PREPROCESSING), B.contrastive_view(CIFAR_PREPROCESSING))
    dataset = B.OnDeviceViews(24, lambda index: ([index, index], int(labels[index])), B.BatchAugment(pixels, views),
                              labels)
    by_eight, by_six = augmented_by_index(dataset, 8, seed=3), augmented_by_index(dataset, 6, seed=3)
    assert sorted(by_eight) == list(range(24))
    assert all(torch.equal(a, b) for index in by_eight for a, b in zip(by_eight[index], by_six[index]))
    assert not torch.equal(augmented_by_index(dataset, 8, seed=4)[0][1], by_eight[0][1])  # another epoch
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        part = augmented_by_index(dataset, 8, seed=3, shard=True)
        assert len(part) == 12 and all(torch.equal(part[i][1], by_eight[i][1]) for i in part)


def test_both_paths_give_a_64_pixel_model_its_input_size():
    pixels = images(4).permute(0, 2, 3, 1).numpy()
    for transform in (train_transform(PREPROCESSING_64, "array", (32, 32)),
                      contrastive_transform(PREPROCESSING_64, "array", (32, 32))):
        assert transform(torch.from_numpy(pixels[0]).permute(2, 0, 1)).shape == (3, 64, 64)
    views = (B.train_view(PREPROCESSING_64), B.strong_classification_view(PREPROCESSING_64, cutout=16),
             B.contrastive_view(PREPROCESSING_64))
    augmented, _ = B.BatchAugment(pixels, views)(((torch.zeros(4, 3, dtype=torch.long), torch.arange(4)), None))
    assert [tuple(view.shape) for view in augmented] == [(4, 3, 64, 64)] * 3


def test_augment_on_device_needs_an_in_memory_dataset():
    assert load_config(CE).data.augment_on == "auto"
    with pytest.raises(ConfigError, match="augment_on=device needs an in-memory"):
        load_config(CE, ["data.dataset=imagefolder", "data.augment_on=device"])
    with pytest.raises(ConfigError, match="data.augment_on must be one of"):
        load_config(CE, ["data.augment_on=gpu"])


# ------------------------------------------------------------------------------- training runs


def test_the_loader_path_trains_with_persistent_workers(tmp_path, tiny_config_overrides):
    from training.train import train

    overrides = tiny_config_overrides + ["data.augment_on=loader", "data.num_workers=1", "run.eval_test_every=1"]
    metrics = train(load_config(CE, overrides), tmp_path / "run")
    assert metrics["last_epoch"]["epoch"] == 2 and "test_oracle_best" in metrics


def test_compile_smoke_trains_and_saves_the_plain_module_keys(tmp_path, tiny_config_overrides, monkeypatch):
    """run.compile wires torch.compile around the training model and the classifier; the eager backend keeps
    this test quick (inductor's code generation is what bench/bench_trainer.py --compile measures)."""
    from training.checkpoint import load_checkpoint
    from training.train import train

    compiled, real_compile = [], torch.compile

    def eager_compile(model, **kwargs):
        compiled.append(type(model).__name__)
        return real_compile(model, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", eager_compile)
    overrides = tiny_config_overrides + ["optim.epochs=1", "run.compile=true"]
    metrics = train(load_config(CE, overrides), tmp_path / "run")
    assert len(compiled) == 2 and metrics["last_epoch"]["epoch"] == 1
    tensors, _ = load_checkpoint(tmp_path / "run", "last")
    assert not any("_orig_mod" in name for name in tensors)


@pytest.mark.parametrize("augment_on", ["device", "loader"])
def test_a_64_pixel_backbone_trains_on_32_pixel_cifar_on_both_paths(tmp_path, tiny_config_overrides, augment_on,
                                                                    monkeypatch):
    """efficientnet_lite0 at 64 px (bicubic, crop 0.875) on the 32 px tiny CIFAR: what it trains and is evaluated on
    is 64 px, on both paths."""
    from training import engine
    from training.checkpoint import load_checkpoint
    from training.train import train

    sizes, real_to_device = set(), engine.to_device

    def recording_to_device(batch, device, channels_last):
        if torch.is_tensor(batch) and batch.dim() == 4:
            sizes.add(tuple(batch.shape[-2:]))
        return real_to_device(batch, device, channels_last)

    monkeypatch.setattr(engine, "to_device", recording_to_device)
    overrides = tiny_config_overrides + ["model.name=efficientnet_lite0", "model.input_size=64", "model.crop_pct=0.875",
                                         "run.amp=none", "optim.epochs=1", f"data.augment_on={augment_on}"]
    metrics = train(load_config(CE, overrides), tmp_path / "run")
    assert metrics["last_epoch"]["epoch"] == 1
    assert load_checkpoint(tmp_path / "run", "last")[1]["preprocessing"]["input_size"] == [3, 64, 64]
    assert sizes == {(64, 64)}  # training batches and evaluation batches alike
