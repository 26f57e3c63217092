"""`python -m training analyze FOLDER`: what an image folder holds, before anyone trains on it.

    python -m training analyze data/my_images          # a table
    python -m training analyze data/my_images --json   # the same report as JSON

The folder is read as `dataset: imagefolder` reads it (training/data/lt_data.py: one sub-folder per class, image
files by suffix), and every file goes through the app's safe loader (inference/images.py), so a file listed as
unreadable here is one training would fail on, for the reason given. The report: images per class, the imbalance
factor (n_max / n_min) and the Gini coefficient of the counts, head / medium / tail under both group rules
(training/groups.py), unreadable files, duplicates (files with the same bytes, flagged when they sit in
different classes), files training ignores, image sizes, and a suggested `train` command.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from inference.images import ImageLoadError, decode_image
from training.config import GroupConfig
from training.data.lt_data import IMAGE_SUFFIXES, _scan_image_folder
from training.groups import class_groups

FINETUNE_CONFIG = "configs/imagefolder/finetune_efficientnet_lite0.yaml"
VALIDATION_SHORTER_SIDE = 32  # decode reduced (JPEG's scaled decoding): checks the data without full-size pixels
SMALL_IMAGES = 64  # median shorter side at or below this: small images, upsampled whole as CIFAR is (crop_pct 1)
BALANCED_IF = 1.5  # below this imbalance factor plain cross-entropy is the suggestion


def analyze_folder(root: str | Path, groups: GroupConfig | None = None) -> dict:
    """The report as a JSON-ready dict; ConfigError (one sentence) when `root` is not a folder of class folders
    with images in them."""
    root = Path(root)
    groups = groups or GroupConfig()
    paths, labels, class_names = _scan_image_folder(root)
    readable = np.zeros(len(class_names), dtype=np.int64)
    unreadable, sizes, by_hash = [], [], defaultdict(list)
    for path, label in zip(paths, labels):
        data = path.read_bytes()
        by_hash[hashlib.sha256(data).hexdigest()].append((str(path.relative_to(root)), class_names[label]))
        try:
            decoded = decode_image(path, keep_shorter_side=VALIDATION_SHORTER_SIDE)
        except ImageLoadError as error:
            unreadable.append({"file": str(path.relative_to(root)), "reason": str(error)})
            continue
        readable[label] += 1
        sizes.append(decoded.full_size)
    counts = readable.tolist()
    report = {
        "folder": str(root), "num_classes": len(class_names), "images": int(readable.sum()),
        "classes": [{"name": name, "images": count, "group_count_rule": count_group, "group_rank_rule": rank_group}
                    for name, count, count_group, rank_group in zip(
                        class_names, counts, class_groups(counts, groups, "count"), class_groups(counts, groups, "rank"))],
        "imbalance_factor": imbalance_factor(counts), "gini": gini(counts),
        "group_rules": {"count": {"many_above": groups.many_above, "few_below": groups.few_below},
                        "rank": {"head_fraction": groups.head_fraction, "tail_fraction": groups.tail_fraction}},
        "unreadable": unreadable, "duplicates": _duplicates(by_hash), "ignored_files": _ignored(root, class_names),
        "image_sizes": _size_summary(sizes),
    }
    report["suggestion"] = suggest(report)
    return report


def imbalance_factor(counts: list[int]) -> float | None:
    """n_max / n_min over the classes; None when a class has no usable image (the factor is unbounded)."""
    return None if min(counts) == 0 else max(counts) / min(counts)


def gini(counts: list[int]) -> float:
    """Gini coefficient of the class counts: 0 for a balanced folder, towards 1 as a few classes hold everything
    (mean absolute difference over all pairs / twice the mean)."""
    values = np.asarray(counts, dtype=np.float64)
    if values.sum() == 0:
        return 0.0
    return float(np.abs(values[:, None] - values[None, :]).sum() / (2 * len(values) ** 2 * values.mean()))


def _duplicates(by_hash: dict) -> list[dict]:
    groups = [files for files in by_hash.values() if len(files) > 1]
    return [{"files": [file for file, _ in files], "across_classes": len({name for _, name in files}) > 1}
            for files in sorted(groups)]


def _ignored(root: Path, class_names: list[str]) -> list[str]:
    """Files in the class folders that training skips (no image suffix), and files beside the class folders."""
    inside = [p for name in class_names for p in sorted((root / name).rglob("*"))
              if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES]
    beside = sorted(p for p in root.iterdir() if p.is_file())
    return [str(p.relative_to(root)) for p in beside + inside]


def _size_summary(sizes: list[tuple[int, int]]) -> dict:
    if not sizes:
        return {}
    widths, heights = np.array(sizes).T
    shorter = np.minimum(widths, heights)
    return {"width": _spread(widths), "height": _spread(heights), "shorter_side": _spread(shorter)}


def _spread(values: np.ndarray) -> dict:
    return {"min": int(values.min()), "median": int(np.median(values)), "max": int(values.max())}


def suggest(report: dict) -> dict:
    """Method, backbone and resolution for this folder, and the command that trains it (the folder recipe:
    an ImageNet-pretrained EfficientNet-Lite0, fine-tuned)."""
    counts = [entry["images"] for entry in report["classes"]]
    factor = report["imbalance_factor"]
    loss = "ce" if factor is not None and factor < BALANCED_IF else "logit_adjusted"
    shorter = report["image_sizes"].get("shorter_side", {}).get("median", 0)
    small = shorter <= SMALL_IMAGES
    input_size = 128 if shorter < 160 else 160
    # Without a test folder, val_per_class images of every class are held out twice (validation, then test).
    val_per_class = int(min(10, max(1, min(counts) // 5)))
    sets = [f"data.root={report['folder']}", f"data.val_per_class={val_per_class}", f"loss.name={loss}",
            f"model.input_size={input_size}"] + (["model.crop_pct=1.0"] if small else [])
    command = (f"python -m training train --config {FINETUNE_CONFIG} "
               + " ".join(f"--set {value}" for value in sets) + f" --output-dir runs/{Path(report['folder']).name}")
    reasons = [f"{'a balanced folder: cross-entropy' if loss == 'ce' else 'imbalanced: logit-adjusted cross-entropy'}",
               f"median shorter side {shorter} px: {input_size} px input"
               + (" with the whole image kept (crop_pct 1), as small images are upsampled" if small else ""),
               f"{val_per_class} image(s) per class held out for validation and again for testing"]
    if min(counts) < 2 * val_per_class + 1:
        reasons.append(f"the smallest class ({min(counts)} images) leaves almost nothing to train on: add images or "
                       "a separate test folder (data.test_root)")
    return {"method": "erm", "loss": loss, "backbone": "efficientnet_lite0", "pretrained": "imagenet",
            "input_size": input_size, "crop_pct": 1.0 if small else None, "val_per_class": val_per_class,
            "command": command, "reasons": reasons}


# --------------------------------------------------------------------------------------------------- the table


def format_report(report: dict) -> str:
    factor = report["imbalance_factor"]
    lines = [f"{report['folder']}: {report['images']} readable images in {report['num_classes']} classes; "
             f"imbalance factor {'unbounded (a class has no image)' if factor is None else f'{factor:.1f}'}, "
             f"Gini {report['gini']:.3f}", ""]
    width = max(len("class"), *(len(entry["name"]) for entry in report["classes"]))
    rules = report["group_rules"]
    lines.append(f"{'class':<{width}}  {'images':>6}  {'count rule':<10}  rank rule")
    for entry in sorted(report["classes"], key=lambda entry: -entry["images"]):
        lines.append(f"{entry['name']:<{width}}  {entry['images']:>6}  {_group(entry['group_count_rule']):<10}  "
                     f"{_group(entry['group_rank_rule'])}")
    lines += [f"count rule: head > {rules['count']['many_above']} images, tail < {rules['count']['few_below']}; rank "
              f"rule: the largest {rules['rank']['head_fraction']:.0%} of classes head, the smallest "
              f"{rules['rank']['tail_fraction']:.0%} tail", ""]
    sizes = report["image_sizes"]
    if sizes:
        lines.append("image sizes (min / median / max): " + ", ".join(
            f"{name.replace('_', ' ')} {s['min']} / {s['median']} / {s['max']}" for name, s in sizes.items()))
    lines += _problems(report)
    suggestion = report["suggestion"]
    lines += ["", "suggested:"] + [f"  - {reason}" for reason in suggestion["reasons"]] + [f"  {suggestion['command']}"]
    return "\n".join(lines)


def _group(group: str) -> str:
    return {"many": "head", "medium": "medium", "few": "tail"}[group]


def _problems(report: dict) -> list[str]:
    lines = [f"unreadable files: {len(report['unreadable'])}"]
    lines += [f"  {entry['file']}: {entry['reason']}" for entry in report["unreadable"]]
    lines.append(f"duplicate groups (same bytes): {len(report['duplicates'])}")
    lines += [f"  {' = '.join(group['files'])}" + ("  (in different classes)" if group["across_classes"] else "")
              for group in report["duplicates"]]
    if report["ignored_files"]:
        shown = report["ignored_files"][:10]
        more = len(report["ignored_files"]) - len(shown)
        lines.append(f"ignored (not an image file name, or beside the class folders): {', '.join(shown)}"
                     + (f" and {more} more" if more else ""))
    return lines


def analyze_command(folder: str, as_json: bool) -> None:
    report = analyze_folder(folder)
    print(json.dumps(report, indent=1) if as_json else format_report(report))
