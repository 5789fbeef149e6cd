"""Benchmark: ProbSparse attention (official-style baseline, our exact path, our fast path) vs SDPA full attention.

Forward + backward time (median over ``--repeats`` rounds in which the methods take turns; CUDA events on GPU)
and peak memory above the inputs (``torch.cuda.max_memory_allocated`` on GPU; on CPU each case runs in a fresh
subprocess and the growth of the process's peak RSS is reported, which includes allocator slack). Each row
also gives ProbSparse's minimum FLOPs and bytes and the fast path's distance to the roofline floor, from the
GEMM and copy speeds measured at the start.

    python benchmarks/attention.py                       # CPU: B=1, H=8, D=64
    python benchmarks/attention.py --device cuda         # GPU: B=32, H=8, D=64
    python benchmarks/attention.py --markdown results/attention-benchmark.table.md
    python -m favit_probsparse.benchmarks.attention      # the same, from an installed package

This is a benchmark, not a test: it prints a table and checks nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from favit_probsparse.attention import (
    probsparse_attention,
    probsparse_counts,
    sample_key_index,
    sparsity_measure,
)
from favit_probsparse.utils.io import print_report
from favit_probsparse.utils.provenance import hardware_summary

METHODS = ("official", "exact", "fast", "sdpa")
# The fast path's two pieces of arithmetic that no implementation avoids, timed alone (--parts); the compiled
# measure (--compile-measure) asks whether a generated kernel would do the measure better than ATen's SDDMM.
PARTS = ("measure", "matmuls")
DEFAULT_LENGTHS = (96, 336, 720, 1440, 5760)


# ---- the baseline: Informer2020 models/attn.py ProbAttention, restated with the same tensor shapes ----------
def _official_prob_qk(q, k, sample_k, n_top):
    b, h, l_k, e = k.shape
    _, _, l_q, _ = q.shape
    k_expand = k.unsqueeze(-3).expand(b, h, l_q, l_k, e)
    index_sample = torch.randint(l_k, (l_q, sample_k))  # drawn on the host, as the official code does
    k_sample = k_expand[:, :, torch.arange(l_q).unsqueeze(1), index_sample, :]
    q_k_sample = torch.matmul(q.unsqueeze(-2), k_sample.transpose(-2, -1)).squeeze(-2)
    m = q_k_sample.max(-1)[0] - torch.div(q_k_sample.sum(-1), l_k)
    m_top = m.topk(n_top, sorted=False)[1]
    q_reduce = q[torch.arange(b)[:, None, None], torch.arange(h)[None, :, None], m_top, :]
    return torch.matmul(q_reduce, k.transpose(-2, -1)), m_top


def official_prob_attention(queries, keys, values, factor=5):
    """Inputs [B, L, H, D] like ``AttentionLayer`` hands them over; returns [B, L_Q, H, D]."""
    b, l_q, h, d = queries.shape
    _, l_k, _, _ = keys.shape
    queries, keys, values = queries.transpose(2, 1), keys.transpose(2, 1), values.transpose(2, 1)
    u_part = factor * np.ceil(np.log(l_k)).astype("int").item()
    u = factor * np.ceil(np.log(l_q)).astype("int").item()
    u_part = u_part if u_part < l_k else l_k
    u = u if u < l_q else l_q
    scores_top, index = _official_prob_qk(queries, keys, sample_k=u_part, n_top=u)
    scores_top = scores_top * (1.0 / math.sqrt(d))
    v_sum = values.mean(dim=-2)
    context = v_sum.unsqueeze(-2).expand(b, h, l_q, v_sum.shape[-1]).clone()
    attn = torch.softmax(scores_top, dim=-1)
    context[torch.arange(b)[:, None, None], torch.arange(h)[None, :, None], index, :] = torch.matmul(
        attn, values
    ).type_as(context)
    return context.transpose(2, 1).contiguous()


# ---- one case ------------------------------------------------------------------------------------------------
def make_case(method, b, h, l, d, device, dtype):
    g = torch.Generator(device="cpu").manual_seed(0)
    shape = (b, l, h, d) if method == "official" else (b, h, l, d)
    q, k, v = (torch.randn(shape, generator=g, dtype=dtype).to(device).requires_grad_() for _ in range(3))
    if method == "official":
        fn = lambda: official_prob_attention(q, k, v)
    elif method in ("exact", "fast"):
        fn = lambda: probsparse_attention(q, k, v, impl=method)
    else:
        fn = lambda: F.scaled_dot_product_attention(q, k, v)
    grad = None

    def step():
        nonlocal grad
        out = fn()
        if grad is None:
            grad = torch.randn_like(out)
        out.backward(grad)
        q.grad = k.grad = v.grad = None

    return step


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def peak_memory(method, b, h, l, d, device, dtype):
    """Peak memory of one forward+backward above the inputs (CUDA allocator peak, or growth of peak RSS)."""
    make_case(method, 1, 1, 16, d, device, dtype)()  # load kernels/allocator pools before the baseline
    step = make_case(method, b, h, l, d, device, dtype)
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    try:  # Linux: reset the peak RSS (VmHWM) so that import-time peaks do not hide this case's
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _status_kib("VmRSS")
        step()
        return (_status_kib("VmHWM") - base) * 1024
    except OSError:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        step()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024  # KiB on Linux


def _status_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def time_interleaved(steps, device, repeats, warmup, clock):
    """Median ms per method; the methods take turns in every round, so a change in machine load hits all
    of them alike and the ratios stay comparable."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {m: [] for m in steps}
    now = time.thread_time if clock == "cpu" else time.perf_counter
    for _ in range(repeats):
        for m, step in steps.items():
            if device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                step()
                end.record()
                torch.cuda.synchronize()
                times[m].append(start.elapsed_time(end))
            else:  # "cpu": this thread's CPU time, robust to other processes when torch runs on 1 thread
                t0 = now()
                step()
                times[m].append((now() - t0) * 1e3)
    return {m: statistics.median(t) for m, t in times.items()}


