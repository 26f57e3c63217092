"""Frozen features of a trained checkpoint, for methods that learn on top of them (DLSA).

    python -m training extract-features --checkpoint runs/ce --output runs/ce/features.safetensors

The backbone runs in eval mode on the eval transform (no augmentation), in fp32. One safetensors file
holds `<split>_features` (N, D) and `<split>_labels` (N,) for train / val / test (val only when the run
has a validation split) and, as metadata, where they came from.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from training.checkpoint import CheckpointError, atomic_write
from training.config import ConfigError
from training.data.loading import make_loader
from training.data.lt_data import build_datasets
from training.data.transforms import eval_transform
from training.engine import to_device
from training.run import start_run
from training.trained import load_trained

SPLITS = ("train", "val", "test")


def backbone_of(method, model) -> torch.nn.Module:
    """The images→logits network of a trained run (the model itself, or e.g. BCL's backbone), which has
    `forward_features`."""
    network = method.classifier(model)
    if not hasattr(network, "forward_features"):
        raise CheckpointError(f"the classifier of method '{type(method).__name__}' has no forward_features; "
                              "features cannot be extracted from it")
    return network


@torch.no_grad()
def features_of(backbone, dataset, batch_size: int, num_workers: int, device, channels_last: bool = False,
                progress: bool = False, desc: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D) float32, labels (N,) int64) of a dataset, in dataset order, on the CPU."""
    backbone.eval()
    features, labels = [], []
    loader = make_loader(dataset, batch_size, num_workers, shuffle=False)
    for images, targets in tqdm(loader, desc=desc, disable=not progress, leave=False):
        features.append(backbone.forward_features(to_device(images, device, channels_last)).float().cpu())
        labels.append(torch.as_tensor(targets, dtype=torch.int64))
    return torch.cat(features), torch.cat(labels)


def bundle_features(backbone, bundle, config, device) -> dict[str, torch.Tensor]:
    """`<split>_features` / `<split>_labels` of every split the bundle has."""
    transform = eval_transform(backbone.preprocessing)
    backbone = backbone.to(device)
    tensors = {}
    for split in SPLITS:
        dataset = getattr(bundle, split)
        if dataset is None:
            continue
        tensors[f"{split}_features"], tensors[f"{split}_labels"] = features_of(
            backbone, dataset.with_transform(transform), config.data.batch_size, config.data.num_workers, device,
            config.run.channels_last, config.run.progress, f"{split} features")
    return tensors


def save_features(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    """Atomically; `metadata` values are stored as JSON strings (safetensors metadata is str → str)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    strings = {key: json.dumps(value) for key, value in metadata.items()}
    tensors = {key: value.contiguous() for key, value in tensors.items()}
    atomic_write(path, lambda target: save_file(tensors, target, metadata=strings))


def load_features(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        with safe_open(str(path), "pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open has no __iter__)
            metadata = {key: json.loads(value) for key, value in (handle.metadata() or {}).items()}
    except (OSError, SafetensorError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is missing or not a features file: {error}") from error
    return tensors, metadata


def feature_metadata(info: dict, which: str) -> dict:
    """What identifies the features: the source checkpoint's save (a retrained base changes it)."""
    return {"checkpoint": info["path"], "which": which, "save_id": info["save_id"],
            "model_name": info.get("model_name"), "class_names": info["class_names"],
            "class_counts": info["class_counts"]}


def check_same_training_set(bundle, info: dict) -> None:
    """Features only mean something on the data the checkpoint was trained on."""
    if bundle.train_counts != info["class_counts"]:
        raise ConfigError(f"the data now gives class counts {bundle.train_counts}, but {info['path']} was "
                          f"trained on {info['class_counts']}; check data.root / the split files")


def extract_features(checkpoint, which: str = "best", overrides=(), output: str | Path | None = None) -> dict:
    """Features and labels of every split of a trained run's data; written to `output` when given.

    Returns {"<split>_features": ..., "<split>_labels": ..., "metadata": {...}}."""
    config, method, model, info = load_trained(checkpoint, which, overrides)
    device = start_run(config.run)
    bundle = build_datasets(config.data)
    check_same_training_set(bundle, info)
    tensors = bundle_features(backbone_of(method, model), bundle, config, device)
    metadata = feature_metadata(info, which)
    if output is not None:
        save_features(output, tensors, metadata)
        shapes = ", ".join(f"{split} {tuple(tensors[f'{split}_features'].shape)}" for split in SPLITS
                           if f"{split}_features" in tensors)
        print(f"wrote {output}: {shapes} from {info['path']}")
    return dict(tensors, metadata=metadata)
