"""Image data as webdataset shards (``.tar``): written from an ImageFolder tree, read split by DDP rank and worker.

``favit-ps prepare-shards --folder DIR --out SHARDS`` (:func:`write_shards`) writes each split of an ImageFolder
tree (``train`` and ``val``, else ``test``) as ``SHARDS/<split>-000000.tar, ...`` with webdataset's
``ShardWriter``: one sample per image, its file bytes unchanged (``.png``/``.jpg``/...) and its class index
(``.cls``), in a seeded random order so that a shard holds a mix of classes. ``SHARDS/_info.json`` (written last:
the shards are complete when it exists) lists the classes and, per split, the shard files and their sample
counts. ``ImageClassificationDataModule(dataset="shards", data_dir=SHARDS)`` reads them.

Why ``webdataset`` directly and not timm's ``wds`` reader: timm's ``ReaderWds`` gives every worker an equal
*number of samples* with webdataset's ``with_epoch``, which (its own comment says so) may repeat a shard's
samples in one worker and skip them in another, so a sample can be seen twice in one epoch across ranks; and it
needs timm's own ``_info`` layout and train loop. Here the assignment is explicit and checkable
(:func:`shard_assignment`): each epoch the shard list is shuffled by (seed, epoch), and global worker ``g`` (rank
× workers + worker) reads shards ``g, g + G, g + 2G, ...`` of it (``G`` = ranks × workers), so no two workers and
no two ranks read the same shard. For training only the first ``G * floor(shards / G)`` shards of the shuffled
list are read, and every worker stops after the same number of samples (what the ``floor(shards / G)`` smallest
shards hold, rounded down to whole batches), so every rank runs the same number of steps in every epoch (DDP needs
that) and the samples left out change from epoch to epoch; no sample is ever read twice in an epoch. Evaluation reads every shard once, split the same
way (ranks may then see different numbers of samples; the metrics are reduced at the epoch's end).

Within a worker, samples are shuffled through a buffer (``shuffle_buffer``) with a generator seeded by (seed,
epoch, worker), and each sample's augmentation is seeded by (seed, epoch, worker, position), so a run resumed at
an epoch boundary sees the same batches as an uninterrupted one. Shards must outnumber ranks × workers (ImageNet-1K
at 1,000 images a shard gives 1,282 shards: plenty for 8 GPUs × 10 workers).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

__all__ = [
    "INFO_FILE",
    "EpochLoader",
    "ShardInfo",
    "ShardStream",
    "TrainShardStream",
    "main",
    "read_info",
    "shard_assignment",
    "shard_loader",
    "write_shards",
]

INFO_FILE = "_info.json"
IMAGE_KEYS = ("png", "jpg", "jpeg", "ppm", "bmp", "pgm", "tif", "tiff", "webp")


def _webdataset():
    try:
        import webdataset
    except ImportError:  # an optional dependency (the `shards` extra)
        raise ImportError(
            "webdataset shards need the webdataset package: pip install 'favit-probsparse[shards]'"
        ) from None
    return webdataset


def _mix(*xs: int) -> int:
    from favit_probsparse.data.vision.sampling import _mix_seed

    return _mix_seed(*xs)


# ------------------------------------------------------------------------------------------------ writing
def write_shards(
    folder: str | Path, out: str | Path, maxcount: int = 1000, maxsize: float = 1e9, seed: int = 0
) -> Path:
    """Write every split of the ImageFolder tree ``folder`` as shards in ``out`` (see the module docstring).

    Args:
        folder: ``folder/<split>/<class>/<image>``; splits ``train`` and ``val`` (else ``test``).
        out: the shard folder (created; existing shards of the same name are overwritten).
        maxcount / maxsize: at most this many samples / bytes a shard.
        seed: the order in which the images are written (shuffled, so shards mix classes).
    Returns the path of ``out/_info.json``.
    """
    from favit_probsparse.data.vision import DatasetError, checked_image_folder
    from favit_probsparse.utils.io import write_json

    wds = _webdataset()
    folder, out = Path(folder), Path(out)
    splits = [s for s in ("train", "val", "test") if (folder / s).is_dir()]
    if "train" not in splits or len(splits) < 2:
        raise DatasetError(f"{folder}: expected train/ and val/ (or test/) split folders of <class>/<image>")
    splits = splits[:2]
    out.mkdir(parents=True, exist_ok=True)
    (out / INFO_FILE).unlink(missing_ok=True)  # until the new shards are complete
    classes, info = None, {}
    for split in splits:
        ds = checked_image_folder(folder, split, expected_classes=classes)
        classes = classes or list(ds.classes)
        order = list(range(len(ds.samples)))
        random.Random(_mix(seed, len(order))).shuffle(order)
        names: list[str] = []
        counts: list[int] = []

        def finished(
            fname: str, names=names, counts=counts
        ) -> None:  # a shard is closed: its name, its count
            names.append(Path(fname).name)
            counts.append(sink.count)

        with wds.ShardWriter(
            str(out / f"{split}-%06d.tar"), maxcount=maxcount, maxsize=maxsize, post=finished, verbose=0
        ) as sink:
            for n, i in enumerate(order):
                path, label = ds.samples[i]
                ext = Path(path).suffix.lower().lstrip(".")
                sink.write({"__key__": f"{split}{n:09d}", ext: Path(path).read_bytes(), "cls": int(label)})
        info[split] = {"shards": names, "counts": counts, "samples": len(order)}
        print(f"[shards] {split}: {len(order)} images in {len(names)} shards ({out / (split + '-*.tar')})")
    return write_json(out / INFO_FILE, {"classes": classes, "splits": info, "source": folder.name})


# ------------------------------------------------------------------------------------------------ reading
@dataclass
class ShardInfo:
    """One split of a shard folder: its shard files, their sample counts, the classes."""

    root: Path
    split: str
    shards: list[str]
    counts: list[int]
    classes: list[str]

    @property
    def urls(self) -> list[str]:
        return [str(self.root / s) for s in self.shards]


def read_info(root: str | Path, split: str) -> ShardInfo:
    """The ``split`` of the shard folder ``root`` (errors name the folder and what is missing)."""
    from favit_probsparse.data.vision import DatasetError

    root = Path(root)
    path = root / INFO_FILE
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(
            f"{root} has no {INFO_FILE}: not a complete shard folder (write one with favit-ps prepare-shards)"
        ) from None
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: unreadable ({e})") from None
    splits = info.get("splits", {})
    if split not in splits:
        raise DatasetError(f"{path}: no split {split!r} (splits: {sorted(splits)})")
    s = splits[split]
    missing = [f for f in s["shards"] if not (root / f).is_file()]
    if missing:
        raise DatasetError(f"{root}: shard(s) listed in {INFO_FILE} are missing: {', '.join(missing[:5])}")
    return ShardInfo(root, split, list(s["shards"]), [int(c) for c in s["counts"]], list(info["classes"]))


def shard_assignment(n_shards: int, n_workers: int, seed: int, epoch: int, train: bool) -> list[list[int]]:
    """Shard indices of each of ``n_workers`` global workers (rank-major) in ``epoch``; disjoint by construction."""
    order = list(range(n_shards))
    if train:
        random.Random(_mix(seed, epoch, n_shards)).shuffle(order)
        order = order[: n_shards // n_workers * n_workers]
    return [order[g::n_workers] for g in range(n_workers)]


def _decode(sample: dict) -> tuple[Image.Image, int, str]:
    key = next((k for k in IMAGE_KEYS if k in sample), None)
    url = sample.get("__url__", "?")
    if key is None or "cls" not in sample:
        raise ValueError(f"shard {url}: sample {sample.get('__key__')} lacks an image or a .cls label")
    try:
        img = Image.open(io.BytesIO(sample[key])).convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise ValueError(f"shard {url}: cannot decode image {sample['__key__']}.{key}: {e}") from None
    return img, int(sample["cls"]), sample["__key__"]


class ShardStream(IterableDataset):
    """Samples ``(transform(image), label)`` of one split, split across ranks and loader workers.

    Args:
        info: the split (:func:`read_info`).
        transform: applied to each RGB PIL image (``None``: the image itself).
        seed: shard order, sample shuffling and per-sample augmentation seeds.
        rank / world_size: this process's DDP rank and the number of ranks.
        num_workers: the DataLoader's workers (0: the main process reads).
        shuffle_buffer: samples shuffled through a buffer of this size (0: file order).
    """

    train = False

    def __init__(
        self,
        info: ShardInfo,
        transform: Callable | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        shuffle_buffer: int = 0,
    ):
        self.info, self.transform, self.seed = info, transform, int(seed)
        self.rank, self.world_size, self.num_workers = int(rank), int(world_size), int(num_workers)
        self.shuffle_buffer = int(shuffle_buffer)
        self.classes = info.classes
        self.epoch = 0
        n_global = self.world_size * max(1, self.num_workers)
        if self.train and len(info.shards) < n_global:
            from favit_probsparse.data.vision import DatasetError

            raise DatasetError(
                f"{info.root}: {len(info.shards)} {info.split} shards for {self.world_size} rank(s) x "
                f"{max(1, self.num_workers)} worker(s); each needs a shard of its own (write smaller shards)"
            )

    @property
    def n_global(self) -> int:
        return self.world_size * max(1, self.num_workers)

    def worker_shards(self, epoch: int) -> list[list[int]]:
        return shard_assignment(len(self.info.shards), self.n_global, self.seed, epoch, self.train)

    def _limit(self) -> int | None:
        return None

    def _samples(self, g: int):
        wds = _webdataset()
        urls = [self.info.urls[s] for s in self.worker_shards(self.epoch)[g]]
        stages: list[Any] = [wds.SimpleShardList(urls), wds.tarfile_to_samples()]
        if self.shuffle_buffer > 0:
            rng = random.Random(_mix(self.seed, self.epoch, g, 1))
            stages.append(wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng))
        stages.append(wds.map(_decode))
        return itertools.islice(iter(wds.DataPipeline(*stages)), self._limit())

    def __iter__(self):
        worker = get_worker_info()
        g = self.rank * max(1, self.num_workers) + (worker.id if worker is not None else 0)
        for pos, (img, label, _key) in enumerate(self._samples(g)):
            yield self._transformed(img, _mix(self.seed, self.epoch, g, pos)), label

    def _transformed(self, img: Image.Image, seed: int):
        if self.transform is None:
            return img
        # per-sample seeding as in vision.SeededSamples: the caller's RNG states are restored afterwards
        py, npy, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            random.seed(seed)
            np.random.seed(seed)
            torch.default_generator.manual_seed(seed)
            return self.transform(img)
        finally:
            random.setstate(py)
            np.random.set_state(npy)
            torch.set_rng_state(th)


class TrainShardStream(ShardStream):
    """The training stream: shuffled, every global worker stops after the same number of samples
    (``per_worker``, whole batches), so every rank runs ``len(self) / batch_size`` steps in every epoch."""

    train = True

    def __init__(self, info: ShardInfo, batch_size: int, **kw: Any):
        kw.setdefault("shuffle_buffer", 1000)
        super().__init__(info, **kw)
        self.batch_size = int(batch_size)
        if self.per_worker == 0:
            from favit_probsparse.data.vision import DatasetError

            raise DatasetError(
                f"{info.root}: a {info.split} worker's {len(info.shards) // self.n_global} shard(s) hold fewer "
                f"than one batch of {self.batch_size} ({self.n_global} rank x worker streams); use fewer workers "
                "or a smaller batch"
            )

    @property
    def per_worker(self) -> int:
        """Samples each worker yields an epoch: what the worker with the smallest shards can give (its shards are
        ``shards // G`` of the list whatever the epoch), in whole batches; the same in every epoch."""
        k = len(self.info.shards) // self.n_global
        return sum(sorted(self.info.counts)[:k]) // self.batch_size * self.batch_size

    def _limit(self) -> int | None:
        return self.per_worker

    def __len__(self) -> int:  # this rank's samples an epoch
        return self.per_worker * max(1, self.num_workers)


class EpochLoader(DataLoader):
    """A DataLoader that hands the current epoch (``epoch_fn()``) to its :class:`ShardStream` before its workers
    start (Lightning calls ``set_epoch`` on samplers only; a stream has none)."""

    def __init__(self, dataset: ShardStream, epoch_fn: Callable[[], int] | None = None, **kw: Any):
        super().__init__(dataset, **kw)
        self.epoch_fn = epoch_fn

    def __iter__(self):
        if self.epoch_fn is not None:
            self.dataset.epoch = int(self.epoch_fn())
        return super().__iter__()


def shard_loader(
    info: ShardInfo,
    transform: Callable | None,
    train: bool,
    batch_size: int,
    num_workers: int,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    epoch_fn: Callable[[], int] | None = None,
    pin_memory: bool = False,
) -> EpochLoader:
    """The DataLoader of one split of a shard folder for this rank (see :class:`ShardStream`)."""
    common = dict(transform=transform, seed=seed, rank=rank, world_size=world_size, num_workers=num_workers)
    ds = TrainShardStream(info, batch_size, **common) if train else ShardStream(info, **common)
    return EpochLoader(
        ds,
        epoch_fn,
        batch_size=batch_size,
        drop_last=train,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )


# ------------------------------------------------------------------------------------------------ command
def main(argv: list[str] | None = None) -> int:
    """``favit-ps prepare-shards --folder DIR --out SHARDS [--maxcount N] [--maxsize BYTES] [--seed S]``."""
    p = argparse.ArgumentParser(prog="favit-ps prepare-shards", description=__doc__.split("\n\n")[1])
    p.add_argument("--folder", required=True, help="ImageFolder tree with train/ and val/ (or test/)")
    p.add_argument("--out", required=True, help="folder for the .tar shards and _info.json")
    p.add_argument("--maxcount", type=int, default=1000, help="samples a shard at most (default 1000)")
    p.add_argument("--maxsize", type=float, default=1e9, help="bytes a shard at most (default 1e9)")
    p.add_argument("--seed", type=int, default=0, help="seed of the write order (default 0)")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    from favit_probsparse.data.vision import DatasetError
    from favit_probsparse.paths import resolve_data_path

    try:
        path = write_shards(resolve_data_path(a.folder, a.folder), a.out, a.maxcount, a.maxsize, a.seed)
    except DatasetError as e:
        print(f"favit-ps prepare-shards: error: {e}", file=sys.stderr)
        return 2
    print(f"written: {path}")
    return 0
