"""`python -m training export`: a checkpoint → one self-contained ONNX file with the model card; and
`python -m training annotate`: the test-set figures of an exported file, added to its card.

The export fails loudly unless the full `onnx.checker` passes and ONNX Runtime matches PyTorch on random
inputs at two batch sizes and on real images of the test set: every logit within
`tolerance + RELATIVE_TOLERANCE * |logit|`. The relative term only matters for logits far above 10 (a
barely trained model can emit logits in the thousands, where float32 itself cannot resolve 1e-4).

Then the written file itself is run by ONNX Runtime on the whole test set, and its card gets the τ curve and the
long-tail report (inference/long_tail.py), so the stored figures are those of the model that is served (fp32 or,
from training/quantize.py, int8). Without the test data the export still succeeds, with a warning; `annotate` adds
them later to any exported file, from its card's own data settings (weights untouched, metadata rewritten atomically):

    python -m training annotate model_zoo/cifar10_lt_ce_resnet32.onnx --data data/cifar10.npz
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from inference.card import MissingMetadataError, ModelCard, Preprocessing, embed_card
from inference.images import ImageLoadError
from inference.long_tail import long_tail_report, tau_curve
from training.config import Config, ConfigError, DataConfig, apply_overrides, config_from_dict
from training.data.loading import make_loader
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
    try:
        annotate_onnx(output, trained.config.data, card)
    except ConfigError as error:
        print(f"warning: no τ curve or long-tail report in the card; {error}. Add them later with "
              f"`python -m training annotate {output} --data <the data file>`")
    size_mb = Path(output).stat().st_size / 2**20
    print(f"wrote {output} ({size_mb:.1f} MB) from {info['path']} (epoch {info['epoch']}); "
          "parity max abs difference: " + ", ".join(f"{k} {v:.2e}" for k, v in differences.items()))
    return differences


# ------------------------------------------------------------------- the test-set figures of an exported file


def read_card(model) -> ModelCard:
    """The card of an exported .onnx file, read without running it; ExportError when it has none."""
    path = Path(model)
    if not path.is_file():
        raise ExportError(f"model file {path} does not exist")
    try:
        props = {entry.key: entry.value for entry in onnx.load(path, load_external_data=False).metadata_props}
        return ModelCard.from_metadata_props(props, source=path.name)
    except MissingMetadataError as error:
        raise ExportError(str(error)) from error
    except Exception as error:  # onnx's parse errors are not one public class
        raise ExportError(f"{path} is not a readable ONNX file: {error}") from error


def load_test_set(data: DataConfig):
    """The test set of these data settings; ConfigError (saying how to point to the data) when it cannot be read."""
    try:
        return build_datasets(data).test
    except (OSError, ImageLoadError) as error:
        raise ConfigError(f"the test data cannot be read ({error}); point to them with --data or "
                          "--set data.root=...") from error


def logits_on_test_set(models: list, test, preprocessing: Preprocessing, data: DataConfig,
                    ) -> tuple[list[np.ndarray], np.ndarray]:
    """The logits of every model on the test set, run by ONNX Runtime on the CPU in one pass over the data (the
    eval transform, in order), and the labels."""
    sessions = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) for path in models]
    loader = make_loader(test.with_transform(eval_transform(preprocessing)), data.batch_size, data.num_workers,
                         shuffle=False)
    logits, labels = [[] for _ in sessions], []
    for images, targets in loader:
        batch = images.numpy().astype(np.float32)
        for session, rows in zip(sessions, logits):
            rows.append(session.run(None, {session.get_inputs()[0].name: batch})[0])
        labels.append(np.asarray(targets))
    return [np.concatenate(rows) for rows in logits], np.concatenate(labels)


def with_long_tail(card: ModelCard, logits: np.ndarray, labels: np.ndarray) -> ModelCard:
    """The card with the τ curve and the long-tail report of these test logits, groups by the card's own."""
    return replace(card, tau_curve=tau_curve(logits, labels, card.class_counts, card.class_groups),
                   long_tail=long_tail_report(logits, labels, card.class_groups))


def annotate_onnx(path, data: DataConfig, card: ModelCard) -> ModelCard:
    """Run the file at `path` on the test set of `data` and store the figures in its card; returns the new card."""
    [logits], labels = logits_on_test_set([path], load_test_set(data), card.preprocessing, data)
    annotated = with_long_tail(card, logits, labels)
    rewrite_card(path, annotated)
    return annotated


def rewrite_card(path, card: ModelCard) -> None:
    """Replace the card in an ONNX file, its graph and weights as they were: a temporary file, then a rename."""
    path = Path(path)
    model = onnx.load(path)
    embed_card(model, card)
    temporary = path.with_name(f".{path.name}.tmp")
    onnx.save(model, temporary)
    temporary.replace(path)


def annotate_file(model, data_root: str | None = None, overrides=()) -> ModelCard:
    """`python -m training annotate`: an exported file's τ curve and long-tail report, measured on the test set of
    its card's data settings (`data_root` for the data file's place on this machine, `overrides` for any other)."""
    card = read_card(model)
    if not card.config:
        raise ExportError(f"{model} carries no training config, so its test data are unknown")
    overrides = [*overrides, *([f"data.root={data_root}"] if data_root else [])]
    config: Config = config_from_dict(apply_overrides(card.config, overrides))
    annotated = annotate_onnx(model, config.data, card)
    at_zero = annotated.tau_point(0.0)
    groups = ", ".join(f"{name} {value:.2f}" for name, value in at_zero["groups"].items() if value is not None)
    print(f"annotated {model}: {sum(map(sum, annotated.long_tail['confusion']))} test images, τ = 0: overall "
          f"{at_zero['overall']:.2f} ({groups}), ECE {at_zero['ece']:.2f}; τ curve over "
          f"{len(annotated.tau_curve)} values from {annotated.tau_curve[0]['tau']:g} to "
          f"{annotated.tau_curve[-1]['tau']:g}")
    return annotated
