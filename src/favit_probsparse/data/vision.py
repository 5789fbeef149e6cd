"""Image-classification data: CIFAR-10/100, Fashion-MNIST and any ImageFolder tree, as one LightningDataModule.

``ImageClassificationDataModule(dataset=..., data_dir=..., img_size=...)``:

* ``dataset="cifar10" | "cifar100"``: ``torchvision.datasets.CIFAR10/100`` under ``data_dir`` (default
  ``<data root>/cifar10`` resp. ``cifar100``), downloaded on first use when ``download=True`` (the default).
* ``dataset="fashion_mnist"``: the full Fashion-MNIST. The Debian package ``dataset-fashion-mnist`` installs the
  four IDX files in ``/usr/share/datasets/fashion-mnist``; they are read from there when present (or from
  ``data_dir`` if it holds them), else ``torchvision.datasets.FashionMNIST`` downloads them. Images are 28x28 grey,
  replicated to 3 channels so every RGB model takes them.
* ``dataset="imagefolder"``: ``data_dir/<train_split>/<class>/*.png|jpg...`` and ``data_dir/<val_split>/<class>/...``
  (the ImageNet-1K layout; ``train``/``val`` by default, ``test`` is tried when ``val`` is missing). The shared
  ``cifar10-subset`` folder is of this kind. Errors name the problem: a missing or empty folder, a class missing
  from one split, an image that cannot be decoded (the file is named).
* ``dataset="shards"``: webdataset ``.tar`` shards written from such a tree by ``favit-ps prepare-shards``
  (:mod:`favit_probsparse.data.shards`: each DDP rank and loader worker reads shards of its own).
* ``dataset="imagefolder", data_dir="cifar10-subset"`` (or ``"cifar100-subset"``): the fixed real-image subsets the
  quick reproduction trains on (:data:`KNOWN_SUBSETS`). When the folder is missing and ``download=True``,
  ``prepare_data`` builds it: torchvision's CIFAR download (checksum-verified, with a progress bar) into the
  ``cifar10``/``cifar100`` folder beside it, then the leading rows of each official batch written as PNGs
  (:func:`build_known_subset`), the same images as the project's shared development copy.

Data paths are resolved by :func:`favit_probsparse.paths.resolve_data_path`: relative names live under the data
root (``$FAVIT_DATA``, else ``../shared/data`` when it exists, else a per-user cache folder).

Transforms come from timm's ``create_transform``: RandAugment (``auto_augment="rand-m9-mstd0.5-inc1"``), random
erasing (``re_prob=0.25``), bicubic interpolation, per-dataset mean/std. ``img_size`` either keeps the native
resolution (32 for CIFAR) or upsamples (224, as the report did; evaluation then resizes to 256 and center-crops
224, i.e. ``eval_crop_pct=0.875``). ``train_crop="rrc"`` is timm's RandomResizedCrop (ImageNet recipe);
``train_crop="pad_crop"`` is the CIFAR-style reflect-pad-and-random-crop, better for native 32x32 training.

Shuffling is reproducible and resumable: the training order depends only on (seed, epoch) and every sample's
augmentation only on (seed, epoch, index) (:class:`EpochShuffleSampler`, :class:`SeededSamples`), whatever the
number of workers, so a run resumed from a checkpoint sees the same batches as an uninterrupted one.

Small ImageFolder splits (the CIFAR subsets) are decoded once into memory at setup (``cache_images``,
:class:`DecodedImageFolder`) instead of being read and decoded by PIL every epoch; the CIFAR-style pad-crop and flip
then run on uint8 tensors. Both draw the same random numbers and give the same pixels as the file/PIL path, so the
samples are bit-identical (measured on the quick job: the data part of a training epoch went from about 40 % of the
step to a few %; see results/favit-benchmark.md, "Quick job epoch"). The model's
own randomness (drop path, Mixup) is reseeded per epoch by
:class:`favit_probsparse.training.classification.ImageClassifier`.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import random
import shutil
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision.datasets import ImageFolder

from favit_probsparse.paths import resolve_data_path

__all__ = [
    "DATASET_STATS",
    "FASHION_MNIST_SYSTEM_DIR",
    "KNOWN_SUBSETS",
    "DatasetError",
    "DecodedImageFolder",
    "EpochShuffleSampler",
    "FashionMNISTIDX",
    "ImageClassificationDataModule",
    "SeededSamples",
    "build_known_subset",
    "build_transform",
    "checked_image_folder",
    "decoded_bytes_estimate",
    "tensor_transform_supported",
    "write_toy_image_folder",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: name -> (mean, std, native image size, number of classes)
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...], int | None, int | None]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 32, 10),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 32, 100),
    "fashion_mnist": ((0.2860, 0.2860, 0.2860), (0.3530, 0.3530, 0.3530), 28, 10),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD, None, 1000),
}
DATASETS = ("cifar10", "cifar100", "fashion_mnist", "imagefolder", "shards")
FOLDER_DATASETS = ("imagefolder", "shards")  # a data_dir of the user's, ImageNet normalization by default

#: where Debian's ``dataset-fashion-mnist`` package puts the four IDX files
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
#: ``cache_images=None`` decodes ImageFolder splits into memory up to this many bytes (both splits together)
CACHE_AUTO_BYTES = 1 << 30
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DatasetError(ValueError):
    """A dataset folder or file is missing, empty, corrupt or inconsistent."""


@dataclass(frozen=True)
class KnownSubset:
    """A fixed subset of a torchvision dataset, materialised as an ImageFolder tree.

    Args:
        torchvision_cls: name of the class in ``torchvision.datasets`` that downloads the full dataset.
        download_dir: folder, beside the subset, that the full dataset is downloaded into (the default
            ``data_dir`` of the matching ``dataset=`` choice, so the download is shared with it).
        num_classes: number of classes (every class occurs in both splits).
        rows: per split, ``(first, count)`` ranges of indices into torchvision's concatenated arrays (training
            batches in their official order, 10,000 rows each for CIFAR-10).
    """

    torchvision_cls: str
    download_dir: str
    num_classes: int
    rows: dict[str, tuple[tuple[int, int], ...]]

    def indices(self, split: str) -> list[int]:
        return [i for first, n in self.rows[split] for i in range(first, first + n)]


#: The real-image subsets the quick jobs use: the leading rows of each official CIFAR batch (the rows the
#: project's shared development copy holds), so every machine trains on the same images.
#: CIFAR-10: rows 0-1101, 0-1016, 0-1016, 0-1284, 0-1016 of data_batch_1..5 (5,438 images, 523-572 per class)
#: and rows 0-1016 of test_batch (1,017); CIFAR-100: rows 0-1116 of train (1,117) and 0-915 of test (916).
KNOWN_SUBSETS: dict[str, KnownSubset] = {
    "cifar10-subset": KnownSubset(
        "CIFAR10",
        "cifar10",
        10,
        {
            "train": ((0, 1102), (10000, 1017), (20000, 1017), (30000, 1285), (40000, 1017)),
            "test": ((0, 1017),),
        },
    ),
    "cifar100-subset": KnownSubset("CIFAR100", "cifar100", 100, {"train": ((0, 1117),), "test": ((0, 916),)}),
}


def _download_torchvision(cls, root: Path, train: bool):
    """``cls(root, train, download=True)`` with errors that name the URL; a corrupt archive is removed."""
    url = cls.url
    try:
        return cls(str(root), train=train, download=True)
    except OSError as e:  # urllib.error.URLError is an OSError
        archive = root / cls.filename
        archive.unlink(missing_ok=True)  # a partial download must not look like a cached one
        raise DatasetError(f"could not download {url} into {root}: {getattr(e, 'reason', e)}") from e
    except (
        RuntimeError
    ) as e:  # torchvision: "File not found or corrupted." / "Dataset not found or corrupted."
        from torchvision.datasets.utils import check_integrity

        archive = root / cls.filename
        if archive.is_file() and not check_integrity(str(archive), cls.tgz_md5):
            archive.unlink()
            msg = f"checksum mismatch for {url}: the downloaded archive's md5 is not {cls.tgz_md5}"
        else:
            extracted = root / cls.base_folder
            if extracted.is_dir():
                shutil.rmtree(extracted)
            msg = f"{cls.__name__} files extracted from {url} into {extracted} failed their checksums"
        raise DatasetError(f"{msg} ({e}); the corrupt files were removed, run again to retry") from e


def build_known_subset(dest: str | os.PathLike, name: str | None = None) -> Path:
    """Build the :data:`KNOWN_SUBSETS` entry ``name`` (default: ``dest``'s folder name) at ``dest``.

    The full dataset is downloaded by torchvision (progress bar, md5 check) into ``dest.parent/<download_dir>``
    unless already there; the subset's rows are written as ``{train,test}/<class>/<row index>.png`` in a
    temporary folder beside ``dest`` that is renamed into place only when complete, so an interrupted or failed
    build leaves nothing that looks like a dataset. Returns ``dest``; an existing ``dest`` is returned untouched.
    """
    from torchvision import datasets

    dest = Path(dest)
    name = name or dest.name
    if name not in KNOWN_SUBSETS:
        raise DatasetError(f"no known subset {name!r} (known: {', '.join(KNOWN_SUBSETS)})")
    if dest.is_dir():
        return dest
    spec = KNOWN_SUBSETS[name]
    cls = getattr(datasets, spec.torchvision_cls)
    download_root = dest.parent / spec.download_dir
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"[data] building {dest} from {cls.__name__} (download into {download_root} if needed)", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        for split in spec.rows:
            ds = _download_torchvision(cls, download_root, train=split == "train")
            idx = spec.indices(split)
            if max(idx) >= len(ds):
                raise DatasetError(
                    f"{cls.__name__} {split} split in {download_root} has {len(ds)} images; the subset "
                    f"{name} needs row {max(idx)}"
                )
            for i in idx:
                folder = tmp / split / ds.classes[int(ds.targets[i])]
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.asarray(ds.data[i], dtype=np.uint8)).save(folder / f"{i:05d}.png")
            if len(_list_classes(tmp / split)) != spec.num_classes:
                raise DatasetError(
                    f"the {split} rows of subset {name} cover {len(_list_classes(tmp / split))} classes of "
                    f"{cls.__name__}, expected {spec.num_classes}"
                )
        ranges = {s: ", ".join(f"{a}-{a + n - 1}" for a, n in r) for s, r in spec.rows.items()}
        (tmp / "SOURCE.md").write_text(
            f"# {name}\n\nBuilt by favit_probsparse.data.vision.build_known_subset from torchvision.datasets."
            f"{cls.__name__} ({cls.url}, md5 {cls.tgz_md5}).\n"
            + "".join(f"- {s}: rows {r} of torchvision's {s} arrays\n" for s, r in ranges.items())
            + "Layout: {train,test}/<class>/<row index>.png, lossless PNG.\n"
        )
        try:
            tmp.rename(dest)
        except OSError:
            if not dest.is_dir():  # another process finishing first is fine; anything else is not
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


# --------------------------------------------------------------------------------------------- transforms
def _pad_crop(img_size: int, hflip: float):
    from torchvision import transforms as T

    tfs = [T.RandomCrop(img_size, padding=max(1, img_size // 8), padding_mode="reflect")]
    if hflip > 0:
        tfs.append(T.RandomHorizontalFlip(hflip))
    return tfs


def default_eval_crop_pct(img_size: int, native_size: int | None, train_crop: str) -> float:
    """Resize 256 / crop 224 style (0.875) only where training crops too (RandomResizedCrop of an upsampled
    image); a plain resize (1.0) otherwise."""
    upsampled = native_size is not None and img_size > native_size
    return 0.875 if upsampled and train_crop == "rrc" else 1.0


def build_transform(
    is_train: bool,
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    native_size: int | None = None,
    auto_augment: str | None = "rand-m9-mstd0.5-inc1",
    re_prob: float = 0.25,
    interpolation: str = "bicubic",
    color_jitter: float | None = 0.4,
    train_crop: str = "rrc",
    scale: Sequence[float] | None = None,
    hflip: float = 0.5,
    eval_crop_pct: float | None = None,
    tensor_input: bool = False,
):
    """Build a timm train/eval transform (PIL image -> normalized tensor).

    ``eval_crop_pct`` defaults to 0.875 (resize 256, center-crop 224) when ``img_size`` is larger than the native
    size and training uses RandomResizedCrop, and to 1.0 (plain resize) otherwise.

    ``tensor_input=True`` builds the training transform for uint8 ``[3, H, W]`` tensors instead of PIL images
    (the decoded cache of :class:`DecodedImageFolder`); only where :func:`tensor_transform_supported` says so.
    The same torchvision ops run on the tensor and draw the same random numbers, so the output is bit-identical
    to the PIL path's for the same RNG state, at a fraction of the cost.
    """
    from timm.data import create_transform
    from torchvision import transforms as T

    if train_crop not in ("rrc", "pad_crop"):
        raise ValueError(f"train_crop must be 'rrc' or 'pad_crop', got {train_crop!r}")
    if tensor_input and not (
        is_train and tensor_transform_supported(img_size, native_size, auto_augment, color_jitter, train_crop)
    ):
        raise ValueError(
            "tensor_input needs the training pad_crop transform at the native size without auto_augment "
            "or color_jitter"
        )
    if not is_train:
        if eval_crop_pct is None:
            eval_crop_pct = default_eval_crop_pct(img_size, native_size, train_crop)
        return create_transform(
            img_size,
            is_training=False,
            interpolation=interpolation,
            mean=tuple(mean),
            std=tuple(std),
            crop_pct=eval_crop_pct,
        )
    primary, secondary, final = create_transform(
        img_size,
        is_training=True,
        scale=tuple(scale) if scale is not None else None,
        hflip=hflip,
        color_jitter=color_jitter if color_jitter else 0.0,
        auto_augment=auto_augment or None,
        interpolation=interpolation,
        mean=tuple(mean),
        std=tuple(std),
        re_prob=re_prob,
        separate=True,
    )
    if train_crop == "pad_crop":
        pre = []
        if native_size is not None and native_size != img_size:
            from timm.data.transforms import str_to_interp_mode

            pre.append(T.Resize(img_size, interpolation=str_to_interp_mode(interpolation)))
        primary = T.Compose([*pre, *_pad_crop(img_size, hflip)])
    if tensor_input:
        # uint8 -> float in [0, 1] exactly as ToTensor does it (to(float32) then / 255); the rest is unchanged
        # (timm's no-op ColorJitter still draws its randperm, Normalize and RandomErasing take tensors)
        tail = [t for t in final.transforms if type(t).__name__ not in ("MaybeToTensor", "ToTensor")]
        final = T.Compose([T.ConvertImageDtype(torch.float32), *tail])
    return T.Compose([primary, secondary, final])


def tensor_transform_supported(
    img_size: int,
    native_size: int | None,
    auto_augment: str | None,
    color_jitter: float | None,
    train_crop: str,
) -> bool:
    """Whether the training transform has a tensor version identical to the PIL one: pad_crop without resizing,
    RandAugment or colour jitter (these work on PIL images and differ in rounding on tensors)."""
    return (
        train_crop == "pad_crop"
        and not auto_augment
        and not color_jitter
        and (native_size is None or native_size == img_size)
    )


# --------------------------------------------------------------------------------------------- datasets
def _checked_loader(path: str) -> Image.Image:
    """PIL loader that names the file when it cannot be decoded."""
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DatasetError(f"cannot decode image {path}: {e}") from e


def _list_classes(split_dir: Path) -> list[str]:
    return sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))


def checked_image_folder(
    root: Path, split: str, transform=None, expected_classes: Sequence[str] | None = None
):
    """``torchvision.datasets.ImageFolder`` on ``root/split`` with clear errors (missing/empty/class mismatch, an
    image the transform cannot take)."""

    split_dir = Path(root) / split
    if not Path(root).is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    if not split_dir.is_dir():
        present = sorted(p.name for p in Path(root).iterdir() if p.is_dir())
        raise DatasetError(
            f"split folder {split_dir} does not exist (sub-folders of {root}: {present or 'none'}); "
            f"expected the ImageFolder layout {root}/{split}/<class>/<image>"
        )
    classes = _list_classes(split_dir)
    if not classes:
        raise DatasetError(
            f"split folder {split_dir} has no class sub-folders; expected {split_dir}/<class>/<image>"
        )
    empty = [
        c for c in classes if not any(f.suffix.lower() in IMG_EXTENSIONS for f in (split_dir / c).iterdir())
    ]
    if len(empty) == len(classes):
        raise DatasetError(
            f"split folder {split_dir} holds no images (extensions {', '.join(IMG_EXTENSIONS)})"
        )
    if empty:
        raise DatasetError(f"class folder(s) without images in {split_dir}: {', '.join(empty[:10])}")
    if expected_classes is not None and list(expected_classes) != classes:
        missing = sorted(set(expected_classes) - set(classes))
        extra = sorted(set(classes) - set(expected_classes))
        raise DatasetError(
            f"class mismatch between splits: {split_dir} lacks {missing[:10] or 'nothing'} and has "
            f"extra {extra[:10] or 'nothing'} compared with the training split; both splits must "
            "hold the same class folders so that class indices agree"
        )
    return _CheckedImageFolder(str(split_dir), transform=transform, loader=_checked_loader)


def _transform_error(path: str, e: Exception) -> DatasetError:
    detail = str(e)
    with contextlib.suppress(OSError), Image.open(path) as im:
        detail += f" (the image is {im.width}x{im.height})"
    return DatasetError(f"cannot transform image {path}: {detail}")


class _CheckedImageFolder(ImageFolder):
    """ImageFolder whose transform errors (e.g. an image smaller than the crop) name the image file."""

    def __getitem__(self, index: int):
        try:
            return super().__getitem__(index)
        except DatasetError:
            raise
        except (ValueError, RuntimeError, TypeError, IndexError) as e:
            raise _transform_error(self.samples[index][0], e) from None


class DecodedImageFolder(Dataset):
    """An ImageFolder split decoded once into memory: each file is read and converted to RGB by the same loader
    as :func:`checked_image_folder` (errors name the file) and kept as a uint8 ``[H, W, 3]`` array.

    Items are what the folder's would be: ``transform(PIL image)`` (an image rebuilt from the array, identical to
    the decoded file), or, with ``tensor_transform``, ``tensor_transform(uint8 [3, H, W] tensor)`` (a view of
    the array; see ``build_transform(tensor_input=True)``), which skips PIL entirely.

    Args:
        folder: the checked ImageFolder (its ``samples``, ``targets`` and ``classes`` are kept).
        transform: transform of PIL images (used when ``tensor_transform`` is ``None``).
        tensor_transform: transform of uint8 ``[3, H, W]`` tensors, or ``None``.
    """

    def __init__(self, folder: ImageFolder, transform=None, tensor_transform=None):
        self.root, self.classes, self.class_to_idx = folder.root, folder.classes, folder.class_to_idx
        self.samples, self.targets = folder.samples, folder.targets
        self.transform, self.tensor_transform = transform, tensor_transform
        self.images = [np.array(_checked_loader(path), dtype=np.uint8) for path, _ in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        img, target = self.images[index], self.targets[index]
        try:
            if self.tensor_transform is not None:
                return self.tensor_transform(torch.from_numpy(img).permute(2, 0, 1)), target
            pil = Image.fromarray(img)
            return (self.transform(pil) if self.transform is not None else pil), target
        except DatasetError:
            raise
        except (ValueError, RuntimeError, TypeError, IndexError) as e:
            raise _transform_error(self.samples[index][0], e) from None


def decoded_bytes_estimate(folder: ImageFolder) -> int:
    """Memory a :class:`DecodedImageFolder` of ``folder`` would take, from its first image's size."""
    if not folder.samples:
        return 0
    try:
        with Image.open(folder.samples[0][0]) as im:
            return im.width * im.height * 3 * len(folder.samples)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return 0  # decoding it names the file


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise DatasetError(f"IDX file {path} is truncated")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DatasetError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise DatasetError(
            f"IDX file {path} is truncated ({arr.size} values, expected {int(np.prod(shape))})"
        )
    return arr.reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        for p in (folder / name, folder / "FashionMNIST" / "raw" / name, folder / "raw" / name):
            if p.is_file():
                return p
    return None


