"""Top up every class of a long-tailed training set with generated images.

    python -m training synthesize --generator runs/gen/generator --config configs/cifar10_lt/ce.yaml \\
        --set data.root=data/cifar10.npz --output synthetic/cifar10_lt

Class c gets s_c = target − n_c images, target = the largest class count (SAU's n_max) or --per-class.
Images are written batch by batch and listed in images.jsonl after their files exist (training/
synthetic_set.py), so a killed run continues where it stopped when the same command is run again.
With --filter-model, an image is kept only if that classifier gives its class at least the threshold;
generation continues until the class is full, and the manifest records the model and the threshold.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from inference.generator_folder import is_generator_folder
from inference.generators import GeneratorError, open_generator
from models import get_preprocessing
from training.config import ConfigError, load_config
from training.data.lt_data import build_datasets
from training.data.synthetic_set import append_records, class_folder, start_synthetic_set, top_up_counts
from training.run import start_run

MAX_ATTEMPTS_PER_IMAGE = 20  # with a filter: give up on a class after this many tries per wanted image


class ConfidenceFilter:
    """Keeps an image when an exported classifier gives its intended class probability ≥ threshold."""

    def __init__(self, model_path: str, threshold: float, class_names: list[str]):
        if not 0 <= threshold <= 1:
            raise ConfigError(f"--filter-threshold must lie in [0, 1]; got {threshold}")
        self.classifier = classifier_for(model_path, class_names)
        self.threshold = threshold
        self.description = {"model": Path(model_path).name, "sha256": _sha256(model_path), "threshold": threshold,
                            "rule": "p(intended class) >= threshold"}

    def scores(self, images, class_index: int) -> list[float]:
        return [float(p) for p in self.classifier.probabilities(images)[:, class_index]]


def classifier_for(model_path: str, class_names: list[str]):
    """An exported classifier that predicts exactly `class_names`, in order, to judge synthetic images."""
    from inference.classifier import OnnxClassifier

    classifier = OnnxClassifier(model_path)
    if classifier.card.class_names != list(class_names):
        raise ConfigError(f"{model_path} predicts {classifier.card.class_names}, not this dataset's classes "
                          f"{list(class_names)}")
    return classifier


def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def synthesize(generator, class_names: list[str], wanted: list[int], output: str | Path, seed: int = 0,
               steps: int | None = None, guidance: float | None = None, batch_size: int = 64,
               image_filter: ConfidenceFilter | None = None, dataset: str = "", progress: bool = True) -> dict:
    """Generate until class c has `wanted[c]` kept images in `output`; returns the per-class summary."""
    steps = steps or generator.default_steps
    guidance = generator.default_guidance if guidance is None else guidance
    manifest = {"generator": generator.describe(), "dataset": dataset, "class_names": list(class_names),
                "target_counts": list(wanted), "seed": seed, "steps": steps, "guidance": guidance,
                "image_size": generator.image_size,
                "filter": image_filter.description if image_filter is not None else None}
    synthetic = start_synthetic_set(output, manifest)
    have = synthetic.counts()
    # How many were tried per class (kept or filtered out): the next image index, so seeds never repeat.
    tried = [0] * len(class_names)
    for record in synthetic.records:
        tried[record["class_index"]] = max(tried[record["class_index"]], record["index"] + 1)
    todo = sum(max(0, w - h) for w, h in zip(wanted, have))
    bar = tqdm(total=todo, disable=not progress, desc="synthesize", unit="img")
    started, generated = time.perf_counter(), 0
    for class_index, target in enumerate(wanted):
        folder = synthetic.root / class_folder(class_index, class_names[class_index])
        folder.mkdir(exist_ok=True)
        while have[class_index] < target:
            if tried[class_index] >= MAX_ATTEMPTS_PER_IMAGE * max(target, 1):
                raise GeneratorError(f"class '{class_names[class_index]}': only {have[class_index]} of {target} "
                                     f"images passed the filter after {tried[class_index]} tries; lower "
                                     "--filter-threshold or improve the generator")
            count = min(batch_size, target - have[class_index]) if image_filter is None else batch_size
            first = tried[class_index]
            images = generator.generate(class_index, count, seed=seed, steps=steps, guidance=guidance,
                                        first_index=first)
            generated += len(images)
            scores = image_filter.scores(images, class_index) if image_filter is not None else [None] * count
            records = []
            for offset, (image, score) in enumerate(zip(images, scores)):
                if score is not None and score < image_filter.threshold:
                    continue
                if have[class_index] + len(records) >= target:
                    break
                index = first + offset
                relative = f"{folder.name}/{index:06d}.png"
                image.save(synthetic.root / relative)
                record = {"file": relative, "class_index": class_index, "index": index, "seed": seed,
                          "prompt": generator.prompt(class_index, index)}
                if score is not None:
                    record["score"] = round(score, 4)
                records.append(record)
            append_records(synthetic, records)
            tried[class_index] = first + count
            have[class_index] += len(records)
            bar.update(len(records))
    bar.close()
    seconds = time.perf_counter() - started
    summary = {"output": str(synthetic.root), "counts": have, "generated_this_run": generated,
               "seconds": round(seconds, 1),
               "seconds_per_image": round(seconds / generated, 4) if generated else None}
    print(f"{sum(have)} synthetic images in {synthetic.root} (per class {have}); generated {generated} "
          f"this run in {seconds:.0f} s")
    return summary


def recognition_report(paths: list[Path], labels: np.ndarray, class_names: list[str], model_path: str,
                       batch_size: int = 256) -> dict:
    """How often an exported classifier recognises each class's synthetic images as that class, and its
    mean confidence in the intended class: a cheap proxy for whether the samples are useful tail data."""
    from inference.images import load_image

    classifier = classifier_for(model_path, class_names)
    probabilities = np.zeros((0, len(class_names)))
    if len(labels):
        probabilities = np.concatenate([classifier.probabilities([load_image(p) for p in paths[start:start + batch_size]])
                                        for start in range(0, len(labels), batch_size)])
    recognised = probabilities.argmax(axis=1) == labels
    own = probabilities[np.arange(len(labels)), labels]
    per_class = {}
    for c, name in enumerate(class_names):
        members = labels == c
        if members.any():
            per_class[name] = {"images": int(members.sum()), "recognised": round(100 * float(recognised[members].mean()), 2),
                               "mean_confidence": round(float(own[members].mean()), 4)}
    return {"model": Path(model_path).name, "images": len(labels),
            "recognised": round(100 * float(recognised.mean()), 2) if len(labels) else None, "per_class": per_class}


def print_recognition_report(report: dict) -> None:
    print(f"{report['images']} synthetic images, recognised as their own class by {report['model']}: "
          f"{report['recognised']}%")
    for name, row in report["per_class"].items():
        print(f"  {name:20s} {row['images']:6d} images  {row['recognised']:6.2f}% recognised  "
              f"mean p(own class) {row['mean_confidence']:.3f}")


def synthesize_from_args(args) -> dict:
    config = load_config(args.config, args.overrides)
    # --device auto follows the config's run.device; the other run.* settings apply as in every command
    device = str(start_run(config.run if args.device == "auto" else dataclasses.replace(config.run, device=args.device)))
    bundle = build_datasets(config.data)
    class_names, counts = bundle.class_names, bundle.train_counts
    image_size = get_preprocessing(config.model.name).input_size[-1]
    if args.per_class is not None and args.per_class < 1:
        raise ConfigError("--per-class must be at least 1")
    wanted = top_up_counts(counts, args.per_class)
    if args.classes:
        chosen = [name.strip() for name in args.classes.split(",") if name.strip()]
        unknown = [name for name in chosen if name not in class_names]
        if unknown:
            raise ConfigError(f"--classes: unknown classes {unknown}; the dataset has {class_names}")
        wanted = [w if name in chosen else 0 for name, w in zip(class_names, wanted)]
    generator = open_generator(args.generator, class_names, image_size, revision=args.revision, device=device,
                               **_text_to_image_options(args))
    if generator.image_size != image_size:
        raise GeneratorError(f"the generator makes {generator.image_size}px images, but {config.model.name} "
                             f"takes {image_size}px")
    image_filter = (ConfidenceFilter(args.filter_model, args.filter_threshold, class_names)
                    if args.filter_model else None)
    return synthesize(generator, class_names, wanted, args.output, seed=args.seed, steps=args.steps,
                      guidance=args.guidance, batch_size=args.batch_size, image_filter=image_filter,
                      dataset=config.data.dataset)


def _text_to_image_options(args) -> dict:
    if is_generator_folder(args.generator):
        return {}
    return {"prompt_template": args.prompt_template, "prompts_file": args.prompts_file,
            "generation_size": args.generation_size}


def check_synthetic_from_args(args) -> dict:
    import json

    from training.data.synthetic_set import read_synthetic_set

    synthetic = read_synthetic_set(args.synthetic)
    counts = synthetic.counts()
    if args.sample_per_class is not None:
        counts = [min(n, args.sample_per_class) for n in counts]
    paths, labels = synthetic.first_per_class(counts)
    report = recognition_report(paths, labels, synthetic.class_names, args.model)
    print_recognition_report(report)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1))
    return report
