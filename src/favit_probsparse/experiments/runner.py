"""Run every (row, seed) of a grid, each in its own subprocess, and collect the result records.

Each run gets its own folder ``runs/<grid>/<row>/seed<k>/`` with the merged ``config.yaml`` (what runs),
``run.json`` (what the worker needs), ``log.txt`` (its output) and at the end a result record: ``metrics.json``
(finished) or ``failed.json`` (exit code, error, log tail). A crash, a timeout or an out-of-memory in one run is
recorded and the grid goes on. Re-running skips finished runs whose config is unchanged and re-runs failed or
changed ones (``force`` re-runs all). Ctrl-C or SIGTERM stops the current run's process too.

A run folder is locked while its run is on (the lock is inherited by the worker, and the worker stops itself when
its runner is gone, even killed by SIGKILL): a second ``ablate`` on the same grid skips the runs the first one
holds. A run ends with one record, ``metrics.json`` or ``failed.json``; the failure's cause is the worker's
one-line error, or the signal that killed it.

:func:`collect` reads back every record present for a grid (also seeds of earlier invocations), so a report
built from it merges runs made at different times (``--seeds 1`` after ``--seeds 0`` reports both).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from favit_probsparse.config import apply_overrides, read_config
from favit_probsparse.experiments.grid import (
    Grid,
    Row,
    config_hash,
    load_grid,
    redirect_outputs,
)
from favit_probsparse.experiments.records import (
    DONE,
    FAILED,
    CorruptRecordError,
    read_record,
    write_record,
)
from favit_probsparse.experiments.worker import PARENT_PID, WORKER_ERROR
from favit_probsparse.imports import import_class
from favit_probsparse.training.checkpoints import FolderLockedError, lock_folder
from favit_probsparse.utils.io import write_json, write_text

__all__ = [
    "GridRuns",
    "RunResult",
    "check_rows",
    "collect",
    "prepare_grid_data",
    "raise_interrupt",
    "resumable_checkpoint",
    "rows_to_run",
    "run_dir_of",
    "run_grid",
    "seeds_on_disk",
]

_SEED_DIR = re.compile(r"^seed(-?\d+)$")


@dataclass
class RunResult:
    row: str
    seed: int
    status: str  # done | failed | pending | not run | skipped (budget)
    metrics: dict[str, float] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    wall_s: float | None = None
    error: str | None = None
    reused: bool = False
    finished: str | None = None


@dataclass(frozen=True)
class GridRuns:
    """Which runs of a grid :func:`run_grid` runs (or looks up) and :func:`rows_to_run` plans: every selected row
    for every seed, each in its folder under ``runs_dir``.

    Args:
        grid: the grid.
        seeds: the seeds (a row with its own ``seeds`` list runs only those of them).
        runs_dir: folder of the run folders ``<runs_dir>/<grid>/<row>/seed<k>``.
        rows: names of the rows to run; ``None``: all.
        extra_overrides: dotted overrides applied to every row (``--set``), under the row's own.
        force: re-run finished runs too.
    """

    grid: Grid
    seeds: list[int]
    runs_dir: Path
    rows: list[str] | None = None
    extra_overrides: dict | None = None
    force: bool = False


def run_dir_of(grid: Grid, row: Row | str, seed: int, runs_dir: Path) -> Path:
    return (
        Path(runs_dir) / grid.name / (row if isinstance(row, str) else row.name) / f"seed{seed}"
    ).resolve()


def _base_config(grid: Grid) -> dict:
    # a per-setting file over a preset (configs/forecast/_base) comes with its base: chain merged
    cfg = read_config(grid.base_config)
    cfg.setdefault("trainer", {})
    if isinstance(cfg["trainer"], dict):
        cfg["trainer"].setdefault("enable_progress_bar", False)
    return cfg


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    lines = [ln for ln in lines if ln.strip() and "it/s]" not in ln]
    return "\n".join(lines[-n:])


def _error_line(log_tail: str) -> str:
    for line in reversed(log_tail.splitlines()):  # the worker's own one-line cause, when it printed one
        if line.startswith(WORKER_ERROR):
            return line[len(WORKER_ERROR) :].strip()[:300]
    for line in reversed(log_tail.splitlines()):
        s = line.strip()
        if re.match(r"^[A-Za-z_.]*(Error|Exception|Interrupt)\b", s) or s.startswith(
            ("RuntimeError", "ValueError")
        ):
            return s[:300]
    return (log_tail.splitlines() or ["(no output)"])[-1][:300]


def _signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return "unknown signal"


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


def raise_interrupt(signum, frame):  # SIGTERM -> KeyboardInterrupt, so the current run is stopped too
    raise KeyboardInterrupt(f"signal {signum}")


def _result_of(path: Path, status: str, chash: str | None, row: str, seed: int) -> RunResult | None:
    """The RunResult of a record file if it exists and belongs to config ``chash`` (None: any config)."""
    if not path.is_file():
        return None
    try:
        rec = read_record(path)
    except CorruptRecordError as e:
        return RunResult(row, seed, "failed", error=f"corrupt result record: {e}")
    if chash is not None and rec.get("config_hash") != chash:
        return None
    return RunResult(
        row,
        seed,
        status,
        rec.get("metrics", {}) if status == "done" else {},
        rec.get("stats", {}) or {},
        rec.get("wall_s") or rec.get("fit_s"),
        error=rec.get("error"),
        reused=True,
        finished=rec.get("date") or rec.get("finished"),
    )


def _run_one(
    runs: GridRuns,
    row: Row,
    seed: int,
    base_cfg: dict,
    timeout_s: float | None = None,
    dry_run: bool = False,
    quiet: bool = False,
    command: str | None = None,
    resume: bool = False,
) -> RunResult:
    grid, force = runs.grid, runs.force
    run_dir = run_dir_of(grid, row, seed, runs.runs_dir)
    cfg = apply_overrides(base_cfg, {**grid.base_overrides, **(runs.extra_overrides or {}), **row.overrides})
    cfg = redirect_outputs(cfg, run_dir, seed)
    chash = config_hash(cfg, grid.cli_args)
    done = run_dir / DONE
    if not force:
        prev = _result_of(done, "done", chash, row.name, seed)
        if prev is not None and prev.status == "done":
            return prev
        if prev is not None and not (quiet or dry_run):  # corrupt
            print(f"[runner] {row.name}/seed{seed}: {prev.error}; running again", flush=True)
        elif done.is_file() and not (quiet or dry_run):
            print(f"[runner] {row.name}/seed{seed}: config changed since the finished run; running again")
    if dry_run:
        prev = _result_of(run_dir / FAILED, "failed", chash, row.name, seed)
        if prev is None and done.is_file():  # a corrupt done-marker
            prev = _result_of(done, "done", None, row.name, seed)
            prev = prev if prev is not None and prev.status == "failed" else None
        return prev or RunResult(row.name, seed, "pending")
    run_dir.mkdir(parents=True, exist_ok=True)
    resume_from = resumable_checkpoint(run_dir, chash) if resume and not force else None
    try:
        # held by this runner and inherited by its worker: a second ablate (or a re-run while an orphaned
        # worker still runs) skips this run instead of running it twice in one folder
        lock = lock_folder(run_dir, "ablate run", name=".favit-ps-ablate.lock")
    except FolderLockedError as e:
        if not quiet:
            print(f"[runner] {row.name}/seed{seed}: skipped: {e}", flush=True)
        return RunResult(row.name, seed, "skipped (running elsewhere)", error=str(e))
    try:
        return _launch(grid, row, seed, cfg, chash, run_dir, timeout_s, quiet, command, lock, resume_from)
    finally:
        if lock is not None:
            os.close(lock)


def _worker_command(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "favit_probsparse.experiments.worker", str(run_dir)]


def _write_run_files(
    grid: Grid,
    row: Row,
    seed: int,
    cfg: dict,
    chash: str,
    run_dir: Path,
    command: str | None,
    resume_from: str | None,
) -> None:
    """Clear the run folder's old records and write what the worker reads: ``config.yaml`` and ``run.json``."""
    for stale in (DONE, FAILED):
        (run_dir / stale).unlink(missing_ok=True)
    if resume_from is None:  # a fresh checkpoint folder: `last.ckpt` must be this run's, not an earlier one's
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    import yaml

    write_text(run_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    spec = {
        "grid": grid.name,
        "row": row.name,
        "seed": seed,
        "test": grid.test,
        "test_ckpt": grid.test_ckpt,
        "metric": grid.metric.name,
        "config_hash": chash,
        "cli_args": list(grid.cli_args),
        "command": command,
        "resume_from": resume_from,
    }
    write_json(run_dir / "run.json", spec)


def _wait_worker(grid: Grid, run_dir: Path, timeout_s: float | None, lock: int | None) -> int | None:
    """Run the worker of ``run_dir`` (output into ``log.txt``) to its end; its exit code, ``None`` on timeout."""
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env[PARENT_PID] = str(os.getpid())  # the worker stops when this process is gone (no orphaned run)
    for k, v in grid.env.items():  # the grid's defaults; the caller's environment wins
        env.setdefault(k, v)
    with open(run_dir / "log.txt", "w") as log:
        proc = subprocess.Popen(
            _worker_command(run_dir),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            pass_fds=(lock,) if lock is not None else (),
        )
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _stop(proc)
            return None
        except BaseException:  # Ctrl-C / SIGTERM of the runner: never leave the run behind
            _stop(proc)
            raise


def _finished_record(grid: Grid, done: Path, rc: int | None) -> tuple[dict | None, str | None]:
    """The worker's result record if the run finished with the grid's metric; else ``(None, error or None)``."""
    if rc != 0 or not done.is_file():
        return None, None
    try:
        rec = read_record(done)
    except CorruptRecordError as e:
        return None, str(e)
    value = rec["metrics"].get(grid.metric.name)
    if not (isinstance(value, int | float) and math.isfinite(value)):
        # never a finished run without its number: NaN is stored as null, a typo'd metric is absent
        logged = ", ".join(sorted(k for k, v in rec["metrics"].items() if v is not None)[:10])
        done.unlink(missing_ok=True)
        return None, f"{grid.metric.name} is missing or not finite after the run (logged: {logged})"
    return rec, None


def _record_failure(grid, row, seed, chash, run_dir, rc, err, wall, timeout_s, quiet, command) -> RunResult:
    """Write the run's ``failed.json`` (cause, exit code, log tail) in place of any done-marker."""
    tail = _tail(run_dir / "log.txt")
    if err is None:
        if rc is None:
            err = f"timed out after {timeout_s:.0f}s"
        elif rc < 0:
            err = f"killed by signal {-rc} ({_signal_name(-rc)})"
        else:
            err = _error_line(tail) if rc != 0 else f"the run exited 0 but wrote no {DONE}"
    (run_dir / DONE).unlink(missing_ok=True)  # one record per run
    write_record(
        run_dir / FAILED,
        status="failed",
        seed=seed,
        config=str(run_dir / "config.yaml"),
        config_hash=chash,
        command=command,
        grid=grid.name,
        row=row.name,
        returncode=rc,
        error=err,
        log_tail=tail,
        wall_s=wall,
    )
    if not quiet:
        print(f"[runner]   FAILED ({err}); log: {run_dir / 'log.txt'}", flush=True)
    return RunResult(row.name, seed, "failed", wall_s=wall, error=err)


def _launch(grid, row, seed, cfg, chash, run_dir, timeout_s, quiet, command, lock, resume_from) -> RunResult:
    done = run_dir / DONE
    _write_run_files(grid, row, seed, cfg, chash, run_dir, command, resume_from)
    t0 = time.time()
    if not quiet:
        print(f"[runner] {grid.name}: {row.name} seed {seed} ...", flush=True)
    rc = _wait_worker(grid, run_dir, timeout_s, lock)
    wall = time.time() - t0
    rec, err = _finished_record(grid, done, rc)
    if rec is None:
        return _record_failure(grid, row, seed, chash, run_dir, rc, err, wall, timeout_s, quiet, command)
    rec["wall_s"] = wall
    write_json(done, rec)
    if not quiet:
        m = rec["metrics"].get(grid.metric.name)
        shown = "n/a" if m is None else f"{m * grid.metric.scale:.{grid.metric.digits}f}"
        print(f"[runner]   done in {wall:.0f}s: {grid.metric.name} = {shown}", flush=True)
    return RunResult(
        row.name, seed, "done", rec["metrics"], rec.get("stats", {}), wall, finished=rec.get("date")
    )


def run_grid(
    runs: GridRuns,
    budget_s: float | None = None,
    timeout_s: float | None = None,
    dry_run: bool = False,
    report_only: bool = False,
    quiet: bool = False,
    command: str | None = None,
    resume: bool = False,
) -> list[RunResult]:
    """Run (or with ``report_only``/``dry_run`` only look up) every (row, seed) of ``runs``; one
    :class:`RunResult` each.

    ``resume``: an unfinished run continues from its ``checkpoints/last.ckpt`` when that was written for the same
    config (:func:`resumable_checkpoint`; the cluster launcher's re-submissions) instead of starting afresh.

    Runs go in seed-major order (every row for the first seed, then the next seed), so a ``budget_s`` cut keeps
    whole seeds; unstarted runs are returned as ``skipped (budget)``.
    """
    grid, rows = runs.grid, runs.rows
    base_cfg = _base_config(grid)
    selected = [r for r in grid.rows if rows is None or r.name in rows]
    if rows is not None:
        unknown = sorted(set(rows) - {r.name for r in grid.rows})
        if unknown:
            raise ValueError(f"unknown rows {unknown}; the grid has {[r.name for r in grid.rows]}")
    lookup = replace(runs, force=False)  # a run not started is only looked up
    results = []
    t_start = time.time()
    for seed in runs.seeds:
        for row in selected:
            if row.seeds is not None and seed not in row.seeds:
                continue  # the row's own, shorter seed list (e.g. 3 seeds for secondary rows)
            over_budget = budget_s is not None and time.time() - t_start > budget_s
            if report_only or over_budget:
                res = _run_one(lookup, row, seed, base_cfg, dry_run=True, quiet=True)
                if res.status == "pending":
                    res.status = "not run" if report_only else "skipped (budget)"
                results.append(res)
                continue
            timeout = timeout_s if timeout_s is not None else grid.timeout_s
            results.append(_run_one(runs, row, seed, base_cfg, timeout, dry_run, quiet, command, resume))
    return results


def resumable_checkpoint(run_dir: Path, chash: str) -> str | None:
    """``run_dir/checkpoints/last.ckpt`` if an earlier attempt of the same config (``run.json``) wrote it."""
    last = Path(run_dir) / "checkpoints" / "last.ckpt"
    try:
        same = json.loads((Path(run_dir) / "run.json").read_text()).get("config_hash") == chash
    except (OSError, ValueError, AttributeError):
        return None
    return str(last) if same and last.is_file() else None


def check_rows(grid: Grid, rows: list[str] | None = None, extra_overrides: dict | None = None) -> None:
    """Parse every row's merged config with the CLI's parser (nothing is built) before the first run starts: an
    unknown or invalid option is a ValueError naming the row and the option, not a failure at the row's turn."""
    import yaml
    from lightning.pytorch import LightningDataModule, LightningModule

    from favit_probsparse.config import expand_config_args
    from favit_probsparse.training.project_cli import USER_ERRORS, ProjectCLI, user_error_message

    class _ParseOnly(ProjectCLI):
        def _parse_ckpt_path(self) -> None:  # a checkpoint is the run's business
            pass

        def _set_seed(self) -> None:
            pass

        def instantiate_classes(self) -> None:
            pass

        def after_instantiate_classes(self) -> None:
            pass

    base = _base_config(grid)
    for row in grid.rows:
        if rows is not None and row.name not in rows:
            continue
        cfg = apply_overrides(base, {**grid.base_overrides, **(extra_overrides or {}), **row.overrides})
        args = expand_config_args(["--config", yaml.safe_dump(cfg, sort_keys=False), *grid.cli_args])
        try:
            _ParseOnly(
                LightningModule,
                LightningDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                args=args,
                run=False,
                auto_configure_optimizers=False,
                parser_kwargs={"exit_on_error": False},
            )
        except USER_ERRORS as e:
            raise ValueError(f"{grid.path}: row {row.name!r}: {user_error_message(e)}") from None


def seeds_on_disk(grid: Grid, runs_dir: Path) -> list[int]:
    """Seeds that have a run folder of any row of ``grid`` under ``runs_dir``."""
    found = set()
    for row in grid.rows:
        d = Path(runs_dir) / grid.name / row.name
        if d.is_dir():
            for sub in d.iterdir():
                m = _SEED_DIR.match(sub.name)
                if m and ((sub / DONE).is_file() or (sub / FAILED).is_file()):
                    found.add(int(m.group(1)))
    return sorted(found)


def collect(
    grid: Grid,
    seeds: list[int],
    runs_dir: Path,
    extra_overrides: dict | None = None,
    rows: list[str] | None = None,
) -> tuple[list[RunResult], list[int]]:
    """Every run of ``grid`` (or of ``rows``) to report: the requested ``seeds`` plus any other seed with a record
    of the current config on disk (records of an older config are left out). Returns the results and the seeds."""
    requested = set(seeds)
    all_seeds = sorted(requested | set(seeds_on_disk(grid, runs_dir)))
    results = run_grid(
        GridRuns(grid, all_seeds, runs_dir, rows, extra_overrides), report_only=True, quiet=True
    )
    kept = [r for r in results if r.seed in requested or r.status in ("done", "failed")]
    used = sorted({r.seed for r in kept})
    return kept, used


def rows_to_run(runs: GridRuns) -> list[str]:
    """Names of the rows that :func:`run_grid` would start at least one run of (finished runs are skipped)."""
    if runs.force:
        return [r.name for r in runs.grid.rows if runs.rows is None or r.name in runs.rows]
    plan = run_grid(runs, dry_run=True, quiet=True)
    todo = {r.row for r in plan if r.status != "done"}
    return [r.name for r in runs.grid.rows if r.name in todo]


def prepare_grid_data(
    grid: Grid | str | os.PathLike, rows: list[str] | None = None, extra_overrides: dict | None = None
) -> int:
    """Run ``prepare_data()`` once for every distinct ``data`` section of the grid's runs (of ``rows``, default
    all; with ``extra_overrides`` applied as the runs apply them); returns how many.

    Downloads then happen here, in the foreground with their progress bars, and once, instead of inside the
    first run's log. A datamodule that takes ``download`` gets ``download=True`` unless the config sets it
    (``ETTDataModule`` defaults to False): a grid fetches what it needs, into the data root where the runs look.
    """
    if not isinstance(grid, Grid):
        grid = load_grid(grid)
    base = _base_config(grid)
    seen: set[str] = set()
    for row in grid.rows:
        if rows is not None and row.name not in rows:
            continue
        cfg = apply_overrides(base, {**grid.base_overrides, **(extra_overrides or {}), **row.overrides})
        data = cfg.get("data")
        if not isinstance(data, dict) or "class_path" not in data:
            continue
        key = json.dumps(data, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        cls = import_class(data["class_path"], what="data.class_path")
        init_args = dict(data.get("init_args") or {})
        if "download" in inspect.signature(cls).parameters:
            init_args.setdefault("download", True)
        cls(**init_args).prepare_data()
    return len(seen)
