"""A run's output directory, the one object that reads and writes its files.

    config.yaml      the resolved config, written when the run starts (the one source `--resume` reads)
    last, best       checkpoints (training/checkpoint.py): `last` after every epoch, `best` on validation
    metrics.jsonl    one record per epoch (DLSA: per fitted piece)
    summary.json     the final evaluation: last epoch and val-selected (and the labelled test oracle)

Invariants: every file is replaced atomically, so a run killed at any moment leaves each file either as it was or
complete; a new run never writes into a directory that holds one (`prepare`), and `--resume` needs one.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from training.checkpoint import CheckpointError, atomic_write_text, load_checkpoint, save_checkpoint


class RunDir:
    CONFIG, HISTORY, SUMMARY = "config.yaml", "metrics.jsonl", "summary.json"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------------------------------ start / resume

    def prepare(self, resume: bool, marker: str = "last.json") -> None:
        """A new run never overwrites one (`marker` is the file a started run leaves); --resume needs one."""
        started = (self.path / marker).exists()
        if started and not resume:
            raise CheckpointError(f"{self.path} already holds a run; pass --resume to continue it, "
                                  "or choose another --output-dir (nothing was overwritten)")
        if resume and not started:
            raise CheckpointError(f"--resume: no {marker} in {self.path}")
        self.path.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------------------------------------- config

    def save_config(self, config) -> None:
        atomic_write_text(self.path / self.CONFIG, yaml.safe_dump(config.to_dict(), sort_keys=False))

    def config_tree(self) -> dict:
        """The saved config as a plain tree (not yet checked): what `save_config` wrote."""
        path = self.path / self.CONFIG
        try:
            tree = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as error:
            raise CheckpointError(f"{path} is missing or unreadable, so the run cannot be resumed: {error}") from error
        if not isinstance(tree, dict):
            raise CheckpointError(f"{path} holds no config mapping, so the run cannot be resumed")
        return tree

    # -------------------------------------------------------------------------------------------- checkpoints

    def has(self, name: str) -> bool:
        return (self.path / f"{name}.json").is_file()

    def save(self, name: str, model, info: dict, optimizer=None, extra_tensors: dict | None = None) -> None:
        save_checkpoint(self.path / name, model, info, optimizer, extra_tensors)

    def load(self, name: str) -> tuple[dict, dict]:
        return load_checkpoint(self.path / name)

    # ---------------------------------------------------------------------------------------- history, summary

    def write_history(self, records: list[dict], name: str = HISTORY) -> None:
        atomic_write_text(self.path / name, "".join(json.dumps(record) + "\n" for record in records))

    def read_history(self, name: str = HISTORY) -> list[dict]:
        path = self.path / name
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def write_summary(self, metrics: dict) -> None:
        """summary.json, and the same metrics in `last` / `best`, so they travel with the checkpoint into the
        exported model's card."""
        for name in ("last", "best"):
            if self.has(name):
                path = self.path / f"{name}.json"
                info = json.loads(path.read_text())
                info["metrics"] = metrics
                atomic_write_text(path, json.dumps(info, indent=1))
        atomic_write_text(self.path / self.SUMMARY, json.dumps(metrics, indent=1))

    def read_summary(self) -> dict:
        return json.loads((self.path / self.SUMMARY).read_text())
