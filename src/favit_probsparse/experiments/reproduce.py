"""``favit-ps reproduce TARGET``: one-command reproductions.

* ``quick`` (the README's main job, < 10 min on 2 CPU cores): trains and evaluates a small FaViT (CIFAR variant,
  32²) with several cross-window fusions on the real CIFAR-10 subset and prints the result table
  (``configs/ablations/quick.yaml`` through the ablation runner); the report goes to the git-ignored
  ``runs/quick/`` unless ``--out`` names another folder (``--out results`` updates the committed one).
* ``attention``: the ProbSparse attention benchmark at short lengths (``benchmarks/attention.py`` has the full one).
* any other name: ``configs/ablations/<name>.yaml`` through the ablation runner (e.g. ``fusion_cifar10``).
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

TARGETS = ("quick", "attention")


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="favit-ps reproduce", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("target", help="quick | attention | <grid name under configs/ablations/>")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override the grid's seeds")
    p.add_argument(
        "--out", default=None, help="report folder (default: the git-ignored run folder runs/<grid name>)"
    )
    a = p.parse_args(argv)
    if a.target == "attention":
        import runpy
        import sys

        bench = _repo_root() / "benchmarks" / "attention.py"
        sys.argv = [str(bench), "--lengths", "96", "336", "720", "--repeats", "10"]
        runpy.run_path(str(bench), run_name="__main__")
        return 0
    grid = Path(a.target)
    if not grid.suffix:
        grid = _repo_root() / "configs" / "ablations" / f"{a.target}.yaml"
    if not grid.exists():
        raise SystemExit(f"favit-ps reproduce: no grid {grid} (targets: {', '.join(TARGETS)} or a grid name)")
    from favit_probsparse.experiments.ablate import main as ablate_main

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
