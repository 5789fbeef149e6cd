"""Training-epoch time of Informer on ETTh1: exact vs fast ProbSparse path, and an official-style loop.

Variants (same model, same real ETTh1 batches, batch 32, Adam, MSE):

* ``official-style``: ``prob_impl="exact"`` (the official ProbAttention algorithm statement by statement) in a loop
  written like Informer2020's ``exp_informer.train``: ``loss.item()`` appended every step (a host sync per step),
  a loader without pinned memory. This stands in for the official code, which this repository does not vendor.
* ``exact``: the exact path in our loop (no per-step host sync, pinned-memory loader on CUDA).
* ``fast``: the fast ProbSparse path in our loop.
* ``full``: full attention (Informer†) in our loop, for reference.

Times ``--steps`` optimizer steps after ``--warmup`` steps and reports seconds per step and the implied time of a
full training epoch (``len(train windows) // batch`` steps; 266 for ETTh1 96/48/24). Usage::

    python benchmarks/informer_epoch.py [--device cpu|cuda] [--d-model 512] [--steps 20] [--threads 1]
        [--variants official-style exact fast full] [--markdown out.md] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from favit_probsparse.data.ett import ETTDataModule
from favit_probsparse.models.informer import Informer, decoder_input

VARIANTS = {
    "official-style": dict(attention="prob", prob_impl="exact", official_loop=True),
    "exact": dict(attention="prob", prob_impl="exact", official_loop=False),
    "fast": dict(attention="prob", prob_impl="fast", official_loop=False),
    "full": dict(attention="full", prob_impl="fast", official_loop=False),
}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_variant(name: str, args, dm: ETTDataModule, device: torch.device) -> dict:
    v = VARIANTS[name]
    torch.manual_seed(0)
    model = Informer(
        7, 7, 7, args.seq_len, args.label_len, args.pred_len, attention=v["attention"], prob_impl=v["prob_impl"],
        d_model=args.d_model, n_heads=args.n_heads, d_ff=args.d_ff or 4 * args.d_model, factor=args.factor,
    ).to(device)  # fmt: skip
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    crit = torch.nn.MSELoss()
    loader = torch.utils.data.DataLoader(
        dm.dataset("train"), batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=0,
        pin_memory=(device.type == "cuda" and not v["official_loop"]),
    )  # fmt: skip
    non_blocking = device.type == "cuda" and not v["official_loop"]
    it = iter(loader)
    losses = []
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            _sync(device)
            t0 = time.perf_counter()
        bx, by, bxm, bym = (t.to(device, non_blocking=non_blocking).float() for t in next(it))
        opt.zero_grad(set_to_none=not v["official_loop"])
        out = model(bx, bxm, decoder_input(by, args.label_len, args.pred_len), bym)
        loss = crit(out, by[:, -args.pred_len :])
        if v["official_loop"]:
            losses.append(loss.item())  # official: train_loss.append(loss.item()) every step
        loss.backward()
        opt.step()
    _sync(device)
    total = time.perf_counter() - t0
    per_step = total / args.steps
    steps_per_epoch = len(loader)
    return {
        "variant": name, "s_per_step": per_step, "steps_per_epoch": steps_per_epoch,
        "epoch_s": per_step * steps_per_epoch, "timed_steps": args.steps,
    }  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
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
    dm = ETTDataModule("ETTh1", args.seq_len, args.label_len, args.pred_len, batch_size=args.batch_size)
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
    base = next((r for r in rows if r["variant"] == "official-style"), None)
    host = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }  # fmt: skip
    lines = [
        f"Informer training step, ETTh1 {args.seq_len}/{args.label_len}/{args.pred_len}, batch {args.batch_size}, "
        f"d_model {args.d_model}, {args.steps} timed steps x {args.repeats} (median), {host}",
        "",
        "| variant | s / step | epoch (s) | speed-up vs official-style |",
        "|---|---|---|---|",
    ]
    for r in rows:
        speed = f"{base['s_per_step'] / r['s_per_step']:.2f}×" if base else "—"
        lines.append(f"| {r['variant']} | {r['s_per_step']:.3f} | {r['epoch_s']:.0f} | {speed} |")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(text + "\n")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "host": host, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
