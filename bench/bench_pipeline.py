"""The real trainer's end-to-end epochs of CE, ConCutMix and SAU against their bare step, and the device
augmentation path against the old loader path, interleaved in one process.

    python bench/bench_pipeline.py --data data/cifar10.npz [--methods ce,concutmix,sau] [--steps 10]
                                   [--rounds 3] [--batch-size 128] [--workers 2] [--compile] [--threads N]

For every method (its configs/cifar10_lt/<method>.yaml, with --batch-size, ResNet-32 for all so that the run stays
short), on --steps x --batch-size CIFAR-10-LT training images (a random sample of the training split), one "epoch"
of --steps steps per round:

- `bare`: the method's step alone (`training_loss` under autocast, zero_grad, backward, step) on batches already
  augmented and in memory (made once, before timing), with SAU's prototypes computed once beforehand;
- `device`: `training.engine.train_one_epoch` fed by the trainer's `TrainLoader` with data.augment_on=device
  (training/data/batch_augment.py), `method.start_epoch` included: what `python -m training train` runs per epoch;
- `loader`: the same with data.augment_on=loader (torchvision v2 per image in --workers persistent workers).

With --compile every variant trains the torch.compile'd model (the bare step too), a fourth variant, `bare eager`,
runs the bare step on the uncompiled module, and the compile time (the first warm-up epoch minus a later one) is
printed once. SAU gets a synthetic set of random images in a
temporary folder (half the images real, every class topped up to 2 x steps x batch / classes). Prints images/s
(median of --rounds) and the ratios device / bare and device / loader.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# the training package's __init__ applies torchvision_compat before anything imports torchvision
from training.config import load_config
from training.data.loading import TrainLoader
from training.data.lt_data import build_datasets, subset
from training.data.synthetic_set import append_records, class_folder, start_synthetic_set
from training.engine import AmpStep, to_device, train_one_epoch
from training.registry import build_method

ROOT = Path(__file__).resolve().parents[1]


def write_random_synthetic_set(root: Path, class_names: list[str], per_class: list[int]) -> Path:
    """A synthetic set as `synthesize` writes it, of random 32x32 PNGs (speed only: their content is irrelevant)."""
    synthetic = start_synthetic_set(root, {"class_names": class_names, "target_counts": per_class,
                                           "generator": {"kind": "bench"}})
    rng, records = np.random.default_rng(0), []
    for label, count in enumerate(per_class):
        for index in range(count):
            file = f"{class_folder(label, class_names[label])}/{index}.png"
            (root / file).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / file)
            records.append({"file": file, "class_index": label, "seed": index, "prompt": ""})
    append_records(synthetic, records)
    return root


def bare_epoch(model, method, batches, optimizer, amp: AmpStep) -> None:
    model.train()
    for batch in batches:
        with amp.autocast():
            loss = method.training_loss(model, batch, 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def method_variants(name: str, args, scratch: Path) -> tuple[dict, str]:
    """{variant: one timed epoch (round number) → images trained on}, and a description of the setup."""
    overrides = [f"data.root={args.data}", f"data.batch_size={args.batch_size}", f"data.num_workers={args.workers}",
                 "model.name=resnet32", "run.progress=false", "optim.warmup_epochs=0"]
    base = load_config(ROOT / "configs" / "cifar10_lt" / f"{name}.yaml", overrides)
    bundle = build_datasets(base.data)
    count = args.steps * args.batch_size
    if name == "sau":  # half real images, topped up with synthetic ones to about `count` in all
        count //= 2
    if len(bundle.train) < count:
        raise SystemExit(f"{args.data}: {len(bundle.train)} training images, fewer than {count}")
    # a random sample with every class present (ConCutMix and SAU need them all), not the first images
    order = np.random.default_rng(0).permutation(len(bundle.train))
    firsts = [order[bundle.train.labels[order] == label][0] for label in range(bundle.num_classes)]
    rest = [index for index in order if index not in set(firsts)][:count - len(firsts)]
    bundle.train = subset(bundle.train, np.sort(np.concatenate([firsts, rest]).astype(np.int64)))
    if name == "sau":
        per_class = 2 * count // bundle.num_classes
        top_up = [max(0, per_class - n) for n in bundle.train_counts]
        synthetic = write_random_synthetic_set(scratch / "synthetic", bundle.class_names, top_up)
        base = load_config(ROOT / "configs" / "cifar10_lt" / "sau.yaml", overrides + [
            f"method_options.synthetic_dir={synthetic}", f"method_options.top_up_to={per_class}"])
    device = torch.device("cpu")
    methods = {on: build_method(dataclasses.replace(base, data=dataclasses.replace(base.data, augment_on=on)),
                                bundle.train_counts) for on in ("device", "loader")}
    torch.manual_seed(0)
    model = methods["device"].build_model().to(memory_format=torch.channels_last)
    trained = torch.compile(model) if args.compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    amp = AmpStep(base.run.amp, device)
    loaders = {on: TrainLoader(method.train_dataset(bundle, model.preprocessing), args.batch_size, args.workers,
                               device) for on, method in methods.items()}
    methods["device"].start_epoch(model, 0, device)
    in_memory = [to_device(batch, device, True) for batch in loaders["device"].for_epoch(0)]
    images = len(in_memory) * args.batch_size

    def real(on: str):
        def epoch(round_number: int) -> int:
            methods[on].start_epoch(model, round_number, device)
            train_one_epoch(trained, methods[on], loaders[on].for_epoch(round_number), optimizer, amp, base.optim,
                            0, device, True, False)
            return images
        return epoch

    def bare(round_number: int) -> int:
        bare_epoch(trained, methods["device"], in_memory, optimizer, amp)
        return images

    setup = (f"{name}: {images} images per epoch ({len(bundle.train)} real), batch {args.batch_size}, "
             f"{len(in_memory)} steps, "
             f"amp {base.run.amp}, channels_last, resnet32, {args.workers} loader workers"
             + (", torch.compile" if args.compile else ""))
    def bare_eager(round_number: int) -> int:  # the compiled step against the eager one: same module and batches
        bare_epoch(model, methods["device"], in_memory, optimizer, amp)
        return images

    variants = {"bare": bare, "device": real("device"), "loader": real("loader")}
    if args.compile:
        variants["bare eager"] = bare_eager
    return variants, setup


def measure(variants: dict, rounds: int) -> tuple[dict, float]:
    """Median images/s per variant (interleaved rounds), and the first warm-up epoch's extra seconds."""
    warmups = []
    for run in variants.values():
        start = time.perf_counter()
        run(0)
        warmups.append(time.perf_counter() - start)
    results = {name: [] for name in variants}
    seconds = {name: [] for name in variants}
    for round_number in range(1, rounds + 1):
        for name, run in variants.items():
            start = time.perf_counter()
            seen = run(round_number)
            seconds[name].append(time.perf_counter() - start)
            results[name].append(seen / seconds[name][-1])
    first_extra = warmups[0] - statistics.median(seconds["bare"])
    return {name: statistics.median(values) for name, values in results.items()}, first_extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="CIFAR-10 .npz, e.g. data/cifar10.npz")
    parser.add_argument("--methods", default="ce,concutmix,sau")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="batches per epoch (round)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the loader path")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model of every variant")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0 keeps torch's default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds (medians)")
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.methods.split(","):
            variants, setup = method_variants(name, args, Path(scratch))
            medians, first_extra = measure(variants, args.rounds)
            print(setup)
            if args.compile:
                print(f"  compile: the first epoch took {first_extra:.1f} s longer than a compiled one")
            for variant, value in medians.items():
                print(f"  {variant:8s} {value:7.1f} images/s")
            print(f"  end-to-end (device) / bare = {medians['device'] / medians['bare']:.3f}x   "
                  f"loader / bare = {medians['loader'] / medians['bare']:.3f}x   "
                  f"device / loader = {medians['device'] / medians['loader']:.2f}x", flush=True)
            if args.compile:
                print(f"  compiled bare / eager bare = {medians['bare'] / medians['bare eager']:.3f}x", flush=True)


if __name__ == "__main__":
    main()
