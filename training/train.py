"""The training loop: data, model, optimiser, per-epoch validation, `last` / `best` checkpoints, resume.

    python -m training train --config configs/cifar10_lt/ce.yaml --output-dir runs/ce
    python -m training train --config configs/cifar10_lt/ce.yaml --output-dir runs/ce --resume
    torchrun --standalone --nproc_per_node=2 -m training train --config configs/cifar10_lt/ce.yaml --output-dir runs/ce

Under torchrun (training/distributed.py) the model is wrapped in DistributedDataParallel, data.batch_size stays
the global batch and every rank trains on its part of it (training/data/loading.py); rank 0 alone evaluates,
prints and writes files while the others wait, and the checkpoints hold the unwrapped model, so a run
resumes, evaluates and exports the same way whatever the number of processes that trained it.

Checkpoint selection ("best") uses the validation split only. The test set is evaluated at the end for
the last and the best-on-validation epoch; `run.eval_test_every` adds a per-epoch test curve, which is
labelled test-oracle because selecting on it is what the papers do, not what we recommend; when it ran for the last
epoch, the final evaluation reuses it (and the last epoch's validation) instead of running them again.

The training loader is built once (`TrainLoader`, persistent workers). Array datasets are augmented on the device
by default (`data.augment_on`, training/data/batch_augment.py) and evaluated there too. `run.compile` compiles
the (DDP-wrapped) training model and the evaluated classifier; checkpoints hold the plain module's weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from training.checkpoint import restore_model, restore_optimizer
from training.config import Config, ConfigError
from training.data.batch_augment import augments_on_device, eval_view, evaluates_on_device, single_view_set
from training.data.loading import TrainLoader, make_loader
from training.data.lt_data import build_datasets
from training.data.transforms import eval_transform
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
from training.engine import AmpStep, evaluate, train_one_epoch
from training.optim import build_optimizer
from training.registry import build_method, method_class
from training.run import describe_training, format_epoch_line, format_metrics_table, seed_epoch, start_run
from training.run_dir import RunDir


def train(config: Config, output_dir: str | Path, resume: bool = False) -> dict:
    """Trains, evaluates and writes the run; returns the final metrics (on rank 0; {} on the other ranks)."""
    method_cls = method_class(config.method)
    check_process_count(config, method_cls.fits_itself)
    if method_cls.fits_itself:  # a method that does not train end to end (DLSA) owns its loop, checkpoints and resume
        return method_cls.fit(config, output_dir, resume)
    run = RunDir(output_dir)
    run.prepare(resume)
    device = init_distributed(start_run(config.run))
    amp = AmpStep(config.run.amp, device)

    bundle = build_datasets(config.data)
    method = build_method(config, bundle.train_counts)
    model = _model_on(method.build_model(), device, config)
    optimizer = build_optimizer(model, config)
    card = describe_training(config, bundle, model).to_checkpoint_info()

    start_epoch, best, history = _restore_last(run, model, optimizer, amp) if resume else (0, None, [])
    wrapped = wrap_model(model, device)  # DistributedDataParallel under torchrun, else `model` itself
    if config.run.compile:  # after DDP, so that DDP's bucketing sees the compiled graph (DDPOptimizer)
        wrapped = torch.compile(wrapped)
    if is_main():
        run.save_config(config)
        run.write_history(history)

    train_set = method.train_dataset(bundle, model.preprocessing)
    if world_size() > 1 and len(train_set) < config.data.batch_size:
        raise ConfigError(f"{len(train_set)} training images are fewer than one global batch (data.batch_size "
                          f"{config.data.batch_size}); {world_size()} processes need at least one full batch")
    evaluation_loaders = {split: _evaluation_loader(dataset, bundle.kind, model.preprocessing, config, device)
                          for split, dataset in (("val", bundle.val), ("test", bundle.test)) if dataset is not None}
    classifier = method.classifier(model)
    if config.run.compile:
        classifier = torch.compile(classifier)
    log(_data_line(config, bundle, train_set))

    def evaluate_on(split: str, desc: str | None = None) -> dict:
        return evaluate(classifier, None, config, bundle.train_counts, device, desc or split,
                        loader=evaluation_loaders[split])

    train_loader = TrainLoader(train_set, config.data.batch_size, config.data.num_workers, device)
    last_results = {}  # the last epoch's full evaluations, which final_evaluation reuses
    for epoch in range(start_epoch, config.optim.epochs):
        epoch_seed = seed_epoch(config.run.seed, epoch)
        method.start_epoch(model, epoch, device)  # after the reseed, so a resumed run replays it exactly
        loader = train_loader.for_epoch(epoch_seed)
        record = {"epoch": epoch + 1, "train": train_one_epoch(wrapped, method, loader, optimizer, amp, config.optim,
                                                              epoch, device, config.run.channels_last,
                                                              config.run.progress)}
        if is_main():  # rank 0 evaluates, saves and logs the epoch while the others wait at the barrier
            last_results = {}
            if "val" in evaluation_loaders:
                last_results["val"] = evaluate_on("val")
                record["val"] = _brief(last_results["val"])
            if _tests_this_epoch(config, epoch):
                last_results["test"] = evaluate_on("test")
                record["test_oracle"] = _brief(last_results["test"])
            is_best = "val" in record and (best is None or record["val"]["overall"] > best["val_overall"])
            if is_best:
                best = {"epoch": epoch + 1, "val_overall": record["val"]["overall"]}
            history.append(record)
            info = dict(card, epoch=epoch + 1, best=best, history=history, amp_scaler=amp.state_dict())
            if is_best:  # before `last`: a crash in between replays this epoch on resume and saves it again
                run.save("best", model, info)
            run.save("last", model, info, optimizer)
            run.write_history(history)
            print(format_epoch_line(record, config.optim.epochs), flush=True)
        barrier()

    metrics = final_evaluation(config, run, model, evaluate_on, history, last_results) if is_main() else {}
    barrier()
    return metrics


def _restore_last(run: RunDir, model, optimizer, amp: AmpStep) -> tuple[int, dict | None, list[dict]]:
    """Resume: the `last` checkpoint's weights, optimizer and scaler state; (epochs done, best so far, history)."""
    tensors, info = run.load("last")
    restore_model(model, tensors, info)
    restore_optimizer(optimizer, tensors, info)
    amp.load_state_dict(info.get("amp_scaler", {}))
    log(f"resuming {run} after epoch {info['epoch']}")
    return info["epoch"], info.get("best"), info["history"]


