"""Reproducible, resumable sampling: the training order depends only on (seed, epoch) and each sample's
augmentation only on (seed, epoch, index), whatever the number of workers."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["EpochShuffleSampler", "SeededSamples", "seeded_loader"]


def _mix_seed(*xs: int) -> int:
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h = (
            h ^ (int(x) + 0x9E3779B97F4A7C15 + ((h << 6) & 0xFFFFFFFFFFFFFFFF) + (h >> 2))
        ) & 0xFFFFFFFFFFFFFFFF
    return h % (2**31 - 1)


class EpochShuffleSampler(DistributedSampler):
    """Shuffling determined by (seed, epoch) only, with the epoch read when iteration starts.

    Yields *encoded* indices ``epoch * N + i`` that :class:`SeededSamples` decodes, so each sample's augmentation is
    seeded by (seed, epoch, index) whatever the worker count, and a run resumed from a checkpoint (whose epoch
    Lightning restores before the first batch is fetched) sees exactly the batches of an uninterrupted run. It is
    a ``DistributedSampler`` (rank-sharded under DDP), so Lightning keeps it instead of inserting its own.
    """

    def __init__(self, dataset, seed: int, epoch_fn=None, num_replicas: int = 1, rank: int = 0):
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False
        )
        self.epoch_fn = epoch_fn

    def __iter__(self):
        if self.epoch_fn is not None:
            self.epoch = int(self.epoch_fn())
        n = len(self.dataset)
        offset = self.epoch * n
        return (offset + i for i in super().__iter__())


class SeededSamples(Dataset):
    """Dataset wrapper: item ``epoch * N + i`` is item ``i`` with Python/NumPy/torch RNGs seeded from
    (seed, epoch, i) during its transform; the caller's RNG states are restored afterwards.

    Only torch's CPU generator is seeded (transforms draw from it; ``torch.manual_seed`` would also reseed, and
    leave reseeded, every CUDA generator, and costs ~0.5 ms a call while CUDA is not initialised). The DataLoader
    fetches a whole batch through :meth:`__getitems__`, which saves and restores the caller's states once per
    batch instead of once per sample (NumPy's ``get_state``/``set_state`` alone take ~0.4 ms).
    """

    def __init__(self, ds, seed: int):
        self.ds, self.seed = ds, int(seed)
        self.classes = getattr(ds, "classes", None)

    def __len__(self) -> int:
        return len(self.ds)

    def _seeded(self, key: int):
        epoch, i = divmod(int(key), len(self.ds))
        s = _mix_seed(self.seed, epoch, i)
        random.seed(s)
        np.random.seed(s)
        torch.default_generator.manual_seed(s)
        return self.ds[i]

    def __getitems__(self, keys: Sequence[int]) -> list:
        py, npy, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            return [self._seeded(k) for k in keys]
        finally:
            random.setstate(py)
            np.random.set_state(npy)
            torch.set_rng_state(th)

    def __getitem__(self, key: int):
        return self.__getitems__([key])[0]


def seeded_loader(
    ds, train: bool, batch_size: int, num_workers: int, pin_memory: bool, trainer=None
) -> DataLoader:
    """The loader of a map-style split. Training: order and per-sample seeds depend only on (seed, epoch, rank)
    (:class:`EpochShuffleSampler`, :class:`SeededSamples`), so runs are reproducible and resumable; ``drop_last``
    keeps batches even (Mixup/CutMix need it) unless the set is smaller than a batch."""
    kwargs: dict[str, Any] = {}
    if train:
        seed = int(os.environ.get("PL_GLOBAL_SEED", "0"))
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        ds = SeededSamples(ds, seed)
        epoch = lambda: int(trainer.current_epoch) if trainer is not None else 0
        kwargs["sampler"] = EpochShuffleSampler(ds, seed, epoch, num_replicas=world, rank=rank)
        # the loader's own generator (worker base seeds) keeps the global RNG untouched
        kwargs["generator"] = torch.Generator().manual_seed(seed)
    return DataLoader(
        ds,
        batch_size=batch_size,
        drop_last=train and len(ds) >= batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0 and not train,
        **kwargs,
    )
