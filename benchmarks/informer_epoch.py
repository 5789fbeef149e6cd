"""Training-epoch time of Informer on ETTh1: exact vs fast ProbSparse path, and an official-style loop.

Variants (same model, same real ETTh1 batches, batch 32, Adam, MSE):

* ``official-style``: ``prob_impl="exact"`` (the official ProbAttention algorithm statement by statement) in a loop
  written like Informer2020's ``exp_informer.train``: ``loss.item()`` appended every step (a host sync per step),
  a loader without pinned memory. This stands in for the official code, which this repository does not vendor.
* ``exact``: the exact path in our loop (no per-step host sync, pinned-memory loader on CUDA).
* ``fast``: the fast ProbSparse path in our loop.
* ``full``: full attention (Informer†) in our loop, for reference.
* ``fast-bf16``: the fast path under bf16 autocast (``trainer.precision: bf16-mixed``); on CPUs with AVX512-BF16
  or AMX (and on GPUs) the GEMMs run in bf16.
* ``fast-bits`` / ``fast-bf16-bits``: the same with ``dropout_impl="bits"`` (:class:`BitsDropout`).
* ``official``: the official Informer2020 code itself (``Exp_Informer``'s data, model, loss and optimizer, the
  body of its training loop with ``loss.item()`` each step), from a checkout given with ``--official-repo``;
  this repository does not vendor it.

Times ``--steps`` optimizer steps after ``--warmup`` steps and reports seconds per step and the implied time of a
full training epoch (``len(train windows) // batch`` steps; 266 for ETTh1 96/48/24). Usage::

    python benchmarks/informer_epoch.py [--device cpu|cuda] [--d-model 512] [--steps 20] [--threads 1]
        [--variants official official-style exact fast fast-bf16 full] [--official-repo PATH]
        [--markdown out.md] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import runpy
import statistics
import sys
import time

import torch

from favit_probsparse.data.ett import ETTDataModule, ett_path
from favit_probsparse.models.informer import Informer, decoder_input
from favit_probsparse.utils.io import print_report
from favit_probsparse.utils.provenance import hardware, utc_now

VARIANTS = {
    "official": dict(attention="prob", prob_impl="official", official_loop=True),
    "official-style": dict(attention="prob", prob_impl="exact", official_loop=True),
    "exact": dict(attention="prob", prob_impl="exact", official_loop=False),
    "fast": dict(attention="prob", prob_impl="fast", official_loop=False),
    "full": dict(attention="full", prob_impl="fast", official_loop=False),
    "fast-bits": dict(attention="prob", prob_impl="fast", official_loop=False, dropout_impl="bits"),
    "fast-bf16": dict(attention="prob", prob_impl="fast", official_loop=False, bf16=True),
    "fast-bf16-bits": dict(
        attention="prob", prob_impl="fast", official_loop=False, bf16=True, dropout_impl="bits"
    ),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _official_step(args, device: torch.device):
    """(step function, loader) built by the official ``Exp_Informer`` from ``--official-repo``."""
    repo = os.path.abspath(args.official_repo)
    if not os.path.isfile(os.path.join(repo, "main_informer.py")):
        raise SystemExit(
            f"--official-repo {repo!r} has no main_informer.py (clone zhouhaoyi/Informer2020 there)"
        )
    argv = [
        "main_informer.py", "--model", "informer", "--data", "ETTh1", "--root_path", str(ett_path("ETTh1").parent),
        "--data_path", "ETTh1.csv", "--features", "M", "--seq_len", str(args.seq_len), "--label_len",
        str(args.label_len), "--pred_len", str(args.pred_len), "--d_model", str(args.d_model), "--n_heads",
        str(args.n_heads), "--d_ff", str(args.d_ff or 4 * args.d_model), "--factor", str(int(args.factor)),
        "--batch_size", str(args.batch_size), "--itr", "0",  # itr 0: parse and set up, train nothing
    ]  # fmt: skip
    if device.type != "cuda":
        argv += ["--use_gpu", ""]  # type=bool upstream: only the empty string parses as False
    old_argv, old_path = sys.argv, list(sys.path)
    sys.argv, sys.path[:0] = argv, [repo]
    try:
        with contextlib.redirect_stdout(sys.stderr):
            ns = runpy.run_path(os.path.join(repo, "main_informer.py"), run_name="informer_benchmark")
            exp = ns["Exp_Informer"](ns["args"])
            data, loader = exp._get_data(flag="train")
    finally:
        sys.argv, sys.path[:] = old_argv, old_path
    opt, crit = exp._select_optimizer(), exp._select_criterion()
    exp.model.train()

    def step(batch):
        opt.zero_grad()
        pred, true = exp._process_one_batch(data, *batch)
        loss = crit(pred, true)
        loss.item()  # official: train_loss.append(loss.item()) every step
        loss.backward()
        opt.step()

    return step, loader


def _our_step(name: str, args, dm: ETTDataModule, device: torch.device):
    """(step function, loader) for one of our variants."""
    v = VARIANTS[name]
    torch.manual_seed(0)
    model = Informer(
        7, 7, 7, args.seq_len, args.label_len, args.pred_len, attention=v["attention"], prob_impl=v["prob_impl"],
        d_model=args.d_model, n_heads=args.n_heads, d_ff=args.d_ff or 4 * args.d_model, factor=args.factor,
        dropout_impl=v.get("dropout_impl", "torch"),
    ).to(device)  # fmt: skip
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    crit = torch.nn.MSELoss()
    loader = torch.utils.data.DataLoader(
        dm.dataset("train"), batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=0,
        pin_memory=(device.type == "cuda" and not v["official_loop"]),
    )  # fmt: skip
    non_blocking = device.type == "cuda" and not v["official_loop"]

    def step(batch):
        bx, by, bxm, bym = (t.to(device, non_blocking=non_blocking).float() for t in batch)
        opt.zero_grad(set_to_none=not v["official_loop"])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=v.get("bf16", False)):
            out = model(bx, bxm, decoder_input(by, args.label_len, args.pred_len), bym)
        loss = crit(out.float(), by[:, -args.pred_len :])
        if v["official_loop"]:
            loss.item()  # official: train_loss.append(loss.item()) every step
        loss.backward()
        opt.step()

    return step, loader


def time_variant(name: str, args, dm: ETTDataModule, device: torch.device) -> dict:
    step, loader = _official_step(args, device) if name == "official" else _our_step(name, args, dm, device)
    it = iter(loader)
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            _sync(device)
            t0 = time.perf_counter()
        step(next(it))
    _sync(device)
    per_step = (time.perf_counter() - t0) / args.steps
    return {
        "variant": name, "s_per_step": per_step, "steps_per_epoch": len(loader),
        "epoch_s": per_step * len(loader), "timed_steps": args.steps,
    }  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--variants",
        nargs="+",
        default=None,
        choices=list(VARIANTS),
        help="default: all (without 'official' unless --official-repo is given)",
    )
    p.add_argument(
        "--official-repo", default=None, help="a checkout of zhouhaoyi/Informer2020 (for 'official')"
    )
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--n-heads", type=int, default=8)
    p.add_argument("--d-ff", type=int, default=None)
    p.add_argument("--factor", type=float, default=5)
    p.add_argument("--seq-len", type=int, default=96)
    p.add_argument("--label-len", type=int, default=48)
    p.add_argument("--pred-len", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1, help="repeat the variant list; report the median")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--markdown", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.variants is None:
        args.variants = [n for n in VARIANTS if n != "official" or args.official_repo]
    if "official" in args.variants and not args.official_repo:
        p.error("variant 'official' needs --official-repo PATH (a checkout of zhouhaoyi/Informer2020)")
    dm = ETTDataModule(
        "ETTh1",
        seq_len=args.seq_len,
        label_len=args.label_len,
        pred_len=args.pred_len,
        batch_size=args.batch_size,
    )
    results: dict[str, list[dict]] = {n: [] for n in args.variants}
    for _ in range(args.repeats):  # interleave variants so that load drift hits all of them alike
        for name in args.variants:
            r = time_variant(name, args, dm, device)
            results[name].append(r)
            print(json.dumps(r), flush=True)
    rows = []
    for name, rs in results.items():
        sps = statistics.median(r["s_per_step"] for r in rs)
        rows.append({"variant": name, "s_per_step": sps, "epoch_s": sps * rs[0]["steps_per_epoch"],
                     "steps_per_epoch": rs[0]["steps_per_epoch"], "runs": [r["s_per_step"] for r in rs]})  # fmt: skip
    base = next((r for r in rows if r["variant"] == "official"), None) or next(
        (r for r in rows if r["variant"] == "official-style"), None
    )
    host = {**hardware(), "date_utc": utc_now()}
    lines = [
        f"Informer training step, ETTh1 {args.seq_len}/{args.label_len}/{args.pred_len}, batch {args.batch_size}, "
        f"d_model {args.d_model}, {args.steps} timed steps x {args.repeats} (median), {host}",
        "",
        f"| variant | s / step | epoch (s) | speed-up vs {base['variant'] if base else 'official'} |",
        "|---|---|---|---|",
    ]
    for r in rows:
        speed = f"{base['s_per_step'] / r['s_per_step']:.2f}×" if base else "—"
        lines.append(f"| {r['variant']} | {r['s_per_step']:.3f} | {r['epoch_s']:.0f} | {speed} |")
    text = "\n".join(lines)
    print_report(text, args.markdown)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "host": host, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
