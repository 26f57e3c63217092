"""`python -m training export-unet FOLDER`: a generator's UNet → unet/model.onnx, for sampling on CPU.

`train-generator` calls `export_unet_onnx` on the folder it writes; the command does it for a folder written
before, or after its weights changed. The export fails loudly, and writes nothing, unless the full
`onnx.checker` passes and ONNX Runtime matches PyTorch on random inputs at two batch sizes, across the
timesteps and classes (the "no class" one included): every predicted noise value within `tolerance`. It
records the weights' SHA-256, which inference/onnx_unet.py checks on every open.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from inference.onnx_unet import (
    DIGEST_KEY,
    INPUT_NAMES,
    ONNX_UNET_FILE,
    OUTPUT_NAME,
    UNET_WEIGHTS_FILE,
    weights_digest,
)


class UNetExportError(RuntimeError):
    pass


class NoisePrediction(nn.Module):
    """The UNet as a graph of plain tensors: (sample, timestep, class_labels) → noise."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, class_labels=class_labels).sample


def parity_probes(unet, sizes=(1, 5)) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    channels, size = unet.config.in_channels, unet.config.sample_size
    steps, classes = unet.config.get("num_train_timesteps") or 1000, unet.config.num_class_embeds
    return {f"random batch {n}": (torch.randn(n, channels, size, size, generator=generator),
                                  torch.randint(0, steps, (n,), generator=generator),
                                  torch.randint(0, classes, (n,), generator=generator)) for n in sizes}


def export_unet_onnx(unet: nn.Module, unet_folder: str | Path, tolerance: float = 1e-4) -> dict:
    """Write `unet_folder`/model.onnx from `unet`, whose weights are `unet_folder`'s safetensors file.
    Returns the max abs differences ONNX Runtime vs PyTorch per probe."""
    unet_folder = Path(unet_folder)
    if not (unet_folder / UNET_WEIGHTS_FILE).is_file():
        raise UNetExportError(f"{unet_folder} holds no {UNET_WEIGHTS_FILE} to export")
    module = NoisePrediction(unet).eval().to("cpu")
    example = parity_probes(unet, sizes=(2,))["random batch 2"]
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.onnx.export(module, example, dynamo=True, external_data=False, input_names=list(INPUT_NAMES),
                                    output_names=[OUTPUT_NAME], verbose=False,
                                    dynamic_shapes={name: {0: batch} for name in ("sample", "timestep", "class_labels")})
    model = program.model_proto
    onnx.helper.set_model_props(model, {DIGEST_KEY: weights_digest(unet_folder)})
    onnx.checker.check_model(model, full_check=True)
    output = unet_folder / ONNX_UNET_FILE
    temporary = output.with_name(f".{output.name}.tmp")
    onnx.save(model, temporary)

    session = ort.InferenceSession(str(temporary), providers=["CPUExecutionProvider"])
    differences = {}
    for name, inputs in parity_probes(unet).items():
        with torch.no_grad():
            expected = module(*inputs).numpy()
        actual = session.run([OUTPUT_NAME], {key: value.numpy() for key, value in zip(INPUT_NAMES, inputs)})[0]
        differences[name] = float(np.max(np.abs(expected - actual)))
    if max(differences.values()) > tolerance:
        temporary.unlink()
        raise UNetExportError(f"ONNX Runtime and PyTorch disagree beyond {tolerance:g}: max abs differences "
                              f"{differences}; nothing was written to {output}")
    temporary.replace(output)
    return differences


def export_generator_unet(folder: str | Path, tolerance: float = 1e-4) -> dict:
    """The command: load the folder's UNet from its safetensors and export it beside them."""
    from diffusers import UNet2DModel

    from inference.generator_folder import read_generator_info

    folder = Path(folder)
    read_generator_info(folder)  # a GeneratorError names what is wrong with the folder
    unet = UNet2DModel.from_pretrained(folder / "unet", use_safetensors=True, local_files_only=True,
                                       low_cpu_mem_usage=False)
    differences = export_unet_onnx(unet, folder / "unet", tolerance)
    print(f"wrote {folder / 'unet' / ONNX_UNET_FILE}: ONNX Runtime vs PyTorch max abs difference "
          f"{max(differences.values()):.1e}")
    return differences
