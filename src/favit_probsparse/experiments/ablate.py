"""``favit-ps ablate GRID.yaml --seeds 0 1``: run a grid of Lightning configs over seeds, then write a result
table (``<name>.md``), the raw numbers (``<name>.json``) and a chart (``<name>.png``) into the grid's run folder
``runs/<name>/`` (git-ignored) and print the table. Committed results change only with an explicit
``--out results``.

The pieces, one job each: :mod:`~favit_probsparse.experiments.grid` (the grid file, dotted overrides),
:mod:`~favit_probsparse.experiments.runner` (one subprocess per run, skip/re-run, Ctrl-C),
:mod:`~favit_probsparse.experiments.worker` (one run), :mod:`~favit_probsparse.experiments.records` (the result
record, atomic files, mean ± std), :mod:`~favit_probsparse.experiments.report` (table, JSON, chart),
:mod:`~favit_probsparse.experiments.stats` (``--stats-only``) and
:mod:`~favit_probsparse.utils.provenance` (hardware, date, git commit).

Each run is one Lightning config, fit then (by default) tested, in its own subprocess, so a crash or an
out-of-memory in one run is recorded and the grid goes on. The merged config of each run is written to
``runs/<grid>/<row>/seed<k>/config.yaml`` and is what runs; the runner points ``trainer.default_root_dir``, every
logger's ``save_dir`` and any ``ModelCheckpoint`` ``dirpath`` into that folder, and sets ``seed_everything`` to
the seed.

GRID is a file (relative to the current folder), else a grid shipped with the package, by name (``quick``) or
by path (``configs/ablations/quick.yaml``, found through :mod:`favit_probsparse.config` from any folder).
Before the first run starts, the data of the runs about to start is prepared once, in the foreground
(:func:`~favit_probsparse.experiments.runner.prepare_grid_data`: downloads with their progress bars). Ctrl-C or
SIGTERM stops the current run, prints one line and exits with 128 + the signal number; the same command resumes.

Each run folder ends with a result record, ``metrics.json`` (the done-marker) or ``failed.json``, and
``log.txt`` has its output. Re-running skips finished runs whose config is unchanged, re-runs failed or changed
ones (``--force`` re-runs all), and rebuilds the report from every record present: ``--seeds 1`` after
``--seeds 0`` reports both seeds. A failed run shows as FAILED in the table (with its error in a footnote) and
makes the command exit with 1; so does a record that cannot be read (its path is named).

Model statistics: if the LightningModule has a ``model_stats()`` method returning a dict of numbers
(``params_m``, ``gmacs``, ...), these are recorded and shown; otherwise the parameter count is.

Command line: ``favit-ps ablate GRID.yaml [--seeds 0 1] [--out DIR] [--runs-dir runs] [--rows a b]
[--set key=value ...] [--force] [--report-only] [--dry-run] [--budget-min M] [--timeout-s S] [--stats-only]``.
``--launcher slurm`` submits the runs to SLURM through submitit instead (``--status``, ``--wait`` and the
cluster options: :mod:`~favit_probsparse.experiments.launch`). ``--stats-only`` trains nothing: it builds each row's model and writes ``<out>/<name>-model-stats.md``
(parameters, GMACs) in seconds. ``--set`` adds base overrides (e.g. ``--set trainer.max_epochs=1`` for a smoke
run); ``--budget-min`` stops launching new runs once that much wall time has passed (unstarted runs are listed as
not run). Runs go in seed-major order so a budget cut keeps whole seeds.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from pathlib import Path

from favit_probsparse.config import apply_overrides, grid_names, grid_path, parse_set
from favit_probsparse.experiments import launch
from favit_probsparse.experiments.grid import Grid, load_grid
from favit_probsparse.experiments.report import summarize, write_report
from favit_probsparse.experiments.runner import (
    GridRuns,
    RunResult,
    check_rows,
    collect,
    prepare_grid_data,
    raise_interrupt,
    rows_to_run,
    run_grid,
)
from favit_probsparse.experiments.stats import model_stats_table, write_stats_report
from favit_probsparse.utils.provenance import hardware_summary

__all__ = [
    "Grid",
    "RunResult",
    "apply_overrides",
    "finish_grid",
    "hardware_summary",
    "load_grid",
    "main",
    "run_grid",
    "summarize",
    "write_report",
]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="favit-ps ablate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "grid",
        help="grid YAML file (see favit_probsparse.experiments.grid), or a shipped grid's name (e.g. quick)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: the grid's)")
    p.add_argument(
        "--out",
        default=None,
        help="folder for <name>.md/.json/.png (default: the grid's run folder, <runs-dir>/<name>)",
    )
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
    launch.add_arguments(p)  # --launcher local|slurm, --status, --wait and the SLURM options
    return p


def with_sigterm_as_interrupt(fn, *args):
    """Call ``fn(*args)`` with SIGTERM raising KeyboardInterrupt (so the running subprocess is stopped too)."""
    if threading.current_thread() is not threading.main_thread():
        return fn(*args)
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        return fn(*args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def interruptible(prog: str, fn, *args) -> int:
    """``fn(*args)`` under :func:`with_sigterm_as_interrupt`; Ctrl-C or SIGTERM (the current run is stopped by
    then) ends it with one line on stderr and the exit code 128 + the signal number, not a traceback."""
    try:
        return with_sigterm_as_interrupt(fn, *args)
    except KeyboardInterrupt as e:
        text = str(e)
        signum = int(text.split()[-1]) if text.startswith("signal ") else int(signal.SIGINT)
        print(
            f"{prog}: stopped by {signal.Signals(signum).name}; finished runs are kept, the same command "
            "resumes",
            file=sys.stderr,
        )
        return 128 + signum


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = _parser().parse_args(argv)
    return interruptible("favit-ps ablate", _main, a, argv)


def finish_grid(
    grid: Grid,
    seeds: list[int],
    runs_dir: Path,
    out: Path | None,
    command: str,
    extra: dict | None = None,
    chart: bool = True,
    command_note: str | None = None,
    ran: list[RunResult] | None = None,
    rows: list[str] | None = None,
) -> tuple[int, Path, str, list]:
    """Report every record of ``grid`` present (the requested seeds and any earlier ones), print the table.

    ``ran``: this invocation's results, whose reasons for a missing run (``skipped (budget)``) are kept.
    ``rows``: report only these rows (default: every row of the grid).
    Returns (exit code, markdown path, table, per-row summary); the exit code is 1 when a run failed."""
    results, used_seeds = collect(grid, seeds, runs_dir, extra, rows=rows)
    why = {(r.row, r.seed): r.status for r in ran or [] if r.status not in ("done", "failed")}
    for r in results:
        if r.status == "not run" and (r.row, r.seed) in why:
            r.status = why[(r.row, r.seed)]
    out_dir = Path(out) if out is not None else Path(runs_dir) / grid.name
    md_path, table = write_report(
        grid,
        results,
        out_dir,
        command,
        used_seeds,
        chart=chart,
        command_note=command_note,
        runs_label=(Path(runs_dir) / grid.name).as_posix(),
        runs_dir=Path(runs_dir) / grid.name,
    )
    print(
        f"\n{grid.title or grid.name}\n\n{table}\n\nwritten: {md_path} (+ .json{', .png' if chart else ''})"
    )
    failed = [r for r in results if r.status == "failed"]
    if failed:
        print(
            f"{len(failed)} run(s) FAILED: " + ", ".join(f"{r.row}/seed{r.seed}" for r in failed),
            file=sys.stderr,
        )
    return (1 if failed else 0), md_path, table, summarize(grid, results)


def _prepare_data(runs: GridRuns) -> None:
    """Prepare (download, build) the data of the runs about to start, once each, before the first run."""
    todo = rows_to_run(runs)
    if not todo:
        return
    grid = runs.grid
    try:
        prepare_grid_data(grid, todo, runs.extra_overrides)
    # download / dataset problems (DatasetError is a ValueError; checksum, network, disk): the message names them
    except (ValueError, RuntimeError, OSError) as e:
        raise SystemExit(f"favit-ps ablate: preparing the data of {grid.path} failed: {e}") from None


def _main(a: argparse.Namespace, argv: list[str]) -> int:
    try:  # a file of the user's, else a shipped grid by name (`quick`) or path (`configs/ablations/quick.yaml`)
        grid = load_grid(grid_path(a.grid))
    except FileNotFoundError as e:
        raise SystemExit(f"favit-ps ablate: {e} (shipped grids: {', '.join(grid_names())})") from None
    seeds = a.seeds if a.seeds is not None else grid.seeds
    bad = [s for s in seeds if not 0 <= s < 2**32]
    if bad:
        raise SystemExit(f"favit-ps ablate: seeds must be in [0, 2**32), got {bad}")
    extra = parse_set(a.set)
    runs_dir = Path(a.runs_dir)
    runs = GridRuns(grid, seeds, runs_dir, rows=a.rows, extra_overrides=extra, force=a.force)
    launch.options_from(grid, a)  # a bad launcher section or option is an error whatever the launcher
    if a.status:  # what the cluster (or this machine) has done so far, without waiting
        return launch.status_main(grid, seeds, runs_dir, a)
    if not (a.stats_only or a.report_only):
        try:  # every row's options, before the first run starts
            check_rows(grid, a.rows, extra)
        except ValueError as e:
            raise SystemExit(f"favit-ps ablate: {e}") from None
    if not (a.stats_only or a.dry_run or a.report_only):
        _prepare_data(runs)
    if a.launcher != "local" and not (a.stats_only or a.dry_run or a.report_only):
        command = "favit-ps ablate " + " ".join(shlex.quote(x) for x in argv)
        rc = launch.launch_main(grid, seeds, runs_dir, a, command)
        if rc is not None:  # submitted; without --wait the report comes later (--report-only)
            return rc
        a.report_only = True  # every job has ended: the report merges their records
    if a.stats_only:
        command = "favit-ps ablate " + " ".join(shlex.quote(x) for x in argv)
        out = Path(a.out) if a.out is not None else runs_dir / grid.name
        path, table = write_stats_report(grid, model_stats_table(grid, extra), out, command)
        print(f"\n{table}\n\nwritten: {path}")
        return 1 if "ERROR:" in table else 0
    shown = [x for x in argv if x != "--report-only"]
    command = "favit-ps ablate " + " ".join(shlex.quote(x) for x in shown)
    results = run_grid(
        runs,
        budget_s=a.budget_min * 60 if a.budget_min else None,
        timeout_s=a.timeout_s,
        dry_run=a.dry_run,
        report_only=a.report_only,
        command=command,
    )
    if a.dry_run:
        for r in results:
            what = {"done": "finished (skip)", "failed": f"FAILED before ({r.error}); would run again"}
            print(f"{r.row:<24} seed {r.seed}: {what.get(r.status, 'would run')}")
        return 0
    note = "this report re-rendered from the finished runs with `--report-only`" if a.report_only else None
    rc, *_ = finish_grid(
        grid,
        seeds,
        runs_dir,
        a.out,
        command,
        extra,
        chart=not a.no_chart,
        command_note=note,
        ran=results,
        rows=a.rows if a.report_only else None,  # a re-rendered report can leave rows out; a run reports all
    )
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
