"""Image-classification data: ImageFolder checks, transforms, Fashion-MNIST IDX reading, torchvision fallbacks."""

from __future__ import annotations

import gzip
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _helpers import toy_data_args
from favit_probsparse.data.vision import (
    FASHION_MNIST_SYSTEM_DIR,
    DatasetError,
    DecodedImageFolder,
    FashionMNISTIDX,
    ImageClassificationDataModule,
    SeededSamples,
    build_transform,
    write_toy_image_folder,
)
from favit_probsparse.data.vision.sampling import _mix_seed


def _dm(root, **kw):
    return ImageClassificationDataModule(**toy_data_args(root, **{"batch_size": 8, **kw}))


def test_imagefolder_loads_batches(tmp_path):
    root = write_toy_image_folder(tmp_path / "toy", num_classes=3, train_per_class=5, test_per_class=2)
    dm = _dm(root)
    assert dm.num_classes == 3
    dm.setup("fit")
    assert dm.classes == ["class_00", "class_01", "class_02"]
    assert len(dm.train_set) == 15 and len(dm.val_set) == 6
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 16, 16) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and int(y.max()) < 3
    xv, _ = next(iter(dm.val_dataloader()))
    assert xv.shape[1:] == (3, 16, 16)


def test_missing_dataset_folder_is_named(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        _dm(tmp_path / "nope")


def test_missing_split_folder(tmp_path):
    (tmp_path / "d" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match="neither 'val' nor 'test'"):
        _dm(tmp_path / "d")


def test_empty_split_folder(tmp_path):
    (tmp_path / "d" / "train").mkdir(parents=True)
    (tmp_path / "d" / "test").mkdir(parents=True)
    dm = _dm(tmp_path / "d")
    with pytest.raises(DatasetError, match="no class sub-folders"):
        dm.setup("fit")
    (tmp_path / "d" / "train" / "cat").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        _dm(tmp_path / "d").setup("fit")


def test_class_mismatch_between_splits(tmp_path):
    root = write_toy_image_folder(tmp_path / "toy", num_classes=3, train_per_class=2, test_per_class=1)
    for f in (root / "test" / "class_02").iterdir():
        f.unlink()
    (root / "test" / "class_02").rmdir()
    with pytest.raises(DatasetError, match=r"class mismatch between splits.*class_02"):
        _dm(root).setup("fit")


@pytest.mark.parametrize("cache", [False, True])
def test_corrupt_image_names_the_file(tmp_path, cache):
    root = write_toy_image_folder(tmp_path / "toy", num_classes=2, train_per_class=2, test_per_class=1)
    bad = root / "train" / "class_01" / "0001.png"
    bad.write_bytes(b"this is not a png")
    dm = _dm(root, batch_size=4, cache_images=cache)
    # the decoded cache reads every file at setup, the folder path when the image is first used
    with pytest.raises(DatasetError, match=r"cannot decode image .*class_01/0001\.png"):
        dm.setup("fit")
        for _ in dm.train_dataloader():
            pass


@pytest.mark.parametrize("cache", [False, True])
def test_image_smaller_than_the_pad_crop_names_the_file(tmp_path, cache):
    root = write_toy_image_folder(
        tmp_path / "toy", num_classes=2, train_per_class=1, test_per_class=1, size=16
    )
    small = root / "train" / "class_01" / "0000.png"
    Image.new("RGB", (8, 8)).save(small)
    dm = _dm(root, batch_size=1, train_crop="pad_crop", color_jitter=None, cache_images=cache)
    dm.setup("fit")
    assert isinstance(dm.train_set, DecodedImageFolder) == cache
    with pytest.raises(
        DatasetError, match=r"cannot transform image .*class_01/0000\.png: .*the image is 8x8"
    ):
        for _ in dm.train_dataloader():
            pass


class _Epoch:
    """Stands in for the trainer: the datamodule reads the epoch, world size and rank from it."""

    def __init__(self, epoch: int):
        self.current_epoch, self.world_size, self.global_rank = epoch, 1, 0


def _epoch_batches(dm, epoch: int):
    dm.trainer = _Epoch(epoch)
    return list(dm.train_dataloader())


@pytest.mark.parametrize(
    "aug",
    [
        dict(train_crop="pad_crop", auto_augment=None, color_jitter=None),  # the tensor path
        dict(train_crop="rrc", auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25),  # PIL from the cache
    ],
    ids=["pad_crop", "rrc-randaugment"],
)
def test_decoded_cache_gives_the_samples_of_the_files(tmp_path, aug):
    root = write_toy_image_folder(tmp_path / "toy", num_classes=3, train_per_class=6, test_per_class=2)
    kw = dict(batch_size=5, img_size=16, **aug)
    files, cached = _dm(root, cache_images=False, **kw), _dm(root, **kw)  # the default caches a small set
    files.setup("fit")
    cached.setup("fit")
    assert isinstance(cached.train_set, DecodedImageFolder) and not isinstance(
        files.train_set, DecodedImageFolder
    )
    assert (cached.train_set.tensor_transform is not None) == (aug["train_crop"] == "pad_crop")
    for epoch in (0, 2):
        torch.manual_seed(123)
        a = _epoch_batches(files, epoch)
        after_files = torch.rand(2)
        torch.manual_seed(123)
        b = _epoch_batches(cached, epoch)
        assert torch.equal(after_files, torch.rand(2))  # the caller's generator is left as it was
        assert len(a) == len(b) == 3
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for (xa, ya), (xb, yb) in zip(files.val_dataloader(), cached.val_dataloader()):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_seeded_sample_is_the_transform_under_its_own_seed(tmp_path):
    """Reference by hand: item (epoch, i) is the PIL pipeline applied to the file with every generator seeded
    from (seed, epoch, i), whichever samples were fetched before it and in which batch."""
    root = write_toy_image_folder(tmp_path / "toy", num_classes=2, train_per_class=4, test_per_class=1)
    dm = _dm(root, train_crop="pad_crop", color_jitter=None)
    dm.setup("fit")
    assert dm.train_set.tensor_transform is not None  # the cached tensor path, against PIL on the files
    t_pil = dm.transform(True)
    seeded = SeededSamples(dm.train_set, seed=5)
    n = len(seeded)
    for epoch, i in ((0, 3), (1, 3), (4, 6)):
        s = _mix_seed(5, epoch, i)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)
        path, label = dm.train_set.samples[i]
        expected = t_pil(Image.open(path).convert("RGB"))
        got = seeded.__getitems__([epoch * n + (i + 1) % n, epoch * n + i])[1]
        assert torch.equal(got[0], expected) and got[1] == label
        assert torch.equal(seeded[epoch * n + i][0], expected)


