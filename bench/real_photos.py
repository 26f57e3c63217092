"""How exported CIFAR-10 classifiers do on real photos: the table of the pretrained-backbones issue, for any .onnx.

    python bench/real_photos.py --photos data/real_photos model_zoo/*.onnx
    python bench/real_photos.py --photos data/real_photos model_zoo/cifar10_lt_ce_resnet32.onnx --tau 0 1 1.5
    python bench/real_photos.py --photos data/real_photos model_zoo/*.onnx --json real_photos.json
    python bench/real_photos.py --photos data/real_photos model_zoo/cifar10_lt_logit_adjusted_efficientnet_lite0.onnx \
        --also-without-thumbnail

`--photos` is a folder of photos with a `labels.csv` (`file, cifar_class, match, imagenet_det_label`): `match` is
`exact` when the photo shows its CIFAR-10 class and anything else (`proxy`: antelopes standing in for deer) when it
only stands in for it. Proxies are reported apart and never counted in the overall figure. Each photo is read and
preprocessed by the served path (`OnnxClassifier.classify_files`: the model card's own resize and crop), as a
visitor's upload would be. With `--tau`, every model is also scored with post-hoc logit adjustment at each τ.

Printed per model and τ: accuracy on the exact photos, per class (correct / photos), per training group of the
class (head / medium / tail, from the card), on the proxies, and how many of all photos were *predicted* as a
tail class (a model that never says "tail" scores its tail classes at zero). Few photos: one photo is 20 points of
a class; this is a check of what an app visitor sees, not a benchmark.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import sys
from collections import Counter
from pathlib import Path

from inference.card import group_name
from inference.classifier import OnnxClassifier
from inference.images import ImageLoadError


def read_labels(folder: Path) -> list[dict]:
    """The rows of `folder/labels.csv` whose photo exists, as dicts with keys file, cifar_class, match."""
    labels = folder / "labels.csv"
    if not labels.is_file():
        raise SystemExit(f"error: {labels} does not exist; --photos takes a folder of photos with a labels.csv")
    with labels.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if (folder / row["file"]).is_file()]
    if not rows:
        raise SystemExit(f"error: none of the photos that {labels} lists is in {folder}")
    return rows


def score(classifier: OnnxClassifier, folder: Path, rows: list[dict], tau: float) -> dict:
    """Correct counts of one model at one τ: overall (exact photos), per class, per group, proxies, tail calls."""
    results = classifier.classify_files([folder / row["file"] for row in rows], top_k=1, tau=tau)
    card = classifier.card
    group_of = dict(zip(card.class_names, card.class_groups)) if classifier.has_training_counts else {}
    exact, proxy, per_class, per_group = Counter(), Counter(), {}, {}
    predicted_tail = 0
    for row, result in zip(rows, results):
        if isinstance(result, ImageLoadError):
            raise SystemExit(f"error: {result}")
        predicted, truth = result.top[0].name, row["cifar_class"]
        correct = predicted == truth
        predicted_tail += group_of.get(predicted) == "few"
        if row["match"] != "exact":
            proxy["photos"] += 1
            proxy["correct"] += correct
            continue
        exact["photos"] += 1
        exact["correct"] += correct
        per_class.setdefault(truth, Counter()).update(photos=1, correct=int(correct))
        if truth in group_of:
            per_group.setdefault(group_name(group_of[truth]), Counter()).update(photos=1, correct=int(correct))
    return {"tau": tau, "exact": dict(exact), "proxy": dict(proxy), "predicted_tail": predicted_tail,
            "photos": len(rows), "classes": {name: dict(c) for name, c in sorted(per_class.items())},
            "groups": {name: dict(c) for name, c in per_group.items()}}


def percent(counts: dict) -> str:
    return f"{100 * counts.get('correct', 0) / counts['photos']:.1f}" if counts.get("photos") else "–"


def table(rows: list[tuple[str, dict]]) -> str:
    """One line per (model, τ): overall, per group, proxies, tail calls, then per class correct/photos."""
    classes = sorted({name for _, result in rows for name in result["classes"]})
    head = ["model", "τ", "exact %", "head %", "medium %", "tail %", "proxy %", "called tail", *classes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, result in rows:
        groups = result["groups"]
        cells = [model, f"{result['tau']:g}", percent(result["exact"]),
                 *(percent(groups.get(group, {})) for group in ("head", "medium", "tail")),
                 percent(result["proxy"]), f"{result['predicted_tail']}/{result['photos']}",
                 *(f"{result['classes'].get(name, {}).get('correct', 0)}/{result['classes'].get(name, {}).get('photos', 0)}"
                   for name in classes)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def without_thumbnail(classifier: OnnxClassifier) -> OnnxClassifier:
    """The same model (the same ONNX session), its card's native_size dropped: photos resized straight to the input."""
    variant = copy.copy(classifier)
    variant.card = dataclasses.replace(classifier.card,
                                       preprocessing=dataclasses.replace(classifier.card.preprocessing, native_size=0))
    return variant


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help="exported .onnx classifiers of CIFAR-10's classes")
    parser.add_argument("--photos", type=Path, required=True, help="the folder of photos with its labels.csv")
    parser.add_argument("--tau", type=float, nargs="+", default=[0.0], help="post-hoc logit adjustment(s) to score")
    parser.add_argument("--json", type=Path, help="also write every result here")
    parser.add_argument("--also-without-thumbnail", action="store_true",
                        help="for a model whose card has a native_size (trained on small images enlarged), also score "
                             "it with each photo resized straight to its input: what the thumbnail step buys")
    return parser


def main() -> None:
    args = get_args_parser().parse_args()
    rows = read_labels(args.photos)
    results = []
    for path in args.models:
        classifier = OnnxClassifier(path)
        variants = [(path.name, classifier)]
        if args.also_without_thumbnail and classifier.card.preprocessing.native_size:
            variants.append((f"{path.name} (no thumbnail)", without_thumbnail(classifier)))
        for name, variant in variants:
            for tau in args.tau:
                results.append((name, score(variant, args.photos, rows, tau)))
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps([{"model": model, **result} for model, result in results], indent=2))
    print(f"\n{len(rows)} photos ({sum(r['match'] == 'exact' for r in rows)} exact, the others proxies, reported apart)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
