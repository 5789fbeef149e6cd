"""Training-epoch time of the quick job (`favit-ps reproduce quick`), before and after the data-path changes.

Builds the quick grid's run exactly as the runner does (configs/ablations/quick.yaml over
configs/vision/favit_tiny_cifar10subset.yaml: tiny FaViT, 32², batch 64, one epoch of 84 steps on the 5438
cifar10-subset images, ``num_workers: 0``) and fits it in this process, alternating the variants round by round:

* ``before``: the data path as it was: every PNG opened and decoded by PIL every epoch, PIL pad-crop/flip, and
  every sample seeded with ``torch.manual_seed`` and the caller's Python/NumPy/torch RNG states saved and
  restored around it (reproduced here by patching :class:`SeededSamples` back to per-sample seeding, with
  ``data.cache_images: false``).
  The optimizer is the per-tensor (foreach) AdamW it was, too (patched back through
  ``classification.fused_adamw_supported``).
* ``after``: the defaults: the decoded cache (:class:`DecodedImageFolder`, pad-crop/flip on uint8 tensors),
  only torch's CPU generator seeded, RNG states saved once per batch, and the fused AdamW kernel.

Both give bit-identical batches (``tests/test_vision_data.py`` checks it); the two AdamW implementations round
differently, so the training losses agree to float precision, not bit for bit.

A callback splits each step by Lightning hook into: data (fetch + collate, from the previous step's end to this
step's start), forward (training_step: model forward, loss, logging), backward, and optimizer (gradient
clipping, AdamW, lr schedule, loop bookkeeping). Times are CPU seconds of this (single-threaded) process
(``time.process_time``), which a shared machine's load disturbs far less than wall time; wall seconds are printed
too. Usage::

    OMP_NUM_THREADS=1 python benchmarks/quick_epoch.py [--rounds 3] [--row probsparse] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from lightning.pytorch import Callback

from favit_probsparse.config import apply_overrides
from favit_probsparse.data.vision import sampling
from favit_probsparse.experiments.grid import load_grid, redirect_outputs
from favit_probsparse.experiments.runner import _base_config
from favit_probsparse.training import classification
from favit_probsparse.training.project_cli import project_cli
from favit_probsparse.utils.io import print_report
from favit_probsparse.utils.provenance import hardware_summary, utc_now

PARTS = ("data", "forward", "backward", "optimizer")


class StepSplit(Callback):
    """Sums CPU and wall seconds per part of the training step (see the module docstring)."""

    def __init__(self):
        self.cpu = dict.fromkeys(PARTS, 0.0)
        self.wall = dict.fromkeys(PARTS, 0.0)
        self.epoch_cpu = self.epoch_wall = 0.0
        self._mark = None

    def _lap(self, part: str | None) -> None:
        now = (time.process_time(), time.perf_counter())
        if part is not None and self._mark is not None:
            self.cpu[part] += now[0] - self._mark[0]
            self.wall[part] += now[1] - self._mark[1]
        self._mark = now

    def on_train_epoch_start(self, trainer, pl_module):
        self._t0 = (time.process_time(), time.perf_counter())
        self._lap(None)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._lap("data")

    def on_before_backward(self, trainer, pl_module, loss):
        self._lap("forward")

    def on_after_backward(self, trainer, pl_module):
        self._lap("backward")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._lap("optimizer")

    def on_train_epoch_end(self, trainer, pl_module):
        self.epoch_cpu = time.process_time() - self._t0[0]
        self.epoch_wall = time.perf_counter() - self._t0[1]


def _per_sample_seeded(self, key):
    """SeededSamples.__getitem__ as it was before the change (per-sample seeding and state save/restore)."""
    epoch, i = divmod(int(key), len(self.ds))
    s = sampling._mix_seed(self.seed, epoch, i)
    py, npy, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
    try:
        return self.ds[i]
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(th)


def fit_once(grid, row, variant: str, seed: int) -> dict:
    new_items = sampling.SeededSamples.__getitems__, sampling.SeededSamples.__getitem__
    fused_check = classification.fused_adamw_supported
    extra = {"data.init_args.cache_images": False} if variant == "before" else {}
    with tempfile.TemporaryDirectory() as d:
        cfg = apply_overrides(_base_config(grid), {**grid.base_overrides, **row.overrides, **extra})
        cfg = redirect_outputs(cfg, Path(d), seed)
        (Path(d) / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        cli = project_cli(["--config", str(Path(d) / "config.yaml")], run=False)
        split = StepSplit()
        cli.trainer.callbacks.append(split)
        if variant == "before":
            del sampling.SeededSamples.__getitems__  # the DataLoader then fetches sample by sample
            sampling.SeededSamples.__getitem__ = _per_sample_seeded
            classification.fused_adamw_supported = lambda model: False
        try:
            c0, w0 = time.process_time(), time.perf_counter()
            cli.trainer.fit(cli.model, cli.datamodule)
            fit_cpu, fit_wall = time.process_time() - c0, time.perf_counter() - w0
        finally:
            sampling.SeededSamples.__getitems__, sampling.SeededSamples.__getitem__ = new_items
            classification.fused_adamw_supported = fused_check
        loss = float(cli.trainer.callback_metrics["train/loss_epoch"])
    return {
        "variant": variant,
        "fit_cpu": fit_cpu,
        "fit_wall": fit_wall,
        "epoch_cpu": split.epoch_cpu,
        "epoch_wall": split.epoch_wall,
        "loss": loss,
        **{f"{p}_cpu": split.cpu[p] for p in PARTS},
        **{f"{p}_wall": split.wall[p] for p in PARTS},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default="configs/ablations/quick.yaml")
    ap.add_argument("--row", default="probsparse")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", nargs="+", default=["before", "after"], choices=["before", "after"])
    ap.add_argument("--markdown", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    grid = load_grid(args.grid)
    row = next(r for r in grid.rows if r.name == args.row)
    load0 = os.getloadavg()[0]
    runs: list[dict] = []
    for r in range(args.rounds):
        for v in args.variants if r % 2 == 0 else reversed(args.variants):
            res = fit_once(grid, row, v, args.seed)
            runs.append(res)
            print(
                f"round {r} {v}: epoch {res['epoch_cpu']:.1f} CPU s ({res['epoch_wall']:.1f} wall), fit "
                f"{res['fit_cpu']:.1f} CPU s; "
                + ", ".join(f"{p} {res[p + '_cpu']:.1f}" for p in PARTS)
                + f"; train loss {res['loss']:.6f}",
                flush=True,
            )
    med = {
        v: {k: statistics.median(x[k] for x in runs if x["variant"] == v) for k in runs[0] if k != "variant"}
        for v in args.variants
    }
    lines = [
        f"Measured {utc_now()} on {hardware_summary()}; load average {load0:.1f} before / "
        f"{os.getloadavg()[0]:.1f} after. Command: `python benchmarks/quick_epoch.py {' '.join(argv or sys.argv[1:])}`"
        f" (grid {args.grid}, row {args.row}, seed {args.seed}; medians of {args.rounds} interleaved rounds; "
        "CPU seconds of the one-threaded process).",
        "",
        "| variant | epoch CPU s | epoch wall s | fit CPU s (with setup) | "
        + " | ".join(f"{p} CPU s (%)" for p in PARTS)
        + " | other CPU s |",
        "|---|---|---|---|" + "---|" * (len(PARTS) + 1),
    ]
    for v, m in med.items():
        parts = " | ".join(
            f"{m[p + '_cpu']:.1f} ({100 * m[p + '_cpu'] / m['epoch_cpu']:.0f}%)" for p in PARTS
        )
        other = m["epoch_cpu"] - sum(m[p + "_cpu"] for p in PARTS)
        lines.append(
            f"| {v} | {m['epoch_cpu']:.1f} | {m['epoch_wall']:.1f} | {m['fit_cpu']:.1f} | {parts} | {other:.1f} |"
        )
    if "before" in med and "after" in med:
        b, a = med["before"], med["after"]
        lines += [
            "",
            f"Epoch speed-up (CPU time): {b['epoch_cpu'] / a['epoch_cpu']:.2f}x; wall time "
            f"{b['epoch_wall'] / a['epoch_wall']:.2f}x; whole fit incl. setup (CPU) {b['fit_cpu'] / a['fit_cpu']:.2f}x. "
            f"Data part: {b['data_cpu'] / max(a['data_cpu'], 1e-9):.1f}x less CPU. "
            f"Training loss {b['loss']:.6f} vs {a['loss']:.6f} (same batches; the AdamW implementations round "
            "differently).",
        ]
    text = "\n".join(lines)
    print_report(text, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
