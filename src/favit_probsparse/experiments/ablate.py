"""``favit-ps ablate GRID.yaml --seeds 0 1 --out results/``: run a grid of Lightning configs over seeds, then
write a result table (``results/<name>.md``), the raw numbers (``results/<name>.json``) and a chart
(``results/<name>.png``).

The runner is generic (vision, forecasting, position-encoding ablations): each run is one Lightning config, fit
then (by default) tested, in its own subprocess (``python -m favit_probsparse.experiments.ablate --worker DIR``),
so a crash or an out-of-memory in one run is recorded and the grid goes on.

Grid file (YAML)::

    name: fusion-ablation-cifar10       # results/<name>.md|.png|.json and runs/<name>/ (default: file stem)
    title: Cross-window fusion on CIFAR-10 (subset)      # optional heading
    description: |                      # optional text printed under the heading (markdown)
      ...
    base_config: configs/vision/favit_cifar_b0_cifar10subset.yaml   # a `favit-ps fit` config; relative paths are
                                        # tried against the current folder, then the grid file's folder
    base_overrides:                     # dotted keys into the config's YAML, applied to every row
      trainer.max_epochs: 5
    metric:                             # the number the table reports (a key of trainer.callback_metrics)
      name: test/acc1
      mode: max                         # max: higher is better; min: lower is better (test/mse)
      scale: 100                        # display factor (accuracy in [0, 1] shown as %)
      label: Top-1 (%)
      digits: 2
    extra_metrics:                      # optional further columns (mean ± std over seeds)
      - {name: test/acc5, label: Top-5 (%), scale: 100}
      - {name: train/images_per_s, label: train img/s, digits: 0}
    seeds: [0, 1]                       # default seeds (`--seeds` overrides)
    test: true                          # run `test` after `fit` (false: report the fit's last logged metrics)
    test_ckpt: last                     # test the final weights (last) or the best checkpoint (best)
    timeout_s: 3600                     # optional per-run wall limit
    reference_label: seed Table 1       # optional: name of the reference column
    reference_note: ...                 # optional: how the reference relates to our numbers
    env: {OMP_NUM_THREADS: "1"}         # optional environment defaults for the runs (the caller's env wins)
    rows:
      - name: max                       # folder-safe id (runs/<grid>/<row>/seed<k>/)
        label: Max pooling              # optional display name
        overrides:                      # dotted keys, merged over base_config + base_overrides
          model.init_args.model_kwargs.fusion: max
        reference: 68.9                 # optional paper/seed number shown beside ours (any text or number)

Dotted keys address the YAML tree of the config (``model.init_args.model_kwargs.fusion``); an integer segment
indexes a list (``trainer.callbacks.0.init_args.monitor``); missing dict levels are created; the value is any
YAML value. The merged config of each run is written to ``runs/<grid>/<row>/seed<k>/config.yaml`` and is what runs.
The runner also points ``trainer.default_root_dir``, every logger's ``save_dir`` and any ``ModelCheckpoint``
``dirpath`` into that folder, and sets ``seed_everything`` to the seed.

Each run folder ends with ``metrics.json`` (the done-marker: metrics, model stats, wall time, seed, config hash)
or ``failed.json`` (exit code, error tail); ``log.txt`` has its output. Re-running skips finished runs whose
config is unchanged, re-runs failed or changed ones (``--force`` re-runs all), and regenerates the report. A
failed run shows as FAILED in the table (with its error in a footnote) and makes the command exit with 1.

Model statistics: if the LightningModule has a ``model_stats()`` method returning a dict of numbers
(``params_m``, ``gmacs``, ...), these are recorded and shown; otherwise the parameter count is.

Command line: ``favit-ps ablate GRID.yaml [--seeds 0 1] [--out results] [--runs-dir runs] [--rows a b]
[--set key=value ...] [--force] [--report-only] [--dry-run] [--budget-min M] [--timeout-s S] [--stats-only]``.
``--stats-only`` trains nothing: it builds each row's model and writes ``<out>/<name>-model-stats.md``
(parameters, GMACs) in seconds.
``--set`` adds base overrides (e.g. ``--set trainer.max_epochs=1`` for a smoke run); ``--budget-min`` stops
launching new runs once that much wall time has passed (unstarted runs are listed as not run). Runs go in
seed-major order (every row for the first seed, then the next seed) so a budget cut keeps whole seeds.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Grid", "apply_overrides", "load_grid", "main", "run_grid", "write_report"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


# ============================================================================================ grid file
@dataclass
class Row:
    name: str
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)
    reference: Any = None


@dataclass
class Metric:
    name: str
    mode: str = "max"
    scale: float = 1.0
    label: str | None = None
    digits: int = 2

    @classmethod
    def parse(cls, spec: Any, where: str) -> Metric:
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, dict) or "name" not in spec:
            raise ValueError(f"{where}: a metric is a name or a mapping with 'name', got {spec!r}")
        unknown = set(spec) - {"name", "mode", "scale", "label", "digits"}
        if unknown:
            raise ValueError(f"{where}: unknown metric keys {sorted(unknown)}")
        m = cls(**spec)
        if m.mode not in ("max", "min"):
            raise ValueError(f"{where}: metric mode must be 'max' or 'min', got {m.mode!r}")
        return m

    @property
    def title(self) -> str:
        return self.label or self.name


@dataclass
class Grid:
    name: str
    path: Path
    base_config: Path
    rows: list[Row]
    metric: Metric
    extra_metrics: list[Metric] = field(default_factory=list)
    base_overrides: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    title: str | None = None
    description: str | None = None
    test: bool = True
    test_ckpt: str = "last"
    timeout_s: float | None = None
    reference_label: str = "reference"
    reference_note: str | None = None
    env: dict[str, str] = field(default_factory=dict)


GRID_KEYS = {
    "name",
    "title",
    "description",
    "base_config",
    "base_overrides",
    "metric",
    "extra_metrics",
    "seeds",
    "test",
    "test_ckpt",
    "timeout_s",
    "reference_label",
    "reference_note",
    "env",
    "rows",
}


def load_grid(path: str | os.PathLike) -> Grid:
    """Read and validate a grid YAML file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grid file {path} not found")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a grid file is a YAML mapping")
    unknown = set(raw) - GRID_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)} (known: {sorted(GRID_KEYS)})")
    for key in ("base_config", "metric", "rows"):
        if key not in raw:
            raise ValueError(f"{path}: missing required key {key!r}")
    base = Path(raw["base_config"])
    candidates = [base] if base.is_absolute() else [base, path.parent / base]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise FileNotFoundError(
            f"{path}: base_config {raw['base_config']} not found (tried "
            f"{', '.join(str(c) for c in candidates)})"
        )
    rows = []
    if not isinstance(raw["rows"], list) or not raw["rows"]:
        raise ValueError(f"{path}: 'rows' must be a non-empty list")
    for i, r in enumerate(raw["rows"]):
        if not isinstance(r, dict) or "name" not in r:
            raise ValueError(f"{path}: row {i} needs a 'name'")
        bad = set(r) - {"name", "label", "overrides", "reference"}
        if bad:
            raise ValueError(f"{path}: row {r['name']!r} has unknown keys {sorted(bad)}")
        name = str(r["name"])
        if not _NAME_RE.match(name):
            raise ValueError(f"{path}: row name {name!r} must be folder-safe (letters, digits, _ . + -)")
        ov = r.get("overrides") or {}
        if not isinstance(ov, dict):
            raise ValueError(f"{path}: row {name!r} overrides must be a mapping of dotted keys")
        rows.append(
            Row(name=name, label=str(r.get("label", name)), overrides=ov, reference=r.get("reference"))
        )
    names = [r.name for r in rows]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{path}: duplicate row names {dup}")
    name = str(raw.get("name") or path.stem)
    if not _NAME_RE.match(name):
        raise ValueError(f"{path}: grid name {name!r} must be folder-safe")
    test_ckpt = str(raw.get("test_ckpt", "last"))
    if test_ckpt not in ("last", "best"):
        raise ValueError(f"{path}: test_ckpt must be 'last' or 'best'")
    seeds = raw.get("seeds", [0])
    seeds = [int(s) for s in (seeds if isinstance(seeds, list) else [seeds])]
    return Grid(
        name=name,
        path=path,
        base_config=found,
        rows=rows,
        metric=Metric.parse(raw["metric"], f"{path}: metric"),
        extra_metrics=[Metric.parse(m, f"{path}: extra_metrics") for m in raw.get("extra_metrics") or []],
        base_overrides=dict(raw.get("base_overrides") or {}),
        seeds=seeds,
        title=raw.get("title"),
        description=raw.get("description"),
        test=bool(raw.get("test", True)),
        test_ckpt=test_ckpt,
        timeout_s=raw.get("timeout_s"),
        reference_label=str(raw.get("reference_label", "reference")),
        reference_note=raw.get("reference_note"),
        env={str(k): str(v) for k, v in (raw.get("env") or {}).items()},
    )


