"""Benchmark: every attention kernel of :mod:`favit_probsparse.attention.dispatch` on FaSA's shapes; writes the table.

For each shape (FaViT-B0 at 224², batch 16: every stage's global and window-branch calls, the hierarchical fusion's
key counts, and 1-D / 3-D FaSA shapes), dtype (float32, bfloat16) and mode (``train``: forward + backward;
``infer``: forward under ``no_grad``) the kernels take turns in each of ``--rounds`` rounds; the median time of each
is recorded (with one CPU thread, the thread's CPU time, robust to other processes on a shared machine), and the
fastest, where it beats SDPA by more than 5 % (else SDPA: the difference is noise). Inputs have FaSA's layout: ``q`` a strided head view of a wider projection, ``k``/``v``
halves of one ``[B, h, K, 2c]`` tensor.

    python benchmarks/attention_kernels.py                      # print the table
    python benchmarks/attention_kernels.py --write              # and store it in the package's kernel_table.json
    python benchmarks/attention_kernels.py --device cuda --write

``--write`` replaces this machine class's table (``dispatch.machine_class()``: ``cpu-avx2``, ``cpu-amx``,
``cuda-sm_90`` ...) in ``src/favit_probsparse/attention/kernel_table.json`` and keeps the others. Each table names
its CPU model and flags, whether bf16 is native or emulated there, torch version, date and command. On a CPU
without avx512_bf16/amx_bf16 the bf16 rows time emulated bf16: they choose kernels for such CPUs only.

This is a benchmark, not a test: it prints a table and checks nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from favit_probsparse.attention import dispatch
from favit_probsparse.utils.io import write_text
from favit_probsparse.utils.provenance import hardware, provenance

# (label, B, heads, queries, keys, head width): FaViT-B0 at 224², batch 16 (global branch: one head; window
# branches: heads × branches as heads), the hierarchical fusion's key counts, then 1-D and 3-D FaSA shapes
SHAPES = (
    ("B0 s1 global", 16, 1, 3136, 49, 4),
    ("B0 s1 window", 16, 2, 3136, 49, 14),
    ("B0 s2 global", 16, 1, 784, 49, 8),
    ("B0 s2 window", 16, 4, 784, 49, 14),
    ("B0 s3 global", 16, 1, 196, 49, 16),
    ("B0 s3 window", 16, 8, 196, 49, 14),
    ("B0 s4 global", 16, 1, 49, 49, 32),
    ("B0 s4 window", 16, 8, 49, 49, 28),
    ("B0 s1 hier. points+tree", 16, 1, 3136, 383, 14),
    ("B0 s1 hier. tree", 16, 1, 3136, 23, 14),
    ("B0 s2 hier. points+tree", 16, 2, 784, 95, 14),
    ("B0 s3 hier. tree", 16, 8, 196, 23, 14),
    ("B0 s4 hier. tree", 16, 8, 49, 5, 28),
    ("1-D L=336", 32, 8, 336, 49, 16),
    ("1-D L=1440", 32, 8, 1440, 49, 16),
    ("3-D 8×14×14", 4, 4, 1568, 49, 14),
    ("3-D 8×28×28", 4, 2, 6272, 49, 8),
)
#: another kernel replaces SDPA only when it is more than 5 % faster (below that, timing noise decides)
SDPA_MARGIN = 1.05
RELEVANT_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")


def choose(ms: dict[str, float]) -> str:
    """The fastest kernel; SDPA (the default) unless another beats it by more than :data:`SDPA_MARGIN`."""
    fastest = min(ms, key=ms.get)
    return "sdpa" if "sdpa" in ms and ms["sdpa"] <= ms[fastest] * SDPA_MARGIN else fastest


def make_inputs(b, h, n, k, c, dtype, device, grad):
    g = torch.Generator().manual_seed(0)
    proj = torch.randn(b, n, h * c + 4, generator=g).to(device, dtype).requires_grad_(grad)
    kv = torch.randn(b, h, k, 2 * c, generator=g).to(device, dtype).requires_grad_(grad)
    q = proj[:, :, 4:].unflatten(2, (h, c)).transpose(1, 2)  # FaSA's strided head view
    kk, vv = kv.chunk(2, dim=-1)
    return q, kk, vv, (proj, kv), torch.randn(b, h, n, c, generator=g).to(device, dtype)


def step(kernel, inputs, train):
    q, k, v, leaves, grad_out = inputs
    fn, scale = dispatch.KERNELS[kernel], q.shape[-1] ** -0.5
    if train:
        torch.autograd.backward(fn(q, k, v, scale, 0.0), grad_out, inputs=list(leaves))
    else:
        with torch.no_grad():
            fn(q, k, v, scale, 0.0)


def time_shape(shape, dtype, train, kernels, a) -> dict[str, float]:
    _, b, h, n, k, c = shape
    dev = torch.device(a.device)
    inputs = make_inputs(b, h, n, k, c, dtype, dev, train)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    # one thread on a CPU: this thread's CPU time, which a busy shared machine does not inflate; GPU: wall clock
    clock = time.perf_counter if dev.type == "cuda" or a.threads > 1 else time.thread_time
    reps = {}
    for kern in kernels:  # warm-up, and enough calls per sample for >= --min-ms
        t = clock()
        try:
            step(kern, inputs, train)
        except RuntimeError as e:  # a restricted SDPA backend that does not take this shape
            if "No available kernel" not in str(e):
                raise
            continue
        sync()
        reps[kern] = max(1, int(a.min_ms / 1000 / max(clock() - t, 1e-6)))
    kernels = list(reps)
    times: dict[str, list[float]] = {kern: [] for kern in kernels}
    for _ in range(a.rounds):
        for kern in kernels:
            sync()
            t = clock()
            for _ in range(reps[kern]):
                step(kern, inputs, train)
            sync()
            times[kern].append((clock() - t) / reps[kern] * 1000)
    return {kern: statistics.median(v) for kern, v in times.items()}


def machine_info(device: str) -> dict:
    cls = dispatch.machine_class(device)
    info: dict = {"class": cls}
    hw = hardware()
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["bf16"] = "native" if torch.cuda.is_bf16_supported() else "emulated"
    else:
        flags = dispatch.cpu_flags()
        info["cpu"] = hw["cpu"]
        info["flags"] = [f for f in RELEVANT_FLAGS if f in flags]
        native = "amx_bf16" in flags or "avx512_bf16" in flags
        info["bf16"] = (
            "native" if native else "emulated (no avx512_bf16 / amx_bf16: bf16 rows time emulation)"
        )
        info["torch_capability"] = torch.backends.cpu.get_cpu_capability()
    return info


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    p.add_argument("--modes", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    p.add_argument("--kernels", nargs="+", default=list(dispatch.KERNELS), choices=list(dispatch.KERNELS))
    p.add_argument("--shapes", nargs="+", type=int, default=None, help="indices into SHAPES (default: all)")
    p.add_argument("--rounds", type=int, default=9, help="timed rounds (kernels take turns in each)")
    p.add_argument("--min-ms", type=float, default=20.0, help="each sample repeats a call to last this long")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable on a shared machine)")
    p.add_argument("--write", action="store_true", help="store the table in the package's kernel_table.json")
    p.add_argument("--table", default=str(dispatch.TABLE_PATH), help="the JSON table --write updates")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    torch.set_num_threads(a.threads)
    shapes = [SHAPES[i] for i in a.shapes] if a.shapes else list(SHAPES)
    prov = provenance(
        "python benchmarks/attention_kernels.py " + " ".join(sys.argv[1:] if argv is None else argv)
    )
    load_before = os.getloadavg()[0]
    rows = []
    print("| shape | B·h × N × K × c | dtype | mode | " + " | ".join(a.kernels) + " | best | sdpa / best |")
    print("|---|---|---|---|" + "---|" * len(a.kernels) + "---|---|")
    for dt in a.dtypes:
        dtype = getattr(torch, dt)
        # bmm_fp32 is bmm in float32
        kernels = [k for k in a.kernels if not (k == "bmm_fp32" and dtype == torch.float32)]
        for mode in a.modes:
            for shape in shapes:
                ms = time_shape(shape, dtype, mode == "train", kernels, a)
                best = choose(ms)
                label, b, h, n, k, c = shape
                rows.append(
                    dict(
                        label=label,
                        dtype=dt,
                        training=mode == "train",
                        batch_heads=b * h,
                        queries=n,
                        keys=k,
                        head_dim=c,
                        ms={kk: round(v, 4) for kk, v in ms.items()},
                        best=best,
                    )
                )
                cells = " | ".join(f"{ms[kk]:.3f}" if kk in ms else "" for kk in a.kernels)
                print(
                    f"| {label} | {b * h}×{n}×{k}×{c} | {dt} | {mode} | {cells} | {best} | "
                    f"{ms.get('sdpa', float('nan')) / ms[best]:.2f}× |",
                    flush=True,
                )
    table = dict(
        machine=machine_info(a.device),
        torch=torch.__version__,
        date=prov["date"],
        git_commit=prov["git_commit"],
        command=prov["command"],
        threads=a.threads,
        load_before=round(load_before, 2),
        load_after=round(os.getloadavg()[0], 2),
        unit="ms per call (median of rounds; one CPU thread: the thread's CPU time)",
        sdpa_margin=SDPA_MARGIN,
        rows=rows,
    )
    print(json.dumps({k: v for k, v in table.items() if k != "rows"}, indent=1))
    if a.write:
        path = Path(a.table)
        data = json.loads(path.read_text()) if path.is_file() else {}
        others = [t for t in data.get("tables", []) if t["machine"]["class"] != table["machine"]["class"]]
        data = {
            "about": "Attention kernel timings per machine class, written by benchmarks/attention_kernels.py "
            "--write; favit_probsparse.attention.dispatch reads the 'best' of the nearest row. Do not edit.",
            "tables": [*others, table],
        }
        write_text(path, json.dumps(data, indent=1) + "\n")
        print(f"wrote the {table['machine']['class']} table to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
