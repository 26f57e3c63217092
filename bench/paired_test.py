"""Do two exported classifiers really differ on the test set? Paired accuracy per group and McNemar's exact test.

    python bench/paired_test.py model_zoo/cifar10_lt_concutmix_efficientnet_lite0.onnx \
        model_zoo/cifar10_lt_concutmix_resnet32.onnx --data data/cifar10.npz
    python bench/paired_test.py A.onnx B.onnx --data data/cifar10.npz --tau 1 --json paired.json

Both models classify the same test images: the test set of the first model's card (its training config, with
`--data` for where the data file is on this machine), each model through its own card's preprocessing (ONNX
Runtime, CPU). `--tau` scores both with post-hoc logit adjustment, each by its own training counts. Printed for
all classes and per group of the first card (head / medium / tail): each model's accuracy, the difference A − B,
the images only A gets right and only B gets right, the exact two-sided McNemar p-value (a binomial test on those
discordant images), and a 95 % interval of the difference (normal approximation of the paired difference).

What it answers: whether two *fixed* models differ by more than the choice of test images explains. It says
nothing about how much the training runs that made them would move with another seed, often more than that.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from inference.card import group_name
from inference.long_tail import PriorUnavailableError, adjust_logits, log_prior
from training.config import Config, ConfigError, apply_overrides, config_from_dict
from training.export import ExportError, load_test_set, logits_on_test_set, read_card


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: under "the models are equally good", each of the n discordant images is
    a fair coin, so p = P(a split at least as uneven as this one) = min(1, 2·P(Binomial(n, ½) ≤ min(a, b)))."""
    n, low = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, k) for k in range(low + 1)) / 2 ** n)  # exact in integers, then one division


def compare(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """Paired comparison of two models' right/wrong on the same images, accuracies and interval in points."""
    n = len(correct_a)
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(correct_b & ~correct_a))
    difference = (only_a - only_b) / n
    # The variance of the mean of d_i ∈ {-1, 0, 1}: (E[d²] − E[d]²) / n, with E[d²] = (only_a + only_b) / n.
    half_width = 1.96 * math.sqrt(max((only_a + only_b) / n - difference ** 2, 0.0) / n)
    return {"images": n, "accuracy_a": 100 * float(correct_a.mean()), "accuracy_b": 100 * float(correct_b.mean()),
            "difference": 100 * difference, "interval": [100 * (difference - half_width), 100 * (difference + half_width)],
            "only_a": only_a, "only_b": only_b, "p_value": mcnemar_p(only_a, only_b)}


def predictions(path: Path, test, config: Config, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """The model's class for every test image (in order) and the labels."""
    card = read_card(path)
    [logits], labels = logits_on_test_set([path], test, card.preprocessing, config.data)
    prior = log_prior(card.class_counts) if tau else None
    return adjust_logits(logits, prior, tau).argmax(axis=1), labels


def paired_report(model_a: Path, model_b: Path, data_root: str | None, tau: float) -> list[tuple[str, dict]]:
    card_a, card_b = read_card(model_a), read_card(model_b)
    if card_a.class_names != card_b.class_names:
        raise SystemExit(f"error: {model_a.name} and {model_b.name} do not classify the same classes")
    if not card_a.config:
        raise SystemExit(f"error: {model_a} carries no training config, so its test data are unknown")
    config = config_from_dict(apply_overrides(card_a.config, [f"data.root={data_root}"] if data_root else []))
    test = load_test_set(config.data)
    predicted_a, labels = predictions(model_a, test, config, tau)
    predicted_b, _ = predictions(model_b, test, config, tau)  # the same loader order: the same images
    correct_a, correct_b = predicted_a == labels, predicted_b == labels
    rows = [("all", compare(correct_a, correct_b))]
    groups = np.asarray(card_a.class_groups)[labels]
    for group in ("many", "medium", "few"):
        chosen = groups == group
        if chosen.any():
            rows.append((group_name(group), compare(correct_a[chosen], correct_b[chosen])))
    return rows


def table(rows: list[tuple[str, dict]], name_a: str, name_b: str) -> str:
    lines = ["| group | images | A % | B % | A − B | 95 % interval | only A right | only B right | McNemar p |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for group, row in rows:
        low, high = row["interval"]
        lines.append(f"| {group} | {row['images']} | {row['accuracy_a']:.2f} | {row['accuracy_b']:.2f} | "
                     f"{row['difference']:+.2f} | [{low:+.2f}, {high:+.2f}] | {row['only_a']} | {row['only_b']} | "
                     f"{row['p_value']:.3g} |")
    return f"A = {name_a}, B = {name_b}\n\n" + "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_a", type=Path, help="an exported .onnx classifier; its card says the test data")
    parser.add_argument("model_b", type=Path, help="another, of the same classes")
    parser.add_argument("--data", help="where the card's data file is on this machine (sets data.root)")
    parser.add_argument("--tau", type=float, default=0.0, help="post-hoc logit adjustment for both models")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    return parser


def main() -> None:
    args = get_args_parser().parse_args()
    try:
        rows = paired_report(args.model_a, args.model_b, args.data, args.tau)
    except (ExportError, ConfigError, PriorUnavailableError) as error:
        raise SystemExit(f"error: {error}") from None
    print(table(rows, args.model_a.name, args.model_b.name))
    if args.json:
        args.json.write_text(json.dumps({"model_a": str(args.model_a), "model_b": str(args.model_b), "tau": args.tau,
                                         "groups": dict(rows)}, indent=2))


if __name__ == "__main__":
    main()