class FashionMNISTIDX(Dataset):
    """Fashion-MNIST read from its four IDX files (``.gz`` or not); images are returned as RGB PIL images."""

    classes = FASHION_MNIST_CLASSES

    def __init__(self, folder: str | os.PathLike, train: bool, transform=None):
        prefix = "train" if train else "t10k"
        img_p = _find_idx(Path(folder), f"{prefix}-images-idx3-ubyte")
        lab_p = _find_idx(Path(folder), f"{prefix}-labels-idx1-ubyte")
        if img_p is None or lab_p is None:
            raise DatasetError(
                f"Fashion-MNIST IDX files ({prefix}-images-idx3-ubyte[.gz], "
                f"{prefix}-labels-idx1-ubyte[.gz]) not found in {folder}"
            )
        self.images = _read_idx(img_p)
        self.targets = _read_idx(lab_p).astype(np.int64)
        if len(self.images) != len(self.targets):
            raise DatasetError(
                f"{img_p} has {len(self.images)} images but {lab_p} has {len(self.targets)} labels"
            )
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.images[i], mode="L").convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[i])


class _RGB(Dataset):
    """Wrap a dataset whose images are grey PIL images so they come out RGB before the transform."""

    def __init__(self, ds, transform):
        self.ds, self.transform = ds, transform
        self.classes = getattr(ds, "classes", None)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        img, y = self.ds[i]
        img = img.convert("RGB")
        return (self.transform(img) if self.transform is not None else img), int(y)


