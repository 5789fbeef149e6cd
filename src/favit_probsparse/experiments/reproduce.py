"""``favit-ps reproduce TARGET``: one-command reproductions.

* ``quick`` (the README's main job; measured times in results/quick.md and results/quick-forecast.md) shows both
  halves of the library, one grid each through the ablation runner, and prints each result table:

  1. ``configs/ablations/quick.yaml``: a small FaViT (CIFAR variant, 32²) with three cross-window fusions, one
     epoch on the real CIFAR-10 subset;
  2. ``configs/ablations/quick_forecast.yaml``: DLinear on ETTh1 (the forecaster that is best within the job's
     few minutes), scored beside the seasonal-naive and last-value forecasts of the same test windows, then the
     last held-out window and a forecast past the end of ETTh1 from its run (``favit-ps predict``'s CSVs + PNG in
     ``<run>/forecast/``; with ``--out DIR`` the picture is also copied to ``DIR/<grid name>-forecast.png``).

  Reports go to the git-ignored ``runs/<grid name>/`` unless ``--out`` names another folder (``--out results``
  updates the committed ones).
* ``attention``: the ProbSparse attention benchmark at short lengths (:mod:`favit_probsparse.benchmarks.attention`;
  ``python benchmarks/attention.py`` runs the full one).
* any other name: ``configs/ablations/<name>.yaml`` through the ablation runner (e.g. ``fusion_cifar10_subset``);
  a path to a grid file of your own works too.

A grid whose runs configure a :class:`~favit_probsparse.training.forecast.ForecastWriter` callback is followed by
a forecast past the end of its data, from the first finished seed of each row (:func:`forecast_after`).

Configs and grids are read from the installed package (:mod:`favit_probsparse.config`),
so this works without the repository checkout. Before the runs start, the data every run of the grid uses is
prepared once, in the foreground, for every grid of the target before the first run (``prepare_data`` of each distinct datamodule, with ``download=True`` unless the
config sets it: downloads with a progress bar; the CIFAR subsets are built from the full download, see
:data:`favit_probsparse.data.vision.KNOWN_SUBSETS`; ETT comes from its pinned upstream commit).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
from pathlib import Path

from favit_probsparse.config import grid_names, grid_path
from favit_probsparse.experiments.grid import load_grid
from favit_probsparse.experiments.runner import prepare_grid_data
from favit_probsparse.utils.io import atomic_write

__all__ = ["forecast_after", "main", "prepare_grid_data"]

TARGETS = ("quick", "attention")
# a target that runs several grids, in order (any other name is one grid)
TARGET_GRIDS: dict[str, tuple[str, ...]] = {"quick": ("quick", "quick_forecast")}
RUNS_DIR = Path("runs")  # the ablation runner's default run folder


def _grid_file(target: str) -> Path:
    return grid_path(target)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="favit-ps reproduce", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("target", help="quick | attention | <grid name under configs/ablations/> | <grid file>")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override the grid's seeds")
    p.add_argument(
        "--out", default=None, help="report folder (default: the git-ignored run folder runs/<grid name>)"
    )
    a = p.parse_args(argv)
    if a.target == "attention":
        from favit_probsparse.benchmarks.attention import main as attention_main

        return int(attention_main(["--lengths", "96", "336", "720", "--repeats", "10"]) or 0)
    names = TARGET_GRIDS.get(a.target, (a.target,))
    try:
        grids = [_grid_file(n) for n in names]
    except FileNotFoundError as e:
        raise SystemExit(
            f"favit-ps reproduce: no grid {a.target!r}: {e} (targets: {', '.join(TARGETS)}, a grid name "
            f"({', '.join(grid_names())}) or a grid file)"
        ) from None

    # every download first, so a missing file stops the job before any training (the ablation runner prepares
    # again before its first run: a no-op once the data is there)
    for grid in grids:
        try:
            prepare_grid_data(grid)
        except (ValueError, RuntimeError, OSError) as e:
            # a download or dataset problem (the data modules' errors are ValueErrors): the message names it
            raise SystemExit(f"favit-ps reproduce: preparing the data of {grid} failed: {e}") from None
    return max((_reproduce_grid(grid, a.seeds, a.out) for grid in grids), default=0)


def _reproduce_grid(grid: Path, seeds: list[int] | None, out: str | None) -> int:
    """One grid through the ablation runner, then its forecast (when its runs write one); the exit code."""
    from favit_probsparse.experiments.ablate import main as ablate_main

    with contextlib.suppress(ValueError):  # a repo-relative command in the report when run from the repo
        grid = grid.resolve().relative_to(Path.cwd().resolve())
    args = [str(grid)]
    if seeds:
        args += ["--seeds", *map(str, seeds)]
    if out:  # e.g. `--out results` to update the committed result note on purpose
        args += ["--out", out]
    rc = int(ablate_main(args) or 0)
    try:
        forecasts = forecast_after(grid, seeds)
    except Exception as e:  # the tables above stand; the job still fails, with the reason in one line
        print(
            f"favit-ps reproduce: the forecast after {grid} failed: {type(e).__name__}: {e}", file=sys.stderr
        )
        return 1
    for row, written in forecasts.items():
        files = " and ".join(str(_shown(p)) for p in written.values())
        print(f"{row}: forecast past the end of the data written to {files}", flush=True)
        if out and "png" in written:  # the picture beside the committed table
            png = written["png"]
            name = f"{load_grid(grid).name}-forecast.png" if len(forecasts) == 1 else f"{row}-forecast.png"
            copied = atomic_write(Path(out) / name, lambda p, src=png: shutil.copyfile(src, p))
            print(f"the forecast picture copied to {_shown(copied)}", flush=True)
    return rc


def _shown(path: Path) -> Path:
    """``path`` relative to the current folder when it is inside it (the printed paths stay short)."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return Path(path)


