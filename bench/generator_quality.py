"""Sampling settings vs sample quality: N images per class for each (steps, guidance), the seconds per image,
how often each shipped classifier recognises them as their own class and, with --fd-data, our Fréchet
distance per class to the real test images in the ImageNet EfficientNet-Lite0's features (training/frechet.py).

    python bench/generator_quality.py [--generator model_zoo/cifar10_lt_generator] [--per-class 100]
        [--settings 7:7 10:7] [--models model_zoo/cifar10_lt_concutmix_efficientnet_lite0.onnx ...]
        [--fd-data data/cifar10.npz] [--work runs/generator_quality] [--bf16]

Samples are drawn in fp32 (the app's precision) unless --bf16. FDs compare only with FDs measured with the same
--per-class (FD grows as samples shrink); the real side is always the whole test set of each class.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from inference.generators import open_generator
from training.data.lt_data import load_cifar_arrays
from training.data.synthetic_set import read_synthetic_set
from training.frechet import FeatureNetwork, per_class_frechet
from training.synthesize import recognition_report, synthesize

# The best shipped classifier (the app's default) first, then the ResNet-32 ConCutMix model earlier figures used.
SHIPPED = ["model_zoo/cifar10_lt_concutmix_efficientnet_lite0.onnx", "model_zoo/cifar10_lt_concutmix_resnet32.onnx"]


def real_test_features(network: FeatureNetwork, npz: str, class_names: list[str]):
    _, _, images, labels, names = load_cifar_arrays("cifar10_lt", npz, download=False)
    if names != class_names:
        raise SystemExit(f"{npz} has the classes {names}, the generator {class_names}")
    return network.features(images), np.asarray(labels)


def synthetic_features(network: FeatureNetwork, synthetic) -> np.ndarray:
    images = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in synthetic.paths])
    return network.features(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", default="model_zoo/cifar10_lt_generator")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--settings", nargs="+", default=["7:7", "10:7"],
                        help="steps:guidance pairs (default: the shipped default, 7:7, and 10:7)")
    parser.add_argument("--models", nargs="+", default=SHIPPED)
    parser.add_argument("--fd-data", help="CIFAR-10 .npz whose test images are the real side of the FD")
    parser.add_argument("--work", default="runs/generator_quality")
    parser.add_argument("--bf16", action="store_true",
                        help="sample in bf16 autocast (synthesize's default where bf16 is native) instead of fp32")
    args = parser.parse_args()

    generator = open_generator(args.generator)
    generator.bf16 = args.bf16
    names = generator.class_names
    network = FeatureNetwork.lite0() if args.fd_data else None
    real = real_test_features(network, args.fd_data, names) if network else None
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
        if network is not None:
            distances = per_class_frechet(synthetic_features(network, synthetic), np.asarray(synthetic.labels),
                                          *real, len(names))
            row["frechet_distance"] = {"per_class": dict(zip(names, distances)), "mean": float(np.mean(distances))}
            per_class = ", ".join(f"{n} {d:.1f}" for n, d in zip(names, distances))
            print(f"steps {steps:3d} guidance {guidance:.1f}: our FD (Lite0 features, {args.per_class} samples "
                  f"vs the test set) mean {np.mean(distances):.1f} ({per_class})", flush=True)
        results[setting] = row
    (Path(args.work) / "quality.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
