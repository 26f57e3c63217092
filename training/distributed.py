"""Several processes, one run (DistributedDataParallel): the process group, this process's rank, the global
batch cut into per-rank parts, BatchNorm over the global batch, and gathers for losses over the whole batch.

    # CPU, 2 processes (gloo)
    torchrun --standalone --nproc_per_node=2 -m training train --config configs/cifar10_lt/ce.yaml --output-dir runs/ce
    # 4 GPUs on one machine (NCCL, one GPU per LOCAL_RANK)
    torchrun --standalone --nproc_per_node=4 -m training train --config configs/cifar10_lt/ce.yaml --output-dir runs/ce

The process group is started from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).
Without it nothing is started and every helper here is the single-process identity (rank 0 of 1), so
`python -m training train` runs as one plain process.

What several processes compute (training/train.py, training/data/loading.py, the methods): data.batch_size is the
global batch, cut into equal contiguous parts, one per rank; BatchNorm statistics are those of the global
batch (run.sync_batchnorm); DDP averages the gradients; the contrastive losses of ConCutMix (BCL) and SAU
(SupCon with its label check) run over the gathered global batch, ConCutMix pairs foregrounds over it and
SAU's prototypes sum every rank's share. So a step is the one-process step on the same images, up to the
order in which floating-point sums are added: 1 and 2 processes agree to the last digits of the losses and
about 1 % of the weight update on tests/test_distributed.py's tiny runs, as two single-process runs that
differ only in run.channels_last do (a ResNet turns such rounding differences into whole gradient terms
whenever a ReLU input lands on the other side of 0, so longer runs drift apart like any two such runs).
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as collectives  # differentiable collectives (torch's advice)
from torch import nn
from torch.nn.parallel import DistributedDataParallel

COLLECTIVE_TIMEOUT = timedelta(hours=1)


def launched_world_size() -> int:
    """The number of processes torchrun started (1 without torchrun), before any process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1")) if "RANK" in os.environ else 1


def init_distributed(device: torch.device) -> torch.device:
    """Joins torchrun's process group (once per process; NCCL on CUDA, gloo on CPU) and returns this process's
    device: cuda:LOCAL_RANK on GPUs. Without torchrun: `device`, and no process group."""
    if "RANK" not in os.environ:
        return device
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices: start at "
                               "most one process per GPU (torchrun --nproc_per_node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # The other ranks wait at a barrier while rank 0 evaluates and saves: give that an hour, not 10 minutes.
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device, timeout=COLLECTIVE_TIMEOUT)
        else:
            dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
    return device


def close_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0: the one process that prints, evaluates and writes files."""
    return rank() == 0


def log(*args, **kwargs) -> None:
    """print on rank 0 only."""
    if is_main():
        print(*args, **kwargs, flush=True)


def barrier() -> None:
    """Every rank waits here until all have arrived (while rank 0 evaluates and saves, say)."""
    if world_size() > 1:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def shard(items):
    """This rank's contiguous part of `items` (a global batch, say): world_size parts in rank order whose
    sizes differ by at most one (the first len % world_size parts are one longer)."""
    size, longer = divmod(len(items), world_size())
    start = rank() * size + min(rank(), longer)
    return items[start:start + size + (rank() < longer)]


def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` (equal shapes) concatenated along dim 0 in rank order: with per-rank parts of a
    global batch, the global batch. Differentiable when `tensor` requires grad: the gradient of each part
    flows back to the rank that computed it, summed over the ranks that used it."""
    if world_size() == 1:
        return tensor
    sent = tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor.contiguous()
    return collectives.wait_tensor(collectives.all_gather_single(sent, 0, dist.group.WORLD)).to(tensor.dtype)