# ============================================================================================ overrides
def apply_overrides(cfg: dict, overrides: dict[str, Any]) -> dict:
    """Return a copy of ``cfg`` with dotted-key ``overrides`` applied (see the module docstring)."""
    cfg = copy.deepcopy(cfg)
    for key, value in overrides.items():
        parts = str(key).split(".")
        node: Any = cfg
        for j, part in enumerate(parts):
            last = j == len(parts) - 1
            if isinstance(node, list):
                try:
                    idx = int(part)
                    node[idx]  # bounds check
                except (ValueError, IndexError):
                    raise KeyError(
                        f"override {key!r}: {part!r} is not a valid index of a list of {len(node)}"
                    ) from None
                if last:
                    node[idx] = copy.deepcopy(value)
                else:
                    node = node[idx]
            elif isinstance(node, dict):
                if last:
                    node[part] = copy.deepcopy(value)
                else:
                    if node.get(part) is None:
                        node[part] = {}
                    node = node[part]
            else:
                raise KeyError(
                    f"override {key!r}: {'.'.join(parts[:j])!r} is a {type(node).__name__}, "
                    "not a mapping or list"
                )
    return cfg


def _redirect_outputs(cfg: dict, run_dir: Path, seed: int) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg["seed_everything"] = int(seed)
    trainer = cfg.setdefault("trainer", {}) or {}
    cfg["trainer"] = trainer
    trainer["default_root_dir"] = str(run_dir)
    loggers = trainer.get("logger")
    for lg in loggers if isinstance(loggers, list) else [loggers]:
        if isinstance(lg, dict):
            lg.setdefault("init_args", {})["save_dir"] = str(run_dir)
    for cb in trainer.get("callbacks") or []:
        if isinstance(cb, dict) and str(cb.get("class_path", "")).endswith("ModelCheckpoint"):
            cb.setdefault("init_args", {})["dirpath"] = str(run_dir / "checkpoints")
    return cfg


