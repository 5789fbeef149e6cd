"""The LightningDataModule of image classification (see the package docstring of
:mod:`favit_probsparse.data.vision`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from favit_probsparse.data.vision.datasets import (
    _RGB,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_SYSTEM_DIR,
    DatasetError,
    DecodedImageFolder,
    FashionMNISTIDX,
    _class_balanced_subset,
    _find_idx,
    _list_classes,
    checked_image_folder,
    decoded_bytes_estimate,
)
from favit_probsparse.data.vision.sampling import seeded_loader
from favit_probsparse.data.vision.subsets import KNOWN_SUBSETS, _download_torchvision, build_known_subset
from favit_probsparse.data.vision.transforms import build_transform, tensor_transform_supported
from favit_probsparse.paths import resolve_data_path
from favit_probsparse.utils.image_stats import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
)

__all__ = [
    "CACHE_AUTO_BYTES",
    "DATASETS",
    "DATASET_STATS",
    "FOLDER_DATASETS",
    "ImageClassificationDataModule",
]

#: name -> (mean, std, native image size, number of classes)
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...], int | None, int | None]] = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD, 32, 10),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD, 32, 100),
    "fashion_mnist": (FASHION_MNIST_MEAN, FASHION_MNIST_STD, 28, 10),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD, None, 1000),
}
DATASETS = ("cifar10", "cifar100", "fashion_mnist", "imagefolder", "shards")
FOLDER_DATASETS = ("imagefolder", "shards")  # a data_dir of the user's, ImageNet normalization by default
#: ``cache_images=None`` decodes ImageFolder splits into memory up to this many bytes (both splits together)
CACHE_AUTO_BYTES = 1 << 30


class ImageClassificationDataModule(LightningDataModule):
    """CIFAR-10/100, Fashion-MNIST or an ImageFolder tree with timm transforms (see the package docstring).

    Args:
        dataset: ``cifar10``, ``cifar100``, ``fashion_mnist``, ``imagefolder`` or ``shards`` (webdataset shards).
        data_dir: dataset folder (relative names live under the data root); default per dataset.
        img_size: training/eval resolution (native 32 for CIFAR, or 224 as in the report).
        batch_size: per-process batch size.
        num_workers: DataLoader workers.
        train_split / val_split: ImageFolder sub-folders (``val_split`` falls back to ``test`` when missing).
        auto_augment: timm auto-augment policy, ``None`` to disable.
        re_prob: random-erasing probability.
        interpolation: resize interpolation (``bicubic``).
        color_jitter: timm color jitter (only used when ``auto_augment`` is off, as in timm).
        train_crop: ``rrc`` (RandomResizedCrop, ImageNet/DeiT recipe) or ``pad_crop`` (CIFAR-style).
        scale: RandomResizedCrop scale range (timm default (0.08, 1.0)).
        eval_crop_pct: eval center-crop fraction (default 0.875 when upsampling with ``rrc``, else 1.0).
        mean / std: normalization; default per dataset (``normalization`` names a preset instead).
        normalization: preset name from :data:`DATASET_STATS` (e.g. ``cifar10`` for ``cifar10-subset``).
        download: allow torchvision downloads (CIFAR, Fashion-MNIST, and the data of a missing
            :data:`KNOWN_SUBSETS` folder, which ``prepare_data`` then builds).
        limit_train_per_class / limit_val_per_class: class-balanced subsets (smoke tests, quick runs).
        pin_memory: DataLoader pin_memory (default: when CUDA is available).
        cache_images: ImageFolder only: decode every image once at setup and keep the uint8 pixels in memory
            (:class:`DecodedImageFolder`) instead of reading and decoding each file every epoch; ``None`` (the
            default) caches when both splits take at most ``CACHE_AUTO_BYTES`` (1 GiB) decoded, e.g. the CIFAR
            subsets (21 MB). With ``train_crop="pad_crop"`` at the native size and neither ``auto_augment`` nor
            ``color_jitter``, the training transform then runs on uint8 tensors instead of PIL images. Both give
            the same samples, bit for bit, as the uncached path (same RNG draws, same pixels); a file that cannot
            be decoded is named at setup instead of during the first epoch.
    """

    def __init__(
        self,
        dataset: str = "imagefolder",
        data_dir: str | None = None,
        img_size: int = 224,
        batch_size: int = 128,
        num_workers: int = 4,
        train_split: str = "train",
        val_split: str = "val",
        auto_augment: str | None = "rand-m9-mstd0.5-inc1",
        re_prob: float = 0.25,
        interpolation: str = "bicubic",
        color_jitter: float | None = 0.4,
        train_crop: str = "rrc",
        scale: list[float] | None = None,
        eval_crop_pct: float | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        normalization: str | None = None,
        download: bool = True,
        limit_train_per_class: int | None = None,
        limit_val_per_class: int | None = None,
        pin_memory: bool | None = None,
        cache_images: bool | None = None,
    ):
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
        if train_crop not in ("rrc", "pad_crop"):
            raise ValueError(f"train_crop must be 'rrc' or 'pad_crop', got {train_crop!r}")
        if int(img_size) < 8:
            raise ValueError(f"img_size must be at least 8, got {img_size}")
        self.save_hyperparameters()
        self.dataset = dataset
        self.img_size = int(img_size)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        folder_like = dataset in FOLDER_DATASETS
        preset = normalization or (dataset if not folder_like else "imagenet")
        if preset not in DATASET_STATS:
            raise ValueError(
                f"unknown normalization preset {preset!r}; choose one of {sorted(DATASET_STATS)}"
            )
        p_mean, p_std, native, n_cls = DATASET_STATS[preset]
        self.mean = tuple(mean) if mean is not None else p_mean
        self.std = tuple(std) if std is not None else p_std
        self.native_size = native if not folder_like else (native if normalization else None)
        self._num_classes = n_cls if not folder_like else None
        self.data_path = self._resolve_path(data_dir)
        # a missing known subset is built by prepare_data (a download); its class count is known beforehand
        self._build_subset = (
            dataset == "imagefolder"
            and download
            and self.data_path.name in KNOWN_SUBSETS
            and not self.data_path.is_dir()
        )
        if self._build_subset:
            self._num_classes = KNOWN_SUBSETS[self.data_path.name].num_classes
        elif dataset == "imagefolder":
            self._check_imagefolder_root()
        self.train_set: Any = None
        self.val_set: Any = None
        self.classes: list[str] | None = None

    # ---------------------------------------------------------------- paths
    def _resolve_path(self, data_dir: str | None) -> Path:
        if self.dataset in FOLDER_DATASETS:
            if data_dir is None:
                raise DatasetError(
                    f"dataset={self.dataset!r} needs data_dir (a folder with train/ and val/ or test/, "
                    "or with the shards of favit-ps prepare-shards)"
                )
            return resolve_data_path(data_dir, data_dir)
        default = {"cifar10": "cifar10", "cifar100": "cifar100", "fashion_mnist": "fashion-mnist"}[
            self.dataset
        ]
        return resolve_data_path(data_dir, default)

    def _check_imagefolder_root(self) -> None:
        root = self.data_path
        if not root.is_dir():
            hint = (
                f"; {root.name} is built from torchvision's download with download=true"
                if root.name in KNOWN_SUBSETS
                else ""
            )
            raise DatasetError(
                f"dataset folder {root} does not exist (data_dir={self.hparams.data_dir!r}; "
                f"relative paths are looked up under $FAVIT_DATA / ../shared/data{hint})"
            )
        if not (root / self.hparams.train_split).is_dir():
            raise DatasetError(
                f"dataset folder {root} has no '{self.hparams.train_split}' split folder; expected "
                f"{root}/{self.hparams.train_split}/<class>/<image>"
            )
        if self._val_split_name() is None:
            raise DatasetError(
                f"dataset folder {root} has neither '{self.hparams.val_split}' nor 'test' split folder"
            )

    def _val_split_name(self) -> str | None:
        for s in (self.hparams.val_split, "test", "val"):
            if (self.data_path / s).is_dir():
                return s
        return None

    def _fashion_dir(self) -> Path | None:
        for d in (self.data_path, FASHION_MNIST_SYSTEM_DIR):
            if _find_idx(d, "train-images-idx3-ubyte") is not None:
                return d
        return None

    # ---------------------------------------------------------------- properties
    @property
    def num_classes(self) -> int:
        if self._num_classes is None and self.dataset == "shards":
            self._num_classes = len(self._shard_info(True).classes)
        if self._num_classes is None:
            train_dir = self.data_path / self.hparams.train_split
            self._num_classes = len(_list_classes(train_dir))
        return self._num_classes

    def transform(self, is_train: bool, tensor_input: bool = False):
        h = self.hparams
        return build_transform(
            is_train,
            self.img_size,
            self.mean,
            self.std,
            native_size=self.native_size,
            auto_augment=h.auto_augment,
            re_prob=h.re_prob,
            interpolation=h.interpolation,
            color_jitter=h.color_jitter,
            train_crop=h.train_crop,
            scale=h.scale,
            eval_crop_pct=h.eval_crop_pct,
            tensor_input=tensor_input,
        )

    def _decoded(self, train, val):
        """The two ImageFolder splits decoded into memory when ``cache_images`` says so (see the Args)."""
        h = self.hparams
        cache = h.cache_images
        if cache is None:
            cache = decoded_bytes_estimate(train) + decoded_bytes_estimate(val) <= CACHE_AUTO_BYTES
        if not cache:
            return train, val
        fast = tensor_transform_supported(
            self.img_size, self.native_size, h.auto_augment, h.color_jitter, h.train_crop
        )
        tensor_t = self.transform(True, tensor_input=True) if fast else None
        return DecodedImageFolder(train, train.transform, tensor_t), DecodedImageFolder(val, val.transform)

    # ---------------------------------------------------------------- lightning hooks
    def prepare_data(self) -> None:
        if self._build_subset and not self.data_path.is_dir():
            build_known_subset(self.data_path)
        elif self.dataset in ("cifar10", "cifar100"):
            from torchvision import datasets

            cls = datasets.CIFAR10 if self.dataset == "cifar10" else datasets.CIFAR100
            if self.hparams.download:  # errors name the URL; a corrupt archive is removed
                _download_torchvision(cls, self.data_path, train=True)
                _download_torchvision(cls, self.data_path, train=False)
            else:
                self._torchvision(cls, train=True)
                self._torchvision(cls, train=False)
        elif self.dataset == "fashion_mnist" and self._fashion_dir() is None:
            from torchvision import datasets

            self._torchvision(datasets.FashionMNIST, train=True, prepare=True)
            self._torchvision(datasets.FashionMNIST, train=False, prepare=True)

    def _torchvision(self, cls, train: bool, transform=None, prepare: bool = False):
        try:
            return cls(
                str(self.data_path),
                train=train,
                transform=transform,
                download=self.hparams.download and prepare,
            )
        except (
            RuntimeError
        ) as e:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
            raise DatasetError(
                f"{cls.__name__} not found in {self.data_path} ({e}); set data.download=true on a "
                "machine with internet access, or point data_dir at a folder holding it"
            ) from e

    def _shard_info(self, train: bool):
        from favit_probsparse.data.shards import read_info

        h = self.hparams
        try:
            return read_info(self.data_path, h.train_split if train else h.val_split)
        except DatasetError:
            if train or h.val_split == "test":
                raise
            return read_info(self.data_path, "test")  # the val split falls back to test, as for a folder

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        t_train, t_eval = self.transform(True), self.transform(False)
        h = self.hparams
        if self.dataset == "shards":  # streams: the loaders split them across ranks and workers
            if h.limit_train_per_class or h.limit_val_per_class:
                raise DatasetError("limit_train_per_class / limit_val_per_class are not available for shards")
            self.train_set, self.val_set = (
                (self._shard_info(True), t_train),
                (self._shard_info(False), t_eval),
            )
            self.classes = list(self.train_set[0].classes)
            return
        if self.dataset in ("cifar10", "cifar100"):
            from torchvision import datasets

            cls = datasets.CIFAR10 if self.dataset == "cifar10" else datasets.CIFAR100
            train, val = self._torchvision(cls, True, t_train), self._torchvision(cls, False, t_eval)
            self.classes = list(train.classes)
        elif self.dataset == "fashion_mnist":
            folder = self._fashion_dir()
            if folder is not None:
                train, val = FashionMNISTIDX(folder, True, t_train), FashionMNISTIDX(folder, False, t_eval)
            else:
                from torchvision import datasets

                train = _RGB(self._torchvision(datasets.FashionMNIST, True), t_train)
                val = _RGB(self._torchvision(datasets.FashionMNIST, False), t_eval)
                train.targets = train.ds.targets.numpy()
                val.targets = val.ds.targets.numpy()
            self.classes = list(FASHION_MNIST_CLASSES)
        else:
            self._check_imagefolder_root()
            train = checked_image_folder(self.data_path, h.train_split, t_train)
            val = checked_image_folder(
                self.data_path, self._val_split_name(), t_eval, expected_classes=train.classes
            )
            self.classes = list(train.classes)
            self._num_classes = len(train.classes)
            train, val = self._decoded(train, val)
        if h.limit_train_per_class:
            train = _class_balanced_subset(train, h.limit_train_per_class, seed=0)
        if h.limit_val_per_class:
            val = _class_balanced_subset(val, h.limit_val_per_class, seed=1)
        if len(train) == 0 or len(val) == 0:
            raise DatasetError(
                f"empty split in {self.data_path}: {len(train)} train / {len(val)} eval images"
            )
        self.train_set, self.val_set = train, val

    def _current_epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.current_epoch) if trainer is not None else 0

    def _loader(self, ds, train: bool) -> DataLoader:
        seed = int(os.environ.get("PL_GLOBAL_SEED", "0"))
        trainer = getattr(self, "trainer", None)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if self.dataset == "shards":
            from favit_probsparse.data.shards import shard_loader

            info, transform = ds
            return shard_loader(
                info, transform, train, self.batch_size, self.num_workers, seed, rank, world,
                self._current_epoch, self.pin_memory,
            )  # fmt: skip
        return seeded_loader(ds, train, self.batch_size, self.num_workers, self.pin_memory, trainer)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)
