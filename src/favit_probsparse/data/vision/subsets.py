"""The fixed real-image subsets of CIFAR (:data:`KNOWN_SUBSETS`) and their build from torchvision's download."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from favit_probsparse.data.vision.datasets import DatasetError, _list_classes

__all__ = ["KNOWN_SUBSETS", "KnownSubset", "build_known_subset"]


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
