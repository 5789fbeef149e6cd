"""Where and when a number was made: the one hardware / software / git probe that every result file uses.

``hardware()`` is a dict (recorded in JSON), ``hardware_summary()`` the one-line form printed in tables; the
benchmarks, the grid runner, ``--itr`` and checkpoints all call these, so a result names its CPU (``/proc/cpuinfo``'s
model name and the SIMD flags that decide fp32 and bf16 speed), core count, threads, torch version and accelerator
the same way everywhere. Two CPUs with the same model name ("AMD EPYC") can differ in exactly those flags.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

__all__ = [
    "SPEED_FLAGS",
    "cpu_flags",
    "cpu_model",
    "git_commit",
    "hardware",
    "hardware_summary",
    "provenance",
    "status_line",
    "utc_now",
]


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux); ``platform`` elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


# The /proc/cpuinfo flags that change what a CPU number means: AVX2 / AVX-512 for fp32 kernels, AVX512-BF16 and
# AMX for bf16 autocast (without them bf16 is emulated, several times slower than fp32).
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_flags() -> list[str] | None:
    """Which of :data:`SPEED_FLAGS` the CPU has (``/proc/cpuinfo``), or None where that file cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in SPEED_FLAGS if f in have]
    except OSError:
        pass
    return None


def hardware() -> dict[str, Any]:
    """CPU model, cores, thread settings, OS, Python, torch and the GPU (if any), as plain JSON values."""
    hw: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_cores": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        import torch

        hw["torch"] = torch.__version__
        hw["torch_threads"] = torch.get_num_threads()
        hw["gpu"] = (
            [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if torch.cuda.is_available()
            else None
        )
    except Exception:  # pragma: no cover - torch is a dependency; the probe must never fail a run
        pass
    return hw


def hardware_summary(hw: dict[str, Any] | None = None) -> str:
    """One line for a table footer, e.g.
    ``CPU AMD EPYC (avx2; no avx512f, avx512_bf16, amx_bf16), 2 cores; OMP_NUM_THREADS=1; torch 2.x; no GPU``."""
    hw = hardware() if hw is None else hw
    flags = hw.get("cpu_flags")
    flag_text = ""
    if flags is not None:
        missing = [f for f in SPEED_FLAGS if f not in flags]
        flag_text = " (" + (", ".join(flags) or "none of " + ", ".join(SPEED_FLAGS))
        flag_text += f"; no {', '.join(missing)})" if missing and flags else ")"
    parts = [f"CPU {hw.get('cpu', '?')}{flag_text}, {hw.get('cpu_cores', '?')} cores"]
    if hw.get("omp_num_threads"):
        parts.append(f"OMP_NUM_THREADS={hw['omp_num_threads']}")
    if hw.get("torch"):
        threads = f" ({hw['torch_threads']} threads)" if hw.get("torch_threads") else ""
        parts.append(f"torch {hw['torch']}{threads}")
    if "gpu" in hw:
        parts.append("GPU " + ", ".join(hw["gpu"]) if hw["gpu"] else "no GPU")
    return "; ".join(parts)


def git_commit(where: str | os.PathLike | None = None) -> str | None:
    """The checkout's commit (``+dirty`` when tracked files changed), or None outside a git checkout."""
    cwd = Path(where) if where is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "") if sha else None


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (``2026-11-29T23:10:00+00:00``)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def status_line(what: str, when: str, hardware: str, command: str) -> str:
    """The line every result file opens with: what it shows, measured when, on what, with which command."""
    when = re.sub(r"(\d)T(\d)", r"\1 \2", when)  # ISO 8601's date-time separator reads as a space
    return f"**Status.** {what}. Measured {when} on {hardware}, with `{command}`."


def provenance(command: str | None = None) -> dict[str, Any]:
    """Command, hardware, date and git commit: the block every result record and report carries."""
    return {"command": command, "hardware": hardware(), "date": utc_now(), "git_commit": git_commit()}