# ---- the fast path's irreducible parts -----------------------------------------------------------------------
def _gathered_measure(q, k, index, divisor):
    """The sparsity measure written as gather + contraction, for ``torch.compile`` to fuse into one loop."""
    s = (q.unsqueeze(-2) * k[:, :, index]).sum(-1)  # [B, H, L_Q, U]
    return s.amax(-1) - s.sum(-1) / divisor


def make_part(part, b, h, l, d, device, dtype):
    """One of the fast path's irreducible pieces at the shapes it has at length ``l`` (no autograd):
    ``measure`` (the L·U sampled dot products and their max/sum, through :func:`sparsity_measure`'s own path),
    ``measure-compiled`` (the same values from an inductor-compiled gather + contraction) or ``matmuls`` (the
    active rows' six products: Q_top·Kᵀ and P·V forward; dP, dV, dQ and dK backward)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    n_samples, u = probsparse_counts(l, l, 5)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype).to(device)

    q, k, v = (rnd(b, h, l, d) for _ in range(3))
    index = sample_key_index(l, l, n_samples, device=device)
    if part == "measure":
        return lambda: sparsity_measure(q, k, index)
    if part == "measure-compiled":
        fn = torch.compile(_gathered_measure, dynamic=False)
        return lambda: fn(q, k, index, l)
    keys, values = k.reshape(b * h, l, d), v.reshape(b * h, l, d)
    q_top, grad = rnd(b * h, u, d), rnd(b * h, u, d)
    probs, grad_scores = rnd(b * h, u, l), rnd(b * h, u, l)
    return lambda: (
        torch.bmm(q_top, keys.transpose(1, 2)),
        torch.bmm(probs, values),
        torch.bmm(grad, values.transpose(1, 2)),
        torch.bmm(probs.transpose(1, 2), grad),
        torch.bmm(grad_scores, keys),
        torch.bmm(grad_scores.transpose(1, 2), q_top),
    )


def part_flops(part, b, h, l, d):
    """The FLOPs of one part; ``measure`` + ``matmuls`` are :func:`probsparse_work`'s FLOPs."""
    n_samples, u = probsparse_counts(l, l, 5)
    return b * h * d * l * (2 * n_samples if part.startswith("measure") else 12 * u)


# ---- the roofline floor --------------------------------------------------------------------------------------
def machine_peaks(device, dtype):
    """Measured (GEMM GFLOP/s, copy GB/s) on this device and thread count: a large square matmul, and a
    copy between two preallocated 256 MiB buffers (read + write bytes)."""
    n = 4096 if device == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    x = torch.empty(2**26, device=device, dtype=torch.float32).normal_()
    y = torch.empty_like(x)
    steps = {"gemm": lambda: a @ b, "copy": lambda: y.copy_(x)}
    ms = time_interleaved(steps, device, 7, 2, "cpu" if device == "cpu" else "wall")
    return 2 * n**3 / ms["gemm"] / 1e6, 2 * x.numel() * 4 / ms["copy"] / 1e6


def probsparse_work(b, h, l, d, itemsize):
    """(FLOPs, bytes) that ProbSparse forward+backward cannot avoid: the L·U sampled dot products of the
    measure, the active-query attention (2 matmuls forward, 4 backward, each u·L·D multiply-adds), and one
    pass over q, k, v, the output, its gradient and the three input gradients."""
    n_samples, u = probsparse_counts(l, l, 5)
    flops = b * h * d * l * (2 * n_samples + 12 * u)
    return flops, 8 * b * h * l * d * itemsize


