"""Benchmark: training-step and inference time of the forecasting networks at the ETTh1 shapes of the FaSA grid.

The networks of ``configs/ablations/fasa_forecast_ett.yaml`` at look-back 96, horizon 96, 7 channels (label 48 for
Informer's decoder), built here directly with that grid's ETTh widths: the FaSA forecaster with the probsparse,
max and official fusions, the PatchTST-style encoder, DLinear, and Informer at the reduced width of
``configs/ablations/long_horizon_ett.yaml``. Every row takes turns in each round (a training step: forward, MSE,
backward, Adam; then an inference forward), timed in this thread's CPU time with one thread (wall clock with
more), so other processes on the machine slow all rows alike; the table shows medians in ms per step and each
row's time over the PatchTST-style encoder's fp32 time (the peer a user would pick; above 1×: slower).
``--bf16`` adds every network under ``torch.autocast("cpu", dtype=torch.bfloat16)``: on a CPU without
AVX512-BF16 / AMX those rows time emulated bf16. This is a benchmark, not a test: it checks nothing.

    OMP_NUM_THREADS=1 python benchmarks/forecasters.py [--threads 1 --rounds 5 --bf16 --markdown FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

from favit_probsparse.attention import dispatch
from favit_probsparse.attention.fusion import reset_sampling
from favit_probsparse.benchmarks.attention import time_interleaved
from favit_probsparse.models.dlinear import DLinear
from favit_probsparse.models.fasa_forecaster import FaSAForecaster
from favit_probsparse.models.informer import Informer, decoder_input
from favit_probsparse.models.patchtst import PatchTST
from favit_probsparse.utils.io import print_report
from favit_probsparse.utils.provenance import hardware_summary, provenance, status_line

SEQ_LEN, LABEL_LEN, PRED_LEN, CHANNELS, TIME_FEATURES = 96, 48, 96, 7, 4  # ETTh1, features M, timeF freq h
SHAPES = dict(enc_in=CHANNELS, seq_len=SEQ_LEN, label_len=LABEL_LEN, pred_len=PRED_LEN)
# configs/ablations/fasa_forecast_ett.yaml, the ETTh rows (fasa_*_etth1, patchtst_etth1, dlinear_etth1)
FASA = dict(e_layers=3, n_heads=2, d_model=32, d_ff=128, dropout=0.3, patch_len=16, stride=8, window_size=4,
            sr_ratio=2, pos_encoding="sinusoidal")  # fmt: skip
PATCHTST = dict(
    e_layers=3, n_heads=4, d_model=16, d_ff=128, dropout=0.3, head_dropout=0.0, patch_len=16, stride=8
)
# configs/ablations/long_horizon_ett.yaml's reduced Informer (ProbSparse fast path, BitsDropout, tsl preset)
INFORMER = dict(preset="tsl", attention="prob", factor=3, dropout=0.1, d_model=64, n_heads=8, e_layers=2,
                d_layers=1, d_ff=256, activation="gelu", distil=True, prob_impl="fast", dropout_impl="bits",
                embed="timeF", freq="h")  # fmt: skip
REFERENCE = "patchtst-style"
NETWORKS: dict[str, Callable[[], torch.nn.Module]] = {
    "fasa-probsparse": lambda: FaSAForecaster(
        **SHAPES, **FASA, fusion="probsparse", fusion_kwargs={"factor": 5, "seed": 0}
    ),
    "fasa-max": lambda: FaSAForecaster(**SHAPES, **FASA, fusion="max"),
    "fasa-official": lambda: FaSAForecaster(**SHAPES, **FASA, fusion="official"),
    REFERENCE: lambda: PatchTST(**SHAPES, **PATCHTST),
    "dlinear": lambda: DLinear(**SHAPES, individual=False, kernel_size=25),
    "informer": lambda: Informer(**SHAPES, dec_in=CHANNELS, c_out=CHANNELS, **INFORMER),
}
KERNEL_CHOICES = ("table", *dispatch.KERNELS)


def batch(size: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """One random ETTh1-shaped batch: the four forward inputs (time features in [-0.5, 0.5], the decoder's start
    token the last ``LABEL_LEN`` steps of the window) and the target."""
    g = torch.Generator().manual_seed(0)
    series = torch.randn(size, SEQ_LEN + PRED_LEN, CHANNELS, generator=g)
    marks = torch.rand(size, SEQ_LEN + PRED_LEN, TIME_FEATURES, generator=g) - 0.5
    x_enc, target = series[:, :SEQ_LEN], series[:, SEQ_LEN:]
    x_dec = decoder_input(series[:, SEQ_LEN - LABEL_LEN :], LABEL_LEN, PRED_LEN)
    return (x_enc, marks[:, :SEQ_LEN], x_dec, marks[:, SEQ_LEN - LABEL_LEN :]), target


def autocast_and_kernel(bf16: bool, kernel: str) -> contextlib.ExitStack:
    """bf16 autocast (or none), and FaSA's attention kernel forced unless ``kernel`` is ``table`` (the measured
    choice of :mod:`favit_probsparse.attention.dispatch`, what the model does by default)."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16))
    if kernel != "table":
        stack.enter_context(dispatch.use_kernel(kernel))
    return stack


