"""Benchmark: one training step of a FaViT in eager mode and under ``torch.compile`` (inductor), interleaved.

Two copies of the same model (same weights, same fused AdamW, same batch) take turns: compile time is the first
compiled step; then ``--rounds`` rounds time one eager and one compiled step each (forward, cross-entropy,
backward, optimizer step) and the table shows the medians and their ratio. The sampled fusions draw the same
samples in both copies (their streams restart together), so both do the same work.

    OMP_NUM_THREADS=1 python benchmarks/compile_step.py --preset quick --fusion probsparse
    OMP_NUM_THREADS=1 python benchmarks/compile_step.py --preset b0 --batch 16

Presets: ``quick`` is the quick job's tiny FaViT (configs/vision/favit_tiny_cifar10subset.yaml: 0.41 M params,
32², batch 64); ``b0`` is ``favit_b0`` at 224². This is a benchmark, not a test: it prints a table and checks
nothing (``tests/test_favit.py`` checks that the compiled step computes eager's loss and gradients).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable

import timm
import torch
import torch.nn.functional as F

import favit_probsparse.models  # noqa: F401  (registers favit_*)
from favit_probsparse.attention.fusion import reset_sampling
from favit_probsparse.utils.io import print_report
from favit_probsparse.utils.provenance import hardware_summary, utc_now

PRESETS = {
    "quick": dict(
        name="favit_b0_cifar",
        kwargs=dict(
            img_size=32, stem_stride=2, depths=[1, 1, 2, 1], embed_dims=[16, 32, 64, 128], num_classes=10
        ),
        size=32,
        batch=64,
    ),
    "b0": dict(name="favit_b0", kwargs=dict(num_classes=1000), size=224, batch=16),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    p.add_argument("--fusion", default="official")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--markdown", default=None, help="also write the table to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    preset = PRESETS[args.preset]
    batch = args.batch or preset["batch"]
    torch.manual_seed(0)
    eager = timm.create_model(preset["name"], fusion=args.fusion, **preset["kwargs"])
    compiled_model = copy.deepcopy(eager)
    x = torch.randn(batch, 3, preset["size"], preset["size"])
    y = torch.randint(0, preset["kwargs"]["num_classes"], (batch,))

    def stepper(model: torch.nn.Module, forward) -> Callable[[], float]:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def step() -> float:
            t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(forward(x), y).backward()
            opt.step()
            return time.perf_counter() - t

        return step

    step_e = stepper(eager, eager)
    step_c = stepper(compiled_model, torch.compile(compiled_model))
    compile_s = step_c()  # compiles the forward and backward graphs
    step_e()
    reset_sampling(eager)
    reset_sampling(compiled_model)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for r in range(args.rounds):
        order = (("eager", step_e), ("compiled", step_c))
        for name, step in order if r % 2 == 0 else reversed(order):
            times[name].append(step())
    te, tc = statistics.median(times["eager"]), statistics.median(times["compiled"])
    lines = [
        f"Measured {utc_now()} on {hardware_summary()}. Command: `python benchmarks/compile_step.py "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}` (preset {args.preset}: {preset['name']}, "
        f"fusion {args.fusion}, {preset['size']}², batch {batch}; medians of {args.rounds} interleaved rounds).",
        "",
        "| mode | training step s | img/s | ratio to eager |",
        "|---|---|---|---|",
        f"| eager | {te:.3f} | {batch / te:.1f} | 1.00× |",
        f"| torch.compile (inductor) | {tc:.3f} | {batch / tc:.1f} | {te / tc:.2f}× |",
        "",
        f"Compiling (the first compiled step, forward and backward graphs): {compile_s:.0f} s, the time of "
        f"{compile_s / te:.0f} eager steps.",
    ]
    text = "\n".join(lines)
    print_report(text, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
