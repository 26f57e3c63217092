"""Top up every class of a long-tailed training set with generated images.

    python -m training synthesize --generator runs/gen/generator --config configs/cifar10_lt/ce.yaml \\
        --set data.root=data/cifar10.npz --output synthetic/cifar10_lt

Class c gets s_c = target − n_c images, target = the largest class count (SAU's n_max) or --per-class.
Images are written batch by batch and listed in images.jsonl after their files exist (training/
synthetic_set.py), so a killed run continues where it stopped when the same command is run again.
With --filter-model, an image is kept only if that classifier gives its class at least the threshold;
generation continues until the class is full, and the manifest records the model and the threshold.

Several processes (GPUs or nodes; gloo on CPU) split the work:

    torchrun --standalone --nproc_per_node=4 -m training synthesize ...   (the same arguments)

The work is cut into chunks, one `generate` call each, at fixed multiples of --batch-size in every class's
image indices (each image has its own seed, inference/generators.py `image_seeds`, and always the same
batch). Each round every rank makes one chunk of a plan that all ranks compute alike from images.jsonl;
the filter scores are gathered, every rank applies the one-process rule (the passing images in index order
until the class is full) and saves its kept images, and rank 0 alone appends the round to images.jsonl
after a barrier. A crash of any rank loses at most the round in flight, the state is images.jsonl alone,
so a resume may use any number of processes, and the finished folder has the same files, byte for byte,
as one process writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from inference.generator_folder import is_generator_folder
from inference.generators import GeneratorError, open_generator
from models import get_preprocessing
from training.config import ConfigError, load_config
from training.data.lt_data import build_datasets
from training.data.synthetic_set import (
    append_records,
    check_same_settings,
    class_folder,
    read_synthetic_set,
    start_synthetic_set,
    top_up_counts,
    write_in_canonical_order,
)
from training.distributed import (
    all_gather_values,
    barrier,
    close_distributed,
    init_distributed,
    is_main,
    log,
    rank,
    world_size,
)
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


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One `generate` call: images first … first+count−1 of one class. Chunks start at multiples of the batch
    size whatever the process count or the point a run resumes from, so an image is always made in the same
    batch (another batch changes the last bits a UNet computes, and so a pixel here and there); indices below
    `resume_from` were decided by an earlier run and are made again only to keep that batch."""
    class_index: int
    first: int
    count: int
    resume_from: int = 0

    @property
    def candidates(self) -> range:
        return range(max(self.first, self.resume_from), self.first + self.count)


@dataclasses.dataclass
class ClassState:
    target: int
    have: int = 0
    next_index: int = 0  # the first candidate not decided yet (kept or filtered out)

    @property
    def missing(self) -> int:
        return max(0, self.target - self.have)


def states_from_records(records: list[dict], wanted: list[int]) -> list[ClassState]:
    """Each class's kept count and next candidate (after its highest kept index), from images.jsonl alone:
    the whole state of a run, so any number of processes continues it."""
    states = [ClassState(target) for target in wanted]
    for record in records:
        state = states[record["class_index"]]
        state.have += 1
        state.next_index = max(state.next_index, record["index"] + 1)
    return states


def class_chunks(state: ClassState, class_index: int, batch_size: int, filtered: bool) -> Iterator[Chunk]:
    """A class's remaining chunks in index order: without a filter exactly its missing images; with one,
    blocks of batch_size candidates until MAX_ATTEMPTS_PER_IMAGE per wanted image have been tried."""
    limit = MAX_ATTEMPTS_PER_IMAGE * max(state.target, 1)
    end = limit if filtered else state.next_index + state.missing
    first = state.next_index // batch_size * batch_size
    while first < end:
        yield Chunk(class_index, first, batch_size if filtered else min(first + batch_size, end) - first,
                    state.next_index)
        first += batch_size


def plan_round(states: list[ClassState], batch_size: int, filtered: bool, ranks: int,
               class_names: list[str]) -> list[Chunk]:
    """The next round, at most one chunk per rank (chunk r for rank r), computed alike on every rank from the
    kept images alone, never from timing. First the chunks each unfinished class needs if every image passed,
    class by class; ranks still idle then try further chunks of the unfinished classes in turn (with a filter).
    Images are kept in index order up to the target (keep_in_index_order), so the extra chunks change what is
    tried, never what is kept: the result does not depend on the number of processes."""
    plan, spare = [], []
    for class_index, state in enumerate(states):
        if state.missing == 0:
            continue
        chunks = class_chunks(state, class_index, batch_size, filtered)
        needed = _enough_if_all_pass(chunks, state.missing)
        if not needed:
            raise GeneratorError(f"class '{class_names[class_index]}': only {state.have} of {state.target} images "
                                 f"passed the filter after {state.next_index} tries; lower --filter-threshold or "
                                 "improve the generator")
        plan.extend(needed)
        if len(plan) >= ranks:
            return plan[:ranks]
        spare.append(chunks)
    while spare and len(plan) < ranks:
        for chunks in list(spare):
            chunk = next(chunks, None)
            if chunk is None:
                spare.remove(chunks)
            elif len(plan) < ranks:
                plan.append(chunk)
    return plan


