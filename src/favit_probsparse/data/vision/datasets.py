"""The map-style image datasets: checked ImageFolder splits (errors name the file), their decoded in-memory
cache, Fashion-MNIST from its IDX files, class-balanced subsets and a small toy ImageFolder writer."""

from __future__ import annotations

import contextlib
import gzip
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Subset
from torchvision.datasets import ImageFolder

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_SYSTEM_DIR",
    "IMG_EXTENSIONS",
    "DatasetError",
    "DecodedImageFolder",
    "FashionMNISTIDX",
    "checked_image_folder",
    "decoded_bytes_estimate",
    "write_toy_image_folder",
]

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
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DatasetError(ValueError):
    """A dataset folder or file is missing, empty, corrupt or inconsistent."""


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