def test_tensor_input_only_where_it_matches_the_pil_transform():
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    t = build_transform(
        True,
        32,
        mean,
        std,
        native_size=32,
        train_crop="pad_crop",
        auto_augment=None,
        color_jitter=None,
        tensor_input=True,
    )
    assert t(torch.zeros(3, 32, 32, dtype=torch.uint8)).dtype == torch.float32
    for bad in (dict(auto_augment="rand-m9-mstd0.5-inc1"), dict(color_jitter=0.4), dict(native_size=28)):
        args = {**dict(native_size=32, train_crop="pad_crop", auto_augment=None, color_jitter=None), **bad}
        with pytest.raises(ValueError, match="tensor_input needs"):
            build_transform(True, 32, mean, std, tensor_input=True, **args)


def test_unknown_dataset_and_bad_options(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        ImageClassificationDataModule(dataset="mnist-ish")
    root = write_toy_image_folder(tmp_path / "toy", num_classes=2, train_per_class=1, test_per_class=1)
    with pytest.raises(ValueError, match="train_crop"):
        _dm(root, train_crop="zoom")
    with pytest.raises(ValueError, match="normalization preset"):
        _dm(root, normalization="svhn")


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_without_download_gives_clear_error(tmp_path, dataset):
    dm = ImageClassificationDataModule(
        dataset=dataset, data_dir=str(tmp_path / "empty"), img_size=32, download=False, num_workers=0
    )
    assert dm.num_classes == (10 if dataset == "cifar10" else 100)
    with pytest.raises(DatasetError, match="not found"):
        dm.setup("fit")


def test_transforms_native_and_upsampled():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    # seed recipe: RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, bicubic, upsampled to 224
    t_train = build_transform(
        True, 224, mean, std, native_size=32, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25
    )
    assert t_train(img).shape == (3, 224, 224)
    text = repr(t_train)
    assert "RandAugment" in text and "RandomErasing" in text and "bicubic" in text.lower()
    # eval at 224 from 32: resize 256, center-crop 224
    t_eval = build_transform(False, 224, mean, std, native_size=32)
    assert "256" in repr(t_eval) and t_eval(img).shape == (3, 224, 224)
    # upsampled but trained with pad-crop (full images): evaluation does not crop either
    assert "size=36" not in repr(build_transform(False, 32, mean, std, native_size=28, train_crop="pad_crop"))
    assert "size=36" in repr(build_transform(False, 32, mean, std, native_size=28, train_crop="rrc"))
    # native resolution: no crop loss, CIFAR-style pad-crop for training
    assert build_transform(False, 32, mean, std, native_size=32)(img).shape == (3, 32, 32)
    t_pc = build_transform(True, 32, mean, std, native_size=32, train_crop="pad_crop", auto_augment=None)
    assert "RandomCrop" in repr(t_pc) and t_pc(img).shape == (3, 32, 32)


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_reader(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 6)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    ds = FashionMNISTIDX(tmp_path, train=True)
    img, y = ds[3]
    assert len(ds) == 12 and img.size == (28, 28) and img.mode == "RGB" and y == 3
    dm = _dm(tmp_path, dataset="fashion_mnist", img_size=28, batch_size=4, download=False)
    if Path(FASHION_MNIST_SYSTEM_DIR).is_dir():
        # data_dir has the files: it wins over the system copy
        assert dm._fashion_dir() == tmp_path
    dm.setup("fit")
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 28, 28) and dm.num_classes == 10


def test_fashion_mnist_truncated_file(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(
        struct.pack(">HBB", 0, 8, 3) + struct.pack(">III", 5, 28, 28)
    )
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(5))
    with pytest.raises(DatasetError, match="truncated"):
        FashionMNISTIDX(tmp_path, train=True)


@pytest.mark.skipif(
    not (FASHION_MNIST_SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_fashion_mnist_debian_copy(tmp_path):
    dm = _dm(
        tmp_path / "none",
        dataset="fashion_mnist",
        img_size=28,
        batch_size=16,
        download=False,
        limit_val_per_class=2,
    )
    dm.setup("fit")
    assert len(dm.train_set) == 60000 and len(dm.val_set) == 20
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (16, 3, 28, 28) and int(y.max()) < 10