def steps(model: torch.nn.Module, inputs, target, bf16: bool, kernel: str):
    """(training step, inference forward) of one row."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)  # the grid's optimizer (PatchTST's protocol)

    def train():
        model.train()
        with autocast_and_kernel(bf16, kernel):
            loss = F.mse_loss(model(*inputs).float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer():
        model.eval()
        reset_sampling(model)  # what evaluation does: the probsparse fusion's samples restart from its seed
        with torch.no_grad(), autocast_and_kernel(bf16, kernel):
            model(*inputs)

    return train, infer


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128, help="the grid's batch (PatchTST's protocol)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: thread CPU time, stable on a "
                   "shared machine; more: wall clock)")  # fmt: skip
    p.add_argument("--bf16", action="store_true", help="add a bf16 autocast row of every network")
    p.add_argument("--kernel", default="table", choices=KERNEL_CHOICES,
                   help="FaSA's attention kernel: the measured table (default) or one forced for every call")  # fmt: skip
    p.add_argument("--rows", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    p.add_argument("--markdown", default=None, help="also write the report to this file")
    p.add_argument("--quick", action="store_true", help="smoke run: batch 2, 1 round, no warm-up (for tests)")
    return p


def table(ms: dict[str, float], params: dict[str, int], precisions: list[str]) -> list[str]:
    """One row per network and precision: ms per step and the time over the PatchTST-style fp32 row's."""
    ref = {k: ms.get(f"{REFERENCE} fp32/{k}") for k in ("train", "infer")}
    lines = [
        "| network | precision | params (K) | train ms/step | infer ms/step | train time vs PatchTST-style fp32 "
        "| infer time vs PatchTST-style fp32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for net in params:
        for prec in precisions:
            tr, inf = ms[f"{net} {prec}/train"], ms[f"{net} {prec}/infer"]
            rel = [f"{t / ref[k]:.2f}×" if ref[k] else "–" for k, t in (("train", tr), ("infer", inf))]
            lines.append(
                f"| {net} | {prec} | {params[net] / 1e3:.1f} | {tr:.1f} | {inf:.1f} | {rel[0]} | {rel[1]} |"
            )
    return lines


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.batch, args.rounds, args.warmup = 2, 1, 0
    torch.set_num_threads(args.threads)
    command = "python benchmarks/forecasters.py " + " ".join(sys.argv[1:] if argv is None else argv)
    prov = provenance(command.strip())
    load_before = os.getloadavg()[0]
    torch.manual_seed(0)
    inputs, target = batch(args.batch)
    precisions = ["fp32", "bf16"] if args.bf16 else ["fp32"]
    fns, params = {}, {}
    for net in args.rows:
        model = NETWORKS[net]()
        params[net] = sum(q.numel() for q in model.parameters())
        for prec in precisions:  # one copy per precision: the same weights, each with its own Adam state
            m = model if prec == "fp32" else copy.deepcopy(model)
            fns[f"{net} {prec}/train"], fns[f"{net} {prec}/infer"] = steps(
                m, inputs, target, prec == "bf16", args.kernel
            )
    clock = "cpu" if args.threads == 1 else "wall"
    ms = time_interleaved(fns, "cpu", args.rounds, args.warmup, clock)
    lines = [
        "# Forecasting networks: training-step and inference time at the ETTh1 shapes of the FaSA grid",
        "",
        status_line(
            "ms per training step (forward, MSE, backward, Adam) and per inference forward, and the time over "
            "the PatchTST-style encoder's fp32 time",
            prov["date"][:16] + " UTC",
            hardware_summary(prov["hardware"]),
            prov["command"],
        ),
        "",
        f"Code at git {prov['git_commit']}. Load average {load_before:.2f} before / {os.getloadavg()[0]:.2f} "
        f"after the run. Look-back {SEQ_LEN}, horizon {PRED_LEN}, {CHANNELS} channels, batch {args.batch}, "
        f"{torch.get_num_threads()} thread(s), median of {args.rounds} interleaved rounds after {args.warmup} "
        f"warm-up ({'thread CPU time' if clock == 'cpu' else 'wall clock'}); FaSA attention kernel: "
        f"{'the measured table' if args.kernel == 'table' else args.kernel}.",
        "",
        *table(ms, params, precisions),
    ]
    print_report("\n".join(lines), args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
