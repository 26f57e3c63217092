"""Quantize one fp32 model in every candidate int8 format and print each one's accuracy change per group.

    python bench/quantize_formats.py --model model_zoo/cifar10_lt_ce_resnet32.onnx --output-dir runs/int8_formats \
        [--set data.root=data/cifar10.npz]
    python bench/bench_quantized.py --batch-sizes 64 --int8 runs/int8_formats/*.onnx   # then: their speed

The candidates are onnxruntime's formats (QDQ, QOperator) x integer types (activations/weights uint8/int8,
uint8/uint8, int8/int8) x per-channel or per-tensor weights x reduce_range, all after quant_pre_process, plus the
chosen format without quant_pre_process. Each goes through `training.quantize.quantize_onnx_file` (the code of
`export --quantize int8`) with the gate opened (every file is written), so the table shows how many points every
head / medium / tail group loses; the format `export` uses is the fastest one within the 1-point gate
(docs/benchmarks.md, "int8 quantization").
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
from dataclasses import replace
from pathlib import Path

from inference.card import GROUPS, group_name
from training.quantize import INT8_FORMAT, Int8Format, quantize_onnx_file

TYPES = (("uint8", "int8"), ("uint8", "uint8"), ("int8", "int8"))  # (activations, weights)


def candidates() -> list[Int8Format]:
    grid = [Int8Format(form, activations, weights, per_channel, reduce_range)
            for form, (activations, weights), per_channel, reduce_range
            in itertools.product(("QDQ", "QOperator"), TYPES, (False, True), (False, True))]
    return grid + [replace(INT8_FORMAT, pre_process=False)]


def file_name(fmt: Int8Format) -> str:
    return (f"{fmt.quant_format}_a{fmt.activations}_w{fmt.weights}_{'perchannel' if fmt.per_channel else 'pertensor'}"
            f"{'_reduced' if fmt.reduce_range else ''}{'' if fmt.pre_process else '_noprep'}.onnx")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an exported fp32 .onnx model")
    parser.add_argument("--output-dir", required=True, help="where the candidate int8 files go")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    print(f"{'file':52s} {'overall':>8s} " + " ".join(f"{group_name(g):>7s}" for g in GROUPS)
          + "   (points lost, fp32 - int8)")
    for fmt in candidates():
        output = Path(args.output_dir) / file_name(fmt)
        with contextlib.redirect_stdout(io.StringIO()):  # each run's own table; the summary line says it all
            report = quantize_onnx_file(args.model, output, args.overrides, float("inf"), fmt)
        overall = report.fp32["overall"] - report.int8["overall"]
        print(f"{output.name:52s} {overall:8.2f} " + " ".join(f"{report.drops.get(g, float('nan')):7.2f}" for g in GROUPS),
              flush=True)


if __name__ == "__main__":
    main()
