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

# The modules: subsets (known CIFAR subsets and their download), transforms, datasets (folders, Fashion-MNIST IDX,
# toy data), sampling (seeded order and augmentation) and the datamodule. Everything public is re-exported here,
# the import path configs name (``favit_probsparse.data.vision.ImageClassificationDataModule``).
from favit_probsparse.data.vision.datamodule import (
    CACHE_AUTO_BYTES,
    DATASET_STATS,
    DATASETS,
    FOLDER_DATASETS,
    ImageClassificationDataModule,
)
from favit_probsparse.data.vision.datasets import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_SYSTEM_DIR,
    IMG_EXTENSIONS,
    DatasetError,
    DecodedImageFolder,
    FashionMNISTIDX,
    checked_image_folder,
    decoded_bytes_estimate,
    write_toy_image_folder,
)
from favit_probsparse.data.vision.sampling import EpochShuffleSampler, SeededSamples, seeded_loader
from favit_probsparse.data.vision.subsets import KNOWN_SUBSETS, KnownSubset, build_known_subset
from favit_probsparse.data.vision.transforms import (
    build_transform,
    default_eval_crop_pct,
    tensor_transform_supported,
)
from favit_probsparse.utils.image_stats import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "CACHE_AUTO_BYTES",
    "DATASETS",
    "DATASET_STATS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_SYSTEM_DIR",
    "FOLDER_DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMG_EXTENSIONS",
    "KNOWN_SUBSETS",
    "DatasetError",
    "DecodedImageFolder",
    "EpochShuffleSampler",
    "FashionMNISTIDX",
    "ImageClassificationDataModule",
    "KnownSubset",
    "SeededSamples",
    "build_known_subset",
    "build_transform",
    "checked_image_folder",
    "decoded_bytes_estimate",
    "default_eval_crop_pct",
    "seeded_loader",
    "tensor_transform_supported",
    "write_toy_image_folder",
]