def all_gather_values(values: list[float]) -> list[list[float]]:
    """Every rank's list of numbers (any lengths, exact as float64), in rank order; no gradient. A tensor
    of numbers rather than all_gather_object, which would unpickle what the other ranks send."""
    if world_size() == 1:
        return [list(values)]
    device = _collective_device()
    lengths = all_gather(torch.tensor([len(values)], device=device)).tolist()
    if max(lengths) == 0:
        return [[] for _ in lengths]
    padded = torch.zeros(max(lengths), dtype=torch.float64, device=device)
    padded[:len(values)] = torch.tensor(values, dtype=torch.float64)
    gathered = all_gather(padded).view(len(lengths), -1).tolist()
    return [row[:length] for row, length in zip(gathered, lengths)]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of `tensor` over ranks (a new tensor on its device, no gradient)."""
    if world_size() == 1:
        return tensor
    total = tensor.detach().to(_collective_device(), copy=True)
    dist.all_reduce(total)
    return total.to(tensor.device)


def _collective_device() -> torch.device:
    """Where the backend's tensors live: this rank's GPU for NCCL, the CPU for gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel when there are several ranks (gradients averaged over them), else
    itself. Keep the unwrapped model for checkpoints, evaluation and export: its keys have no `module.`."""
    if world_size() == 1:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch on CPU (gloo), where torch's SyncBatchNorm (and DDP with it) refuses
    to run: per channel, the count, sum and sum of squares of this rank's part, summed over the ranks by one
    differentiable all_reduce (in float64, so that E[x²] − E[x]² loses nothing), give the global batch's
    mean and biased variance; the running statistics are updated as BatchNorm does. Eval mode and a single
    process are plain BatchNorm."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(input)
        self._check_input_dim(input)
        dims, channels = [0, *range(2, input.dim())], input.shape[1]
        shape = [1, -1] + [1] * (input.dim() - 2)
        x = input.double()
        local = torch.cat([x.sum(dims), (x * x).sum(dims), x.new_tensor([x.numel() // channels])])
        totals = collectives.wait_tensor(collectives.all_reduce(local, "sum", dist.group.WORLD))
        count = totals[-1]
        mean = totals[:channels] / count
        variance = (totals[channels:2 * channels] / count - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.to(self.running_mean), factor)
                unbiased = variance * count / (count - 1).clamp_min(1)
                self.running_var.lerp_(unbiased.to(self.running_var), factor)
        output = (x - mean.view(shape)) * torch.rsqrt(variance + self.eps).view(shape)
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)
        return output.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm in `module` replaced by one over the global batch (torch's SyncBatchNorm on GPUs,
    CpuSyncBatchNorm on CPU) holding the same parameters and buffers, so the state_dict keys (and the
    checkpoints) are unchanged and an optimizer built before still applies.

    A BatchNorm that applies layers of its own after normalising (timm's BatchNormAct2d: `drop`, then `act`) keeps
    them, under the same names. A sub-module with `sync_batchnorm = False` keeps its BatchNorm: one whose input is
    the same on every rank (ConCutMix's centre head, on the classifier weights) has the global statistics already."""
    if getattr(module, "sync_batchnorm", True) is False:
        return module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, (nn.SyncBatchNorm,
                                                                                       CpuSyncBatchNorm)):
        synced = _synced_class(module, device)(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        for name, layer in module.named_children():
            synced.add_module(name, layer)
        if module.affine:
            synced.weight, synced.bias = module.weight, module.bias
        if module.track_running_stats:
            synced.running_mean, synced.running_var = module.running_mean, module.running_var
            synced.num_batches_tracked = module.num_batches_tracked
        return synced.train(module.training)
    for name, child in module.named_children():
        setattr(module, name, convert_sync_batchnorm(child, device))
    return module


TRAILING_LAYERS = ("drop", "act")  # what timm's BatchNormAct2d applies after normalising, in this order


def _synced_class(batchnorm: nn.Module, device: torch.device) -> type:
    synced = CpuSyncBatchNorm if device.type == "cpu" else nn.SyncBatchNorm
    names = [name for name, _ in batchnorm.named_children()]
    if not names:
        return synced
    if names != list(TRAILING_LAYERS):
        raise ValueError(f"{type(batchnorm).__name__} holds layers {names}; convert_sync_batchnorm knows only a "
                         f"BatchNorm followed by {' then '.join(TRAILING_LAYERS)} (timm's BatchNormAct2d)")
    return _SYNCED_THEN_TRAILING[synced]


class CpuSyncBatchNormAct(CpuSyncBatchNorm):
    """CpuSyncBatchNorm, then the replaced BatchNormAct2d's `drop` and `act`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(input)))


class SyncBatchNormAct(nn.SyncBatchNorm):
    """torch's SyncBatchNorm, then the replaced BatchNormAct2d's `drop` and `act`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(input)))


_SYNCED_THEN_TRAILING = {CpuSyncBatchNorm: CpuSyncBatchNormAct, nn.SyncBatchNorm: SyncBatchNormAct}