def _config_hash(cfg: dict) -> str:
    c = copy.deepcopy(cfg)
    return hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ============================================================================================ hardware
def hardware_summary() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"CPU {cpu}, {os.cpu_count()} cores"]
    omp = os.environ.get("OMP_NUM_THREADS")
    if omp:
        parts.append(f"OMP_NUM_THREADS={omp}")
    try:
        import torch

        parts.append(f"torch {torch.__version__}")
        if torch.cuda.is_available():
            parts.append(
                "GPU " + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
            )
        else:
            parts.append("no GPU")
    except Exception:  # pragma: no cover
        pass
    return "; ".join(parts)


# ============================================================================================ worker
def _worker(run_dir: Path) -> int:
    """Run one config (fit, then test) inside this process; write metrics.json."""
    spec = json.loads((run_dir / "run.json").read_text())
    import torch

    from favit_probsparse.cli import run_lightning

    t0 = time.time()
    cli = run_lightning(["fit", "--config", str(run_dir / "config.yaml")])
    fit_s = time.time() - t0
    trainer = cli.trainer
    if getattr(trainer, "interrupted", False):
        raise RuntimeError("training was interrupted")
    metrics = {
        k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1
    }
    test_s = None
    if spec.get("test", True):
        t1 = time.time()
        ckpt = None if spec.get("test_ckpt", "last") == "last" else "best"
        trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt, verbose=False)
        test_s = time.time() - t1
        metrics.update(
            {
                k: float(v)
                for k, v in trainer.callback_metrics.items()
                if torch.is_tensor(v) and v.numel() == 1
            }
        )
    stats: dict[str, Any] = {}
    if trainer.global_rank != 0:
        return 0
    lm = cli.model
    if callable(getattr(lm, "model_stats", None)):
        try:
            stats = dict(lm.model_stats())
        except Exception as e:  # statistics are a nicety, never a failure
            stats = {"stats_error": f"{type(e).__name__}: {e}"}
    else:
        stats = {"params_m": sum(p.numel() for p in lm.parameters()) / 1e6}
    out = {
        "metrics": metrics,
        "stats": stats,
        "seed": spec["seed"],
        "row": spec["row"],
        "grid": spec["grid"],
        "config_hash": spec["config_hash"],
        "fit_s": fit_s,
        "test_s": test_s,
        "epochs": int(trainer.current_epoch),
        "hardware": hardware_summary(),
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    (run_dir / "metrics.json").write_text(json.dumps(out, indent=2))
    return 0


# ============================================================================================ runner
@dataclass
class RunResult:
    row: str
    seed: int
    status: str  # done | failed | skipped-budget | pending
    metrics: dict[str, float] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    wall_s: float | None = None
    error: str | None = None
    reused: bool = False
    finished: str | None = None


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    lines = [ln for ln in lines if ln.strip() and "it/s]" not in ln]
    return "\n".join(lines[-n:])


def _error_line(log_tail: str) -> str:
    for line in reversed(log_tail.splitlines()):
        s = line.strip()
        if re.match(r"^[A-Za-z_.]*(Error|Exception|Interrupt)\b", s) or s.startswith(
            ("RuntimeError", "ValueError")
        ):
            return s[:300]
    return (log_tail.splitlines() or ["(no output)"])[-1][:300]


def _stop(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """Terminate a run (SIGTERM, then SIGKILL after ``grace_s``)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _raise_interrupt(signum, frame):  # SIGTERM -> KeyboardInterrupt, so the current run is stopped too
    raise KeyboardInterrupt(f"signal {signum}")


def _run_one(
    grid: Grid,
    row: Row,
    seed: int,
    base_cfg: dict,
    runs_dir: Path,
    extra: dict,
    force: bool,
    timeout_s: float | None,
    dry_run: bool,
    quiet: bool,
) -> RunResult:
    run_dir = (runs_dir / grid.name / row.name / f"seed{seed}").resolve()
    cfg = apply_overrides(base_cfg, {**grid.base_overrides, **extra, **row.overrides})
    cfg = _redirect_outputs(cfg, run_dir, seed)
    chash = _config_hash(cfg)
    done = run_dir / "metrics.json"
    if done.is_file() and not force:
        prev = json.loads(done.read_text())
        if prev.get("config_hash") == chash:
            return RunResult(
                row.name,
                seed,
                "done",
                prev.get("metrics", {}),
                prev.get("stats", {}),
                prev.get("wall_s") or prev.get("fit_s"),
                reused=True,
                finished=prev.get("finished"),
            )
        if not quiet:
            print(f"[ablate] {row.name}/seed{seed}: config changed since the finished run; running again")
    if dry_run:
        failed = run_dir / "failed.json"
        if failed.is_file():
            prev = json.loads(failed.read_text())
            if prev.get("config_hash") == chash:
                return RunResult(row.name, seed, "failed", wall_s=prev.get("wall_s"), error=prev.get("error"))
        return RunResult(row.name, seed, "pending")
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("metrics.json", "failed.json"):
        (run_dir / stale).unlink(missing_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    spec = {
        "grid": grid.name,
        "row": row.name,
        "seed": seed,
        "test": grid.test,
        "test_ckpt": grid.test_ckpt,
        "config_hash": chash,
    }
    (run_dir / "run.json").write_text(json.dumps(spec, indent=2))
    cmd = [sys.executable, "-m", "favit_probsparse.experiments.ablate", "--worker", str(run_dir)]
    t0 = time.time()
    if not quiet:
        print(f"[ablate] {grid.name}: {row.name} seed {seed} ...", flush=True)
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    for k, v in grid.env.items():  # the grid's defaults; the caller's environment wins
        env.setdefault(k, v)
    with open(run_dir / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _stop(proc)
            rc = None
        except BaseException:  # Ctrl-C / SIGTERM of the runner: never leave the run behind
            _stop(proc)
            raise
    wall = time.time() - t0
    if rc == 0 and done.is_file():
        res = json.loads(done.read_text())
        res["wall_s"] = wall
        done.write_text(json.dumps(res, indent=2))
        if not quiet:
            m = res["metrics"].get(grid.metric.name)
            shown = "n/a" if m is None else f"{m * grid.metric.scale:.{grid.metric.digits}f}"
            print(f"[ablate]   done in {wall:.0f}s: {grid.metric.name} = {shown}", flush=True)
        return RunResult(
            row.name, seed, "done", res["metrics"], res.get("stats", {}), wall, finished=res.get("finished")
        )
    tail = _tail(run_dir / "log.txt")
    err = (
        f"timed out after {timeout_s:.0f}s"
        if rc is None
        else (_error_line(tail) if rc != 0 else "the run exited 0 but wrote no metrics.json")
    )
    (run_dir / "failed.json").write_text(
        json.dumps(
            {"returncode": rc, "error": err, "log_tail": tail, "wall_s": wall, "config_hash": chash}, indent=2
        )
    )
    if not quiet:
        print(f"[ablate]   FAILED ({err}); log: {run_dir / 'log.txt'}", flush=True)
    return RunResult(row.name, seed, "failed", wall_s=wall, error=err)


def run_grid(
    grid: Grid,
    seeds: list[int],
    runs_dir: Path,
    rows: list[str] | None = None,
    extra_overrides: dict | None = None,
    force: bool = False,
    budget_s: float | None = None,
    timeout_s: float | None = None,
    dry_run: bool = False,
    report_only: bool = False,
    quiet: bool = False,
) -> list[RunResult]:
    """Run (or collect) every (row, seed) of ``grid``; returns one :class:`RunResult` per run."""
    base_cfg = yaml.safe_load(grid.base_config.read_text()) or {}
    base_cfg.setdefault("trainer", {})
    if isinstance(base_cfg["trainer"], dict):
        base_cfg["trainer"].setdefault("enable_progress_bar", False)
    selected = [r for r in grid.rows if rows is None or r.name in rows]
    if rows is not None:
        unknown = sorted(set(rows) - {r.name for r in grid.rows})
        if unknown:
            raise ValueError(f"unknown rows {unknown}; the grid has {[r.name for r in grid.rows]}")
    results = []
    t_start = time.time()
    for seed in seeds:
        for row in selected:
            over_budget = budget_s is not None and time.time() - t_start > budget_s
            if report_only or over_budget:
                res = _run_one(
                    grid, row, seed, base_cfg, runs_dir, extra_overrides or {}, False, None, True, True
                )
                if res.status == "pending":
                    res.status = "not run" if report_only else "skipped (budget)"
                results.append(res)
                continue
            results.append(
                _run_one(
                    grid,
                    row,
                    seed,
                    base_cfg,
                    runs_dir,
                    extra_overrides or {},
                    force,
                    timeout_s if timeout_s is not None else grid.timeout_s,
                    dry_run,
                    quiet,
                )
            )
    return results


# ============================================================================================ report
def _mean_std(xs: list[float]) -> tuple[float, float]:
    n = len(xs)
    mean = sum(xs) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else float("nan")
    return mean, std


def _fmt(mean: float, std: float, digits: int, n: int) -> str:
    if n > 1 and not math.isnan(std):
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.{digits}f}"


def summarize(grid: Grid, results: list[RunResult]) -> list[dict[str, Any]]:
    """Per-row aggregate: values, mean, std of the main and extra metrics, stats, failures."""
    out = []
    for row in grid.rows:
        rs = [r for r in results if r.row == row.name]
        if not rs:
            continue
        done = [r for r in rs if r.status == "done"]
        entry: dict[str, Any] = {
            "row": row.name,
            "label": row.label,
            "reference": row.reference,
            "seeds_done": [r.seed for r in done],
            "failed": [(r.seed, r.error) for r in rs if r.status == "failed"],
            "missing": [(r.seed, r.status) for r in rs if r.status not in ("done", "failed")],
            "metrics": {},
            "stats": {},
            "wall_s": None,
        }
        for m in [grid.metric, *grid.extra_metrics]:
            vals = [r.metrics[m.name] * m.scale for r in done if r.metrics.get(m.name) is not None]
            if vals:
                mean, std = _mean_std(vals)
                entry["metrics"][m.name] = {"values": vals, "mean": mean, "std": std, "n": len(vals)}
        for r in done:
            for k, v in (r.stats or {}).items():
                if isinstance(v, int | float) and v is not None:
                    entry["stats"].setdefault(k, v)
        walls = [r.wall_s for r in done if r.wall_s]
        entry["wall_s"] = sum(walls) / len(walls) if walls else None
        out.append(entry)
    return out


def _spread_sentence(summary: list[dict], m: Metric) -> str | None:
    """Compare the lead of the best row with the seed-to-seed spread (so a table of noise is not read as a ranking)."""
    ranked = sorted(
        (e["metrics"][m.name] for e in summary if m.name in e["metrics"]),
        key=lambda x: x["mean"],
        reverse=m.mode == "max",
    )
    stds = sorted(x["std"] for x in ranked if x["n"] > 1 and not math.isnan(x["std"]))
    if len(ranked) < 2 or not stds:
        return None
    med = stds[len(stds) // 2]
    lead = abs(ranked[0]["mean"] - ranked[1]["mean"])
    span = abs(ranked[0]["mean"] - ranked[-1]["mean"])
    d = m.digits
    verdict = (
        "so the ranking is within seed noise"
        if span <= 2 * med
        else ("so the top rows are not separated" if lead <= med else "")
    )
    return (
        f"Seed-to-seed spread (median std over rows): {med:.{d}f}; best minus second: {lead:.{d}f}; "
        f"best minus worst: {span:.{d}f}" + (f", {verdict}." if verdict else ".")
    )


def _stat_cell(v: Any, digits: int) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def write_report(
    grid: Grid,
    results: list[RunResult],
    out_dir: Path,
    command: str,
    seeds: list[int],
    hardware: str | None = None,
    chart: bool = True,
    command_note: str | None = None,
) -> tuple[Path, str]:
    """Write ``<out>/<name>.md`` (+ ``.json``, ``.png``); returns the markdown path and the table text."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(grid, results)
    hardware = hardware or hardware_summary()
    m = grid.metric
    has_ref = any(r.reference is not None for r in grid.rows)
    stat_keys = [k for k in ("params_m", "gmacs") if any(k in e["stats"] for e in summary)]
    stat_titles = {"params_m": "Params (M)", "gmacs": "GMACs"}
    header = ["Row", f"{m.title} (mean ± std)", "n", "per seed"]
    if has_ref:
        header.append(grid.reference_label)
    header += [e.title for e in grid.extra_metrics] + [stat_titles[k] for k in stat_keys] + ["wall / run (s)"]
    best = None
    means = [(e["metrics"][m.name]["mean"], e["row"]) for e in summary if m.name in e["metrics"]]
    if len(means) > 1:
        best = (max if m.mode == "max" else min)(means)[1]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    footnotes = []
    for e in summary:
        mm = e["metrics"].get(m.name)
        if mm:
            cell = _fmt(mm["mean"], mm["std"], m.digits, mm["n"])
            if e["row"] == best:
                cell = f"**{cell}**"
            per_seed = ", ".join(f"{v:.{m.digits}f}" for v in mm["values"])
        else:
            cell, per_seed = "–", ""
        if e["failed"]:
            cell += " FAILED (seed " + ", ".join(str(s) for s, _ in e["failed"]) + ")"
            for s, err in e["failed"]:
                footnotes.append(
                    f"- **{e['label']}**, seed {s}: FAILED: `{err}` (see `runs/{grid.name}/{e['row']}/"
                    f"seed{s}/log.txt`)"
                )
        if e["missing"]:
            cell += " (" + "; ".join(f"seed {s}: {st}" for s, st in e["missing"]) + ")"
        cells = [e["label"], cell, str(mm["n"] if mm else 0), per_seed]
        if has_ref:
            ref = e["reference"]
            cells.append("–" if ref is None else str(ref))
        for x in grid.extra_metrics:
            xm = e["metrics"].get(x.name)
            cells.append(_fmt(xm["mean"], xm["std"], x.digits, xm["n"]) if xm else "–")
        for k in stat_keys:
            cells.append(_stat_cell(e["stats"].get(k), 2 if k == "params_m" else 3))
        cells.append(_stat_cell(e["wall_s"], 0))
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    n_done = sum(r.status == "done" for r in results)
    n_failed = sum(r.status == "failed" for r in results)
    total_wall = sum(r.wall_s or 0 for r in results if r.status in ("done", "failed"))
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    fin = sorted(r.finished for r in results if r.finished)
    md = [f"# {grid.title or grid.name}", ""]
    if grid.description:
        md += [grid.description.strip(), ""]
    md += [table, ""]
    if best:
        md.append(
            f"Bold: best mean {m.title} ({'higher' if m.mode == 'max' else 'lower'} is better). "
            f"± is the sample standard deviation over seeds."
        )
        spread = _spread_sentence(summary, m)
        if spread:
            md += ["", spread]
    if footnotes:
        md += ["", "Failed runs:", *footnotes]
    if grid.reference_note:
        md += ["", grid.reference_note.strip()]
    md += [
        "",
        "## How these numbers were made",
        "",
        f"- Command: `{command}`" + (f" ({command_note})" if command_note else ""),
        f"- Grid: `{grid.path}`; base config: `{grid.base_config}`; metric: `{m.name}` "
        f"({'test set' if grid.test else 'last logged'}, {grid.test_ckpt} weights when tested)",
        f"- Seeds: {', '.join(map(str, seeds))}; runs finished: {n_done}, failed: {n_failed}, "
        f"of {len(results)}",
        f"- Hardware: {hardware}",
        f"- Wall time of the runs: {total_wall / 60:.1f} min in total"
        + (f"; runs finished between {min(fin)} and {max(fin)}" if fin else ""),
        f"- Written: {now}",
        f"- Per-run configs, logs and metrics: `runs/{grid.name}/<row>/seed<k>/` (not committed)",
    ]
    md_path = out_dir / f"{grid.name}.md"
    md_path.write_text("\n".join(md) + "\n")
    raw = {
        "grid": grid.name,
        "command": command,
        "seeds": seeds,
        "hardware": hardware,
        "written": now,
        "metric": m.name,
        "summary": summary,
        "runs": [
            {
                "row": r.row,
                "seed": r.seed,
                "status": r.status,
                "metrics": r.metrics,
                "stats": r.stats,
                "wall_s": r.wall_s,
                "error": r.error,
            }
            for r in results
        ],
    }
    (out_dir / f"{grid.name}.json").write_text(json.dumps(raw, indent=2, default=str))
    if chart:
        _chart(grid, summary, out_dir / f"{grid.name}.png")
    return md_path, table


def model_stats_table(grid: Grid, extra_overrides: dict | None = None) -> list[dict[str, Any]]:
    """Build each row's LightningModule (no data, no training) and collect its ``model_stats()``.

    For ``--stats-only``: parameters and GMACs of every row in seconds, e.g. to set beside a paper's #Param/FLOPs
    columns. The image size is taken from the config's ``data.init_args.img_size`` when the module's
    ``model_stats`` accepts one.
    """
    import importlib
    import inspect

    base = yaml.safe_load(grid.base_config.read_text()) or {}
    out = []
    for row in grid.rows:
        cfg = apply_overrides(base, {**grid.base_overrides, **(extra_overrides or {}), **row.overrides})
        spec = cfg.get("model") or {}
        mod_name, _, cls_name = str(spec.get("class_path", "")).rpartition(".")
        entry: dict[str, Any] = {"row": row.name, "label": row.label, "reference": row.reference}
        try:
            cls = getattr(importlib.import_module(mod_name), cls_name)
            init = dict(spec.get("init_args") or {})
            data_init = (cfg.get("data") or {}).get("init_args") or {}
            if "num_classes" in inspect.signature(cls).parameters and init.get("num_classes") is None:
                init["num_classes"] = _num_classes_of(cfg.get("data") or {})
            lm = cls(**init)
            fn = getattr(lm, "model_stats", None)
            if callable(fn):
                kw = (
                    {"img_size": data_init["img_size"]}
                    if "img_size" in inspect.signature(fn).parameters and ("img_size" in data_init)
                    else {}
                )
                entry.update(fn(**kw))
            else:
                entry["params_m"] = sum(p.numel() for p in lm.parameters()) / 1e6
        except Exception as e:
            entry["error"] = f"{type(e).__name__}: {e}"
        out.append(entry)
    return out


def _num_classes_of(data_spec: dict) -> int | None:
    """The class count a data config provides (its datamodule's ``num_classes``), without loading any data."""
    import importlib

    mod_name, _, cls_name = str(data_spec.get("class_path", "")).rpartition(".")
    init = dict(data_spec.get("init_args") or {})
    try:
        dm = getattr(importlib.import_module(mod_name), cls_name)(**init)
        return int(dm.num_classes)
    except Exception:
        from favit_probsparse.data.vision import DATASET_STATS

        return (DATASET_STATS.get(str(init.get("dataset", ""))) or (None,) * 4)[3]


def write_stats_report(grid: Grid, stats: list[dict], out_dir: Path, command: str) -> tuple[Path, str]:
    """Write ``<out>/<name>-model-stats.md`` (params, GMACs per row, beside the reference)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    has_ref = any(e["reference"] is not None for e in stats)
    header = ["Row", "Params (M)", "GMACs", "img size"] + ([grid.reference_label] if has_ref else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for e in stats:
        if "error" in e:
            cells = [e["label"], f"ERROR: `{e['error'][:200]}`", "–", "–"]
        else:
            cells = [
                e["label"],
                _stat_cell(e.get("params_m"), 3),
                _stat_cell(e.get("gmacs"), 3),
                str(e.get("img_size", "–")),
            ]
        if has_ref:
            cells.append("–" if e["reference"] is None else str(e["reference"]))
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = [
        f"# Model size and cost: {grid.title or grid.name}",
        "",
        table,
        "",
        "Parameters of the network (EMA copies excluded); GMACs (multiply-accumulates, what vision papers call "
        "FLOPs) of one forward pass of one image, counted by torch's FLOP counter (matmuls, convolutions, "
        "attention). Nothing is trained for this table.",
        "",
        *([grid.reference_note.strip(), ""] if grid.reference_note else []),
        f"- Command: `{command}`",
        f"- Grid: `{grid.path}`; base config: `{grid.base_config}`",
        f"- Hardware: {hardware_summary()}",
        f"- Written: {now}",
    ]
    path = out_dir / f"{grid.name}-model-stats.md"
    path.write_text("\n".join(md) + "\n")
    return path, table


def _chart(grid: Grid, summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = grid.metric
    labels = [e["label"] for e in summary]
    means = [e["metrics"].get(m.name, {}).get("mean", float("nan")) for e in summary]
    stds = [e["metrics"].get(m.name, {}).get("std", 0.0) for e in summary]
    stds = [0.0 if (s is None or math.isnan(s)) else s for s in stds]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(labels) + 2), 4.2))
    xs = list(range(len(labels)))
    # points with error bars, not bars: the y axis is zoomed to the data, and bars would exaggerate gaps
    ok = [(x, mu, sd) for x, mu, sd in zip(xs, means, stds) if not math.isnan(mu)]
    if ok:
        ax.errorbar(
            [o[0] for o in ok],
            [o[1] for o in ok],
            yerr=[o[2] for o in ok],
            fmt="o",
            ms=7,
            capsize=5,
            color="tab:blue",
            label="ours: mean ± std over seeds",
        )
    for e, x in zip(summary, xs):
        vals = e["metrics"].get(m.name, {}).get("values", [])
        for v in vals:
            ax.plot(
                x + 0.15,
                v,
                ".",
                color="0.35",
                ms=5,
                label="ours: one seed" if x == xs[0] and v == vals[0] else None,
            )
        if e["failed"] and not e["metrics"]:
            ax.text(x, 0, "FAILED", ha="center", va="bottom", color="tab:red", rotation=90)
    refs = [(x, e["reference"]) for e, x in zip(summary, xs) if isinstance(e["reference"], int | float)]
    if refs:
        ax.plot(
            [x for x, _ in refs], [v for _, v in refs], "D", color="tab:orange", label=grid.reference_label
        )
    finite = [v for v in means if not math.isnan(v)] + [v for _, v in refs]
    if finite and m.mode == "max":
        lo, hi = min(finite), max(finite)
        pad = max(1e-9, (hi - lo) * 0.6 + max([*stds, 0.0]))
        ax.set_ylim(max(0.0, lo - pad), hi + pad)
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=30, ha="right")
    ax.set_ylabel(m.title)
    ax.set_title(grid.title or grid.name, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ============================================================================================ CLI
def _parse_set(items: list[str]) -> dict[str, Any]:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise SystemExit(f"favit-ps ablate: --set expects key=value, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return _worker(Path(argv[1]))
    p = argparse.ArgumentParser(
        prog="favit-ps ablate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("grid", help="grid YAML file (see above)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: the grid's)")
    p.add_argument("--out", default="results", help="folder for <name>.md/.json/.png (default results)")
    p.add_argument("--runs-dir", default="runs", help="folder for the runs (default runs)")
    p.add_argument("--rows", nargs="+", default=None, help="run only these rows")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra dotted override for every row (repeatable)",
    )
    p.add_argument("--force", action="store_true", help="re-run finished runs too")
    p.add_argument(
        "--report-only", action="store_true", help="only collect finished runs and write the report"
    )
    p.add_argument("--dry-run", action="store_true", help="show what would run, run nothing")
    p.add_argument(
        "--budget-min", type=float, default=None, help="stop launching runs after this many minutes"
    )
    p.add_argument("--timeout-s", type=float, default=None, help="per-run wall limit (default: the grid's)")
    p.add_argument("--no-chart", action="store_true", help="do not draw the PNG chart")
    p.add_argument(
        "--stats-only",
        action="store_true",
        help="train nothing: build each row's model and write <out>/<name>-model-stats.md (params, GMACs)",
    )
    a = p.parse_args(argv)
    if threading.current_thread() is not threading.main_thread():
        return _main(a, argv)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return _main(a, argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(a: argparse.Namespace, argv: list[str]) -> int:
    grid = load_grid(a.grid)
    seeds = a.seeds if a.seeds is not None else grid.seeds
    extra = _parse_set(a.set)
    if a.stats_only:
        command = "favit-ps ablate " + " ".join(shlex.quote(x) for x in argv)
        path, table = write_stats_report(grid, model_stats_table(grid, extra), Path(a.out), command)
        print(f"\n{table}\n\nwritten: {path}")
        return 1 if "ERROR:" in table else 0
    results = run_grid(
        grid,
        seeds,
        Path(a.runs_dir),
        rows=a.rows,
        extra_overrides=extra,
        force=a.force,
        budget_s=a.budget_min * 60 if a.budget_min else None,
        timeout_s=a.timeout_s,
        dry_run=a.dry_run,
        report_only=a.report_only,
    )
    if a.dry_run:
        for r in results:
            print(f"{r.row:<24} seed {r.seed}: {'finished (skip)' if r.status == 'done' else 'would run'}")
        return 0
    if a.rows is not None:  # keep the other rows' finished runs in the report
        results = run_grid(grid, seeds, Path(a.runs_dir), extra_overrides=extra, report_only=True, quiet=True)
    shown = [x for x in argv if x != "--report-only"]
    command = "favit-ps ablate " + " ".join(shlex.quote(x) for x in shown)
    note = "this report re-rendered from the finished runs with `--report-only`" if a.report_only else None
    md_path, table = write_report(
        grid, results, Path(a.out), command, seeds, chart=not a.no_chart, command_note=note
    )
    print(f"\n{grid.title or grid.name}\n\n{table}\n\nwritten: {md_path} (+ .json, .png)")
    failed = [r for r in results if r.status == "failed"]
    if failed:
        print(
            f"{len(failed)} run(s) FAILED: " + ", ".join(f"{r.row}/seed{r.seed}" for r in failed),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
