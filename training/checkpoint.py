"""Checkpoints as safetensors (every tensor) + JSON (everything else); nothing is ever unpickled.

A save of `<name>` writes the tensors to a new file `<name>.<save id>.safetensors`, then atomically
replaces `<name>.json`, which names that file; only then is the previous tensor file deleted. The JSON
replacement is the commit point: a crash at any moment leaves one complete, consistent checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import uuid
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

FORMAT = "longtail_studio.checkpoint/1"


class CheckpointError(ValueError):
    pass


def git_revision() -> str:
    """The source revision this code runs from ("+dirty" if modified), or "unknown" outside git."""
    here = Path(__file__).resolve().parent
    try:
        revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                  timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return revision + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(Path(path), lambda target: Path(target).write_text(text))


def atomic_write(path: Path, write) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _split_optimizer_state(state: dict) -> tuple[dict, dict]:
    tensors, scalars = {}, {}
    for param_index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{param_index}.{key}"] = value
            else:
                scalars[f"{param_index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer_state(tensors: dict, info: dict) -> dict:
    state: dict = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, param_index, key = name.split(".", 2)
            state.setdefault(int(param_index), {})[key] = value
    for name, value in info["scalars"].items():
        param_index, key = name.split(".", 1)
        state.setdefault(int(param_index), {})[key] = value
    return {"state": state, "param_groups": info["param_groups"]}


def save_checkpoint(path_stem: Path, model: torch.nn.Module, info: dict,
                    optimizer: torch.optim.Optimizer | None = None, extra_tensors: dict | None = None) -> None:
    """Write `<stem>.<id>.safetensors` + `<stem>.json`. `info` must be JSON-serialisable."""
    path_stem = Path(path_stem)
    save_id = uuid.uuid4().hex[:16]
    weights = path_stem.with_name(f"{path_stem.name}.{save_id}.safetensors")
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    info = dict(info, format=FORMAT, save_id=save_id, weights=weights.name)
    if optimizer is not None:
        optimizer_tensors, info["optimizer"] = _split_optimizer_state(optimizer.state_dict())
        tensors.update({k: v.contiguous().cpu() for k, v in optimizer_tensors.items()})
    for name, value in (extra_tensors or {}).items():
        tensors[f"extra.{name}"] = value.detach().contiguous().cpu()
    atomic_write(weights, lambda target: save_file(tensors, target, metadata={"save_id": save_id}))
    atomic_write_text(path_stem.with_suffix(".json"), json.dumps(info, indent=1))
    for stale in path_stem.parent.glob(f"{path_stem.name}.*.safetensors"):
        if stale != weights:  # older saves, and tensors of a save that crashed before its JSON
            stale.unlink(missing_ok=True)


def resolve_checkpoint(path: str | Path, which: str = "best") -> Path:
    """A checkpoint directory (its `best`, else `last`) or a `.safetensors`/`.json` file → the path stem."""
    path = Path(path)
    if path.is_dir():
        for name in ([which, "last"] if which == "best" else [which]):
            if (path / f"{name}.json").is_file():
                return path / name
        raise CheckpointError(f"no checkpoint ({which}.json / last.json) in {path}")
    if path.suffix in (".safetensors", ".json"):
        path = path.with_name(path.name.split(".")[0])
    if not path.with_suffix(".json").is_file():
        raise CheckpointError(f"checkpoint not found: {path}.json")
    return path


def load_checkpoint(path: str | Path, which: str = "best") -> tuple[dict, dict]:
    """(tensors, info) of a checkpoint; raises CheckpointError with a clear message on any damage."""
    stem = resolve_checkpoint(path, which)
    try:
        info = json.loads(stem.with_suffix(".json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{stem}.json is unreadable or corrupt: {error}") from error
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointError(f"{stem}.json is not a LongTail Studio checkpoint (format {FORMAT} expected)")
    name = info.get("weights")
    if not isinstance(name, str) or not name or Path(name).name != name:  # a bare file name beside the JSON
        raise CheckpointError(f"{stem}.json names no valid weights file")
    weights = stem.parent / name
    try:
        tensors = load_file(str(weights))
        with safe_open(str(weights), "pt") as handle:
            save_id = (handle.metadata() or {}).get("save_id")
    except (OSError, SafetensorError) as error:
        raise CheckpointError(f"{weights} is missing or corrupt: {error}") from error
    if save_id != info.get("save_id"):
        raise CheckpointError(f"{stem}.json and {weights.name} come from different saves")
    info["path"] = str(stem)
    return tensors, info


def restore_model(model: torch.nn.Module, tensors: dict, info: dict) -> None:
    state = {name[len("model."):]: value for name, value in tensors.items() if name.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"checkpoint {info.get('path')} does not fit this model (it was trained as "
            f"{info.get('config', {}).get('model', {}).get('name')} with {len(info.get('class_names', []))} "
            f"classes): {str(error).splitlines()[0]}"
        ) from error


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, info: dict) -> None:
    if "optimizer" not in info:
        raise CheckpointError(f"checkpoint {info.get('path')} holds no optimizer state; cannot resume from it")
    optimizer.load_state_dict(_join_optimizer_state(tensors, info["optimizer"]))
