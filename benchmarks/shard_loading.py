"""Data-loading cost per image, one CPU core: reading webdataset shards, decoding, and the training transform.

What the cost plan in docs/scale.md needs: how many CPU cores keep a GPU fed. Builds shards
(:func:`favit_probsparse.data.shards.write_shards`) from an ImageFolder tree, by default the cifar10-subset's
test split re-encoded as ImageNet-sized JPEGs (``--size 500x375``, quality 90: ImageNet-1K's typical image; the
upsampled CIFAR content compresses better than real photos, so the JPEG bytes are fewer than ImageNet's ~110 KB
and the decode somewhat cheaper), then times in this one process:

* ``read+decode``: the shards through :class:`~favit_probsparse.data.shards.ShardStream` (tar read, PIL decode
  to RGB), no transform;
* ``train transform``: the image data module's ImageNet training transform at 224² (RandomResizedCrop, flip,
  RandAugment m9-mstd0.5-inc1, normalize, random erasing 0.25) on decoded images;
* ``eval transform``: resize 256, center-crop 224, normalize.

CPU seconds of this process (``time.process_time``), which a shared machine's load disturbs less than wall time.
Usage::

    OMP_NUM_THREADS=1 python benchmarks/shard_loading.py [--folder cifar10-subset] [--n 500] [--size 500x375]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from favit_probsparse.data.shards import ShardStream, read_info, write_shards
from favit_probsparse.data.vision import IMAGENET_MEAN, IMAGENET_STD, build_transform
from favit_probsparse.paths import resolve_data_path
from favit_probsparse.utils.provenance import hardware_summary, utc_now


def _jpeg_folder(src: Path, dst: Path, n: int, size: tuple[int, int]) -> int:
    """Re-encode up to ``n`` images per split of ``src`` as JPEGs of ``size``; returns the bytes written."""
    total = 0
    for split in ("train", "test"):
        files = sorted((src / ("test" if (src / "test").is_dir() else "val")).glob("*/*"))[:n]
        for f in files:
            out = dst / split / f.parent.name / (f.stem + ".jpg")
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.open(f).convert("RGB").resize(size, Image.BICUBIC).save(out, quality=90)
            total += out.stat().st_size
    return total


def _per_image_ms(fn, items) -> float:
    t0 = time.process_time()
    n = sum(1 for _ in map(fn, items))
    return (time.process_time() - t0) / n * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", default="cifar10-subset", help="ImageFolder tree (default cifar10-subset)")
    p.add_argument("--n", type=int, default=500, help="images (default 500)")
    p.add_argument("--size", default="500x375", help="re-encode as JPEG of this size; 'none' keeps the files")
    a = p.parse_args()
    torch.set_num_threads(1)
    src = resolve_data_path(a.folder, a.folder)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if a.size != "none":
            w, h = (int(x) for x in a.size.split("x"))
            nbytes = _jpeg_folder(src, tmp / "folder", a.n, (w, h)) / (2 * a.n)
            src = tmp / "folder"
        write_shards(src, tmp / "shards", maxcount=100)
        info = read_info(tmp / "shards", "train")
        stream = ShardStream(info)
        t0 = time.process_time()
        images = [img for img, _ in stream][: a.n]
        decode_ms = (time.process_time() - t0) / len(images) * 1e3
        train_t = build_transform(True, 224, IMAGENET_MEAN, IMAGENET_STD, auto_augment="rand-m9-mstd0.5-inc1")
        eval_t = build_transform(False, 224, IMAGENET_MEAN, IMAGENET_STD, eval_crop_pct=0.875)
        torch.manual_seed(0)
        train_ms = _per_image_ms(train_t, images)
        eval_ms = _per_image_ms(eval_t, images)
    size = f"{images[0].width}x{images[0].height}"
    print(f"# Data loading per image, one core ({len(images)} images of {size}, {a.folder})\n")
    print("| step | CPU ms / image | images / s per core |\n|---|---|---|")
    for name, ms in (
        ("read+decode (shards)", decode_ms),
        ("train transform 224", train_ms),
        ("eval transform 224", eval_ms),
        ("read+decode+train transform", decode_ms + train_ms),
    ):
        print(f"| {name} | {ms:.2f} | {1e3 / ms:.0f} |")
    if a.size != "none":
        print(f"\nJPEG bytes per image: {nbytes / 1e3:.1f} kB (quality 90)")
    print(f"\n{hardware_summary()}; {utc_now()}")
    print(
        f"Command: OMP_NUM_THREADS=1 python benchmarks/shard_loading.py --folder {a.folder} --n {a.n} --size {a.size}"
    )


if __name__ == "__main__":
    main()
