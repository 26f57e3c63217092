"""A folder of generated training images: what `python -m training synthesize` writes and SAU reads.

    DIR/manifest.json        generator description, dataset, class names, target count per class, filter
    DIR/images.jsonl         one line per kept image: {"file", "class_index", "seed", "prompt", "score"?}
    DIR/<cc>_<name>/<n>.png  the images (cc = class index, zero-padded)

images.jsonl is appended batch by batch after the batch's files are written, so an interrupted run leaves
a consistent prefix and `synthesize` resumes from it. A line whose file is missing is an error, not a gap.
Several processes (torchrun) append whole rounds from rank 0 alone, so the lines of different classes may
interleave while a run is going; a finished run rewrites the file in (class, index) order, which is the
order one process writes, so the finished folder is the same whatever the process count.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.checkpoint import atomic_write_text
from training.config import ConfigError

FORMAT = "longtail_studio.synthetic/1"
MANIFEST, IMAGES = "manifest.json", "images.jsonl"


def top_up_counts(class_counts: list[int], per_class: int | None = None) -> list[int]:
    """s_c = target − n_c (never negative); target = max_c n_c (SAU's n_max) unless given."""
    target = max(class_counts) if per_class is None else per_class
    return [max(0, target - count) for count in class_counts]


def class_folder(class_index: int, class_name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", class_name).strip("_") or "class"
    return f"{class_index:04d}_{safe}"


@dataclass
class SyntheticSet:
    root: Path
    manifest: dict
    records: list[dict] = field(default_factory=list)  # images.jsonl: each class's images in index order

    @property
    def class_names(self) -> list[str]:
        return self.manifest["class_names"]

    @property
    def paths(self) -> list[Path]:
        return [self.root / record["file"] for record in self.records]

    @property
    def labels(self) -> np.ndarray:
        return np.asarray([record["class_index"] for record in self.records], dtype=np.int64)

    def counts(self) -> list[int]:
        return np.bincount(self.labels, minlength=len(self.class_names)).tolist()

    def first_per_class(self, wanted: list[int]) -> tuple[list[Path], np.ndarray]:
        """The first `wanted[c]` images of every class c, in generation order (SAU takes indices 0…s_c−1)."""
        if len(wanted) != len(self.class_names):
            raise ConfigError(f"{self.root}: {len(self.class_names)} classes, but {len(wanted)} counts were asked for")
        have = self.counts()
        short = [f"'{self.class_names[c]}' ({have[c]} of {need})" for c, need in enumerate(wanted) if have[c] < need]
        if short:
            raise ConfigError(f"{self.root} has too few synthetic images for: {', '.join(short)}; "
                              "run `python -m training synthesize` with a larger target (it resumes)")
        taken = [0] * len(wanted)
        paths, labels = [], []
        for record in self.records:
            c = record["class_index"]
            if taken[c] < wanted[c]:
                taken[c] += 1
                paths.append(self.root / record["file"])
                labels.append(c)
        return paths, np.asarray(labels, dtype=np.int64)


def read_synthetic_set(directory: str | Path, class_names: list[str] | None = None) -> SyntheticSet:
    """The set in `directory`; with `class_names`, checks it was generated for the same classes in order."""
    root = Path(directory)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise ConfigError(f"{root} is not a synthetic image set (no {MANIFEST}); create one with "
                          "`python -m training synthesize`")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{manifest_path} is not valid JSON: {error}") from error
    if manifest.get("format") != FORMAT:
        raise ConfigError(f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    if class_names is not None and manifest["class_names"] != list(class_names):
        raise ConfigError(f"{root} was generated for the classes {manifest['class_names']}, "
                          f"but the training data has {list(class_names)}")
    records = []
    images_path = root / IMAGES
    if images_path.is_file():
        lines = images_path.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):
                    break  # a line cut short by a kill while appending: the batch is redone on resume
                raise ConfigError(f"{images_path}:{number} is not valid JSON") from None
            if not (root / record["file"]).is_file():
                raise ConfigError(f"{images_path}:{number} lists {record['file']}, which does not exist")
            records.append(record)
    return SyntheticSet(root, manifest, records)


def check_same_settings(directory: str | Path, manifest: dict) -> SyntheticSet | None:
    """The set already in `directory` (None if there is none), after checking it was made with `manifest`'s
    settings (the target counts may change). Reads only, so every process of a run can check it."""
    root = Path(directory)
    if not (root / MANIFEST).exists():
        return None
    existing = read_synthetic_set(root)
    manifest = dict(manifest, format=FORMAT)
    changed = sorted(key for key in set(manifest) | set(existing.manifest)
                     if key != "target_counts" and manifest.get(key) != existing.manifest.get(key))
    if changed:
        raise ConfigError(f"{root} holds a synthetic set made with different settings ({', '.join(changed)}); "
                          "choose another --output or delete it")
    return existing


def start_synthetic_set(directory: str | Path, manifest: dict) -> SyntheticSet:
    """Create the folder and its manifest, or reopen an unfinished set made with the same settings."""
    root = Path(directory)
    manifest = dict(manifest, format=FORMAT)
    existing = check_same_settings(root, manifest)
    if existing is not None:
        existing.manifest = dict(existing.manifest, target_counts=manifest["target_counts"])
        atomic_write_text(root / MANIFEST, json.dumps(existing.manifest, indent=1))
        _drop_cut_line(root / IMAGES)
        return existing
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=1))
    return SyntheticSet(root, manifest)


def _drop_cut_line(images_path: Path) -> None:
    """Remove a last line cut short by a kill, so appends continue from a whole line."""
    if not images_path.is_file():
        return
    text = images_path.read_text()
    if text and not text.endswith("\n"):
        atomic_write_text(images_path, text[: text.rfind("\n") + 1])


def append_records(synthetic_set: SyntheticSet, records: list[dict]) -> None:
    """Record a batch whose files are already on disk (one write, so a kill cuts at most its last line)."""
    with open(synthetic_set.root / IMAGES, "a") as handle:
        handle.write("".join(json.dumps(record) + "\n" for record in records))
        handle.flush()
    synthetic_set.records.extend(records)


def write_in_canonical_order(synthetic_set: SyntheticSet) -> None:
    """Rewrite images.jsonl with its lines in (class, index) order (atomically; nothing if already so)."""
    ordered = sorted(synthetic_set.records, key=lambda record: (record["class_index"], record["index"]))
    if ordered != synthetic_set.records:
        atomic_write_text(synthetic_set.root / IMAGES, "".join(json.dumps(record) + "\n" for record in ordered))
        synthetic_set.records = ordered
