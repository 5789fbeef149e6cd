"""``favit-ps prepare DATASET``: build a derived dataset once, on disk, for the data modules to read.

* ``favit-ps prepare moving-fmnist [--out DIR] [--frames 8 --size 64 --items 1 --sizes 2000 400 1000 --seed 0]``
  writes moving Fashion-MNIST clip folders (:mod:`favit_probsparse.data.moving_fmnist`, docs/video.md). ``--out``
  defaults to ``<data root>/moving-fmnist``; the two label views are ``DIR/motion`` and ``DIR/appearance``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from favit_probsparse.paths import resolve_data_path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="favit-ps prepare", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="dataset", required=True)
    m = sub.add_parser("moving-fmnist", help="moving Fashion-MNIST clips (synthetic motion, real images)")
    m.add_argument("--out", default=None, help="output folder (default: <data root>/moving-fmnist)")
    m.add_argument("--frames", type=int, default=8, help="frames per clip")
    m.add_argument("--size", type=int, default=64, help="canvas height and width")
    m.add_argument("--items", type=int, default=1, choices=(1, 2), help="moving items per clip")
    m.add_argument("--sizes", type=int, nargs=3, default=(2000, 400, 1000), metavar=("TRAIN", "VAL", "TEST"))
    m.add_argument(
        "--speed", type=int, nargs=2, default=(2, 4), metavar=("MIN", "MAX"), help="pixels a frame"
    )
    m.add_argument("--free-steps", type=int, default=3, help="bounce-free moves in the middle of each clip")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--fashion-dir", default=None, help="folder with the Fashion-MNIST IDX files (else found)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from favit_probsparse.data.moving_fmnist import build_moving_fmnist, load_fashion_mnist

    out = resolve_data_path(args.out, "moving-fmnist")
    arrays = load_fashion_mnist(args.fashion_dir)
    print(
        f"[prepare] writing moving Fashion-MNIST ({'/'.join(map(str, args.sizes))} clips) to {out}",
        flush=True,
    )
    build_moving_fmnist(
        out,
        *arrays,
        sizes=tuple(args.sizes),
        frames=args.frames,
        size=args.size,
        items=args.items,
        speed=tuple(args.speed),
        free_steps=args.free_steps,
        seed=args.seed,
    )
    print(
        f"[prepare] done: data_dir {out / 'motion'} (direction, 8 classes), {out / 'sign'} (sign of the "
        f"motion, 2), {out / 'appearance'} (class, 10)"
    )
    return 0
