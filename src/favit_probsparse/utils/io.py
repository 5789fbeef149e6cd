"""Atomic file writes: the one helper behind every result file, record, export and figure.

A file is written to a temporary name in its own folder and renamed over the target (``os.replace``), so a reader
sees either the old file or the new one, never half of one, and a crash leaves no partial file behind. The
temporary file gets the mode an ordinary ``open(path, "w")`` would give (``0o666`` less the umask), not the
private ``0o600`` of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "print_report", "save_figure", "write_json", "write_text"]


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it to ``path``; returns ``path``.

    The temporary name keeps ``path``'s suffix, so writers that pick a format from it (``savefig``) still do.
    Parent folders are created. On any error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix or ".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def print_report(text: str, path: str | os.PathLike | None = None) -> None:
    """Print a script's report and, when ``path`` is given (its ``--markdown``), write it there too (atomically,
    with a final newline)."""
    print(text)
    if path:
        write_text(path, text + "\n")


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomic JSON, indented; NaN and inf are written as null (they are not JSON)."""
    return write_text(path, json.dumps(_finite(obj), indent=2, default=str) + "\n")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def save_figure(fig: Any, path: str | os.PathLike, dpi: int | None = None) -> Path:
    """Save a matplotlib figure to ``path`` atomically (the format follows ``path``'s suffix)."""
    kwargs = {} if dpi is None else {"dpi": dpi}
    return atomic_write(path, lambda p: fig.savefig(p, **kwargs))
