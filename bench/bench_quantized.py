"""int8 vs fp32 ONNX Runtime sessions of the same classifier, in one process (ratios, not absolute claims).

    python bench/bench_quantized.py [--fp32 model_zoo/cifar10_lt_ce_resnet32.onnx]
                                    [--int8 model_zoo/cifar10_lt_ce_resnet32_int8.onnx ...] [--batch-sizes 1 64]
                                    [--threads 2] [--rounds 9] [--min-time 0.2]

Every model is opened as the app and the HTTP service open it (`OnnxClassifier`, CPU provider, `--threads`
intra-op threads) and timed on `session.run` with the same preprocessed batch (the CIFAR-10 test images in
examples/, repeated). The variants run interleaved round by round, with a short pause between blocks; each
block repeats calls until `--min-time` seconds have passed. Printed per batch size: each model's median ms/batch
and images/s, and each int8 model's speed-up over fp32 as the median (and quartiles) of the per-round ratios
fp32 time / int8 time, which cancel slow drifts in the machine's load. `--int8` may be given several times (e.g.
the candidates of bench/quantize_formats.py). Before timing, the top-1 agreement of each int8 model with fp32 on
the examples is printed (accuracy itself is measured on the test set by `export --quantize int8`).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from servers import block_seconds

from inference.classifier import OnnxClassifier
from inference.images import load_image

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "model_zoo"


def session_call(classifier: OnnxClassifier, batch: np.ndarray):
    def run():
        classifier.session.run([classifier.output_name], {classifier.input_name: batch})
    return run


def logits(classifier: OnnxClassifier, batch: np.ndarray) -> np.ndarray:
    return classifier.session.run([classifier.output_name], {classifier.input_name: batch})[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fp32", default=str(ZOO / "cifar10_lt_ce_resnet32.onnx"))
    parser.add_argument("--int8", action="append", help="an int8 model (repeatable; default the shipped one)")
    parser.add_argument("--examples", default=str(ROOT / "examples"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every session")
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds per batch size (at least 2: the ratios' quartiles)")
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per block of calls")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between blocks")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error(f"--rounds must be at least 2 (the speed-up is reported with its quartiles over rounds), not {args.rounds}")

    paths = {"fp32": Path(args.fp32)}
    paths.update({Path(p).stem: Path(p) for p in args.int8 or [ZOO / "cifar10_lt_ce_resnet32_int8.onnx"]})
    models = {name: OnnxClassifier(path, providers=["CPUExecutionProvider"], threads=args.threads)
              for name, path in paths.items()}
    examples = [load_image(p) for p in sorted(Path(args.examples).glob("*.png"))]
    if not examples:
        raise SystemExit(f"no .png images in {args.examples}")
    reference = models["fp32"]

    print(f"{paths['fp32'].name} (fp32) vs {len(models) - 1} int8 model(s): onnxruntime {ort.__version__}, "
          f"{args.threads} threads each, {len(examples)} example images")
    check = reference.preprocess(examples)
    expected = logits(reference, check)
    for name, classifier in models.items():
        if name != "fp32":
            actual = logits(classifier, check)
            print(f"  {name}: max |logit difference| {np.abs(actual - expected).max():.3f}, top-1 agreement "
                  f"{(actual.argmax(1) == expected.argmax(1)).mean():.0%} on the example images")

    for batch_size in args.batch_sizes:
        batch = reference.preprocess([examples[i % len(examples)] for i in range(batch_size)])
        calls = {name: session_call(classifier, batch) for name, classifier in models.items()}
        for call in calls.values():  # warm-up: first calls allocate and pick kernels
            block_seconds(call, args.min_time / 2)
        timings = {name: [] for name in calls}
        for _ in range(args.rounds):
            for name, call in calls.items():
                time.sleep(args.pause)
                timings[name].append(block_seconds(call, args.min_time))
        print(f"batch {batch_size} (median of {args.rounds} rounds; speed-up = fp32 time / int8 time, the median of "
              "the per-round ratios and their quartiles):")
        for name, values in timings.items():
            seconds = statistics.median(values)
            line = f"  {name:44s} {seconds * 1000:8.3f} ms/batch  {batch_size / seconds:9.1f} images/s"
            if name != "fp32":
                low, middle, high = statistics.quantiles([f / i for f, i in zip(timings["fp32"], values)], n=4)
                line += f"   speed-up {middle:.2f}x ({low:.2f}-{high:.2f})"
            print(line)


if __name__ == "__main__":
    main()
