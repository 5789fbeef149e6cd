"""Benchmark: training and inference speed of the video FaViT's space-time attentions on one trunk.

The rows of the moving Fashion-MNIST study (``configs/ablations/video_moving_fmnist.yaml``): the tiny video FaViT
at 8 × 32 × 32 with FaSA (each fusion), divided, joint and frame attention. Every model takes turns in each round
(a training step: forward, cross-entropy, backward, AdamW; then an inference forward), timed in this thread's CPU
time, so other processes on the machine slow all rows alike; the table shows medians as clips/s, with parameters
and GMACs of one clip. This is a benchmark, not a test: it checks nothing.

    OMP_NUM_THREADS=1 python benchmarks/video.py [--batch 32 --rounds 6 --markdown FILE]
"""

from __future__ import annotations

import argparse
import os

import timm
import torch
import torch.nn.functional as F

import favit_probsparse.models  # noqa: F401  (registers favit_video_*)
from favit_probsparse.attention.fusion import reset_sampling
from favit_probsparse.benchmarks.attention import time_interleaved
from favit_probsparse.training.classification import measure_gmacs
from favit_probsparse.utils.io import print_report
from favit_probsparse.utils.provenance import hardware_summary, utc_now

ROWS = {  # row name -> model_kwargs over the study's base
    "fasa-probsparse": dict(attention="fasa", fusion="probsparse"),
    "fasa-official": dict(attention="fasa", fusion="official"),
    "fasa-max": dict(attention="fasa", fusion="max"),
    "fasa-hierarchical": dict(attention="fasa", fusion="hierarchical"),
    "divided": dict(attention="divided"),
    "joint": dict(attention="joint"),
    "frame": dict(attention="frame", fusion="official"),
}


def steps(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def train():
        model.train()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer():
        model.eval()
        reset_sampling(model)
        with torch.no_grad():
            model(x)

    return train, infer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--markdown", default=None, help="also write the table to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.frames, args.size, args.size)
    y = torch.randint(0, 8, (args.batch,))
    base = dict(num_frames=args.frames, img_size=args.size, num_classes=8)
    models = {r: timm.create_model("favit_video_tiny", **base, **ROWS[r]) for r in args.rows}
    fns = {}
    for r, m in models.items():
        train, infer = steps(m, x, y)
        fns[f"{r}/train"], fns[f"{r}/infer"] = train, infer
    ms = time_interleaved(fns, "cpu", args.rounds, 1, "cpu")
    lines = [
        f"Tiny video FaViT, clips of {args.frames}×{args.size}×{args.size}, batch {args.batch}, "
        f"{torch.get_num_threads()} thread(s), median of {args.rounds} interleaved rounds (thread CPU time).",
        "",
        "| row | params (M) | GMACs / clip | train clips/s | infer clips/s | train vs divided | infer vs divided |",
        "|---|---|---|---|---|---|---|",
    ]
    ref = args.rows.index("divided") if "divided" in args.rows else None
    for r, m in models.items():
        tr, inf = args.batch / ms[f"{r}/train"] * 1e3, args.batch / ms[f"{r}/infer"] * 1e3
        rel = ("–", "–")
        if ref is not None:
            rel = (
                f"{ms['divided/train'] / ms[f'{r}/train']:.2f}×",
                f"{ms['divided/infer'] / ms[f'{r}/infer']:.2f}×",
            )
        gmacs = measure_gmacs(m, args.size, num_frames=args.frames)
        params = sum(q.numel() for q in m.parameters()) / 1e6
        lines.append(f"| {r} | {params:.3f} | {gmacs:.4f} | {tr:.1f} | {inf:.1f} | {rel[0]} | {rel[1]} |")
    lines += ["", f"Hardware: {hardware_summary()}; {utc_now()}; `python benchmarks/video.py`"]
    text = "\n".join(lines)
    print_report(text, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
