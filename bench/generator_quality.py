"""Sampling settings vs sample quality: 100 images per class for each (steps, guidance), the seconds per
image, and how often each shipped classifier recognises them as their own class.

    python bench/generator_quality.py [--generator model_zoo/cifar10_lt_generator] [--per-class 100]
        [--settings 10:1 20:1 10:2 20:2 10:3] [--models model_zoo/cifar10_lt_concutmix_resnet32.onnx ...]
        [--work runs/generator_quality]

Figures in docs/results.md#sau came from this script (with the defaults).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from inference.generators import open_generator
from training.data.synthetic_set import read_synthetic_set
from training.synthesize import recognition_report, synthesize

SHIPPED = ["model_zoo/cifar10_lt_concutmix_resnet32.onnx", "model_zoo/cifar10_lt_ce_resnet32.onnx"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", default="model_zoo/cifar10_lt_generator")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--settings", nargs="+", default=["10:1", "20:1", "10:2", "20:2", "10:3"],
                        help="steps:guidance pairs")
    parser.add_argument("--models", nargs="+", default=SHIPPED)
    parser.add_argument("--work", default="runs/generator_quality")
    args = parser.parse_args()

    generator = open_generator(args.generator)
    names = generator.class_names
    results = {}
    for setting in args.settings:
        steps, guidance = int(setting.split(":")[0]), float(setting.split(":")[1])
        folder = Path(args.work) / f"s{steps}_g{guidance}"
        summary = synthesize(generator, names, [args.per_class] * len(names), folder, steps=steps,
                             guidance=guidance, batch_size=100, progress=False)
        synthetic = read_synthetic_set(folder)
        row = {"seconds_per_image": summary["seconds_per_image"]}
        for model in args.models:
            report = recognition_report(synthetic.paths, synthetic.labels, names, model)
            row[Path(model).stem] = report
            per_class = ", ".join(f"{n} {r['recognised']:.0f}" for n, r in report["per_class"].items())
            print(f"steps {steps:3d} guidance {guidance:.1f}: {report['recognised']:5.1f} % recognised by "
                  f"{Path(model).stem} ({per_class})", flush=True)
        results[setting] = row
    (Path(args.work) / "quality.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
