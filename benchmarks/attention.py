"""Benchmark: ProbSparse attention (official-style baseline, our exact path, our fast path) vs SDPA full attention.

Forward + backward time (median over ``--repeats`` after warm-up; CUDA events on GPU) and peak memory above
the inputs (``torch.cuda.max_memory_allocated`` on GPU; on CPU each case runs in a fresh subprocess and the
growth of the process's peak RSS is reported, which includes allocator slack).

    python benchmarks/attention.py                       # CPU: B=1, H=8, D=64
    python benchmarks/attention.py --device cuda         # GPU: B=32, H=8, D=64
    python benchmarks/attention.py --markdown results/attention-benchmark.table.md

This is a benchmark, not a test: it prints a table and checks nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from favit_probsparse.attention import probsparse_attention
from favit_probsparse.experiments.provenance import hardware_summary

METHODS = ("official", "exact", "fast", "sdpa")
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


def run_case(method, b, h, l, d, device, dtype, repeats, warmup, clock="wall"):
    make_case(method, 1, 1, 16, d, device, dtype)()  # load kernels/allocator pools before the memory baseline
    step = make_case(method, b, h, l, d, device, dtype)
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        step()
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024  # ru_maxrss is KiB on Linux
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:  # "cpu": this thread's CPU time, robust to other processes when torch runs on 1 thread
            now = time.thread_time if clock == "cpu" else time.perf_counter
            t0 = now()
            step()
            times.append((now() - t0) * 1e3)
    return {"method": method, "L": l, "ms": statistics.median(times), "peak_bytes": peak, "repeats": repeats}


def fmt_bytes(n):
    n = max(n, 0)
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def main(argv=None):
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
    p.add_argument("--markdown", default=None, help="also write the table to this file")
    p.add_argument("--_one", default=None, help=argparse.SUPPRESS)  # internal: run one case, print JSON
    a = p.parse_args(argv)
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
        print(
            json.dumps(
                run_case(method, batch, a.heads, int(l), a.dim, a.device, dtype, a.repeats, a.warmup, a.clock)
            )
        )
        return 0

    rows = {}
    for l in a.lengths:
        for m in a.methods:
            if a.device == "cuda":
                try:
                    r = run_case(m, batch, a.heads, l, a.dim, a.device, dtype, a.repeats, a.warmup)
                except torch.OutOfMemoryError:
                    r = {"method": m, "L": l, "ms": float("nan"), "peak_bytes": -1}
                torch.cuda.empty_cache()
            else:  # fresh process per case so that ru_maxrss measures this case alone
                cmd = [
                    sys.executable,
                    __file__,
                    "--_one",
                    f"{m}:{l}",
                    "--device",
                    "cpu",
                    "--batch",
                    str(batch),
                    "--heads",
                    str(a.heads),
                    "--dim",
                    str(a.dim),
                    "--repeats",
                    str(a.repeats),
                    "--warmup",
                    str(a.warmup),
                    "--dtype",
                    a.dtype,
                    "--clock",
                    a.clock,
                ]
                if a.threads:
                    cmd += ["--threads", str(a.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    print(out.stderr[-2000:], file=sys.stderr)
                    r = {"method": m, "L": l, "ms": float("nan"), "peak_bytes": -1}
                else:
                    r = json.loads(out.stdout.strip().splitlines()[-1])
            rows[(m, l)] = r
            print(f"  {m:>8} L={l:<5} {r['ms']:9.2f} ms  {fmt_bytes(r['peak_bytes']):>10}", file=sys.stderr)

    hw = hardware_summary()
    lines = [
        f"Device: {a.device} ({hw}); torch {torch.__version__}; dtype {a.dtype}; B={batch}, H={a.heads}, D={a.dim}; "
        f"forward+backward, median of {a.repeats} after {a.warmup} warm-up"
        f"{'' if a.device == 'cuda' else ' (' + ('per-thread CPU time, 1 thread' if a.clock == 'cpu' else 'wall clock') + ')'}"
        "; peak memory above the inputs "
        f"({'CUDA max_memory_allocated' if a.device == 'cuda' else 'growth of peak RSS in a fresh process'}).",
        "",
        "| L | "
        + " | ".join(f"{m} ms" for m in a.methods)
        + " | "
        + " | ".join(f"{m} peak" for m in a.methods)
        + " | fast vs official | fast peak / sdpa peak |",
        "|---" * (2 * len(a.methods) + 3) + "|",
    ]
    for l in a.lengths:
        ms = [rows[(m, l)]["ms"] for m in a.methods]
        pk = [fmt_bytes(rows[(m, l)]["peak_bytes"]) for m in a.methods]
        speed = ratio = "n/a"
        if "fast" in a.methods and "official" in a.methods:
            speed = f"{rows[('official', l)]['ms'] / rows[('fast', l)]['ms']:.2f}x"
        if "fast" in a.methods and "sdpa" in a.methods and rows[("sdpa", l)]["peak_bytes"] > 0:
            ratio = f"{rows[('fast', l)]['peak_bytes'] / rows[('sdpa', l)]['peak_bytes']:.2f}"
        lines.append(
            f"| {l} | "
            + " | ".join(f"{x:.2f}" for x in ms)
            + " | "
            + " | ".join(pk)
            + f" | {speed} | {ratio} |"
        )
    table = "\n".join(lines)
    print(table)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
