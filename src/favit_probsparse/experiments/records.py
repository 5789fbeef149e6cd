"""One result record per run, written atomically, read back with errors that name the file; one summary.

A run folder ends with ``metrics.json`` (finished) or ``failed.json`` (crashed, timed out); both are result
records written by :func:`write_record`: the metrics, the seed, the config (path and hash), the command, the
hardware, the date and the git commit (:func:`favit_probsparse.utils.provenance.provenance`). Every
result file goes through :mod:`favit_probsparse.utils.io` (temporary file + ``os.replace``), so an
interrupted write never leaves half a file behind.

:func:`mean_std` is the one summary of repeated runs: the mean and the sample standard deviation. With one
value there is no spread to estimate: the std is reported as 0.0, always beside ``n`` (tables print the mean
alone when n = 1).
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from favit_probsparse.utils.io import write_json
from favit_probsparse.utils.provenance import provenance

__all__ = [
    "DONE",
    "FAILED",
    "CorruptRecordError",
    "mean_std",
    "read_record",
    "summarize_values",
    "write_record",
]

DONE = "metrics.json"  # the done-marker of a run folder
FAILED = "failed.json"


class CorruptRecordError(ValueError):
    """A result record that cannot be read (the message names the file)."""


def write_record(
    path: str | os.PathLike,
    *,
    status: str,
    seed: int,
    metrics: dict[str, float] | None = None,
    config: str | None = None,
    config_hash: str | None = None,
    command: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Write one run's result record to ``path`` (atomically) and return it.

    Args:
        status: ``done`` or ``failed``.
        seed: the RNG seed of the run.
        metrics: scalar metrics (e.g. ``trainer.callback_metrics``).
        config: the config file the run used; config_hash: its content hash (unchanged config = skip).
        command: the command that made the run.
        extra: anything else worth keeping (model stats, wall time, error text, grid/row names).
    """
    record = {
        "status": status,
        "seed": int(seed),
        "metrics": dict(metrics or {}),
        "config": config,
        "config_hash": config_hash,
        **provenance(command),
        **extra,
    }
    write_json(path, record)
    return record


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """Read a result record; a file that is not one raises :class:`CorruptRecordError` naming it."""
    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptRecordError(
            f"{path}: not a readable result record ({e}); delete it or re-run with --force"
        ) from None
    if not isinstance(rec, dict) or not isinstance(rec.get("metrics", {}), dict):
        raise CorruptRecordError(f"{path}: not a result record (expected a JSON object with 'metrics')")
    return rec


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); one value gives std 0.0 (no spread measured)."""
    if not values:
        raise ValueError("mean_std of no values")
    vals = [float(v) for v in values]
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def summarize_values(values: Sequence[float]) -> dict[str, Any]:
    """``{"values", "n", "mean", "std"}`` of repeated runs (see :func:`mean_std`)."""
    mean, std = mean_std(values)
    return {"values": [float(v) for v in values], "n": len(values), "mean": mean, "std": std}
