"""The ground floor's provenance: the CPU named with the flags that decide its speed, and the status line."""

from __future__ import annotations

from pathlib import Path

from favit_probsparse.utils.provenance import SPEED_FLAGS, cpu_flags, hardware, hardware_summary, status_line


def test_the_summary_names_the_cpu_with_its_speed_flags():
    base = {"cpu": "AMD EPYC", "cpu_cores": 2}
    assert hardware_summary({**base, "cpu_flags": ["avx2"]}) == (
        "CPU AMD EPYC (avx2; no avx512f, avx512_bf16, amx_bf16), 2 cores"
    )
    assert hardware_summary({**base, "cpu_flags": ["avx2", "avx512f", "avx512_bf16"]}) == (
        "CPU AMD EPYC (avx2, avx512f, avx512_bf16; no amx_bf16), 2 cores"
    )
    assert hardware_summary({**base, "cpu_flags": list(SPEED_FLAGS)}) == (
        "CPU AMD EPYC (avx2, avx512f, avx512_bf16, amx_bf16), 2 cores"
    )
    assert hardware_summary({**base, "cpu_flags": None}) == "CPU AMD EPYC, 2 cores"  # flags unknown


def test_the_recorded_flags_are_the_cpu_s():
    flags = cpu_flags()
    assert hardware()["cpu_flags"] == flags
    if flags is not None:  # Linux: compare with /proc/cpuinfo read independently
        text = Path("/proc/cpuinfo").read_text()
        have = set(next(ln for ln in text.splitlines() if ln.startswith("flags")).split(":", 1)[1].split())
        assert flags == [f for f in SPEED_FLAGS if f in have]


def test_status_line():
    line = status_line(
        "Top-1 per row", "2026-11-30T05:51 to 2026-11-30T05:55 UTC", "CPU X", "favit-ps ablate g"
    )
    assert line == (
        "**Status.** Top-1 per row. Measured 2026-11-30 05:51 to 2026-11-30 05:55 UTC on CPU X, "
        "with `favit-ps ablate g`."
    )
