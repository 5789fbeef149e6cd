"""The configs, grids and scripts the CLI names, found with or without the checkout.

A wheel carries the repository's ``configs/`` tree as ``favit_probsparse/configs`` and the attention benchmark as
``favit_probsparse/_scripts/attention.py`` (the build step in ``setup.py``); they are read through
:mod:`importlib.resources`. A source checkout (an editable install, or ``PYTHONPATH=src``) has no such copy, and
the files are read where they live in the repository (``configs/``, ``benchmarks/``).
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

__all__ = ["config_dir", "config_path", "grid_names", "script_path"]

_CHECKOUT = Path(__file__).resolve().parents[2]  # the repository root when running from a source checkout
_IS_CHECKOUT = (_CHECKOUT / "src" / "favit_probsparse" / "resources.py").is_file()
_SCRIPTS = {"attention.py": "benchmarks/attention.py"}  # packaged name -> place in the checkout


def _packaged(rel: str) -> Path | None:
    t = importlib.resources.files("favit_probsparse").joinpath(*rel.split("/"))
    if not (t.is_dir() or t.is_file()):
        return None
    if not isinstance(t, Path):  # e.g. a zip import: the runs need real files
        raise RuntimeError(
            f"favit_probsparse/{rel} is not on the file system ({t}); install the package unzipped"
        )
    return t


def config_dir() -> Path:
    """The shipped ``configs`` tree: the package's copy, else the checkout's ``configs/``."""
    found = _packaged("configs")
    if found is not None:
        return found
    if _IS_CHECKOUT and (_CHECKOUT / "configs").is_dir():
        return _CHECKOUT / "configs"
    raise FileNotFoundError(
        "favit_probsparse has no configs: this install lacks favit_probsparse/configs (build it with "
        "`pip install .`, whose setup.py step copies them) and is not a source checkout"
    )


def config_path(name: str | os.PathLike) -> Path:
    """Resolve a config or grid: an existing file as given (a user's own, relative to the current folder) first,
    then the same name inside the shipped configs (a leading ``configs/`` is optional: ``configs/ablations/quick.yaml``
    and ``ablations/quick.yaml`` name the same file)."""
    p = Path(name)
    if p.is_file():
        return p
    parts = p.parts[1:] if p.parts[:1] == ("configs",) else p.parts
    root = config_dir()
    found = root.joinpath(*parts)
    if parts and not p.is_absolute() and found.is_file():
        return found
    raise FileNotFoundError(f"config {name} not found: neither a file under {Path.cwd()} nor one in {root}")


def grid_names() -> list[str]:
    """Names of the shipped ablation grids (``configs/ablations/<name>.yaml`` with ``rows``; bases are not grids)."""
    import yaml

    names = []
    for p in sorted((config_dir() / "ablations").glob("*.yaml")):
        raw = yaml.safe_load(p.read_text())
        if isinstance(raw, dict) and "rows" in raw:
            names.append(p.stem)
    return names


def script_path(name: str) -> Path:
    """A shipped script (``attention.py``: the attention benchmark), packaged or in the checkout."""
    if name not in _SCRIPTS:
        raise KeyError(f"no shipped script {name!r} (known: {', '.join(_SCRIPTS)})")
    found = _packaged(f"_scripts/{name}")
    if found is not None:
        return found
    if _IS_CHECKOUT and (_CHECKOUT / _SCRIPTS[name]).is_file():
        return _CHECKOUT / _SCRIPTS[name]
    raise FileNotFoundError(f"favit_probsparse/_scripts/{name} is missing from this install")
