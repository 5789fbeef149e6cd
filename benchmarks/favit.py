"""Benchmark: FaViT throughput (inference and one AdamW training step) for every fusion, beside timm baselines.

Images/s for inference (``torch.no_grad``) and for a training step (forward, cross-entropy, backward, AdamW step),
median over ``--repeats`` timed iterations after ``--warmup``; peak memory. On GPU: bf16 autocast, CUDA events,
``torch.cuda.max_memory_allocated``, batch 256 inference / 128 train at 224² (``--compile`` adds a
``torch.compile`` row per FaViT model). On CPU: fp32, smaller batches (default 8 inference / 8 train at 224²,
64 / 64 at 32²), each model in a fresh subprocess so the growth of the process's peak RSS can be reported.

Rows:

* ``favit_b0`` / ``favit_b2`` with each ``--fusions`` operator, and the CIFAR variants at 32²;
* ``official-ops favit_b0`` / ``favit_b2``: the official code's op sequence (ReflectionPad2d + Unfold +
  AdaptiveAvgPool + explicit softmax attention, modules built in forward), run by the functional re-statement in
  ``tests/test_favit_official.py`` on the same weights: the baseline the ≥ 3× training-speed target refers to;
* timm ``pvt_v2_b0``, ``pvt_v2_b2``, ``swin_tiny_patch4_window7_224``.

    python benchmarks/favit.py                                    # CPU, ~5 min
    python benchmarks/favit.py --device cuda --compile            # GPU (bf16, batch 256/128)
    python benchmarks/favit.py --markdown results/favit-benchmark.table.md

This is a benchmark, not a test: it prints a table and checks nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

import favit_probsparse.models  # noqa: F401  (registers favit_*)
from favit_probsparse.experiments.provenance import hardware_summary, provenance

ROOT = Path(__file__).resolve().parents[1]
FUSIONS = ("official", "max", "mean", "conv1x1", "linear", "probsparse", "hierarchical")
BASELINES = ("pvt_v2_b0", "pvt_v2_b2", "swin_tiny_patch4_window7_224")


def _official_ops():
    spec = importlib.util.spec_from_file_location(
        "favit_official_ref", ROOT / "tests" / "test_favit_official.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class OfficialOps(torch.nn.Module):
    """The official code's forward (functional re-statement) on the weights of one of our models."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.ref = _official_ops()

    def forward(self, x):
        sd = self.ref.to_official_keys(dict(self.model.named_parameters()))
        return self.ref.official_forward(sd, x)


