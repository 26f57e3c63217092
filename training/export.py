"""`python -m training export`: a checkpoint → one self-contained ONNX file with the model card.

The export fails loudly unless the full `onnx.checker` passes and ONNX Runtime matches PyTorch on random
inputs at two batch sizes and on real images of the test set: every logit within
`tolerance + RELATIVE_TOLERANCE * |logit|`. The relative term only matters for logits far above 10 (a
barely trained model can emit logits in the thousands, where float32 itself cannot resolve 1e-4).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from inference.card import ModelCard, Preprocessing, embed_card
from inference.images import ImageLoadError
from training.config import ConfigError
from training.data.lt_data import build_datasets
from training.data.transforms import eval_transform
from training.trained import load_trained

RELATIVE_TOLERANCE = 1e-6


class ExportError(RuntimeError):
    pass


class ImagesToLogits(nn.Module):
    """Names the graph's input `images` and output `logits` whatever the method's module looks like."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(images)


def export_onnx(classifier: nn.Module, preprocessing: Preprocessing, card: ModelCard, output: str | Path,
                real_images: torch.Tensor | None = None, tolerance: float = 1e-4) -> dict:
    """Export, check, embed the card, verify parity; returns the measured max abs differences."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    module = ImagesToLogits(classifier).eval().to("cpu", memory_format=torch.contiguous_format)
    channels, height, width = preprocessing.input_size
    example = torch.randn(2, channels, height, width)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(module, (example,), dynamo=True, external_data=False, input_names=["images"],
                                output_names=["logits"], dynamic_shapes={"images": {0: batch}}, verbose=False)
    model = program.model_proto
    embed_card(model, card)
    onnx.checker.check_model(model, full_check=True)
    temporary = output.with_name(f".{output.name}.tmp")
    onnx.save(model, temporary)

    session = ort.InferenceSession(str(temporary), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    probes = {f"random batch {n}": torch.randn(n, channels, height, width, generator=generator) for n in (1, 5)}
    if real_images is not None:
        probes["real images"] = real_images
    differences, within = {}, True
    for name, images in probes.items():
        with torch.no_grad():
            expected = module(images).numpy()
        actual = session.run(["logits"], {"images": images.numpy()})[0]
        differences[name] = float(np.max(np.abs(expected - actual)))
        within &= bool(np.all(np.abs(expected - actual) <= tolerance + RELATIVE_TOLERANCE * np.abs(expected)))
    if not within:
        temporary.unlink()
        raise ExportError(f"ONNX Runtime and PyTorch disagree beyond {tolerance:g} (+{RELATIVE_TOLERANCE:g} x |logit|): "
                          f"max abs differences {differences}; nothing was written to {output}")
    temporary.replace(output)
    return differences


def real_test_images(config, preprocessing: Preprocessing, count: int = 64) -> torch.Tensor | None:
    """A fixed sample of test images for the parity check, or None if the data is not on this machine."""
    try:
        test = build_datasets(config.data).test.with_transform(eval_transform(preprocessing))
    except (ConfigError, OSError, ImageLoadError) as error:
        print(f"warning: parity checked on random inputs only; test images unavailable ({error})")
        return None
    indices = np.random.default_rng(0).choice(len(test), size=min(count, len(test)), replace=False)
    return torch.stack([test[int(i)][0] for i in indices])


def export_checkpoint(checkpoint, output, which: str = "best", overrides=(), tolerance: float = 1e-4) -> dict:
    if Path(checkpoint).suffix == ".onnx":
        raise ExportError(f"{checkpoint} is already exported; add --quantize int8 to quantize it, or export a run "
                          "directory or .safetensors checkpoint")
    trained = load_trained(checkpoint, which, overrides)
    card, info = trained.card, trained.info
    differences = export_onnx(trained.classifier, card.preprocessing, card, output,
                              real_test_images(trained.config, card.preprocessing), tolerance)
    size_mb = Path(output).stat().st_size / 2**20
    print(f"wrote {output} ({size_mb:.1f} MB) from {info['path']} (epoch {info['epoch']}); "
          "parity max abs difference: " + ", ".join(f"{k} {v:.2e}" for k, v in differences.items()))
    return differences
