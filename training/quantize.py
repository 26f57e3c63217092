"""`python -m training export --quantize int8`: a statically quantized int8 model, written only if no group loses accuracy.

    python -m training export --checkpoint runs/c10_ce --quantize int8 --output model_zoo/c10_ce_int8.onnx
    python -m training export --checkpoint model_zoo/c10_ce.onnx --quantize int8 --output model_zoo/c10_ce_int8.onnx \
        --set data.root=data/cifar10.npz

A run directory is first exported to fp32 ONNX with the usual parity checks (training/export.py); an exported .onnx
file is taken as it is, with the data settings of the config saved in its card. ONNX Runtime's static quantizer
calibrates activation ranges on training images of that data (the eval transform, the same number from every class so
that tail classes shape the ranges too, a fixed seed). fp32 and int8 are then both run by ONNX Runtime on the test
set, and the int8 file is written only if no head / medium / tail group (under the card's grouping rule) loses more
than `max_group_drop` percentage points; its card records the format, the calibration and both accuracies, and the
τ curve and long-tail report of the int8 model itself (training/export.py `with_long_tail`).
Why this format (`INT8_FORMAT`): docs/benchmarks.md, "int8 quantization".
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from inference.card import GROUPS, ModelCard, embed_card, group_name
from inference.images import ImageLoadError
from training.config import Config, ConfigError, apply_overrides, config_from_dict
from training.data.lt_data import build_datasets, subset
from training.data.transforms import eval_transform
from training.export import ExportError, export_onnx, logits_on_test_set, read_card, real_test_images, with_long_tail
from training.groups import shot_accuracy
from training.trained import load_trained

CALIBRATION_IMAGES = 320  # a few hundred, spread evenly over the classes (32 each for CIFAR-10)
CALIBRATION_SEED = 0
CALIBRATION_BATCH = 32


@dataclass(frozen=True)
class Int8Format:
    """One way to quantize: the graph form and the integer types, as ONNX Runtime's quantize_static takes them."""

    quant_format: str = "QDQ"  # "QDQ" (Quantize/DequantizeLinear pairs around float ops) or "QOperator" (QLinearConv, ...)
    activations: str = "uint8"
    weights: str = "int8"
    per_channel: bool = False  # one weight scale per output channel instead of per tensor
    reduce_range: bool = False  # 7-bit weights (for CPUs without VNNI)
    pre_process: bool = True  # onnxruntime's quant_pre_process (shape inference, graph optimisation) first

    def label(self) -> str:
        scales = "per-channel" if self.per_channel else "per-tensor"
        return (f"{self.quant_format}, {self.activations} activations, {self.weights} weights, {scales}"
                + (", reduced range" if self.reduce_range else ""))


# On the project's VNNI CPU every uint8-activation / int8-weight candidate that passed the gate ran at the same speed
# (about 2x fp32 at batch 64), int8 activations at 0.1-0.7x; of those tied, QDQ is standard ONNX that other execution
# providers read too, and per-tensor without reduce_range lost the least accuracy (docs/benchmarks.md).
INT8_FORMAT = Int8Format()
QUANT_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
QUANT_FORMATS = {"QOperator": QuantFormat.QOperator, "QDQ": QuantFormat.QDQ}


class QuantizationRefused(ExportError):
    """The int8 model lost more accuracy in some group than allowed; nothing was written."""


@dataclass
class QuantizationReport:
    fp32: dict  # training.groups.shot_accuracy of the fp32 model (ONNX Runtime, test set)
    int8: dict  # the same for the int8 model
    rule: str  # the card's grouping rule, whose groups the gate checks
    drops: dict[str, float]  # stored group → percentage points lost (negative: gained)
    record: dict  # what the int8 card's `quantization` field holds


# ---------------------------------------------------------------------------------------------- entry points


