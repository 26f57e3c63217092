"""Which images a step sees, and with which randomness, in one place.

Every epoch the training set is shuffled from the epoch's seed and cut into global batches of
`data.batch_size`: the same batches whatever the number of processes. With several processes (torchrun)
each global batch is cut into equal contiguous parts, one per rank (`distributed.shard`), so the ranks
together see exactly the batch one process would see.

Every image is loaded with torch's generator seeded from (loader seed, image index) and restored afterwards
(`SeededItems`): its augmentation, ConCutMix's foreground draw and SAU's partner view depend on the epoch and
the image only, not on the order, the DataLoader worker or the process that loads it, and loading leaves the
global generator, which the training step draws from (CutMix boxes, MixUp weights), untouched.

A set augmented on the device (training/data/batch_augment.py `OnDeviceViews`) is loaded in the main process, its
items being a few integers, and each batch is augmented on the device as it is yielded (`AugmentedBatches`).
`TrainLoader` keeps one loader, and so its worker processes, for the whole run.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from training.data.batch_augment import OnDeviceViews
from training.distributed import shard as rank_part


def item_seed(seed: int, index: int) -> int:
    """A 32-bit seed for one image of one epoch: (seed, index) hashed with SplitMix64's finaliser. Hashed, not
    packed into one number, because torch's CPU generator keeps only the low 32 bits of a seed."""
    mask = 2**64 - 1
    x = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & mask
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    return (x ^ (x >> 31)) & 0xFFFFFFFF


class SeededItems(Dataset):
    """`dataset[index]` under torch's generator seeded with item_seed(seed, index), the generator restored
    afterwards. Items are addressed as (index, seed) pairs, which `GlobalBatchSampler` yields."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed(item_seed(seed, index))
        try:
            return self.dataset[index]
        finally:
            generator.set_state(state)


class GlobalBatchSampler(Sampler):
    """Global batches of `batch_size` over `size` items (a permutation drawn from `seed` when `shuffle`, else in
    order; the last, partial batch dropped when `drop_last` and there is more than one batch). With `shard`,
    this rank's part of each global batch. Yields lists of (index, seed)."""

    def __init__(self, size: int, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False,
                 shard: bool = False):
        self.size, self.batch_size, self.shuffle, self.seed, self.shard = size, batch_size, shuffle, seed, shard
        self.drop_last = drop_last and size > batch_size

    def global_batches(self) -> list[list[int]]:
        order = (torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed)).tolist()
                 if self.shuffle else list(range(self.size)))
        end = self.size - self.size % self.batch_size if self.drop_last else self.size
        return [order[start:start + self.batch_size] for start in range(0, end, self.batch_size)]

    def _part(self, batch):
        return rank_part(batch) if self.shard else batch

    def __iter__(self):
        for batch in self.global_batches():
            if part := self._part(batch):
                yield [(index, self.seed) for index in part]

    def __len__(self):
        full, rest = divmod(self.size, self.batch_size)
        sizes = [self.batch_size] * full + ([rest] if rest and not self.drop_last else [])
        return sum(1 for size in sizes if len(self._part(range(size))))


class AugmentedBatches:
    """A loader of `OnDeviceViews` whose batches come out augmented on `device`."""

    def __init__(self, loader: DataLoader, dataset: OnDeviceViews, device: torch.device):
        self.loader, self.augment = loader, dataset.augment.to(device)
        self.batch_sampler = loader.batch_sampler

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield self.augment(batch)


def make_loader(dataset, batch_size: int, num_workers: int, shuffle: bool, seed: int = 0, drop_last: bool = False,
                shard: bool = False, device: torch.device | str = "cpu", persistent: bool = False):
    """A DataLoader over `dataset` in global batches of `batch_size` (with `shard`, this rank's part of each).
    `persistent` keeps its worker processes between passes (`TrainLoader`)."""
    sampler = GlobalBatchSampler(len(dataset), batch_size, shuffle, seed, drop_last, shard)
    on_device = isinstance(dataset, OnDeviceViews)
    workers = 0 if on_device else num_workers
    # Its own generator for the worker base seed, so that creating a loader never draws from the global one.
    loader = DataLoader(SeededItems(dataset), batch_sampler=sampler, num_workers=workers, generator=torch.Generator(),
                        persistent_workers=persistent and workers > 0,
                        pin_memory=torch.cuda.is_available() and not on_device)
    return AugmentedBatches(loader, dataset, torch.device(device)) if on_device else loader


class TrainLoader:
    """The training loader of a run, shuffled afresh every epoch (`for_epoch(seed)`). Built once, with persistent
    workers, unless the dataset changes between epochs in the main process (`changes_every_epoch`, SAU's
    partners on the loader path), which workers holding a copy of it would not see."""

    def __init__(self, dataset, batch_size: int, num_workers: int, device: torch.device | str = "cpu"):
        self.arguments = dict(dataset=dataset, batch_size=batch_size, num_workers=num_workers, shuffle=True,
                              drop_last=True, shard=True, device=device)
        self.rebuild = getattr(dataset, "changes_every_epoch", False)
        self.loader = None

    def for_epoch(self, seed: int):
        if self.loader is None or self.rebuild:
            self.loader = make_loader(seed=seed, persistent=not self.rebuild, **self.arguments)
        self.loader.batch_sampler.seed = seed
        return self.loader
