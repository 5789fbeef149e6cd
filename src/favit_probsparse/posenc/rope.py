"""Rotary position embedding (RoFormer, Su et al., arXiv:2104.09864) — ``docs/posenc.md`` §4.

Each feature pair of a head is rotated by angle ``m·θ_i`` with ``θ_i = base^(−2i/D)`` at position m, so
``⟨R_m q, R_n k⟩ = qᵀ R_{n−m} k`` depends on the offset only. Applied to queries and keys (never values) in every
attention layer; nothing is added to the input. ``interleaved=True`` pairs features (2i, 2i+1) as RoFormer;
``False`` is the rotate-half convention (GPT-NeoX/LLaMA). An odd head dim leaves the last feature unrotated.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._base import PositionEncoding

__all__ = ["RotaryPositionEncoding", "rope_angles", "rope_rotate"]


def rope_angles(positions: Tensor, head_dim: int, base: float = 10000.0) -> Tensor:
    """Angles [L, head_dim // 2] = positions[:, None] · θ_i."""
    half = head_dim // 2
    theta = base ** (-torch.arange(half, dtype=torch.float64, device=positions.device) * 2.0 / head_dim)
    return positions.to(torch.float64)[:, None] * theta[None, :]


def rope_rotate(x: Tensor, positions: Tensor, base: float = 10000.0, interleaved: bool = True) -> Tensor:
    """Rotate ``x`` [..., L, D] at integer (or real) ``positions`` [L]."""
    d = x.shape[-1]
    half = d // 2
    if half == 0:
        return x
    ang = rope_angles(positions, d, base)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    if interleaved:
        x1, x2 = x[..., 0 : 2 * half : 2], x[..., 1 : 2 * half : 2]
        r1, r2 = x1 * cos - x2 * sin, x1 * sin + x2 * cos
        rot = torch.stack((r1, r2), dim=-1).flatten(-2)
    else:
        x1, x2 = x[..., :half], x[..., half : 2 * half]
        rot = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    if d % 2:
        rot = torch.cat((rot, x[..., -1:]), dim=-1)
    return rot


class RotaryPositionEncoding(PositionEncoding):
    """``rotate(q, k)`` on [B, H, L, D]; ``forward`` returns None (nothing is added to the input)."""

    kind = "rotary"

    def __init__(
        self, d_model: int = 0, max_len: int = 5000, base: float = 10000.0, interleaved: bool = True
    ):
        super().__init__()
        self.base, self.interleaved, self.max_len = base, interleaved, max_len

    def extra_repr(self) -> str:
        return f"base={self.base}, interleaved={self.interleaved}"

    def forward(self, x: Tensor) -> None:
        return None

    def rotate(self, q: Tensor, k: Tensor, q_offset: int = 0, k_offset: int = 0) -> tuple[Tensor, Tensor]:
        lq, lk = q.shape[-2], k.shape[-2]
        pq = torch.arange(q_offset, q_offset + lq, device=q.device)
        pk = torch.arange(k_offset, k_offset + lk, device=k.device)
        return (
            rope_rotate(q, pq, self.base, self.interleaved),
            rope_rotate(k, pk, self.base, self.interleaved),
        )