def _evaluation_loader(dataset, kind: str, preprocessing, config: Config, device: torch.device):
    """One loader per evaluated split for the whole run: on the device path the images in eval_view, resized and
    normalised on the device (unless the resize needs an interpolation it lacks); otherwise eval_transform in
    persistent loader workers."""
    on_device = augments_on_device(config.data.augment_on, kind)
    if on_device and evaluates_on_device(preprocessing, dataset.images.shape[1:3]):
        dataset = single_view_set(dataset.images, dataset.labels, eval_view(preprocessing))
    else:
        dataset = dataset.with_transform(eval_transform(preprocessing))
    return make_loader(dataset, config.data.batch_size, config.data.num_workers, shuffle=False, device=device,
                       persistent=True)


def _data_line(config: Config, bundle, train_set) -> str:
    line = (f"{config.data.dataset}: {len(train_set)} train / {len(bundle.val) if bundle.val else 0} val / "
            f"{len(bundle.test)} test images, {bundle.num_classes} classes, counts {bundle.train_counts}")
    if world_size() > 1:
        line += f"; {world_size()} processes x {config.data.batch_size // world_size()} images per batch"
    return line


def _model_on(model: torch.nn.Module, device: torch.device, config: Config) -> torch.nn.Module:
    if world_size() > 1 and config.run.sync_batchnorm:
        model = convert_sync_batchnorm(model, device)
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if config.run.channels_last else model


def _tests_this_epoch(config: Config, epoch: int) -> bool:
    every = config.run.eval_test_every
    return bool(every) and ((epoch + 1) % every == 0 or epoch + 1 == config.optim.epochs)


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


def final_evaluation(config: Config, run: RunDir, model, evaluate_on, history: list[dict],
                     last_results: dict | None = None) -> dict:
    """Test accuracy of the last epoch and of the best-on-validation epoch, kept apart, into summary.json.

    `model` holds the last epoch's weights when called and the best epoch's afterwards. `last_results`: the full
    "val" / "test" evaluations the epoch loop already ran for the last epoch (same weights), reused. When the last
    epoch is the best one, its evaluations are the same and are not run twice."""
    last_results = dict(last_results or {})
    if "test" not in last_results:
        last_results["test"] = evaluate_on("test", "test (last)")
    last = {"epoch": history[-1]["epoch"], "test": last_results["test"]}
    metrics = {"last_epoch": last}
    if run.has("best"):
        tensors, best_info = run.load("best")
        if best_info["epoch"] == last["epoch"]:
            selected = {"val": last_results.get("val") or evaluate_on("val"), "test": last["test"]}
        else:
            restore_model(model, tensors, best_info)
            selected = {"val": evaluate_on("val"), "test": evaluate_on("test", "test (best)")}
        metrics["val_selected"] = {"epoch": best_info["epoch"], **selected}
    oracle = [record for record in history if "test_oracle" in record]
    if oracle:
        top = max(oracle, key=lambda record: record["test_oracle"]["overall"])
        metrics["test_oracle_best"] = {"epoch": top["epoch"], "test": top["test_oracle"],
                                       "note": "selected on the test set, as the papers do; not a fair estimate"}
    run.write_summary(metrics)
    print(format_metrics_table(metrics, config.groups.rule))
    return metrics


def _brief(result: dict) -> dict:
    return {"overall": result["overall"], "groups": result["groups"]}