def _enough_if_all_pass(chunks: Iterator[Chunk], missing: int) -> list[Chunk]:
    taken, candidates = [], 0
    while candidates < missing and (chunk := next(chunks, None)) is not None:
        taken.append(chunk)
        candidates += len(chunk.candidates)
    return taken


def keep_in_index_order(plan: list[Chunk], scores: list[list[float | None]], states: list[ClassState],
                        threshold: float | None) -> list[list[int]]:
    """Per chunk, the indices kept: the candidates that pass (score ≥ threshold; every one without a
    filter) in index order, until their class has its target; updates `states`. A class's chunks come in
    index order in a plan, so this is the one-process rule whatever the chunks' ranks."""
    kept = []
    for chunk, chunk_scores in zip(plan, scores):
        state = states[chunk.class_index]
        chosen = []
        for index, score in zip(chunk.candidates, chunk_scores):
            if state.have + len(chosen) >= state.target:
                break
            if threshold is None or score >= threshold:
                chosen.append(index)
        state.have += len(chosen)
        state.next_index = chunk.first + chunk.count
        kept.append(chosen)
    return kept


def synthesize(generator, class_names: list[str], wanted: list[int], output: str | Path, seed: int = 0,
               steps: int | None = None, guidance: float | None = None, batch_size: int = 64,
               image_filter: ConfidenceFilter | None = None, dataset: str = "", progress: bool = True) -> dict:
    """Generate until class c has `wanted[c]` kept images in `output`; returns the per-class summary.

    Under torchrun every rank runs this with its own device: each round gives each rank one chunk of a plan
    they all compute alike; rank 0 alone writes images.jsonl, after every rank has saved its kept images."""
    steps = steps or generator.default_steps
    guidance = generator.default_guidance if guidance is None else guidance
    manifest = {"generator": generator.describe(), "dataset": dataset, "class_names": list(class_names),
                "target_counts": list(wanted), "seed": seed, "steps": steps, "guidance": guidance,
                "image_size": generator.image_size,
                "filter": image_filter.description if image_filter is not None else None}
    synthetic = _open_on_every_rank(output, manifest, class_names)
    states = states_from_records(synthetic.records, wanted)
    threshold = image_filter.threshold if image_filter is not None else None
    bar = tqdm(total=sum(state.missing for state in states), disable=not (progress and is_main()),
               desc="synthesize", unit="img")
    started, generated = time.perf_counter(), 0
    while plan := plan_round(states, batch_size, image_filter is not None, world_size(), class_names):
        mine = plan[rank()] if rank() < len(plan) else None
        images, scores = _make_chunk(generator, mine, seed, steps, guidance, image_filter)
        every_score = _every_chunks_scores(plan, scores, image_filter is not None)
        kept = keep_in_index_order(plan, every_score, states, threshold)
        if mine is not None:
            _save_kept(synthetic.root, class_names, mine, images, kept[rank()])
        barrier()  # every rank's files exist before rank 0 lists them
        if is_main():
            records = _records(generator, class_names, plan, kept, every_score, seed)
            append_records(synthetic, records)
            bar.update(len(records))
        generated += sum(chunk.count for chunk in plan)
    bar.close()
    if is_main():
        write_in_canonical_order(synthetic)
    barrier()
    seconds = time.perf_counter() - started
    have = [state.have for state in states]
    summary = {"output": str(synthetic.root), "counts": have, "generated_this_run": generated,
               "seconds": round(seconds, 1),
               "seconds_per_image": round(seconds / generated, 4) if generated else None}
    log(f"{sum(have)} synthetic images in {synthetic.root} (per class {have}); generated {generated} "
        f"this run in {seconds:.0f} s" + (f" on {world_size()} processes" if world_size() > 1 else ""))
    return summary


