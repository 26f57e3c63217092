"""Seconds per generated image for a class-conditional generator, bf16 autocast vs fp32, in one process.

    python bench/bench_generation.py [--generator model_zoo/cifar10_lt_generator] [--steps 10]
                                     [--batch-sizes 1 16 64] [--rounds 3] [--guidance 1.0]

Variants run interleaved round by round, so other load on the machine hits both alike; the median
seconds per image of each and the fp32 / bf16 ratio are printed per batch size.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from inference.generators import open_generator


def seconds_per_image(generator, batch_size: int, steps: int, guidance: float) -> float:
    start = time.perf_counter()
    generator.generate(len(generator.class_names) - 1, batch_size, seed=0, steps=steps, guidance=guidance)
    return (time.perf_counter() - start) / batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", default="model_zoo/cifar10_lt_generator")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    generator = open_generator(args.generator)
    print(f"{args.generator}: {args.steps} DDIM steps, guidance {args.guidance}, {torch.get_num_threads()} threads")
    for batch_size in args.batch_sizes:
        timings = {"bf16": [], "fp32": []}
        for precision in ("bf16", "fp32"):  # warm-up
            generator.bf16 = precision == "bf16"
            seconds_per_image(generator, batch_size, 1, args.guidance)
        for _ in range(args.rounds):
            for precision in ("bf16", "fp32"):
                generator.bf16 = precision == "bf16"
                timings[precision].append(seconds_per_image(generator, batch_size, args.steps, args.guidance))
        bf16, fp32 = statistics.median(timings["bf16"]), statistics.median(timings["fp32"])
        print(f"batch {batch_size:3d}: bf16 {bf16 * 1000:8.1f} ms/image   fp32 {fp32 * 1000:8.1f} ms/image   "
              f"fp32/bf16 {fp32 / bf16:.2f}x")


if __name__ == "__main__":
    main()
