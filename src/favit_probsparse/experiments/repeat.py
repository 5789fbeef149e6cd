"""``favit-ps fit --config C --itr N [--seeds ...] [Lightning overrides]``: N seeded repeats of one config (the
official Informer ``--itr``), reported as mean ± std.

This is a one-row grid through the same runner as ``favit-ps ablate``: each seed runs fit + test (the best
checkpoint, unless a ``TestAfterFit`` callback already tested inside fit) in its own folder
``runs/<config stem>/itr/seed<k>/`` with the same result record, and the report
``runs/<config stem>/<config stem>.md|.json`` (``--out DIR`` to put it elsewhere) merges every seed run so far.
Arguments this parser does not know (``--trainer.max_epochs 1``) go to each run's Lightning CLI.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from pathlib import Path

from favit_probsparse.config import config_path
from favit_probsparse.experiments.ablate import finish_grid, interruptible
from favit_probsparse.experiments.grid import NAME_RE, Grid, Metric, Row
from favit_probsparse.experiments.runner import GridRuns, run_grid

__all__ = ["itr_grid", "itr_seeds", "main"]

ROW = "itr"


def itr_seeds(itr: int | None, seeds: Sequence[int] | None) -> list[int]:
    """Seeds of ``--itr N`` (0..N-1) or the given ``--seeds`` (whose count must then be N)."""
    if itr is not None and itr <= 0:
        raise ValueError(f"--itr must be a positive number of runs, got {itr}")
    if seeds is not None:
        if itr is not None and len(seeds) != itr:
            raise ValueError(f"--itr {itr} but {len(seeds)} --seeds given ({list(seeds)})")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"--seeds has repeats: {list(seeds)}")
        return [int(s) for s in seeds]
    return list(range(itr if itr is not None else 1))


def itr_grid(
    config: str | Path,
    cli_args: Sequence[str] = (),
    metric: str = "test_mse",
    mode: str = "min",
    extra_metrics: Sequence[str] = ("test_mae",),
    threads: int | None = None,
) -> Grid:
    """The one-row grid of ``--itr``: ``config`` as is (plus ``cli_args``), tested after fit. A ``config`` that is
    not a file under the current folder may name a shipped one (:func:`favit_probsparse.config.config_path`)."""
    config = config_path(config)
    name = config.stem if NAME_RE.match(config.stem) else "itr"
    return Grid(
        name=name,
        path=None,
        base_config=config,
        rows=[Row(name=ROW, label=config.stem)],
        metric=Metric(metric, mode=mode, digits=4),
        extra_metrics=[Metric(m, mode=mode, digits=4) for m in extra_metrics if m != metric],
        title=f"{config.stem}: seeded repeats",
        test="if-missing",  # keep a TestAfterFit test, else test here
        test_ckpt="best",
        env={"OMP_NUM_THREADS": str(threads)} if threads else {},
        cli_args=list(cli_args),
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="favit-ps fit --itr", description=__doc__, allow_abbrev=False)
    p.add_argument("--config", required=True)
    p.add_argument("--itr", type=int, default=None, help="number of runs (seeds 0..N-1 unless --seeds)")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--out", default=None, help="folder for the report (default: runs/<config stem>)")
    p.add_argument("--runs-dir", default="runs", help="folder for the runs (default runs)")
    p.add_argument(
        "--threads", type=int, default=None, help="OMP_NUM_THREADS of each run (1 on a shared CPU)"
    )
    p.add_argument("--metric", default="test_mse", help="the reported metric (default test_mse)")
    p.add_argument("--mode", choices=("min", "max"), default="min", help="min: lower is better")
    p.add_argument("--force", action="store_true", help="re-run finished seeds too")
    p.add_argument("--timeout-s", type=float, default=None, help="per-run wall limit")
    argv = list(argv or [])
    a, cli_args = p.parse_known_args(argv)
    seeds = itr_seeds(a.itr, a.seeds)
    if a.out is not None and Path(a.out).suffix == ".json":
        raise ValueError(f"--out is a folder for the report (<name>.md and .json), got the file name {a.out}")
    extra = ("test_mae",) if a.metric == "test_mse" else ()
    grid = itr_grid(a.config, cli_args, a.metric, a.mode, extra, threads=a.threads)
    command = "favit-ps fit " + " ".join(shlex.quote(x) for x in argv)
    runs_dir = Path(a.runs_dir)

    def _go() -> int:
        run_grid(GridRuns(grid, seeds, runs_dir, force=a.force), timeout_s=a.timeout_s, command=command)
        rc, _, _, summary = finish_grid(grid, seeds, runs_dir, a.out, command, chart=False)
        for name, s in (summary[0]["metrics"] if summary else {}).items():
            print(f"{name}: {s['mean']:.4f} ± {s['std']:.4f} over {s['n']} seed(s)", flush=True)
        return rc

    return interruptible("favit-ps fit --itr", _go)
