"""``favit-ps reproduce TARGET``: one-command reproductions.

* ``quick`` (the README's main job, < 10 min on 2 CPU cores): trains and evaluates a small FaViT (CIFAR variant,
  32²) with several cross-window fusions on the real CIFAR-10 subset and prints the result table
  (``configs/ablations/quick.yaml`` through the ablation runner); the report goes to the git-ignored
  ``runs/quick/`` unless ``--out`` names another folder (``--out results`` updates the committed one).
* ``attention``: the ProbSparse attention benchmark at short lengths (:mod:`favit_probsparse.benchmarks.attention`;
  ``python benchmarks/attention.py`` runs the full one).
* any other name: ``configs/ablations/<name>.yaml`` through the ablation runner (e.g. ``fusion_cifar10_subset``);
  a path to a grid file of your own works too.

Configs and grids are read from the installed package (:mod:`favit_probsparse.resources`),
so this works without the repository checkout. Before the runs start, the data every run of the grid uses is
prepared once, in the foreground (``prepare_data`` of each distinct datamodule, with ``download=True`` unless the
config sets it: downloads with a progress bar; the CIFAR subsets are built from the full download, see
:data:`favit_probsparse.data.vision.KNOWN_SUBSETS`; ETT comes from its pinned upstream commit).
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from favit_probsparse import resources
from favit_probsparse.experiments.runner import prepare_grid_data

__all__ = ["main", "prepare_grid_data"]

TARGETS = ("quick", "attention")


def _grid_file(target: str) -> Path:
    return resources.grid_path(target)


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
    try:
        grid = _grid_file(a.target)
    except FileNotFoundError as e:
        raise SystemExit(
            f"favit-ps reproduce: no grid {a.target!r}: {e} (targets: {', '.join(TARGETS)}, a grid name "
            f"({', '.join(resources.grid_names())}) or a grid file)"
        ) from None
    from favit_probsparse.data.vision import DatasetError
    from favit_probsparse.experiments.ablate import main as ablate_main

    try:  # (the ablation runner prepares again before its first run: a no-op once the data is there)
        prepare_grid_data(grid)
    except (DatasetError, RuntimeError, OSError) as e:  # download / dataset problems: the message names them
        raise SystemExit(f"favit-ps reproduce: preparing the data of {grid} failed: {e}") from None
    with contextlib.suppress(
        ValueError
    ):  # record a repo-relative command in the report when run from the repo
        grid = grid.resolve().relative_to(Path.cwd().resolve())
    args = [str(grid)]
    if a.seeds:
        args += ["--seeds", *map(str, a.seeds)]
    if a.out:  # e.g. `--out results` to update the committed result note on purpose
        args += ["--out", a.out]
    return int(ablate_main(args) or 0)