def _child_env() -> dict[str, str]:
    """This process's environment, with the folder this package was imported from first on PYTHONPATH, so that
    ``python -m favit_probsparse...`` in a child finds the same package however the parent found it."""
    root = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


def fmt_bytes(n):
    if n < 0:
        return "n/a"  # not measured (--no-memory, out of memory, or the case failed)
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def build_parser() -> argparse.ArgumentParser:
    """The command line (also what ``benchmarks/gpu_check.py`` checks its flags against)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=None, help="default 32 on GPU, 1 on CPU")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--lengths", type=int, nargs="+", default=list(DEFAULT_LENGTHS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default=None,
        help="CPU timing: wall clock, or this thread's CPU time (default, forces 1 thread; robust to a "
        "loaded machine)",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory columns")
    p.add_argument(
        "--parts",
        action="store_true",
        help="also time the fast path's measure and active-row matmuls alone (a second table)",
    )
    p.add_argument(
        "--compile-measure",
        action="store_true",
        help="also time the measure compiled by torch.compile (implies --parts; needs a C++ compiler on CPU)",
    )
    p.add_argument("--markdown", default=None, help="also write the table to this file")
    p.add_argument("--_one", default=None, help=argparse.SUPPRESS)  # internal: peak memory of one case
    return p


def _case_peak(a: argparse.Namespace, m: str, l: int, batch: int, dtype) -> int:
    """Peak memory of one case in bytes (-1: not measured): CUDA's counter, or a fresh process on the CPU."""
    if a.device == "cuda":
        peak = -1
        with contextlib.suppress(torch.OutOfMemoryError):
            peak = peak_memory(m, batch, a.heads, l, a.dim, a.device, dtype)
        torch.cuda.empty_cache()
        return peak
    # a fresh process per case so that ru_maxrss measures this case alone; by module name, so that it runs from
    # an installed package as from the checkout
    cmd = [
        sys.executable,
        "-m",
        "favit_probsparse.benchmarks.attention",
        "--_one",
        f"{m}:{l}",
        "--device",
        "cpu",
    ]
    cmd += ["--batch", str(batch), "--heads", str(a.heads), "--dim", str(a.dim), "--dtype", a.dtype]
    cmd += ["--threads", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_child_env())
    if out.returncode == 0:
        return json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]
    print(out.stderr[-2000:], file=sys.stderr)
    return -1


def _measure(a: argparse.Namespace, batch: int, dtype) -> dict[tuple[str, int], dict]:
    """Per (method, L): the median step time (NaN when out of memory) and the peak memory."""
    rows: dict[tuple[str, int], dict] = {}
    for l in a.lengths:
        steps = {}
        for m in a.methods:
            try:
                steps[m] = make_case(m, batch, a.heads, l, a.dim, a.device, dtype)
                steps[m]()
            except torch.OutOfMemoryError:
                steps.pop(m, None)
                rows[(m, l)] = {"ms": float("nan")}
            if a.device == "cuda":
                torch.cuda.empty_cache()
        for part in _parts(a):
            steps[part] = make_part(part, batch, a.heads, l, a.dim, a.device, dtype)
        for m, ms in time_interleaved(steps, a.device, a.repeats, a.warmup, a.clock).items():
            rows[(m, l)] = {"ms": ms}
        del steps
        for m in a.methods:
            failed = rows[(m, l)]["ms"] != rows[(m, l)]["ms"]  # NaN
            peak = -1 if a.no_memory or failed else _case_peak(a, m, l, batch, dtype)
            rows[(m, l)]["peak_bytes"] = peak
            print(
                f"  {m:>8} L={l:<5} {rows[(m, l)]['ms']:9.2f} ms  {fmt_bytes(peak):>10}",
                file=sys.stderr,
            )
    return rows


def _parts(a: argparse.Namespace) -> tuple[str, ...]:
    if not (a.parts or a.compile_measure):
        return ()
    return PARTS + (("measure-compiled",) if a.compile_measure else ())


