"""Our trainer's epoch loop vs a bare PyTorch loop on the same model, optimizer and batches, in one process.

    python bench/bench_trainer.py [--pipeline tensors|augment] [--steps 20] [--rounds 5] [--amp bf16]
                                  [--data data/cifar10.npz] [--workers 2] [--threads N] [--progress]

Both variants train the same ResNet-32 (`--model`) with the same SGD optimizer on the same batches, in
channels_last, under the same autocast (`--amp`, default bf16 as in every config), interleaved round by
round so that other load on the machine hits both alike:

- `trainer`: `training.engine.train_one_epoch` with the ERM method of configs/cifar10_lt/ce.yaml (CE loss),
  i.e. the real code path of `python -m training train`: per-step learning-rate update, `to_device`, the
  method's loss under `AmpStep.autocast`, the finite-loss check, `AmpStep.step`, `loss.item()`, and the tqdm
  bar if `--progress` (real runs have it on);
- `bare`: for images, labels in loader: channels_last, autocast, cross_entropy, zero_grad, backward, step.

`--pipeline tensors` (default) feeds both from batches already in memory (normalised once), so the ratio
is the trainer's own overhead. `--pipeline augment` feeds both from the trainer's DataLoader
(`training.data.loading.make_loader`: random crop + flip + normalise, each image seeded from (epoch, index),
in `--workers` worker processes, a new loader per round, as per epoch in training), so both pay the data
pipeline, and adds a third variant, the bare loop on the in-memory batches, to show what data loading
costs on this machine.

Data: random CIFAR-sized uint8 images and labels, or the first `--steps` x `--batch-size` images of the
CIFAR-10-LT training split built from `--data` (an .npz with x_train/y_train/x_test/y_test/class_names).
Prints the median images/s of each variant and trainer / bare.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.config import load_config
from training.data.loading import make_loader
from training.data.lt_data import ArrayDataset, DatasetBundle, build_datasets, subset
from training.data.transforms import eval_transform
from training.engine import AmpStep, train_one_epoch
from training.registry import build_method

ROOT = Path(__file__).resolve().parents[1]


def bare_epoch(model, loader, optimizer, amp: str, channels_last: bool) -> int:
    """The loop everyone writes first; returns the number of images trained on."""
    model.train()
    images_seen = 0
    for images, labels in loader:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        images_seen += len(labels)
    return images_seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "cifar10_lt" / "ce.yaml"))
    parser.add_argument("--model", default="resnet32")
    parser.add_argument("--data", help="CIFAR-10 .npz (e.g. data/cifar10.npz); random images if absent")
    parser.add_argument("--pipeline", choices=["tensors", "augment"], default="tensors")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="batches per round (one 'epoch')")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--amp", choices=["bf16", "none"], default="bf16")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of --pipeline augment")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0 keeps torch's default")
    parser.add_argument("--progress", action="store_true", help="the trainer's tqdm bar, as in real runs")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cpu")
    overrides = [f"model.name={args.model}", f"run.amp={args.amp}", f"data.batch_size={args.batch_size}",
                 f"data.num_workers={args.workers}", "run.channels_last=true", f"run.progress={str(args.progress).lower()}",
                 "data.augment_on=loader"]  # the per-image loader; bench/bench_pipeline.py compares the device path
    if args.data:
        overrides.append(f"data.root={args.data}")
    config = load_config(args.config, overrides)
    count = args.steps * args.batch_size
    if args.data:
        bundle = build_datasets(config.data)
        if len(bundle.train) < count:
            raise SystemExit(f"{args.data}: {len(bundle.train)} training images, fewer than {count}")
        train, class_counts = subset(bundle.train, np.arange(count)), bundle.train_counts
        source = f"the first {count} CIFAR-10-LT training images of {args.data}"
    else:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        train, class_counts = ArrayDataset(images, rng.integers(0, 10, count)), [count // 10] * 10
        source = f"{count} random 32x32 images"

    method = build_method(config, class_counts)
    model = method.build_model().to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.optim.lr, momentum=config.optim.momentum,
                                weight_decay=config.optim.weight_decay, nesterov=config.optim.nesterov)
    amp = AmpStep(config.run.amp, device)

    normalise = eval_transform(model.preprocessing)
    pixels = torch.stack([normalise(train[i][0]) for i in range(count)])
    labels = torch.as_tensor(train.labels)
    batches = [(pixels[i:i + args.batch_size], labels[i:i + args.batch_size]) for i in range(0, count, args.batch_size)]
    if args.pipeline == "tensors":
        def loader(seed: int):
            return batches
    else:
        names = [str(c) for c in range(len(class_counts))]
        bundle = DatasetBundle(train=train, val=None, test=train, class_names=names, kind="array")
        augmented = method.train_dataset(bundle, model.preprocessing)  # ERM: random crop + flip + normalise

        def loader(seed: int):
            return make_loader(augmented, args.batch_size, args.workers, shuffle=True, seed=seed, drop_last=True,
                               shard=True)  # as training/train.py builds each epoch's loader

    def run_trainer(seed: int) -> int:
        train_one_epoch(model, method, loader(seed), optimizer, amp, config.optim, 0, device,
                        config.run.channels_last, config.run.progress)
        return count

    def run_bare(seed: int) -> int:
        return bare_epoch(model, loader(seed), optimizer, args.amp, config.run.channels_last)

    variants = {"bare": run_bare, "trainer": run_trainer}
    if args.pipeline == "augment":  # what the data pipeline costs, measured in the same process
        variants["bare, in-memory batches"] = lambda seed: bare_epoch(model, batches, optimizer, args.amp,
                                                                      config.run.channels_last)
    for run in variants.values():  # warm-up: first steps pick kernels (and fork the first workers)
        run(0)
    results = {name: [] for name in variants}
    for round_index in range(args.rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            seen = run(round_index + 1)  # the same shuffle for both variants in a round
            results[name].append(seen / (time.perf_counter() - start))
    medians = {name: statistics.median(values) for name, values in results.items()}
    print(f"{args.model}, batch {args.batch_size}, amp {args.amp}, channels_last, {torch.get_num_threads()} threads, "
          f"pipeline {args.pipeline}" + (f" ({args.workers} workers)" if args.pipeline == "augment" else "")
          + f", {source}, torch {torch.__version__}")
    for name, value in medians.items():
        print(f"  {name:24s} {value:7.1f} images/s (median of {args.rounds} rounds x {args.steps} steps; "
              f"rounds: {', '.join(f'{v:.0f}' for v in results[name])})")
    print(f"  trainer / bare = {medians['trainer'] / medians['bare']:.3f}x")
    if args.pipeline == "augment":
        print(f"  bare with the augmenting loader / bare on in-memory batches = "
              f"{medians['bare'] / medians['bare, in-memory batches']:.3f}x")


if __name__ == "__main__":
    main()