def _writes_forecasts(cfg: dict) -> bool:
    callbacks = (cfg.get("trainer") or {}).get("callbacks") or []
    return any(
        isinstance(cb, dict) and str(cb.get("class_path", "")).endswith(".ForecastWriter") for cb in callbacks
    )


def _tested_checkpoint(folder: Path, test_ckpt: str) -> Path:
    """The weights the grid tested: the best checkpoint (``best-*.ckpt``, as the ModelCheckpoint of the forecasting
    configs names it) when ``test_ckpt`` is ``best`` and one exists, else ``last.ckpt``."""
    best = sorted(folder.glob("best*.ckpt")) if test_ckpt == "best" else []
    return best[-1] if len(best) == 1 else folder / "last.ckpt"


def forecast_after(grid_file: Path, seeds: list[int] | None = None, runs_dir: Path = RUNS_DIR) -> dict:
    """If the grid's runs configure a ``ForecastWriter``: ``favit-ps predict`` with the run's config and the tested
    checkpoint, for the first finished seed of each row; the writer puts ``forecast.csv``, ``last_test_window.csv``
    and ``forecast.png`` (the last held-out window and the steps after the end of the data, original units) in
    ``<run>/forecast/``. Returns {row: written paths}."""
    from favit_probsparse.config import read_config
    from favit_probsparse.experiments.records import DONE
    from favit_probsparse.experiments.runner import run_dir_of

    grid = load_grid(grid_file)
    if not _writes_forecasts(read_config(grid.base_config)):
        return {}
    from favit_probsparse.training.forecast import ForecastWriter
    from favit_probsparse.training.project_cli import lightning_cli

    out = {}
    for row in grid.rows:
        runs = [run_dir_of(grid, row, s, runs_dir) for s in (seeds or grid.seeds)]
        run = next(
            (r for r in runs if (r / DONE).is_file() and (r / "checkpoints" / "last.ckpt").is_file()), None
        )
        if run is None:
            print(
                f"[reproduce] {grid.name}/{row.name}: no finished run with a last.ckpt, no forecast",
                flush=True,
            )
            continue
        config = run / "config.yaml"  # as the run saved it (the checkpoint's hyperparameters must match it)
        ckpt = _tested_checkpoint(run / "checkpoints", grid.test_ckpt)
        cli = lightning_cli(["predict", "--config", str(config), "--ckpt_path", str(ckpt)])
        writer = next(cb for cb in cli.trainer.callbacks if isinstance(cb, ForecastWriter))
        out[row.name] = dict(writer.written)
    return out
