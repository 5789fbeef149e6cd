"""Clip-folder loading speed on moving Fashion-MNIST, with and without the decoded frame cache.

Reads the ``motion`` view of a prepared tree (``favit-ps prepare moving-fmnist``; ``--data`` defaults to
``<data root>/moving-fmnist``) with the settings of ``configs/video/_data_moving_fmnist.yaml`` (8 frames of 64x64,
batch 32) through :class:`favit_probsparse.data.video.VideoClipDataModule`, in this process
(``num_workers: 0``), and prints a table: setup seconds (listing, and decoding when cached), cached megabytes, and
training clips per second over ``--batches`` batches (wall time), alternating the two variants round by round.
Usage::

    OMP_NUM_THREADS=1 python benchmarks/video_data.py [--data DIR] [--rounds 3] [--batches 40]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from favit_probsparse.data.video import VideoClipDataModule
from favit_probsparse.paths import resolve_data_path
from favit_probsparse.utils.provenance import hardware_summary, utc_now


def _run(data: str, cache: bool, batches: int) -> tuple[float, float, float]:
    t0 = time.perf_counter()
    dm = VideoClipDataModule(
        data, num_frames=8, img_size=64, batch_size=32, num_workers=0, train_crop="center", hflip=0.0,
        cache_frames=cache, pin_memory=False,
    )  # fmt: skip
    dm.setup("fit")
    setup = time.perf_counter() - t0
    mb = sum(a.nbytes for a in dm.train_set.cache.values()) / 1e6
    n, t0 = 0, time.perf_counter()
    for i, (_, y) in enumerate(dm.train_dataloader()):
        if i == batches:
            break
        n += len(y)
    return setup, mb, n / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data", default=None, help="the moving-fmnist folder (default <data root>/moving-fmnist)"
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batches", type=int, default=40)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = str(resolve_data_path(args.data, "moving-fmnist") / "motion")
    runs: dict[bool, list] = {False: [], True: []}
    for _ in range(args.rounds):
        for cache in (False, True):
            runs[cache].append(_run(data, cache, args.batches))
    print("| cache_frames | setup s | cache MB | train clips/s (median of rounds) |\n|---|---|---|---|")
    for cache, rs in runs.items():
        setup, mb, rate = (statistics.median(r[k] for r in rs) for k in range(3))
        print(f"| {cache} | {setup:.1f} | {mb:.0f} | {rate:.0f} |")
    print(f"\n{args.rounds} rounds of {args.batches} batches of 32; {hardware_summary()}; {utc_now()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