def _parts_table(a, rows, batch, gflops: float) -> str:
    """Each part's time, speed and share of the fast path, beside its FLOPs at the measured GEMM speed."""
    lines = [
        "Parts of the fast path, timed alone in the same rounds (no autograd); `rest` is the fast path minus "
        "`measure` and `matmuls`: softmax and its backward, top-k, the key sample, the lazy rows, copies and "
        "fills. `at GEMM speed` is the part's FLOPs at the measured square-GEMM speed.",
        "",
        "| L | part | ms | GFLOP | GFLOP/s | at GEMM speed ms | ms / at GEMM speed | share of fast |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for l in a.lengths:
        fast = rows[("fast", l)]["ms"]  # main() refuses parts without the fast path
        for part in _parts(a):
            ms, flops = rows[(part, l)]["ms"], part_flops(part, batch, a.heads, l, a.dim)
            at_peak = flops / gflops / 1e6
            lines.append(
                f"| {l} | {part} | {ms:.2f} | {flops / 1e9:.3f} | {flops / ms / 1e6:.1f} | {at_peak:.2f} | "
                f"{ms / at_peak:.1f}x | {ms / fast:.0%} |"
            )
        rest = fast - rows[("measure", l)]["ms"] - rows[("matmuls", l)]["ms"]
        lines.append(f"| {l} | rest | {rest:.2f} |  |  |  |  | {rest / fast:.0%} |")
    return "\n".join(lines)


def _table(a, rows, batch, dtype, peaks: tuple[float, float], loads: tuple[float, float]) -> str:
    """The Markdown report: one header paragraph (device, settings, date, load), the roofline note, the table."""
    gflops, gbs = peaks
    timing = (
        "CUDA events"
        if a.device == "cuda"
        else ("per-thread CPU time, 1 thread" if a.clock == "cpu" else "wall clock")
    )
    lines = [
        f"Device: {a.device} ({hardware_summary()}); dtype {a.dtype}; "
        f"B={batch}, H={a.heads}, D={a.dim}; forward+backward, median of {a.repeats} interleaved rounds "
        f"after {a.warmup} warm-up ({timing}); peak memory above the inputs "
        f"({'CUDA max_memory_allocated' if a.device == 'cuda' else 'growth of peak RSS in a fresh process'}); "
        f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; 1-min load average "
        f"{loads[0]:.1f} before, {loads[1]:.1f} after.",
        "",
        f"Roofline floor = max(FLOPs / {gflops:.1f} GFLOP/s, bytes / {gbs:.1f} GB/s), both measured here "
        "(a square GEMM and a large copy in this dtype and thread count). FLOPs and bytes are ProbSparse's "
        "forward+backward minimum (sampled measure, active-query attention, one pass over q, k, v, the "
        "output and the gradients).",
        "",
        "| L | "
        + " | ".join(f"{m} ms" for m in a.methods)
        + " | "
        + " | ".join(f"{m} peak" for m in a.methods)
        + " | fast vs official | fast peak / sdpa peak | GFLOP | MB | floor ms | fast / floor |",
        "|---" * (2 * len(a.methods) + 7) + "|",
    ]
    itemsize = torch.empty((), dtype=dtype).element_size()
    for l in a.lengths:
        ms = [rows[(m, l)]["ms"] for m in a.methods]
        pk = [fmt_bytes(rows[(m, l)]["peak_bytes"]) for m in a.methods]
        speed = ratio = over = "n/a"
        if "fast" in a.methods and "official" in a.methods:
            speed = f"{rows[('official', l)]['ms'] / rows[('fast', l)]['ms']:.2f}x"
        if "fast" in a.methods and "sdpa" in a.methods and rows[("sdpa", l)]["peak_bytes"] > 0:
            ratio = f"{rows[('fast', l)]['peak_bytes'] / rows[('sdpa', l)]['peak_bytes']:.2f}"
        flops, nbytes = probsparse_work(batch, a.heads, l, a.dim, itemsize)
        floor = max(flops / gflops / 1e6, nbytes / gbs / 1e6)
        if "fast" in a.methods:
            over = f"{rows[('fast', l)]['ms'] / floor:.1f}x"
        lines.append(
            f"| {l} | "
            + " | ".join(f"{x:.2f}" for x in ms)
            + " | "
            + " | ".join(pk)
            + f" | {speed} | {ratio} | {flops / 1e9:.3f} | {nbytes / 1e6:.1f} | {floor:.2f} | {over} |"
        )
    if _parts(a):
        lines += ["", _parts_table(a, rows, batch, gflops)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if _parts(a) and "fast" not in a.methods:
        parser.error(
            "--parts and --compile-measure compare parts with the fast path: keep 'fast' in --methods"
        )
    if a.device == "cpu" and a.clock is None:
        a.clock = "cpu"
    if a.clock == "cpu":
        a.threads = 1
    if a.threads:
        torch.set_num_threads(a.threads)
    batch = a.batch or (32 if a.device == "cuda" else 1)
    dtype = getattr(torch, a.dtype)
    if a._one:
        method, l = a._one.split(":")
        print(json.dumps({"peak_bytes": peak_memory(method, batch, a.heads, int(l), a.dim, a.device, dtype)}))
        return 0

    load_before = os.getloadavg()
    gflops, gbs = machine_peaks(a.device, dtype)
    print(f"  measured peaks: GEMM {gflops:.1f} GFLOP/s, copy {gbs:.1f} GB/s", file=sys.stderr)
    rows = _measure(a, batch, dtype)
    table = _table(a, rows, batch, dtype, (gflops, gbs), (load_before[0], os.getloadavg()[0]))
    print_report(table, a.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
