"""Seconds per generated image for a class-conditional generator: PyTorch bf16 autocast, PyTorch fp32 and
ONNX Runtime fp32 (the folder's unet/model.onnx), in one process.

    python bench/bench_generation.py [--generator model_zoo/cifar10_lt_generator] [--steps 10]
                                     [--batch-sizes 1 16 64] [--rounds 3] [--guidance 1.0]
                                     [--variants bf16 fp32 onnx]

Variants run interleaved round by round, so other load on the machine hits them alike; the median seconds
per image of each and the ratios against fp32 PyTorch are printed per batch size. On a CPU without native
bf16 (AVX2 only) bf16 is emulated and 20-36x slower: leave it out there with `--variants fp32 onnx`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from inference.generators import open_generator

VARIANTS = ("bf16", "fp32", "onnx")


def use(generator, onnx_unet, variant: str) -> None:
    generator.bf16 = variant == "bf16"
    generator.onnx_unet = onnx_unet if variant == "onnx" else None


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
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    args = parser.parse_args()

    generator = open_generator(args.generator)
    onnx_unet = generator.onnx_unet
    variants = [v for v in args.variants if v != "onnx" or onnx_unet is not None]
    if "onnx" in args.variants and onnx_unet is None:
        print(f"{args.generator} has no unet/model.onnx (python -m training export-unet makes it): onnx left out")
    print(f"{args.generator}: {args.steps} DDIM steps, guidance {args.guidance}, {torch.get_num_threads()} threads, "
          f"variants {' '.join(variants)}")
    for batch_size in args.batch_sizes:
        timings = {variant: [] for variant in variants}
        for variant in variants:  # warm-up
            use(generator, onnx_unet, variant)
            seconds_per_image(generator, batch_size, 1, args.guidance)
        for _ in range(args.rounds):
            for variant in variants:
                use(generator, onnx_unet, variant)
                timings[variant].append(seconds_per_image(generator, batch_size, args.steps, args.guidance))
        medians = {variant: statistics.median(values) for variant, values in timings.items()}
        line = "   ".join(f"{variant} {seconds * 1000:8.1f} ms/image" for variant, seconds in medians.items())
        if "fp32" in medians:
            line += "".join(f"   fp32/{variant} {medians['fp32'] / seconds:.2f}x"
                            for variant, seconds in medians.items() if variant != "fp32")
        print(f"batch {batch_size:3d}: {line}")


if __name__ == "__main__":
    main()