def quantize_export(checkpoint, output, which: str = "best", overrides=(), tolerance: float = 1e-4,
                    max_group_drop: float = 1.0, int8_format: Int8Format = INT8_FORMAT) -> QuantizationReport:
    """`export --quantize int8` from a run directory / checkpoint file, or from an exported fp32 .onnx file."""
    if Path(checkpoint).suffix == ".onnx":
        return quantize_onnx_file(checkpoint, output, overrides, max_group_drop, int8_format)
    trained = load_trained(checkpoint, which, overrides)
    card = trained.card
    with tempfile.TemporaryDirectory(prefix="longtail-int8-") as work:
        fp32 = Path(work) / "fp32.onnx"
        export_onnx(trained.classifier, card.preprocessing, card, fp32,
                    real_test_images(trained.config, card.preprocessing), tolerance)
        return quantize_onnx(fp32, output, trained.config, card, max_group_drop, int8_format)


def quantize_onnx_file(model, output, overrides=(), max_group_drop: float = 1.0,
                       int8_format: Int8Format = INT8_FORMAT) -> QuantizationReport:
    """Quantize an exported fp32 file; its data (calibration, test) come from the card's config plus `overrides`."""
    card = read_card(model)
    if card.quantization:
        raise ExportError(f"{model} is already quantized to int8; quantize the fp32 model it was made from")
    if not card.config:
        raise ExportError(f"{model} carries no training config, so its calibration and test data are unknown")
    config = config_from_dict(apply_overrides(card.config, overrides))
    return quantize_onnx(model, output, config, card, max_group_drop, int8_format)


def quantize_onnx(fp32_path, output, config: Config, card: ModelCard, max_group_drop: float = 1.0,
                  int8_format: Int8Format = INT8_FORMAT) -> QuantizationReport:
    """Calibrate, quantize, evaluate both, and write `output` with the card's `quantization` record only if the
    gate passes; raises QuantizationRefused (nothing written) otherwise."""
    output = Path(output)
    bundle = load_data(config)
    calibration = calibration_images(bundle.train, card.preprocessing)
    with tempfile.TemporaryDirectory(prefix="longtail-int8-") as work:
        int8_path = Path(work) / "int8.onnx"
        quantize_graph(fp32_path, int8_path, calibration, int8_format, Path(work))
        (fp32_logits, int8_logits), labels = logits_on_test_set([fp32_path, int8_path], bundle.test,
                                                                 card.preprocessing, config.data)
        fp32, int8 = (shot_accuracy(logits.argmax(axis=1), labels, card.class_counts, config.groups)
                      for logits in (fp32_logits, int8_logits))
        rule = card.group_rule.get("rule", config.groups.rule)
        drops = group_drops(fp32, int8, rule)
        print(accuracy_table(fp32, int8, rule))
        refuse_if_over(drops, fp32, int8, rule, max_group_drop, output)
        record = quantization_record(int8_format, len(calibration), fp32, int8, rule, max_group_drop)
        write_with_card(int8_path, output, with_long_tail(replace(card, quantization=record), int8_logits, labels))
    size_mb = output.stat().st_size / 2**20
    print(f"wrote {output} ({size_mb:.1f} MB, int8: {int8_format.label()}; calibrated on {len(calibration)} "
          f"training images; no group lost more than {max_group_drop:.2f} points)")
    return QuantizationReport(fp32, int8, rule, drops, record)


# ------------------------------------------------------------------------------------------------ the steps


def load_data(config: Config):
    try:
        return build_datasets(config.data)
    except (OSError, ImageLoadError) as error:
        raise ConfigError(f"the calibration and test data cannot be read ({error}); point to them with "
                          "--set data.root=...") from error


def calibration_images(train, preprocessing, count: int = CALIBRATION_IMAGES, seed: int = CALIBRATION_SEED
                       ) -> np.ndarray:
    """`count` training images (fewer where a class has fewer), the same number from every class, drawn with a
    fixed seed and through the eval transform, as one NCHW float32 array."""
    labels = np.asarray(train.labels)
    classes = np.unique(labels)
    per_class = max(1, count // len(classes))
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), size=min(per_class, int(np.sum(labels == c))), replace=False)
              for c in classes]
    images = subset(train, np.sort(np.concatenate(chosen))).with_transform(eval_transform(preprocessing))
    return np.stack([images[i][0].numpy() for i in range(len(images))]).astype(np.float32)


