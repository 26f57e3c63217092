"""The training loop: data, model, optimiser, per-epoch validation, `last` / `best` checkpoints, resume.

    python -m training train --config configs/cifar10_lt/ce.yaml --output-dir runs/ce
    python -m training train --config configs/cifar10_lt/ce.yaml --output-dir runs/ce --resume
    torchrun --standalone --nproc_per_node=2 -m training train --config configs/cifar10_lt/ce.yaml --output-dir runs/ce

Under torchrun (training/distributed.py) the model is wrapped in DistributedDataParallel, data.batch_size stays
the global batch and every rank trains on its part of it (training/loading.py); rank 0 alone evaluates,
prints and writes files while the others wait, and the checkpoints hold the unwrapped model, so a run
resumes, evaluates and exports the same way whatever the number of processes that trained it.

Checkpoint selection ("best") uses the validation split only. The test set is evaluated at the end for
the last and the best-on-validation epoch; `run.eval_test_every` adds a per-epoch test curve, which is
labelled test-oracle because selecting on it is what the papers do, not what we recommend.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path

import numpy as np
import torch
import yaml

from inference.card import GROUPS, evaluation_columns, group_accuracy
from training.checkpoint import (
    CheckpointError,
    atomic_write_text,
    git_revision,
    load_checkpoint,
    restore_model,
    restore_optimizer,
    save_checkpoint,
)
from training.config import Config, ConfigError, apply_overrides, config_from_dict, read_config_tree, save_config
from training.distributed import (
    barrier,
    convert_sync_batchnorm,
    init_distributed,
    is_main,
    launched_world_size,
    log,
    world_size,
    wrap_model,
)
from training.engine import AmpStep, predict, train_one_epoch
from training.groups import class_groups, rule_description, shot_accuracy
from training.loading import make_loader
from training.lt_data import build_datasets
from training.methods import build_method, method_class
from training.transforms import eval_transform


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device=cuda but no CUDA device is available")
    return torch.device(name)


def seed_epoch(seed: int, epoch: int) -> int:
    """Reseed every RNG at each epoch start, so a resumed run replays exactly what it would have done."""
    epoch_seed = seed * 100_003 + epoch
    random.seed(epoch_seed)
    np.random.seed(epoch_seed % 2**32)
    torch.manual_seed(epoch_seed)
    return epoch_seed


def evaluate_split(classifier, dataset, config: Config, train_counts, device, desc: str) -> dict:
    loader = make_loader(dataset, config.data.batch_size, config.data.num_workers, shuffle=False)
    predictions, labels = predict(classifier, loader, device, config.run.channels_last,
                                  config.run.progress, desc)
    return shot_accuracy(predictions, labels, train_counts, config.groups)


def model_card_info(config: Config, bundle, model) -> dict:
    """What every checkpoint (and later the ONNX metadata) says about the data the model learnt from."""
    counts = bundle.train_counts
    return {
        "class_names": bundle.class_names,
        "class_counts": counts,
        "class_groups": class_groups(counts, config.groups),
        "group_rule": rule_description(config.groups),
        "preprocessing": dataclasses.asdict(model.preprocessing),
        "model_name": config.model.name,
        "method": config.method if config.method != "erm" else config.loss.name,
        "dataset": config.data.dataset,
        "imbalance_factor": config.data.imbalance_factor,
        "config": config.to_dict(),
        "git_revision": git_revision(),
    }


# Settings that may change when a run resumes (on another machine, say); all others must stay as saved.
RESUMABLE_OVERRIDES = ("data.root", "data.num_workers", "run.threads", "run.progress", "run.device")


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "method_options":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resume_config(output_dir: str | Path, config_path: str | None = None, overrides=(), build=config_from_dict,
                  saved_tree: dict | None = None):
    """The saved config of a run. Re-running the original command with --resume is fine; anything that
    would change the run other than RESUMABLE_OVERRIDES (paths, workers, threads, device) is an error.

    `build` turns a tree into a checked config (the generator trainer passes its own); `saved_tree`
    defaults to the config saved by a classifier run."""
    saved = build(saved_tree if saved_tree is not None else _saved_config_tree(output_dir)).to_dict()
    given = build(read_config_tree(config_path, overrides) if config_path else apply_overrides(saved, overrides))
    check_unchanged(given, saved, output_dir)
    given_flat = _flatten(given.to_dict())
    allowed = [f"{key}={json.dumps(given_flat[key])}" for key in RESUMABLE_OVERRIDES if key in given_flat]
    return build(apply_overrides(saved, allowed))


def check_unchanged(given: Config, saved: dict, output_dir: str | Path) -> None:
    """A resumed run may change only RESUMABLE_OVERRIDES relative to the config tree it saved."""
    given_flat, saved_flat = _flatten(given.to_dict()), _flatten(saved)
    differing = sorted(k for k in given_flat if given_flat[k] != saved_flat.get(k) and k not in RESUMABLE_OVERRIDES)
    if differing:
        raise ConfigError(f"--resume continues the run saved in {output_dir}, but the given config differs from it in "
                          f"{', '.join(differing)}; only {', '.join(RESUMABLE_OVERRIDES)} may change")


def _saved_config_tree(output_dir: str | Path) -> dict:
    """The config of a run: from `last`, or, for a method with its own `fit` that saves progress in other
    files (DLSA, stage by stage), from the config.yaml it wrote when it started."""
    written = Path(output_dir) / "config.yaml"
    if not (Path(output_dir) / "last.json").exists() and written.is_file():
        tree = yaml.safe_load(written.read_text())
        if hasattr(method_class(config_from_dict(tree)), "fit"):
            return tree
    return load_checkpoint(output_dir, "last")[1]["config"]


def check_output_dir(output_dir: Path, resume: bool, marker: str = "last.json") -> None:
    """A new run never overwrites one (`marker` is the file a started run leaves); --resume needs one."""
    if (output_dir / marker).exists() and not resume:
        raise CheckpointError(f"{output_dir} already holds a run; pass --resume to continue it, "
                              "or choose another --output-dir (nothing was overwritten)")
    if resume and not (output_dir / marker).exists():
        raise CheckpointError(f"--resume: no {marker} in {output_dir}")


def train(config: Config, output_dir: str | Path, resume: bool = False) -> dict:
    """Trains, evaluates and writes the run; returns the final metrics (on rank 0; {} on the other ranks)."""
    fit = getattr(method_class(config), "fit", None)  # a bad method option fails now, before any data is read
    check_process_count(config, fit is not None)
    if fit is not None:  # a method that does not train end to end (DLSA) owns its loop, checkpoints and resume
        return fit(config, output_dir, resume)
    output_dir = Path(output_dir)
    check_output_dir(output_dir, resume)
    output_dir.mkdir(parents=True, exist_ok=True)

    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    if config.run.deterministic:
        torch.use_deterministic_algorithms(True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    device = init_distributed(resolve_device(config.run.device))
    seed_epoch(config.run.seed, -1)

    bundle = build_datasets(config.data)
    train_counts = bundle.train_counts
    method = build_method(config, train_counts)
    model = method.build_model()
    if world_size() > 1 and config.run.sync_batchnorm:
        model = convert_sync_batchnorm(model, device)
    model = model.to(device)
    if config.run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    preprocessing = model.preprocessing
    optimizer = torch.optim.SGD(model.parameters(), lr=config.optim.lr, momentum=config.optim.momentum,
                                weight_decay=config.optim.weight_decay, nesterov=config.optim.nesterov)
    amp = AmpStep(config.run.amp, device)
    card = model_card_info(config, bundle, model)

    start_epoch, best, history = 0, None, []
    if resume:
        tensors, info = load_checkpoint(output_dir, "last")
        restore_model(model, tensors, info)
        restore_optimizer(optimizer, tensors, info)
        amp.load_state_dict(info.get("amp_scaler", {}))
        start_epoch, best, history = info["epoch"], info.get("best"), info["history"]
        log(f"resuming {output_dir} after epoch {start_epoch}")
    wrapped = wrap_model(model, device)  # DistributedDataParallel under torchrun, else `model` itself
    if is_main():
        save_config(config, output_dir / "config.yaml")
        _write_history(output_dir, history)

    train_set = method.train_dataset(bundle, preprocessing)
    if world_size() > 1 and len(train_set) < config.data.batch_size:
        raise ConfigError(f"{len(train_set)} training images are fewer than one global batch (data.batch_size "
                          f"{config.data.batch_size}); {world_size()} processes need at least one full batch")
    evaluation_sets = {"val": bundle.val, "test": bundle.test}
    evaluation_sets = {k: v.with_transform(eval_transform(preprocessing))
                       for k, v in evaluation_sets.items() if v is not None}
    classifier = method.classifier(model)
    log(f"{config.data.dataset}: {len(train_set)} train / {len(bundle.val) if bundle.val else 0} val / "
        f"{len(bundle.test)} test images, {bundle.num_classes} classes, counts {train_counts}"
        + (f"; {world_size()} processes x {config.data.batch_size // world_size()} images per batch"
           if world_size() > 1 else ""))

    for epoch in range(start_epoch, config.optim.epochs):
        epoch_seed = seed_epoch(config.run.seed, epoch)
        method.start_epoch(model, epoch, device)  # after the reseed, so a resumed run replays it exactly
        loader = make_loader(train_set, config.data.batch_size, config.data.num_workers, shuffle=True,
                             seed=epoch_seed, drop_last=True, shard=True)
        record = {"epoch": epoch + 1, "train": train_one_epoch(wrapped, method, loader, optimizer, amp, config.optim,
                                                              epoch, device, config.run.channels_last,
                                                              config.run.progress)}
        if is_main():  # rank 0 evaluates, saves and logs the epoch while the others wait at the barrier
            if "val" in evaluation_sets:
                record["val"] = _brief(evaluate_split(classifier, evaluation_sets["val"], config, train_counts, device,
                                                      "val"))
            every = config.run.eval_test_every
            if every and ((epoch + 1) % every == 0 or epoch + 1 == config.optim.epochs):
                record["test_oracle"] = _brief(evaluate_split(classifier, evaluation_sets["test"], config,
                                                              train_counts, device, "test"))
            is_best = "val" in record and (best is None or record["val"]["overall"] > best["val_overall"])
            if is_best:
                best = {"epoch": epoch + 1, "val_overall": record["val"]["overall"]}
            history.append(record)
            info = dict(card, epoch=epoch + 1, best=best, history=history, amp_scaler=amp.state_dict())
            if is_best:  # before `last`: a crash in between replays this epoch on resume and saves it again
                save_checkpoint(output_dir / "best", model, info)
            save_checkpoint(output_dir / "last", model, info, optimizer)
            _write_history(output_dir, history)
            print(_epoch_line(record, config.optim.epochs), flush=True)
        barrier()

    metrics = {}
    if is_main():
        metrics = final_evaluation(config, output_dir, model, classifier, evaluation_sets, train_counts, device,
                                   history)
    barrier()
    return metrics


def check_process_count(config: Config, own_loop: bool) -> None:
    """Under torchrun: the global batch must split evenly, and a method with its own loop runs in one process."""
    processes = launched_world_size()
    if processes == 1:
        return
    if own_loop:
        raise ConfigError(f"method '{config.method}' trains on frozen features in its own loop and runs in one "
                          f"process; start it with `python -m training train`, not torchrun ({processes} processes)")
    if config.data.batch_size % processes:
        raise ConfigError(f"data.batch_size {config.data.batch_size} is the global batch and must divide evenly "
                          f"among the {processes} processes (each trains on data.batch_size / {processes} images)")


def final_evaluation(config, output_dir, model, classifier, evaluation_sets, train_counts, device, history) -> dict:
    """Test accuracy of the last epoch and of the best-on-validation epoch, kept apart, into summary.json.

    `model` holds the last epoch's weights when called and the best epoch's afterwards."""
    metrics = {"last_epoch": {"epoch": history[-1]["epoch"],
                              "test": evaluate_split(classifier, evaluation_sets["test"], config, train_counts,
                                                     device, "test (last)")}}
    if (output_dir / "best.json").exists():
        tensors, best_info = load_checkpoint(output_dir, "best")
        restore_model(model, tensors, best_info)
        metrics["val_selected"] = {
            "epoch": best_info["epoch"],
            "val": evaluate_split(classifier, evaluation_sets["val"], config, train_counts, device, "val"),
            "test": evaluate_split(classifier, evaluation_sets["test"], config, train_counts, device,
                                   "test (best)"),
        }
    oracle = [r for r in history if "test_oracle" in r]
    if oracle:
        top = max(oracle, key=lambda r: r["test_oracle"]["overall"])
        metrics["test_oracle_best"] = {"epoch": top["epoch"], "test": top["test_oracle"],
                                       "note": "selected on the test set, as the papers do; not a fair estimate"}
    for name in ("last", "best"):
        if (output_dir / f"{name}.json").exists():
            _attach_metrics(output_dir / f"{name}.json", metrics)
    (output_dir / "summary.json").write_text(json.dumps(metrics, indent=1))
    print(format_metrics_table(metrics, config.groups.rule))
    return metrics


def _attach_metrics(json_path: Path, metrics: dict) -> None:
    """The metrics travel with the checkpoint (and from there into the ONNX model card)."""
    info = json.loads(json_path.read_text())
    info["metrics"] = metrics
    atomic_write_text(json_path, json.dumps(info, indent=1))


def _brief(result: dict) -> dict:
    return {"overall": result["overall"], "groups": result["groups"]}


def _write_history(output_dir: Path, history: list[dict]) -> None:
    atomic_write_text(output_dir / "metrics.jsonl", "".join(json.dumps(record) + "\n" for record in history))


def _epoch_line(record: dict, epochs: int) -> str:
    train = record["train"]
    line = (f"epoch {record['epoch']}/{epochs}  loss {train['loss']:.4f}  lr {train['lr']:.4f}  "
            f"{train['images_per_second']:.0f} img/s")
    if "val" in record:
        line += f"  val {record['val']['overall']:.2f}"
    if "test_oracle" in record:
        line += f"  test {record['test_oracle']['overall']:.2f}"
    return line


def _percent(value) -> str:
    return "   -  " if value is None else f"{value:6.2f}"


def format_metrics_table(metrics: dict, rule: str) -> str:
    names = ("many", "medium", "few") if rule == "count" else ("head", "medium", "tail")
    lines = [f"{'':32s}{'overall':>8s}" + "".join(f"{n:>8s}" for n in names) + f"   (groups: {rule} rule)"]
    for label, epoch, evaluation in evaluation_columns(metrics, splits=("test",)):
        lines.append(f"{label + ' (epoch ' + str(epoch) + ')':32s}{_percent(evaluation['overall']):>8s}"
                     + "".join(f"{_percent(group_accuracy(evaluation, rule, g)):>8s}" for g in GROUPS))
    return "\n".join(lines)
