"""`train_one_epoch`, `evaluate` and `predict` as plain functions, the learning-rate schedule and the one AMP step helper."""

from __future__ import annotations

import contextlib
import math
import time
import warnings

import numpy as np
import torch
from tqdm import tqdm

from inference.precision import has_native_bf16
from training.config import Config, OptimConfig, check_amp
from training.data.loading import make_loader
from training.distributed import all_reduce_sum, is_main
from training.groups import shot_accuracy


class AmpStep:
    """Autocast + backward + optimizer step in one place (fp16 gets a gradient scaler; bf16 and fp32 do not)."""

    def __init__(self, amp: str, device: torch.device):
        check_amp(amp, device.type)
        if amp == "bf16" and not has_native_bf16(device.type):
            # A warning, not a silent switch to fp32: the precision is part of the recipe a run is resumed with.
            warnings.warn(f"run.amp=bf16 on a CPU without bf16 support ({torch.backends.cpu.get_cpu_capability()}): "
                          "bf16 is emulated here and trains many times slower than fp32 (python bench/bench_amp.py "
                          "measures it). Add --set run.amp=none unless you are resuming a bf16 run.", stacklevel=2)
        self.device_type = device.type
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def scheduled_lr(base_lr: float, done: float, warmup: float, total: float, schedule: str = "cosine",
                 milestones=(), gamma: float = 0.1) -> float:
    """The LR once `done` units of training (epochs, possibly fractional, or steps) are complete, counting the
    current step: linear warm-up over `warmup` units, then step decay at `milestones` or cosine to 0 at `total`.
    The one schedule of the classifier and the generator trainers."""
    if done < warmup:
        return base_lr * done / warmup
    if schedule == "step":
        return base_lr * gamma ** sum(done >= milestone for milestone in milestones)
    progress = (done - warmup) / max(total - warmup, 1e-8)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def learning_rate(config: OptimConfig, epoch: float) -> float:
    """The classifier's LR at a fractional epoch."""
    return scheduled_lr(config.lr, epoch, config.warmup_epochs, config.epochs, config.schedule, config.milestones,
                        config.gamma)


def to_device(batch, device: torch.device, channels_last: bool):
    if torch.is_tensor(batch):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(item, device, channels_last) for item in batch)
    return batch


def train_one_epoch(model, method, loader, optimizer, amp: AmpStep, optim_config: OptimConfig, epoch: int,
                    device: torch.device, channels_last: bool = True, progress: bool = True) -> dict:
    """One pass over `loader`; `method.training_loss(model, batch, epoch)` defines what a step optimises.

    Under DDP `model` is the wrapped model and `loader` this rank's part of every global batch; the returned
    loss and images/s are those of the global batches (summed over ranks), the progress bar rank 0's."""
    model.train()
    total_loss, num_images, num_steps = 0.0, 0, len(loader)
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{optim_config.epochs}", disable=not (progress and is_main()),
               leave=False)
    for step, batch in enumerate(bar):
        lr = learning_rate(optim_config, epoch + (step + 1) / num_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = to_device(batch, device, channels_last)
        with amp.autocast():
            loss = method.training_loss(model, batch, epoch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                                     "lower optim.lr or check the data")
        amp.step(loss, optimizer)
        batch_size = method.batch_size(batch)
        total_loss += loss.item() * batch_size
        num_images += batch_size
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.4f}")
    total_loss, num_images = all_reduce_sum(torch.tensor([total_loss, num_images], dtype=torch.float64)).tolist()
    seconds = time.perf_counter() - start
    return {"loss": total_loss / max(num_images, 1), "lr": lr, "seconds": seconds,
            "images_per_second": num_images / max(seconds, 1e-9)}


def evaluate(classifier, dataset, config: Config, train_counts, device: torch.device, desc: str,
             loader=None) -> dict:
    """Accuracy overall, per class and per group (training.groups.shot_accuracy) of `classifier` on `dataset`
    (or on the batches of `loader`, one the caller keeps for the whole run)."""
    if loader is None:
        loader = make_loader(dataset, config.data.batch_size, config.data.num_workers, shuffle=False, device=device)
    predictions, labels = predict(classifier, loader, device, config.run.channels_last, config.run.progress, desc)
    return shot_accuracy(predictions, labels, train_counts, config.groups)


@torch.no_grad()
def predict(classifier, loader, device: torch.device, channels_last: bool = True,
            progress: bool = False, desc: str = "eval") -> tuple[np.ndarray, np.ndarray]:
    """(predicted labels, true labels) of `classifier` (images → logits) over `loader`.

    Always fp32, even when training uses autocast: reported accuracy is that of the exported model."""
    classifier.eval()
    predictions, labels = [], []
    for images, targets in tqdm(loader, desc=desc, disable=not progress, leave=False):
        logits = classifier(to_device(images, device, channels_last))
        predictions.append(logits.float().argmax(dim=1).cpu())
        labels.append(torch.as_tensor(targets))
    return torch.cat(predictions).numpy(), torch.cat(labels).numpy()
