"""The configs and grids the CLI names, found with or without the checkout.

A wheel carries the repository's ``configs/`` tree as ``favit_probsparse/configs`` (the build step in
``setup.py``); it is read through :mod:`importlib.resources`. A source checkout (an editable install, or
``PYTHONPATH=src``) has no such copy, and the files are read where they live in the repository (``configs/``).
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["config_dir", "config_path", "grid_names", "grid_path", "resolve_config_args"]

_CHECKOUT = Path(__file__).resolve().parents[2]  # the repository root when running from a source checkout
_IS_CHECKOUT = (_CHECKOUT / "src" / "favit_probsparse" / "resources.py").is_file()


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


def grid_path(name: str | os.PathLike) -> Path:
    """Resolve a grid: an existing file as given first, then a shipped grid by file name
    (``configs/ablations/quick.yaml``, ``ablations/quick.yaml``) or by bare name (``quick``)."""
    p = Path(name)
    if p.is_file() or p.suffix:
        return config_path(p)
    return config_path(f"ablations/{p}.yaml")


_CONFIG_FLAGS = ("--config", "-c")  # Lightning's CLI options that take a config file


def _shipped_or_given(value: str) -> str:
    if Path(value).exists():
        return value
    try:
        return str(config_path(value))
    except FileNotFoundError:  # not a shipped config either: Lightning's own error names it
        return value


def resolve_config_args(argv: Sequence[str]) -> list[str]:
    """``argv`` with every ``--config X`` / ``--config=X`` / ``-c X`` whose ``X`` does not exist relative to the
    current folder but names a shipped config (``configs/vision/favit_tiny_cifar10subset.yaml`` after a wheel
    install, run from any folder) pointing at the shipped file; everything else unchanged."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg in _CONFIG_FLAGS and i + 1 < len(out):
            out[i + 1] = _shipped_or_given(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + _shipped_or_given(arg.removeprefix("--config="))
    return out


def grid_names() -> list[str]:
    """Names of the shipped ablation grids (``configs/ablations/<name>.yaml`` with ``rows``; bases are not grids)."""
    import yaml

    names = []
    for p in sorted((config_dir() / "ablations").glob("*.yaml")):
        raw = yaml.safe_load(p.read_text())
        if isinstance(raw, dict) and "rows" in raw:
            names.append(p.stem)
    return names
