"""A generator's UNet exported to ONNX (`unet/model.onnx`), to sample on CPU with ONNX Runtime.

On CPU in fp32, ONNX Runtime runs our 2.7M-parameter UNet 1.5-2.4x faster than PyTorch eager at the batch
sizes the app and `synthesize` use (docs/benchmarks.md), for the same numbers to a few 1e-6. So a
generator folder may carry this export next to its safetensors weights; `training.export.export_unet_onnx`
writes it (`python -m training train-generator` does at the end, `python -m training export-unet FOLDER`
for an existing folder) and `open_onnx_unet` opens it.

Invariant: the export is of the weights beside it. It records the SHA-256 of
unet/diffusion_pytorch_model.safetensors in its metadata (`unet_sha256`), and `open_onnx_unet` refuses an
export whose weights have since changed, so a retrained or edited UNet never samples through a stale copy.

Graph: inputs `sample` (float32, N×C×H×W), `timestep` (int64, N), `class_labels` (int64, N); output `noise`
(float32, like `sample`); the batch axis is dynamic.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

ONNX_UNET_FILE = "model.onnx"  # inside unet/, where diffusers' ONNX pipelines keep theirs too
UNET_WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
DIGEST_KEY = "unet_sha256"
INPUT_NAMES = ("sample", "timestep", "class_labels")
OUTPUT_NAME = "noise"


class StaleUNetExport(ValueError):
    """unet/model.onnx was exported from other weights than the safetensors beside it."""


def weights_digest(unet_folder: str | Path) -> str:
    """SHA-256 of the folder's safetensors weights, the identity an export records."""
    digest = hashlib.sha256()
    with open(Path(unet_folder) / UNET_WEIGHTS_FILE, "rb") as weights:
        for block in iter(lambda: weights.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class OnnxUNet:
    """Called like the pipeline's noise model: (sample, timestep, class_labels) → predicted noise, in fp32."""

    def __init__(self, session):
        self.session = session

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        batch = sample.shape[0]
        feed = {"sample": sample.detach().cpu().float().numpy(),
                "timestep": np.full((batch,), int(timestep), dtype=np.int64),
                "class_labels": class_labels.detach().cpu().to(torch.int64).numpy()}
        return torch.from_numpy(self.session.run([OUTPUT_NAME], feed)[0]).to(sample.device)


def open_onnx_unet(unet_folder: str | Path) -> OnnxUNet | None:
    """The folder's ONNX export as an OnnxUNet, or None when it has none. StaleUNetExport when the export
    was made from other weights; ValueError when the file is not an ONNX UNet."""
    import onnxruntime as ort

    path = Path(unet_folder) / ONNX_UNET_FILE
    if not path.is_file():
        return None
    options = ort.SessionOptions()
    # As many threads as PyTorch would use (torchrun sets 1 per process), not ONNX Runtime's one per core,
    # so several synthesize processes on one machine do not oversubscribe it.
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types for unreadable or invalid graphs
        raise ValueError(f"{path} is not a readable ONNX model: {str(error).splitlines()[0]}") from error
    names = tuple(node.name for node in session.get_inputs())
    if names != INPUT_NAMES or [node.name for node in session.get_outputs()] != [OUTPUT_NAME]:
        raise ValueError(f"{path} has inputs {names}, not the UNet's {INPUT_NAMES}")
    recorded = session.get_modelmeta().custom_metadata_map.get(DIGEST_KEY)
    if recorded != weights_digest(unet_folder):
        raise StaleUNetExport(f"{path} was exported from other weights than {UNET_WEIGHTS_FILE} beside it; "
                              f"export it again (python -m training export-unet {Path(unet_folder).parent}) "
                              "or delete it to sample with PyTorch")
    return OnnxUNet(session)
