"""Grids on a cluster: ``favit-ps ablate GRID --launcher slurm`` submits the runs through ``submitit``.

``--launcher local`` (the default) is :func:`~favit_probsparse.experiments.runner.run_grid` on this machine.
``--launcher slurm`` submits every run that is not finished as a SLURM job, one job array per grid (default) or
one job per run (``array: false``), and returns; ``--wait`` waits for the jobs and then writes the report.
``--launcher submitit-local`` is the same code path through submitit's ``LocalExecutor`` (jobs are processes of
this machine): what the tests run, and a way to try a launcher section without a cluster.

Each job is :class:`GridRun`: on the compute node it calls the local runner for its one (row, seed), so every
promise of the local runner holds on a cluster too: one result record per run written atomically
(``metrics.json`` or ``failed.json``), finished runs skipped, failed and timed-out runs recorded, and the report
(``--report-only``, or ``--wait``) merges the records on disk. A job that ends without any record (cancelled,
killed at its time limit, out of memory) gets a ``failed.json`` naming the scheduler's state when ``--status`` or
``--wait`` finds it. ``GridRun`` is checkpointable: SLURM's warning signal before preemption or the time limit
(``--signal=USR2@120``) requeues the job, and the requeued job, like any later submission, resumes the run from its
``checkpoints/last.ckpt`` when that checkpoint was written for the same config (the training data order and
augmentations depend only on (seed, epoch, index), so a resumed run sees the batches of an uninterrupted one).
This needs a ``ModelCheckpoint`` with ``save_last: true`` in the config (the shipped vision configs have one).

``favit-ps ablate GRID --status`` prints, without waiting, each run as done, failed, queued, running or not
submitted (the job id and the scheduler's state beside it).

The ``launcher:`` section of a grid file (each key overridable on the command line)::

    launcher:
      partition: gpu            # --partition
      gpus_per_run: 1           # --gpus-per-run: GPUs of one node for one run (Lightning DDP inside the job)
      cpus_per_run: 16          # --cpus-per-run (data-loading workers + 1 per GPU)
      mem_gb: 64                # --mem-gb
      time_min: 2880            # --time-min: the job's time limit; a longer run is requeued and resumed
      max_timeouts: 3           # requeues at the time limit (preemptions do not count)
      array: true               # --array / --job-per-run: one job array per grid, or one job per run
      array_parallelism: 32     # at most this many array tasks at once
      sbatch: {account: proj, qos: normal}   # --sbatch KEY=VALUE: any further sbatch flag
      setup: ["source .venv/bin/activate"]   # shell lines run before the job (modules, environment)
      folder: null              # submitit's job files and logs (default <runs-dir>/<grid>/.submitit)

One run uses one node (``gpus_per_run`` GPUs of it, ranks started by Lightning inside the job); a run across
several nodes is started with ``srun``/``torchrun`` by hand (docs/scale.md).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from favit_probsparse.config import apply_overrides, parse_set
from favit_probsparse.experiments.grid import Grid, config_hash, load_grid, redirect_outputs
from favit_probsparse.experiments.records import DONE, FAILED, read_record, write_record
from favit_probsparse.experiments.runner import GridRuns, _base_config, run_dir_of, run_grid
from favit_probsparse.utils.io import write_json

__all__ = [
    "LAUNCHERS",
    "GridRun",
    "LauncherOptions",
    "add_arguments",
    "grid_status",
    "launch_main",
    "make_executor",
    "status_main",
    "submit_grid",
]

LAUNCHERS = ("local", "slurm", "submitit-local")
JOB_FILE = "job.json"  # in a run folder: the job that was submitted for it
_QUEUED = {"PENDING", "REQUEUED", "CONFIGURING", "READY", "RESIZING", "SUSPENDED", "REQUEUE_HOLD"}
_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}


@dataclass
class LauncherOptions:
    """Where and how the jobs of a grid run (the grid's ``launcher:`` section, see the module docstring).

    Args:
        partition: SLURM partition (None: the cluster's default).
        gpus_per_run: GPUs for one run, on one node.
        cpus_per_run: CPU cores for one run (None: the cluster's default).
        mem_gb: memory for one run in GB (None: the cluster's default).
        time_min: the job's time limit in minutes.
        max_timeouts: how many times a job that reaches its time limit is requeued (then it fails).
        array: one job array per grid (True) or one job per run (False).
        array_parallelism: at most this many array tasks run at once.
        sbatch: further sbatch flags, ``{flag: value}`` (``{"account": "x"}`` gives ``--account=x``).
        setup: shell lines the job runs first.
        folder: submitit's folder (job files, logs); default ``<runs-dir>/<grid>/.submitit``.
    """

    partition: str | None = None
    gpus_per_run: int = 1
    cpus_per_run: int | None = None
    mem_gb: float | None = None
    time_min: int = 24 * 60
    max_timeouts: int = 3
    array: bool = True
    array_parallelism: int = 64
    sbatch: dict[str, Any] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)
    folder: str | None = None

    @classmethod
    def parse(cls, raw: Any, where: str) -> LauncherOptions:
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: 'launcher' must be a mapping, got {raw!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{where}: unknown launcher keys {unknown} (known: {sorted(known)})")
        opts = cls(**raw)
        opts.check(where)
        return opts

    def check(self, where: str) -> None:
        for name in ("gpus_per_run", "time_min", "array_parallelism", "max_timeouts"):
            value, least = getattr(self, name), 0 if name in ("gpus_per_run", "max_timeouts") else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{where}: launcher {name} must be a whole number >= {least}, got {value!r}")
        if not isinstance(self.sbatch, dict):
            raise ValueError(f"{where}: launcher sbatch must be a mapping of flag: value")
        if not isinstance(self.setup, list) or not all(isinstance(s, str) for s in self.setup):
            raise ValueError(f"{where}: launcher setup must be a list of shell lines")

    def parameters(self, name: str) -> dict[str, Any]:
        """``AutoExecutor.update_parameters`` arguments (None: not set; slurm_*: ignored by the local one)."""
        return dict(
            name=name,
            timeout_min=int(self.time_min),
            nodes=1,
            tasks_per_node=1,  # one runner per run; Lightning starts the ranks on the node's GPUs
            gpus_per_node=int(self.gpus_per_run),
            cpus_per_task=self.cpus_per_run,
            mem_gb=self.mem_gb,
            slurm_partition=self.partition,
            slurm_array_parallelism=int(self.array_parallelism),
            slurm_signal_delay_s=120,
            slurm_additional_parameters=dict(self.sbatch) or None,
            slurm_setup=list(self.setup) or None,
        )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The launcher's options of ``favit-ps ablate``."""
    g = p.add_argument_group("cluster (see favit_probsparse.experiments.launch)")
    g.add_argument("--launcher", choices=LAUNCHERS, default="local", help="where the runs go (default local)")
    g.add_argument("--status", action="store_true", help="show done/failed/queued/running runs; run nothing")
    g.add_argument("--wait", action="store_true", help="slurm: wait for the jobs, then write the report")
    g.add_argument("--partition", default=None)
    g.add_argument("--gpus-per-run", type=int, default=None)
    g.add_argument("--cpus-per-run", type=int, default=None)
    g.add_argument("--mem-gb", type=float, default=None)
    g.add_argument("--time-min", type=int, default=None, help="the job's time limit in minutes")
    g.add_argument("--array", dest="array", action="store_true", default=None, help="one job array per grid")
    g.add_argument("--job-per-run", dest="array", action="store_false", help="one job per run")
    g.add_argument("--sbatch", action="append", default=[], metavar="FLAG=VALUE", help="extra sbatch flag")


def options_from(grid: Grid, a: argparse.Namespace) -> LauncherOptions:
    """The grid's ``launcher:`` section with the command line's options over it."""
    where = str(grid.path)
    opts = LauncherOptions.parse(getattr(grid, "launcher", None), where)
    cli = {
        "partition": a.partition,
        "gpus_per_run": a.gpus_per_run,
        "cpus_per_run": a.cpus_per_run,
        "mem_gb": a.mem_gb,
        "time_min": a.time_min,
        "array": a.array,
    }
    merged = {**asdict(opts), **{k: v for k, v in cli.items() if v is not None}}
    merged["sbatch"] = {**opts.sbatch, **parse_set(a.sbatch)}
    opts = LauncherOptions(**merged)
    opts.check("command line")
    return opts


def make_executor(kind: str, folder: Path, opts: LauncherOptions, name: str):
    """submitit's ``AutoExecutor`` for ``kind`` (``slurm`` or ``submitit-local``) with ``opts`` applied."""
    import submitit

    cluster = {"slurm": "slurm", "submitit-local": "local"}[kind]
    try:
        ex = submitit.AutoExecutor(
            folder=str(folder), cluster=cluster, slurm_max_num_timeout=opts.max_timeouts
        )
    except RuntimeError as e:  # SlurmExecutor: 'Could not detect "srun"'
        raise SystemExit(f"favit-ps ablate: --launcher {kind}: {e}") from None
    ex.update_parameters(**{k: v for k, v in opts.parameters(name).items() if v is not None})
    return ex


@dataclass
class GridRun:
    """One (row, seed) of a grid as a submitit job: the local runner on the compute node (see the module doc).

    ``force`` re-runs a finished run from scratch on the first attempt only; a requeued attempt resumes.
    """

    grid_path: str
    row: str
    seed: int
    runs_dir: str
    extra: dict[str, Any]
    timeout_s: float | None = None
    command: str | None = None
    force: bool = False

    def __call__(self) -> str:
        # Lightning must not take the job's one SLURM task for the whole world: with this name it starts the
        # ranks of `trainer.devices` itself, on the GPUs of the job (Lightning's documented opt-out)
        if "SLURM_JOB_ID" in os.environ:
            os.environ["SLURM_JOB_NAME"] = "interactive"
        grid = load_grid(self.grid_path)
        [res] = run_grid(
            GridRuns(grid, [self.seed], Path(self.runs_dir), [self.row], self.extra, self.force),
            timeout_s=self.timeout_s,
            command=self.command,
            resume=not self.force,
        )
        return res.status

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit calls this on preemption / time limit: requeue the same run, resuming from last.ckpt."""
        import submitit

        return submitit.helpers.DelayedSubmission(GridRun(**{**asdict(self), "force": False}))


def _planned_hash(grid: Grid, row: str, seed: int, runs_dir: Path, extra: dict) -> str:
    """The config hash the runner gives this run (the same three steps as its ``_run_one``)."""
    r = next(x for x in grid.rows if x.name == row)
    cfg = apply_overrides(_base_config(grid), {**grid.base_overrides, **extra, **r.overrides})
    return config_hash(redirect_outputs(cfg, run_dir_of(grid, r, seed, runs_dir), seed), grid.cli_args)


def _job_state(job: dict) -> str:
    """The scheduler's state of a submitted job (``UNKNOWN`` when it cannot be asked)."""
    import submitit

    folder, job_id = job["folder"], str(job["job_id"])
    if job.get("launcher") == "submitit-local":
        if submitit.core.utils.JobPaths(folder, job_id.split("_")[0]).result_pickle.exists():
            return "COMPLETED"
        try:
            os.kill(int(job_id), 0)
        except (OSError, ValueError):
            return "ENDED"
        return "RUNNING"
    try:
        info = submitit.SlurmJob(folder=folder, job_id=job_id).get_info(mode="force")  # one sacct call
        return str(info.get("State") or "UNKNOWN").split()[0].upper()  # "CANCELLED by 123" -> CANCELLED
    except Exception:  # sacct missing or failing: the state is unknown, not an error of the run
        return "UNKNOWN"


@dataclass
class RunStatus:
    row: str
    seed: int
    status: str  # done | failed | queued | running | not submitted
    detail: str = ""


def grid_status(
    grid: Grid, seeds: list[int], runs_dir: Path, rows: list[str] | None = None, extra: dict | None = None
) -> list[RunStatus]:
    """Each run's status from its records and its job (a job that ended without a record gets ``failed.json``)."""
    extra = extra or {}
    out = []
    for r in run_grid(GridRuns(grid, seeds, runs_dir, rows, extra), report_only=True, quiet=True):
        run_dir = run_dir_of(grid, r.row, r.seed, runs_dir)
        job_path = run_dir / JOB_FILE
        if r.status in ("done", "failed"):
            out.append(RunStatus(r.row, r.seed, r.status, r.error or ""))
            continue
        chash = _planned_hash(grid, r.row, r.seed, runs_dir, extra)
        job = read_record(job_path) if job_path.is_file() else None
        if job is None or job.get("config_hash") != chash:
            out.append(RunStatus(r.row, r.seed, "not submitted"))
            continue
        state = _job_state(job)
        where = f"job {job['job_id']} {state}"
        if state in _QUEUED or state in _RUNNING or state == "UNKNOWN":
            out.append(RunStatus(r.row, r.seed, "running" if state in _RUNNING else "queued", where))
            continue
        error = f"{where} without a result record (log: {job['folder']})"
        if (run_dir / "log.txt").is_file():
            error = f"{where} without a result record (log: {run_dir / 'log.txt'})"
        write_record(
            run_dir / FAILED,
            status="failed",
            seed=r.seed,
            config_hash=chash,
            grid=grid.name,
            row=r.row,
            error=error,
            job=job,
        )
        out.append(RunStatus(r.row, r.seed, "failed", error))
    return out


def _active_job(run_dir: Path, chash: str) -> str | None:
    job_path = run_dir / JOB_FILE
    if not job_path.is_file() or (run_dir / DONE).is_file():
        return None
    job = read_record(job_path)
    if job.get("config_hash") != chash:
        return None
    state = _job_state(job)
    return f"{job['job_id']} ({state})" if state in _QUEUED | _RUNNING else None


def submit_grid(
    grid: Grid,
    seeds: list[int],
    runs_dir: Path,
    kind: str,
    opts: LauncherOptions,
    rows: list[str] | None = None,
    extra: dict | None = None,
    force: bool = False,
    timeout_s: float | None = None,
    command: str | None = None,
) -> list:
    """Submit every run of ``grid`` that is not finished (nor queued or running already); returns the jobs."""
    extra = extra or {}
    runs_dir = Path(runs_dir).resolve()
    plan = run_grid(GridRuns(grid, seeds, runs_dir, rows, extra, force), dry_run=True, quiet=True)
    todo = []
    for r in plan:
        if r.status == "done" and not force:
            continue
        run_dir = run_dir_of(grid, r.row, r.seed, runs_dir)
        chash = _planned_hash(grid, r.row, r.seed, runs_dir, extra)
        active = _active_job(run_dir, chash)
        if active is not None:
            print(f"[launch] {r.row}/seed{r.seed}: already submitted as job {active}; not submitted again")
            continue
        todo.append((r, run_dir, chash))
    if not todo:
        print("[launch] nothing to submit: every run is finished or queued")
        return []
    folder = Path(opts.folder) if opts.folder else runs_dir / grid.name / ".submitit"
    ex = make_executor(kind, folder.resolve(), opts, f"favit-{grid.name}")
    calls = [
        GridRun(
            str(Path(grid.path).resolve()),
            r.row,
            r.seed,
            str(runs_dir),
            extra,
            timeout_s if timeout_s is not None else grid.timeout_s,
            command,
            force,
        )
        for r, _, _ in todo
    ]
    if opts.array and len(calls) > 1:
        jobs = ex.submit_array(calls)
    else:
        jobs = [ex.submit(c) for c in calls]
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for (r, run_dir, chash), job in zip(todo, jobs):
        write_json(
            run_dir / JOB_FILE,
            {
                "launcher": kind,
                "job_id": job.job_id,
                "folder": str(folder),
                "config_hash": chash,
                "submitted": now,
            },
        )
        print(f"[launch] {r.row}/seed{r.seed}: job {job.job_id}")
    return jobs


def print_status(statuses: list[RunStatus]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s.status] = counts.get(s.status, 0) + 1
        print(f"{s.row:<24} seed {s.seed:<4} {s.status:<14} {s.detail}")
    print(", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return counts


def status_main(grid: Grid, seeds: list[int], runs_dir: Path, a: argparse.Namespace) -> int:
    """``favit-ps ablate GRID --status``: every run's status, without waiting."""
    print_status(grid_status(grid, seeds, runs_dir, rows=a.rows, extra=parse_set(a.set)))
    return 0


def launch_main(
    grid: Grid, seeds: list[int], runs_dir: Path, a: argparse.Namespace, command: str
) -> int | None:
    """``favit-ps ablate --launcher slurm|submitit-local``: submit; returns the exit code, or None after ``--wait``
    (every job has ended and has a record: the caller writes the report from the records)."""
    extra = parse_set(a.set)
    opts = options_from(grid, a)
    jobs = submit_grid(grid, seeds, runs_dir, a.launcher, opts, a.rows, extra, a.force, a.timeout_s, command)
    if not a.wait:
        print(
            f"[launch] {len(jobs)} job(s) submitted; `favit-ps ablate {a.grid} --status` shows their progress, "
            f"`favit-ps ablate {a.grid} --report-only` writes the report from the records"
        )
        return 0
    for job in jobs:
        try:
            job.result()
        except Exception as e:  # the run's own record (or the one written below) says what went wrong
            print(f"[launch] job {job.job_id}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    grid_status(grid, seeds, runs_dir, rows=a.rows, extra=extra)  # records for jobs that ended without one
    return None
