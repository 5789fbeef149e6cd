"""ALiBi (Press, Smith, Lewis, arXiv:2108.12409) — ``docs/posenc.md`` §4.

No input encoding; a head-specific linear distance penalty on the logits. Slopes ``m_h = 2^(−8h/H)`` for H a
power of two; otherwise the power-of-two sequence for ``2^⌊log2 H⌋`` heads followed by the odd-indexed entries of
the ``2^⌈log2 H⌉`` sequence (the reference ``get_slopes``). ``symmetric=True`` (the default, for bidirectional
encoders) gives ``−m|i−j|``; ``symmetric=False`` the causal form ``−m(i−j)`` (entries with j > i are left to the
causal mask).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._base import PositionEncoding

__all__ = ["AlibiPositionEncoding", "alibi_bias", "alibi_slopes"]


def _pow2_slopes(n: int) -> list[float]:
    start = 2 ** (-(2 ** -(math.log2(n) - 3)))
    return [start * start**i for i in range(n)]


def alibi_slopes(n_heads: int) -> Tensor:
    """The reference slope sequence (float64, [n_heads])."""
    if n_heads < 1:
        raise ValueError(f"n_heads must be >= 1, got {n_heads}")
    if math.log2(n_heads).is_integer():
        s = _pow2_slopes(n_heads)
    else:
        closest = 2 ** math.floor(math.log2(n_heads))
        s = _pow2_slopes(closest) + _pow2_slopes(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(s, dtype=torch.float64)


def alibi_bias(
    l_q: int,
    l_k: int,
    n_heads: int,
    symmetric: bool = True,
    q_offset: int = 0,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> Tensor:
    """Additive logit bias [H, l_q, l_k]."""
    i = torch.arange(q_offset, q_offset + l_q, dtype=torch.float64, device=device)[:, None]
    j = torch.arange(l_k, dtype=torch.float64, device=device)[None, :]
    dist = (i - j).abs() if symmetric else (i - j)
    slopes = alibi_slopes(n_heads).to(device)
    return (-slopes[:, None, None] * dist[None]).to(dtype)


class AlibiPositionEncoding(PositionEncoding):
    """``bias(l_q, l_k, n_heads)`` returns [H, l_q, l_k]; ``forward`` returns None."""

    kind = "bias"

    def __init__(self, d_model: int = 0, max_len: int = 5000, symmetric: bool = True):
        super().__init__()
        self.symmetric, self.max_len = symmetric, max_len
        self.register_buffer("_ref", torch.zeros(()), persistent=False)

    def extra_repr(self) -> str:
        return f"symmetric={self.symmetric}"

    def forward(self, x: Tensor) -> None:
        return None

    def bias(self, l_q: int, l_k: int, n_heads: int, q_offset: int = 0) -> Tensor:
        return alibi_bias(l_q, l_k, n_heads, self.symmetric, q_offset, self._ref.dtype, self._ref.device)