def build(spec: dict) -> tuple[torch.nn.Module, int]:
    kind, name, size = spec["kind"], spec["name"], spec["size"]
    if kind == "favit":
        m = timm.create_model(name, fusion=spec["fusion"], img_size=size, num_classes=spec["classes"])
    elif kind == "official-ops":
        m = OfficialOps(timm.create_model(name, img_size=size, num_classes=spec["classes"]))
    else:
        m = timm.create_model(name, num_classes=spec["classes"])
    return m, size


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, warmup, repeats):
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def run_one(spec: dict, args) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model, size = build(spec)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if spec.get("compile"):
        model = torch.compile(model)
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    res = dict(spec)
    res["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6

    def memory_reset():
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def memory_peak():
        if device.type == "cuda":
            return torch.cuda.max_memory_allocated() / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    base_rss = memory_peak()
    # inference
    bi = spec["batch_infer"]
    x = torch.randn(bi, 3, size, size, device=device)
    model.eval()

    def infer():
        with torch.no_grad(), amp:
            return model(x)

    memory_reset()
    t = _time(infer, device, args.warmup, args.repeats)
    res["infer_img_s"] = bi / t
    res["infer_mem_mb"] = memory_peak() - (0 if device.type == "cuda" else base_rss)
    out = infer()
    res["finite"] = bool(torch.isfinite(out.float()).all())
    del x, out

    # training step
    bt = spec["batch_train"]
    x = torch.randn(bt, 3, size, size, device=device)
    y = torch.randint(0, spec["classes"], (bt,), device=device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)

    def step():
        with amp:
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    memory_reset()
    t = _time(step, device, args.warmup, args.repeats)
    res["train_img_s"] = bt / t
    res["train_mem_mb"] = memory_peak() - (0 if device.type == "cuda" else base_rss)
    res["finite"] = res["finite"] and bool(torch.isfinite(step()).all())
    return res


def plan(args) -> list[dict]:
    gpu = args.device.startswith("cuda")
    bi224, bt224 = (256, 128) if gpu else (args.cpu_batch_infer, args.cpu_batch_train)
    bi32, bt32 = (1024, 512) if gpu else (64, 64)
    specs = []

    def add(kind, name, size, bi, bt, fusion=None, compile_=False):
        specs.append(
            dict(
                kind=kind,
                name=name,
                size=size,
                batch_infer=bi,
                batch_train=bt,
                fusion=fusion,
                classes=1000,
                compile=compile_,
            )
        )

    for name in args.favit:
        add("official-ops", name, 224, bi224, bt224)
        for fz in args.fusions:
            if name != "favit_b0" and fz != "official":
                continue  # every fusion on B0; B2 official only
            add("favit", name, 224, bi224, bt224, fz)
            if args.compile and fz == "official":
                add("favit", name, 224, bi224, bt224, fz, compile_=True)
    for fz in args.fusions:
        add("favit", "favit_b0_cifar", 32, bi32, bt32, fz)
    if args.compile:
        add("favit", "favit_b0_cifar", 32, bi32, bt32, "official", compile_=True)
    for name in args.baselines:
        add("timm", name, 224, bi224, bt224)
    return specs


def label(r: dict) -> str:
    if r["kind"] == "favit":
        return f"{r['name']} [{r['fusion']}]" + (" +compile" if r.get("compile") else "")
    if r["kind"] == "official-ops":
        return f"{r['name']} [official code's op sequence]"
    return f"timm {r['name']}"


def markdown(results: list[dict], args, meta: dict) -> str:
    mem = "peak GPU MiB" if args.device.startswith("cuda") else "peak RSS growth MiB"
    lines = [
        f"| model | input | params (M) | batch infer / train | infer img/s | train img/s | {mem} infer / train |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {label(r)} | {r['size']}² | | | FAILED: {r['error'][:80]} | | |")
            continue
        lines.append(
            f"| {label(r)} | {r['size']}² | {r['params_m']:.2f} | {r['batch_infer']} / {r['batch_train']} | "
            f"{r['infer_img_s']:.1f} | {r['train_img_s']:.1f} | {r['infer_mem_mb']:.0f} / {r['train_mem_mb']:.0f} |"
            + ("" if r["finite"] else " (non-finite!)")
        )
    head = [
        f"Device: {meta['device']}; torch {meta['torch']}, timm {meta['timm']}, Python {meta['python']}; "
        f"threads {meta['threads']}; date {meta['date']}.",
        f"Command: `{meta['command']}`; warm-up {args.warmup}, median of {args.repeats} timed iterations.",
        "",
    ]
    return "\n".join(head + lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--favit", nargs="*", default=["favit_b0", "favit_b2"])
    p.add_argument("--fusions", nargs="*", default=list(FUSIONS))
    p.add_argument("--baselines", nargs="*", default=list(BASELINES))
    p.add_argument("--compile", action="store_true", help="add torch.compile rows (official fusion)")
    p.add_argument("--cpu-batch-infer", type=int, default=8)
    p.add_argument("--cpu-batch-train", type=int, default=8)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--markdown", default=None, help="write the table (with header) to this file")
    p.add_argument("--json", default=None, help="write raw results to this file")
    p.add_argument("--_one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    gpu = args.device.startswith("cuda")
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    args.repeats = args.repeats if args.repeats is not None else (10 if gpu else 3)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args._one:  # child process: one model
        try:
            res = run_one(json.loads(args._one), args)
        except Exception as e:  # report, do not crash the sweep
            res = dict(json.loads(args._one), error=f"{type(e).__name__}: {e}")
        print("RESULT " + json.dumps(res), flush=True)
        return 0

    results = []
    for spec in plan(args):
        t0 = time.time()
        if gpu:
            try:
                r = run_one(spec, args)
            except Exception as e:
                r = dict(spec, error=f"{type(e).__name__}: {e}")
            torch.cuda.empty_cache()
        else:
            cmd = [
                sys.executable,
                __file__,
                "--device",
                args.device,
                "--warmup",
                str(args.warmup),
                "--repeats",
                str(args.repeats),
                "--_one",
                json.dumps(spec),
            ]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            r = json.loads(line[-1][7:]) if line else dict(spec, error=out.stderr.strip().splitlines()[-1:])
        results.append(r)
        msg = r.get("error") or f"infer {r['infer_img_s']:.1f} img/s, train {r['train_img_s']:.1f} img/s"
        print(f"{label(r):60s} {msg}  ({time.time() - t0:.0f}s)", flush=True)

    prov = provenance("python benchmarks/favit.py " + " ".join(sys.argv[1:]))
    hw = prov["hardware"]
    meta = dict(
        device=hardware_summary(hw),
        torch=hw.get("torch"),
        timm=timm.__version__,
        python=hw["python"],
        threads=args.threads or torch.get_num_threads(),
        date=prov["date"],
        command=prov["command"],
        git_commit=prov["git_commit"],
        hardware=hw,
    )
    table = markdown(results, args, meta)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(meta=meta, results=results), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