def _open_on_every_rank(output: str | Path, manifest: dict, class_names: list[str]):
    """Every rank checks the folder's settings (so a mismatch is a clear error on each of them), rank 0 alone
    creates or reopens it, then every rank reads the same state."""
    check_same_settings(output, manifest)
    if is_main():
        synthetic = start_synthetic_set(output, manifest)
        for class_index, name in enumerate(class_names):
            (synthetic.root / class_folder(class_index, name)).mkdir(exist_ok=True)
    barrier()
    return read_synthetic_set(output)


def _make_chunk(generator, chunk: Chunk | None, seed: int, steps: int, guidance: float,
                image_filter: ConfidenceFilter | None) -> tuple[list, list[float]]:
    """The chunk's images, and the filter's score of each candidate (none without a filter or a chunk)."""
    if chunk is None:
        return [], []
    images = generator.generate(chunk.class_index, chunk.count, seed=seed, steps=steps, guidance=guidance,
                                first_index=chunk.first)
    if image_filter is None:
        return images, []
    scores = image_filter.scores(images, chunk.class_index)  # the whole batch, as the first run scored it
    return images, scores[chunk.candidates.start - chunk.first:]


def _every_chunks_scores(plan: list[Chunk], scores: list[float], filtered: bool) -> list[list[float | None]]:
    """Per chunk of the plan (rank r made chunk r), its candidates' scores; None for each without a filter."""
    if not filtered:
        return [[None] * len(chunk.candidates) for chunk in plan]
    return all_gather_values(scores)[:len(plan)]


def _save_kept(root: Path, class_names: list[str], chunk: Chunk, images: list, kept: list[int]) -> None:
    for index in kept:
        images[index - chunk.first].save(root / _image_file(class_names, chunk.class_index, index))


def _image_file(class_names: list[str], class_index: int, index: int) -> str:
    return f"{class_folder(class_index, class_names[class_index])}/{index:06d}.png"


def _records(generator, class_names: list[str], plan: list[Chunk], kept: list[list[int]],
             scores: list[list[float | None]], seed: int) -> list[dict]:
    """images.jsonl lines for a round's kept images, in (class, index) order."""
    records = []
    for chunk, chosen, chunk_scores in zip(plan, kept, scores):
        score_of = dict(zip(chunk.candidates, chunk_scores))
        for index in chosen:
            record = {"file": _image_file(class_names, chunk.class_index, index), "class_index": chunk.class_index,
                      "index": index, "seed": seed, "prompt": generator.prompt(chunk.class_index, index)}
            if score_of[index] is not None:
                record["score"] = round(score_of[index], 4)
            records.append(record)
    return sorted(records, key=lambda record: (record["class_index"], record["index"]))


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
    # --device auto follows the config's run.device; the other run.* settings apply as in every command.
    # Under torchrun each process joins the group and takes its own GPU (cuda:LOCAL_RANK).
    run = config.run if args.device == "auto" else dataclasses.replace(config.run, device=args.device)
    device = init_distributed(start_run(run))
    try:
        return _synthesize_on(config, args, str(device))
    finally:
        close_distributed()


def synthetic_image_size(config, bundle) -> int:
    """The side of the images to make: an in-memory dataset's own (CIFAR: 32, even for a backbone that trains on
    them upsampled to 128 px, as its augmentation upsamples the synthetic images with the real ones); for image
    files the model's input size."""
    if bundle.kind == "array":
        return int(bundle.train.images.shape[1])
    return config.model.input_size or get_preprocessing(config.model.name).input_size[-1]


def _synthesize_on(config, args, device: str) -> dict:
    bundle = build_datasets(config.data)
    class_names, counts = bundle.class_names, bundle.train_counts
    image_size = synthetic_image_size(config, bundle)
    if args.per_class is not None and args.per_class < 1:
        raise ConfigError("--per-class must be at least 1")
    wanted = top_up_counts(counts, args.per_class)
    if args.classes:
        chosen = [name.strip() for name in args.classes.split(",") if name.strip()]
        unknown = [name for name in chosen if name not in class_names]
        if unknown:
            raise ConfigError(f"--classes: unknown classes {unknown}; the dataset has {class_names}")
        wanted = [w if name in chosen else 0 for name, w in zip(class_names, wanted)]
    if args.precision != "auto" and not is_generator_folder(args.generator):  # refused before loading a Hub model
        raise ConfigError(f"--precision applies to our class-conditional generators, not to {args.generator}")
    generator = open_generator(args.generator, class_names, image_size, revision=args.revision, device=device,
                               **_text_to_image_options(args))
    if args.precision != "auto":
        generator.bf16 = args.precision == "bf16"
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
