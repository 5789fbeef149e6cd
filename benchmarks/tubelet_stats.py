"""Parameters and GMACs of each tubelet embedding (``favit_probsparse.layers.tubelet``) at given clip sizes.

Counts only (torch's FLOP counter on meta-device copies: nothing is computed, so the S3D rows take seconds, not
minutes); S3D has random weights here, which changes nothing in its counts. Usage::

    python benchmarks/tubelet_stats.py --sizes 8x64x64 16x224x224 --in-chans 3 --embed-dim 96 \\
        --tubelet 2 4 4 [--markdown tubelet-stats.md]

This is a benchmark script, not a test: it prints a table and checks nothing.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from favit_probsparse.layers.tubelet import TUBELET_EMBEDS, compare_embeddings, stats_markdown
from favit_probsparse.utils.io import print_report
from favit_probsparse.utils.provenance import hardware_summary, utc_now


def _size(s: str) -> tuple[int, int, int]:
    parts = s.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"clip size must be TxHxW (e.g. 8x64x64), got {s!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--sizes", nargs="+", type=_size, default=[(8, 64, 64), (16, 224, 224)], help="TxHxW clips"
    )
    p.add_argument("--in-chans", type=int, default=3)
    p.add_argument("--embed-dim", type=int, default=96)
    p.add_argument("--tubelet", type=int, nargs=3, default=[2, 4, 4], metavar=("T", "H", "W"))
    p.add_argument("--overlap", type=int, nargs=3, default=[0, 2, 2], metavar=("T", "H", "W"))
    p.add_argument("--kinds", nargs="+", choices=sorted(TUBELET_EMBEDS), default=list(TUBELET_EMBEDS))
    p.add_argument("--markdown", default=None, help="also write the table (with provenance) to this file")
    a = p.parse_args(argv)
    rows = compare_embeddings(a.sizes, a.in_chans, a.embed_dim, a.tubelet, a.overlap, a.kinds)
    command = "python benchmarks/tubelet_stats.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    text = "\n".join(
        [
            stats_markdown(rows),
            "",
            f"D = {a.embed_dim}, tubelet {'×'.join(map(str, a.tubelet))} (overlap: kernel + "
            f"{'×'.join(map(str, a.overlap))}); GMACs of one clip, torch's FLOP counter (convolutions and "
            "matmuls), MACs = FLOPs / 2.",
            f"- Command: `{command}`",
            f"- Hardware: {hardware_summary()}",
            f"- Date: {utc_now()}",
        ]
    )
    print_report(text, a.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
