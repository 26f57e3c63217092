"""bf16 autocast vs fp32 training steps on this machine, in one process (ratios, not absolute claims).

    python bench/bench_amp.py [--model resnet32] [--batch-size 128] [--rounds 5] [--steps 5]

Both variants run the same model, data and step helper (training.engine.AmpStep), interleaved round by
round so that other load on the machine hits both alike; the median images/s of each is printed with
the ratio. channels_last is on, as in training. The header says whether this CPU has native bf16 kernels
(training.engine.has_native_bf16): without them (AVX2 only) bf16 is emulated and much slower than fp32.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from models import create_model
from training.engine import AmpStep, has_native_bf16


def images_per_second(model, optimizer, amp: AmpStep, images, labels, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        with amp.autocast():
            loss = F.cross_entropy(model(images).float(), labels)
        amp.step(loss, optimizer)
    return steps * len(labels) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet32")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device("cpu")
    model = create_model(args.model, num_classes=10).to(memory_format=torch.channels_last).train()
    size = model.preprocessing.input_size
    images = torch.randn(args.batch_size, *size).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (args.batch_size,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    variants = {"fp32": AmpStep("none", device), "bf16": AmpStep("bf16", device)}
    for amp in variants.values():  # warm-up: first calls pick kernels
        images_per_second(model, optimizer, amp, images, labels, 2)
    results = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, amp in variants.items():
            results[name].append(images_per_second(model, optimizer, amp, images, labels, args.steps))
    medians = {name: statistics.median(values) for name, values in results.items()}
    print(f"{args.model}, batch {args.batch_size}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"CPU {torch.backends.cpu.get_cpu_capability()}, native bf16: {'yes' if has_native_bf16('cpu') else 'no'}")
    for name, value in medians.items():
        print(f"  {name}: {value:7.1f} images/s (median of {args.rounds} rounds x {args.steps} steps)")
    print(f"  bf16 / fp32 = {medians['bf16'] / medians['fp32']:.2f}x")


if __name__ == "__main__":
    main()