def _class_balanced_subset(ds, n_per_class: int, seed: int = 0):
    targets = np.asarray(
        getattr(ds, "targets", None)
        if getattr(ds, "targets", None) is not None
        else [ds[i][1] for i in range(len(ds))]
    )
    rng = np.random.default_rng(seed)
    idx = []
    for c in np.unique(targets):
        where = np.flatnonzero(targets == c)
        idx.extend(rng.permutation(where)[:n_per_class].tolist())
    return Subset(ds, sorted(idx))


# --------------------------------------------------------------------------------------------- datamodule
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


class ImageClassificationDataModule(LightningDataModule):
    """CIFAR-10/100, Fashion-MNIST or an ImageFolder tree with timm transforms (see the module docstring).

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


# --------------------------------------------------------------------------------------------- determinism
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


# --------------------------------------------------------------------------------------------- toy data
def write_toy_image_folder(
    root: str | os.PathLike,
    num_classes: int = 4,
    train_per_class: int = 24,
    test_per_class: int = 8,
    size: int = 16,
    seed: int = 0,
    splits: tuple[str, str] = ("train", "test"),
) -> Path:
    """Write a small, learnable ImageFolder tree (class ``k``: its own colour and stripe pattern, plus noise).

    Used by the tests and for trying the pipeline without any download. Returns ``root``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    palette = rng.uniform(40, 215, size=(num_classes, 3))
    yy, xx = np.mgrid[0:size, 0:size]
    for split, n in zip(splits, (train_per_class, test_per_class)):
        for k in range(num_classes):
            d = root / split / f"class_{k:02d}"
            d.mkdir(parents=True, exist_ok=True)
            period = 2 + k % 4
            stripes = (((xx if k % 2 else yy) // period) % 2)[..., None] * 40.0
            for i in range(n):
                img = palette[k] + stripes + rng.normal(0, 25, size=(size, size, 3))
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{i:04d}.png")
    return root
