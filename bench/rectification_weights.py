"""What ConCutMix's ρ amounts to over the mixes training makes: its distribution under each `rectification`.

    python bench/rectification_weights.py                       # CIFAR-10-LT IF 100, 200,000 mixes, seed 0
    python bench/rectification_weights.py --counts 500 50 5 --mixes 10000

The mixes are drawn as training draws them: a background image instance-wise (∝ the class counts), a
foreground class-balanced (the default `foreground_sampler: balance`), λ ~ Beta(1, 1) turned into a box by
`cutmix_box` and recomputed from its clipped area. ρ goes through the functions of training/methods/concutmix.py.
No images and no model: ρ depends only on the area label and the class counts.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from inference.card import group_name
from training.groups import groups_by_rank
from training.methods.concutmix import normalised_rectification_weight, rectification_weight
from training.mixing import cutmix_box

# CIFAR-10-LT IF 100 after the 50-per-class validation hold-out (the trainer's log line)
CIFAR10_LT_COUNTS = [4950, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def simulated_area_labels(counts: torch.Tensor, mixes: int, size: int):
    """(area labels (mixes × C), background classes, background areas λ) of `mixes` CutMix pairs on size × size
    images."""
    num_classes = len(counts)
    background = torch.multinomial(counts / counts.sum(), mixes, replacement=True)
    foreground = torch.randint(num_classes, (mixes,))
    kept = torch.empty(mixes, 1, dtype=torch.float64)
    beta = torch.distributions.Beta(1.0, 1.0)
    for index in range(mixes):
        top, bottom, left, right = cutmix_box(size, size, float(beta.sample()))
        kept[index] = 1 - (bottom - top) * (right - left) / size ** 2
    area = kept * F.one_hot(background, num_classes).double() + (1 - kept) * F.one_hot(foreground, num_classes).double()
    return area, background, kept[:, 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=float, nargs="+", default=CIFAR10_LT_COUNTS, help="training images per class")
    parser.add_argument("--omega", type=float, default=2 / 255, help="the released formula's ω (CIFAR-10: 2/255)")
    parser.add_argument("--mixes", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if len(args.counts) < 2 or min(args.counts) < 1 or args.mixes < 1:
        raise SystemExit("error: --counts needs two or more classes with at least one image each, --mixes at least 1")

    torch.manual_seed(args.seed)
    counts = torch.tensor(args.counts, dtype=torch.float64)
    area, background, kept = simulated_area_labels(counts, args.mixes, args.size)
    print(f"{args.mixes} mixes, {len(counts)} classes, mean area λ kept from the background {kept.mean().item():.3f}\n")
    print("| ρ | mean | 10th / 50th / 90th percentile | range |\n|---|---:|---|---|")
    for name, rho in [(f"released (ω = {args.omega:.4g})", rectification_weight(area, counts, args.omega)),
                      ("normalised", normalised_rectification_weight(area, counts))]:
        values = rho[:, 0].numpy()
        p10, p50, p90 = np.quantile(values, [0.1, 0.5, 0.9])
        print(f"| {name} | {values.mean():.3g} | {p10:.3g} / {p50:.3g} / {p90:.3g} | {values.min():.3g} to "
              f"{values.max():.3g} |")
    normalised = normalised_rectification_weight(area, counts)[:, 0]
    groups = np.asarray(groups_by_rank(args.counts))
    print("\nnormalised ρ by the background's group (rank rule: the commonest 30 % of classes head, the rarest 30 % tail):")
    for group in ("many", "medium", "few"):
        classes = np.flatnonzero(groups == group)
        chosen = torch.isin(background, torch.as_tensor(classes))
        if chosen.any():
            print(f"  {group_name(group)} (classes {', '.join(map(str, classes))}): {chosen.double().mean().item():.1%} "
                  f"of backgrounds, mean ρ {normalised[chosen].mean().item():.3f}")


if __name__ == "__main__":
    main()
