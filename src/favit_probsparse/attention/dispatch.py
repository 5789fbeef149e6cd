"""Attention kernels chosen by measurement: :func:`attend` runs the kernel a measured table names fastest.

FaSA's attention calls are tiny and many (head widths 4–32, 5–383 keys, up to 3136 queries): there a fused
kernel's bookkeeping can cost more than the arithmetic, and which kernel wins depends on the chip, the dtype
and whether a backward follows. So nothing is guessed here. ``benchmarks/attention_kernels.py`` times every
kernel of :data:`KERNELS` on the shapes FaViT and the 1-D/3-D FaSA produce and writes the winners to
``kernel_table.json`` (this folder), one table per machine class with its CPU/GPU, flags, torch version and date.

Kernels (``q [..., N, c]``, ``k`` and ``v [..., K, c]``; all return ``[..., N, c]`` in the input dtype):

``sdpa``     ``F.scaled_dot_product_attention`` with torch's own backend choice: the safe default, used on
             hardware no table covers.
``flash``    SDPA restricted to its flash backend (``torch.nn.attention.sdpa_kernel``); on a CPU with dropout, whose
             flash kernel has none, the math backend.
``math``     SDPA restricted to its math backend.
``bmm``      ``softmax((q·scale) @ kᵀ) @ v`` written out in the input dtype (two batched GEMMs and one softmax).
``bmm_fp32`` the same in float32, cast back: on a CPU without native bf16 arithmetic (AVX2, where bf16 is
             emulated) the conversions can cost less than emulated bf16 GEMMs.

Machine classes (the table's first key, so a table measured on one chip is never applied on another):
``cpu-amx``, ``cpu-avx512_bf16``, ``cpu-avx512``, ``cpu-avx2``, ``cpu-<torch's capability>`` (ARM, ...), and
``cuda-sm_XY``. Within a class the row nearest in (head width, queries, keys), in log scale, for the same dtype
and training flag picks the kernel; a shape farther than :data:`MAX_DISTANCE` from every row, an unknown machine
or a dtype the table lacks gets ``sdpa``.

``FAVIT_ATTENTION_KERNEL=<kernel>`` (environment) or ``with use_kernel("<kernel>"):`` forces one kernel (the
benchmarks' "dispatch off" rows use ``sdpa``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = [
    "DEFAULT_KERNEL",
    "KERNELS",
    "MAX_DISTANCE",
    "TABLE_PATH",
    "attend",
    "choose_kernel",
    "cpu_flags",
    "load_table",
    "machine_class",
    "use_kernel",
]

TABLE_PATH = Path(__file__).with_name("kernel_table.json")
DEFAULT_KERNEL = "sdpa"
#: a row further than this (sum of |log2| ratios of head width, queries and keys) is not trusted for a shape
MAX_DISTANCE = 3.0


def _sdpa(q: Tensor, k: Tensor, v: Tensor, scale: float, p: float) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=scale)


def _sdpa_with(backend: SDPBackend) -> Callable[[Tensor, Tensor, Tensor, float, float], Tensor]:
    def run(q: Tensor, k: Tensor, v: Tensor, scale: float, p: float) -> Tensor:
        # torch's CPU flash kernel has no dropout: with dropout there, the math backend does it
        cpu_dropout = p > 0.0 and q.device.type == "cpu"
        with sdpa_kernel(SDPBackend.MATH if cpu_dropout else backend):
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=scale)

    return run


def _bmm(q: Tensor, k: Tensor, v: Tensor, scale: float, p: float) -> Tensor:
    # the scale goes on q (N·c elements) rather than on the scores (N·K): FaSA has c < K; the product also
    # makes the strided q view contiguous, which the GEMM needs anyway
    attn = torch.matmul(q * scale, k.transpose(-2, -1)).softmax(dim=-1)
    if p > 0.0:
        attn = F.dropout(attn, p)
    return torch.matmul(attn, v)


def _bmm_fp32(q: Tensor, k: Tensor, v: Tensor, scale: float, p: float) -> Tensor:
    if q.dtype == torch.float32:
        return _bmm(q, k, v, scale, p)
    with torch.autocast(q.device.type, enabled=False):
        return _bmm(q.float(), k.float(), v.float(), scale, p).to(q.dtype)


KERNELS: dict[str, Callable[[Tensor, Tensor, Tensor, float, float], Tensor]] = {
    "sdpa": _sdpa,
    "flash": _sdpa_with(SDPBackend.FLASH_ATTENTION),
    "math": _sdpa_with(SDPBackend.MATH),
    "bmm": _bmm,
    "bmm_fp32": _bmm_fp32,
}


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.cache
def machine_class(device: str = "cpu", index: int = 0) -> str:
    """The class of chip a kernel table applies to (see the module docstring)."""
    if device == "cuda":
        major, minor = torch.cuda.get_device_capability(index)
        return f"cuda-sm_{major}{minor}"
    if device != "cpu":
        return device
    flags = cpu_flags()
    for flag, name in (("amx_bf16", "amx"), ("avx512_bf16", "avx512_bf16"), ("avx512f", "avx512")):
        if flag in flags:
            return f"cpu-{name}"
    if "avx2" in flags:
        return "cpu-avx2"
    return f"cpu-{torch.backends.cpu.get_cpu_capability().lower()}"


@functools.cache
def load_table(path: str | None = None) -> dict[str, list[dict]]:
    """Machine class -> its measured rows, from the JSON table (``path`` or the packaged one). A missing or
    unreadable table means no rows: every call takes the default kernel."""
    p = Path(path) if path else TABLE_PATH
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    return {t["machine"]["class"]: t["rows"] for t in data.get("tables", [])}


def _distance(row: dict, head_dim: int, queries: int, keys: int) -> float:
    return sum(
        abs(math.log2(row[name] / value))
        for name, value in (("head_dim", head_dim), ("queries", queries), ("keys", keys))
    )


def _lookup(machine: str, dtype: str, training: bool, head_dim: int, queries: int, keys: int) -> str:
    rows = [r for r in load_table().get(machine, ()) if r["dtype"] == dtype and r["training"] == training]
    if not rows:
        return DEFAULT_KERNEL
    best = min(rows, key=lambda r: _distance(r, head_dim, queries, keys))
    if _distance(best, head_dim, queries, keys) > MAX_DISTANCE or best["best"] not in KERNELS:
        return DEFAULT_KERNEL
    return best["best"]


_CHOICES: dict[tuple, str] = {}
_FORCED: list[str] = []


def choose_kernel(q: Tensor, k: Tensor, training: bool) -> str:
    """The kernel :func:`attend` runs for these inputs (forced one, else the table's, else ``sdpa``)."""
    if _FORCED:
        return _FORCED[-1]
    env = os.environ.get("FAVIT_ATTENTION_KERNEL")
    if env:
        if env not in KERNELS:
            raise ValueError(f"FAVIT_ATTENTION_KERNEL={env!r}: not one of {sorted(KERNELS)}")
        return env
    dtype = str(q.dtype).removeprefix("torch.")
    return _table_choice(
        q.device.type, q.device.index or 0, dtype, bool(training), *q.shape[-2:], k.shape[-2]
    )


@torch.compiler.assume_constant_result  # torch.compile calls it while tracing (it reads files) and keeps the name
def _table_choice(
    device: str, index: int, dtype: str, training: bool, queries: int, head_dim: int, keys: int
) -> str:
    key = (device, index, dtype, training, queries, head_dim, keys)
    name = _CHOICES.get(key)
    if name is None:
        machine = machine_class(device, index) if device == "cuda" else machine_class(device)
        name = _CHOICES[key] = _lookup(machine, dtype, training, head_dim, queries, keys)
    return name


@contextlib.contextmanager
def use_kernel(name: str) -> Iterator[None]:
    """Force ``name`` for every :func:`attend` call inside the block (e.g. ``sdpa``: dispatch off)."""
    if name not in KERNELS:
        raise ValueError(f"attention kernel {name!r}: not one of {sorted(KERNELS)}")
    _FORCED.append(name)
    try:
        yield
    finally:
        _FORCED.pop()


def attend(
    q: Tensor, k: Tensor, v: Tensor, scale: float, dropout_p: float = 0.0, training: bool = False
) -> Tensor:
    """``softmax(q·kᵀ·scale) @ v`` with the measured-fastest kernel.

    ``q [..., N, c]``, ``k``/``v [..., K, c]`` (any leading dims, strided views welcome); returns ``[..., N, c]``
    in ``q``'s dtype. ``training``: a backward follows (the table has separate training and inference rows),
    and ``dropout_p`` applies to the attention weights only then (as ``nn.Dropout`` in train mode).
    """
    p = dropout_p if training else 0.0
    name = choose_kernel(q, k, training)
    try:
        return KERNELS[name](q, k, v, scale, p)
    except RuntimeError as e:
        # a restricted SDPA backend that does not take these inputs (a row measured at a neighbouring shape,
        # e.g. CUDA flash needs head widths that are multiples of 8): torch's own choice instead
        if name == DEFAULT_KERNEL or "No available kernel" not in str(e):
            raise
        return _sdpa(q, k, v, scale, p)
