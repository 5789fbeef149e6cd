"""Benchmark: FaViT training step and inference beside the official code and timm's PVTv2, interleaved in one process.

For each architecture (``--archs b0 b2``) the run builds, in one process:

* **the official code**: ``--official-file PATH``, a user's copy of the released ``classification/favit.py``
  (github.com/q2479036243/FaViT; never vendored here), built with its own factory. Without the file, the
  functional re-statement of the official op sequence (:mod:`favit_probsparse.testing.favit_official`) on the same
  weights stands in, and the table says so;
* ours (``favit_b0`` / ``favit_b2``) with each ``--fusions`` operator (B2: ``official`` only unless
  ``--all-fusions-b2``); ``fusion="official"`` loads the official model's weights (``checkpoint_filter_fn``) and the
  largest logit difference is printed, so the speed comparison is between models that compute the same function;
* timm's ``pvt_v2_b0`` / ``pvt_v2_b2``.

Each round times one training step (forward, cross-entropy, backward, AdamW step) and one inference pass
(``torch.no_grad``) of every model in turn, so a slow spell of a shared machine hits all rows alike; the table shows
the median over ``--rounds`` rounds (after ``--warmup`` untimed ones), images/s and the ratio to the official code.
``--bf16`` adds bf16 autocast rows (official code, ours with each fusion, PVTv2); ``--dispatch`` adds ours with FaSA's
attention kernels chosen by :mod:`favit_probsparse.attention.dispatch` (every other row of ours runs SDPA);
``--compile`` adds ``torch.compile`` (inductor) rows.
``--floor`` adds ours with every FaSA replaced by a zero map: the time of everything the attention does not do
(patch embeds, norms, MLPs, head, optimizer), which bounds what any attention code can gain over the official one.

    python benchmarks/favit.py --official-file ~/FaViT/classification/favit.py --threads 1 \\
        --out results/favit-benchmark.md

This is a benchmark, not a test: it prints a table and checks nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import importlib.util
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import timm
import timm.models.registry
import torch
import torch.nn.functional as F

import favit_probsparse.models  # noqa: F401  (registers favit_*)
from favit_probsparse.attention import dispatch
from favit_probsparse.models.favit import checkpoint_filter_fn
from favit_probsparse.testing.favit_official import official_forward, to_official_keys
from favit_probsparse.utils.io import write_text
from favit_probsparse.utils.provenance import hardware_summary, provenance, status_line

FUSIONS = ("official", "max", "mean", "conv1x1", "linear", "probsparse", "hierarchical")
OFFICIAL = "official code"


def load_official_module(path: str | Path):
    """Import a user's copy of the official ``classification/favit.py`` without touching timm's registry.

    The file decorates its factories with timm's ``@register_model`` under the names ``favit_b0``..., which would
    replace ours; the decorator is made a no-op while the file is imported.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise SystemExit(f"--official-file {path}: no such file (a copy of FaViT's classification/favit.py)")
    saved = timm.models.registry.register_model
    timm.models.registry.register_model = lambda fn: fn
    try:
        spec = importlib.util.spec_from_file_location("favit_official_user_copy", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        timm.models.registry.register_model = saved
    if not hasattr(mod, "favit_b0"):
        raise SystemExit(
            f"--official-file {path}: defines no favit_b0(); is it FaViT's classification/favit.py?"
        )
    return mod


class OfficialOps(torch.nn.Module):
    """The official op sequence (functional re-statement) on the weights of one of our models."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return official_forward(to_official_keys(dict(self.model.named_parameters())), x)


def build_models(arch: str, args, official_mod) -> tuple[dict[str, torch.nn.Module], dict[str, str]]:
    """Name -> model, and name -> note, for one architecture, all on the same weights where they share them."""
    torch.manual_seed(0)
    models: dict[str, torch.nn.Module] = {}
    notes: dict[str, str] = {}
    nc = 1000
    ours_official = timm.create_model(f"favit_{arch}", fusion="official", num_classes=nc)
    if official_mod is not None:
        off = getattr(official_mod, f"favit_{arch}")(num_classes=nc)
        ours_official.load_state_dict(checkpoint_filter_fn(off.state_dict(), ours_official))
        notes[OFFICIAL] = "released `classification/favit.py` (`--official-file`)"
    else:
        off = OfficialOps(ours_official)
        notes[OFFICIAL] = "op-for-op re-statement (no `--official-file` given)"
    models[OFFICIAL] = off
    x = torch.randn(2, 3, args.size, args.size)
    with torch.no_grad():
        diff = (off.eval()(x) - ours_official.eval()(x)).abs().max().item()
    notes["ours [official]"] = f"same weights; max abs logit difference {diff:.1e}"
    fusions = args.fusions if (arch == "b0" or args.all_fusions_b2) else ["official"]
    ours = {
        fz: ours_official
        if fz == "official"
        else timm.create_model(f"favit_{arch}", fusion=fz, num_classes=nc, img_size=args.size)
        for fz in fusions
    }
    for fz, m in ours.items():
        models[f"ours [{fz}]"] = m
        if args.dispatch:
            models[f"ours [{fz}] dispatch"] = with_dispatch(m)
    if args.bf16:  # bf16 autocast rows of the official code and ours (on CPU only where the chip has bf16)
        models[f"{OFFICIAL} bf16 autocast"] = off
        for fz, m in ours.items():
            models[f"ours [{fz}] bf16 autocast"] = m
            if args.dispatch:
                models[f"ours [{fz}] dispatch bf16 autocast"] = models[f"ours [{fz}] dispatch"]
    if args.dispatch:
        notes["ours [official] dispatch"] = (
            "FaSA's attention through `attention.dispatch.attend` (the measured kernel table); rows without "
            "`dispatch` force SDPA"
        )
    if args.compile:
        models["ours [official] torch.compile"] = torch.compile(ours_official)
    if args.floor:
        models["ours, FaSA removed (floor)"] = without_attention(ours_official)
        notes["ours, FaSA removed (floor)"] = "every FaSA returns zeros: the non-attention part of the step"
    if not args.no_pvt:
        models[f"timm pvt_v2_{arch}"] = timm.create_model(f"pvt_v2_{arch}", num_classes=nc)
        if args.bf16:
            models[f"timm pvt_v2_{arch} bf16 autocast"] = models[f"timm pvt_v2_{arch}"]
    return models, notes


def with_dispatch(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` (same weights) whose FaSA attention calls go through ``attention.dispatch.attend``.

    Where FaSA calls ``attend`` itself this changes nothing; rows without ``dispatch`` run under
    ``use_kernel("sdpa")`` either way, so the two rows differ only in the kernel choice."""
    from favit_probsparse.models.favit import FaSA

    out = copy.deepcopy(model)
    for m in out.modules():
        if isinstance(m, FaSA):
            m._attend = functools.partial(_dispatch_attend, m)
    return out


def _dispatch_attend(fasa, q, k, v, scale):
    return dispatch.attend(q, k, v, scale, fasa.attn_drop, fasa.training)


class _NoAttention(torch.nn.Module):
    def forward(self, x, H, W):
        return x.new_zeros(x.shape)


def without_attention(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose FaSA modules return zeros (the residual stream skips attention)."""
    from favit_probsparse.models.favit import FaSA

    floor = copy.deepcopy(model)
    for parent in list(floor.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FaSA):
                setattr(parent, name, _NoAttention())
    return floor


def timers(name: str, model: torch.nn.Module, x, y) -> tuple[Callable[[], None], Callable[[], None]]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    amp = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=name.endswith("bf16 autocast"))
    # every row but the dispatch rows runs FaSA's attention on SDPA (whether or not FaSA calls the dispatch)
    kernel = contextlib.nullcontext if " dispatch" in name else functools.partial(dispatch.use_kernel, "sdpa")

    def train():
        model.train()
        with amp, kernel():  # the kernel of the backward is fixed by the forward's graph
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer():
        model.eval()
        with torch.no_grad(), amp, kernel():
            model(x)

    return train, infer


def measure(models: dict[str, torch.nn.Module], args) -> dict[str, dict[str, float]]:
    dev = torch.device(args.device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev)
    y = torch.randint(0, 1000, (args.batch,), device=dev)
    fns = {k: timers(k, m.to(dev), x, y) for k, m in models.items()}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    times: dict[str, dict[str, list[float]]] = {k: {"train": [], "infer": []} for k in models}
    for r in range(args.warmup + args.rounds):
        for k, (train, infer) in fns.items():
            for kind, fn in (("train", train), ("infer", infer)):
                sync()
                t = clock()
                fn()
                sync()
                if r >= args.warmup:
                    times[k][kind].append(clock() - t)
        print(f"  round {r + 1}/{args.warmup + args.rounds} done", flush=True)
    return {
        k: {kind: args.batch / statistics.median(v) for kind, v in t.items()} | {"runs": len(t["train"])}
        for k, t in times.items()
    }


def profile_step(name: str, models: dict[str, torch.nn.Module], args, top: int = 12) -> list[str]:
    """``torch.profiler`` of one training step of row ``name`` (after the timed rounds): the operators with the
    largest self CPU time and their share of the step."""
    from torch.profiler import ProfilerActivity, profile

    if name not in models:
        return [f"(no row {name!r} to profile; rows: {', '.join(models)})", ""]
    dev = torch.device(args.device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev)
    y = torch.randint(0, 1000, (args.batch,), device=dev)
    train, _ = timers(name, models[name], x, y)
    train()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train()
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    lines = [
        f"Profile of one training step of `{name}` (torch.profiler, self CPU time; {total / 1e3:.0f} ms in all):",
        "",
        "| operator | calls | self CPU ms | share |",
        "|---|---|---|---|",
    ]
    for e in ops[:top]:
        lines.append(
            f"| `{e.key}` | {e.count} | {e.self_cpu_time_total / 1e3:.1f} | {e.self_cpu_time_total / total:.0%} |"
        )
    return [*lines, ""]


def table(arch: str, res: dict[str, dict[str, float]], notes: dict[str, str], models) -> list[str]:
    base = res[OFFICIAL]
    lines = [
        f"### FaViT-{arch.upper()}",
        "",
        "| model | params (M) | train img/s | train ratio | infer img/s | infer ratio | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, r in res.items():
        params = sum(p.numel() for p in models[k].parameters()) / 1e6
        lines.append(
            f"| {k} | {params:.2f} | {r['train']:.2f} | {r['train'] / base['train']:.2f}× | {r['infer']:.2f} | "
            f"{r['infer'] / base['infer']:.2f}× | {notes.get(k, '')} |"
        )
    return lines


def targets(arch: str, res: dict[str, dict[str, float]]) -> list[str]:
    """The goals, met or missed by how much: ours (``official`` fusion, and with the kernel dispatch where it was
    timed) ≥ 1.3× the official code and at least PVTv2's speed, training and inference, in each precision
    timed (ratios within one precision: bf16 rows against the official code's bf16 row)."""
    out = []
    for prec in ("", " bf16 autocast"):
        base = res.get(OFFICIAL + prec)
        pvt = next((k for k in res if k.startswith("timm pvt_v2") and k.endswith(prec or "_" + arch)), None)
        for name in (f"ours [official]{prec}", f"ours [official] dispatch{prec}"):
            if base is None or name not in res:
                continue
            for kind in ("train", "infer"):
                r = res[name][kind] / base[kind]
                line = f"- {name}, {kind}: {r:.2f}× the official code (goal ≥ 1.3×: "
                line += "met" if r >= 1.3 else f"missed by {1.3 - r:.2f}×"
                if pvt:
                    q = res[name][kind] / res[pvt][kind]
                    line += f"); {q:.2f}× {pvt[5:]} (goal ≥ 1: {'met' if q >= 1 else 'missed'}"
                out.append(line + ")")
    base, ours = res[OFFICIAL], res["ours [official]"]
    others = [k for k in res if k.startswith("ours [") and k != "ours [official]" and k.endswith("]")]
    if others:
        worst = min(others, key=lambda k: res[k]["train"])
        w = res[worst]["train"] / ours["train"]
        out.append(
            f"- every other fusion within 15% of `official` (training): slowest {worst} at {w:.2f}× → "
            f"{'met' if w >= 0.85 else f'missed by {0.85 - w:.2f}'}"
        )
        worst_i = min(others, key=lambda k: res[k]["infer"])
        wi = res[worst_i]["infer"] / ours["infer"]
        out.append(f"  (inference: slowest {worst_i} at {wi:.2f}×)")
    return [f"Targets (FaViT-{arch.upper()}):", *out, ""]


def build_parser() -> argparse.ArgumentParser:
    """The command line (also what ``benchmarks/gpu_check.py`` checks its flags against)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official-file", default=None, help="a copy of FaViT's classification/favit.py")
    p.add_argument("--archs", nargs="+", default=["b0", "b2"], choices=["b0", "b1", "b2", "b3"])
    p.add_argument("--favit", nargs="+", default=None, help="model names instead of --archs (favit_b0 ...)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the model and data are moved there)")
    p.add_argument("--fusions", nargs="+", default=list(FUSIONS), choices=FUSIONS)
    p.add_argument("--all-fusions-b2", action="store_true", help="every fusion on B2 too (default: official)")
    p.add_argument("--no-pvt", action="store_true", help="leave out timm's pvt_v2 rows")
    p.add_argument("--bf16", action="store_true", help="add bf16 autocast rows (official, ours, PVTv2)")
    p.add_argument(
        "--dispatch",
        action="store_true",
        help="add rows of ours with FaSA's attention through the measured kernel table (attention.dispatch)",
    )
    p.add_argument("--compile", action="store_true", help="add a torch.compile (inductor) row of ours")
    p.add_argument(
        "--floor", action="store_true", help="add ours with FaSA removed (the non-attention floor)"
    )
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument(
        "--rounds", type=int, default=5, help="timed rounds (B0); B2 and larger use --rounds-large"
    )
    p.add_argument("--rounds-large", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable on a shared machine)")
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall clock, or (one CPU thread only) this thread's CPU time, which other processes on a shared "
        "machine do not inflate",
    )
    p.add_argument(
        "--out",
        "--markdown",
        default=None,
        help="write the Markdown report here (e.g. results/favit-benchmark.md)",
    )
    p.add_argument(
        "--profile",
        nargs="+",
        default=None,
        metavar="ROW",
        help="after the timed rounds, profile one training step of these rows (e.g. 'ours [official] bf16 "
        "autocast') and add the top operators to the report",
    )
    p.add_argument("--json", default=None, help="write the raw numbers here")
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.clock == "cpu" and (args.threads != 1 or args.device != "cpu"):
        p.error("--clock cpu times one CPU thread: give --threads 1 and --device cpu")
    if args.favit:
        args.archs = [n.removeprefix("favit_") for n in args.favit]
    torch.set_num_threads(args.threads)
    official_mod = load_official_module(args.official_file) if args.official_file else None

    prov = provenance("python benchmarks/favit.py " + " ".join(sys.argv[1:] if argv is None else argv))
    meta = dict(
        command=prov["command"],
        hardware=hardware_summary(prov["hardware"]),
        timm=timm.__version__,
        date=prov["date"],
        git_commit=prov["git_commit"],
        load_before=os.getloadavg()[0],
    )
    body: list[str] = []
    raw = {}
    for arch in args.archs:
        models, notes = build_models(arch, args, official_mod)
        rounds = args.rounds if arch == "b0" else args.rounds_large
        print(f"FaViT-{arch.upper()}: {len(models)} models, {rounds} rounds", flush=True)
        res = measure(models, argparse.Namespace(**{**vars(args), "rounds": rounds}))
        raw[arch] = res
        body += [*table(arch, res, notes, models), "", *targets(arch, res)]
        for name in args.profile or ():
            body += profile_step(name, models, args)
        print("\n".join(body[-30:]), flush=True)
        del models
    meta["load_after"] = os.getloadavg()[0]
    head = [
        "# FaViT throughput beside the released code and timm's PVTv2",
        "",
        status_line(
            "Training-step and inference images/s, and the ratio to the released code",
            meta["date"][:16] + " UTC",
            meta["hardware"],
            meta["command"],
        ),
        "",
        f"Code at git {meta['git_commit']}; timm {meta['timm']}. Load average {meta['load_before']:.1f} before / "
        f"{meta['load_after']:.1f} after the run.",
        f"Batch {args.batch}, {args.size}², fp32 (bf16 autocast where a row says so); every round times each "
        f"model in turn (training step, then inference; {'thread CPU time' if args.clock == 'cpu' else 'wall clock'}"
        f"); median of the timed rounds after {args.warmup} warm-up round(s).",
        "",
    ]
    text = "\n".join(head + body) + "\n"
    print(text)
    if args.out:
        write_text(args.out, text)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(meta=meta, results=raw), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
