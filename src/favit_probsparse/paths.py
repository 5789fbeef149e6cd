"""Where datasets live.

One setting: the environment variable ``FAVIT_DATA``. When it is unset, ``../shared/data`` (relative to the
current directory, as laid out on the project's development machines) is used if it exists; otherwise a
per-user cache folder (``$XDG_CACHE_HOME/favit-probsparse/data``, default ``~/.cache/favit-probsparse/data``),
where loaders download real datasets on first use (ETT, CIFAR) and build the quick job's CIFAR subsets
(:data:`favit_probsparse.data.vision.KNOWN_SUBSETS`).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "FAVIT_DATA"


def data_root() -> Path:
    """Return the data root (see module docstring). The folder is not created here."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    shared = Path("..") / "shared" / "data"
    if shared.is_dir():
        return shared.resolve()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "favit-probsparse" / "data"


def resolve_data_path(path: str | os.PathLike | None, default: str) -> Path:
    """Resolve a user-given dataset path; relative names (and ``None`` -> ``default``) live under :func:`data_root`."""
    p = Path(path) if path is not None else Path(default)
    if p.is_absolute() or p.exists():
        return p
    return data_root() / p