class ImageBatches(CalibrationDataReader):
    """The calibration images, fed to the quantizer in small batches under the graph's input name."""

    def __init__(self, images: np.ndarray, input_name: str):
        self.batches = iter([{input_name: images[i:i + CALIBRATION_BATCH]}
                             for i in range(0, len(images), CALIBRATION_BATCH)])

    def get_next(self) -> dict | None:
        return next(self.batches, None)


def quantize_graph(fp32_path, int8_path, calibration: np.ndarray, int8_format: Int8Format, work: Path) -> None:
    source = Path(fp32_path)
    if int8_format.pre_process:
        source, prepared = work / "prepared.onnx", source
        quant_pre_process(str(prepared), str(source))
    input_name = onnx.load(source, load_external_data=False).graph.input[0].name
    quantize_static(str(source), str(int8_path), ImageBatches(calibration, input_name),
                    quant_format=QUANT_FORMATS[int8_format.quant_format],
                    activation_type=QUANT_TYPES[int8_format.activations], weight_type=QUANT_TYPES[int8_format.weights],
                    per_channel=int8_format.per_channel, reduce_range=int8_format.reduce_range)


def group_drops(fp32: dict, int8: dict, rule: str) -> dict[str, float]:
    """Percentage points lost per group under `rule`; groups without classes are left out."""
    before, after = fp32["groups"][rule], int8["groups"][rule]
    return {group: before[group] - after[group] for group in GROUPS if before[group] is not None}


def accuracy_table(fp32: dict, int8: dict, rule: str) -> str:
    rows = [("overall", fp32["overall"], int8["overall"])]
    rows += [(group_name(g), fp32["groups"][rule][g], int8["groups"][rule][g]) for g in GROUPS]
    lines = [f"test accuracy (%), ONNX Runtime, {fp32['num_samples']} images, groups by the {rule} rule",
             f"{'':8s} {'fp32':>7s} {'int8':>7s} {'change':>7s}"]
    for label, before, after in rows:
        if before is None:
            lines.append(f"{label:8s} {'–':>7s} {'–':>7s}")
        else:
            lines.append(f"{label:8s} {before:7.2f} {after:7.2f} {after - before:+7.2f}")
    return "\n".join(lines)


def refuse_if_over(drops: dict[str, float], fp32: dict, int8: dict, rule: str, max_group_drop: float,
                   output: Path) -> None:
    over = [(group, drop) for group, drop in drops.items() if drop > max_group_drop]
    if over:
        losses = "; ".join(f"{group_name(g)} lost {drop:.2f} points ({fp32['groups'][rule][g]:.2f} → "
                           f"{int8['groups'][rule][g]:.2f})" for g, drop in over)
        raise QuantizationRefused(f"int8 model refused: {losses}, more than --max-group-drop {max_group_drop:g}; "
                                  f"nothing was written to {output}")


def accuracy_summary(result: dict, rule: str) -> dict:
    """Overall and per stored group, rounded: what the card keeps of a shot_accuracy result."""
    summary = {"overall": round(result["overall"], 2)}
    summary.update({g: None if v is None else round(v, 2) for g, v in result["groups"][rule].items()})
    return summary


def quantization_record(int8_format: Int8Format, calibration_images: int, fp32: dict, int8: dict, rule: str,
                        max_group_drop: float) -> dict:
    return {"format": asdict(int8_format), "calibration_images": calibration_images,
            "calibration_seed": CALIBRATION_SEED, "test_images": fp32["num_samples"], "group_rule": rule,
            "fp32_accuracy": accuracy_summary(fp32, rule), "int8_accuracy": accuracy_summary(int8, rule),
            "max_group_drop": max_group_drop, "onnxruntime": ort.__version__}


def write_with_card(int8_path: Path, output: Path, card: ModelCard) -> None:
    """The quantized graph with the card embedded, checked, written atomically (a temp file, then rename)."""
    model = onnx.load(int8_path)
    embed_card(model, card)
    onnx.checker.check_model(model)
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.tmp")
    onnx.save(model, temporary)
    temporary.replace(output)
