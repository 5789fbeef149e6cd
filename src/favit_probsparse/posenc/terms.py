"""Term selection for position injection inside attention (report Tables 5-6, ``docs/posenc.md`` §2.4).

With content ``x`` and positions ``p`` projected separately (``q_x = x W_Q + b_Q``, ``q_p = p W_Q``, same for k),
the logits of a selected set of terms ``τ ∈ {c2c, c2p, p2c, p2p}`` are ``Σ_τ q_a(τ) · k_b(τ)`` with (a, b) =
(x, x), (x, p), (p, x), (p, p). Any such sum is one dot product of concatenations,
``q' = [q_a(τ1), q_a(τ2), …]`` and ``k' = [k_b(τ1), k_b(τ2), …]``, so the selected logits run through any attention
operator (full, ProbSparse, ΔV) unchanged; ``q'`` is multiplied by sqrt(#terms) so that the operator's default
1/sqrt(D') scale equals the original 1/sqrt(d_h) of each term. ``"all"`` is computed as ``(q_x+q_p)·(k_x+k_p)``,
identical to plain attention on ``x + p``.

Named sets: ``all`` (4 terms), ``cross`` (c2p + p2c: the report's Table 5 "cross terms only"), ``pospos`` (p2p:
Table 6), ``content`` (c2c only: position enters no logit), ``no_cross`` (c2c + p2p: TUPE-like), ``no_pospos``
(c2c + c2p + p2c), or terms joined with ``+`` (e.g. ``"c2c+p2p"``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["TERM_SETS", "parse_terms", "select_term_qk"]

_ALL = ("c2c", "c2p", "p2c", "p2p")
TERM_SETS: dict[str, tuple[str, ...]] = {
    "all": _ALL,
    "cross": ("c2p", "p2c"),
    "pospos": ("p2p",),
    "content": ("c2c",),
    "no_cross": ("c2c", "p2p"),
    "no_pospos": ("c2c", "c2p", "p2c"),
}


def parse_terms(spec: str) -> tuple[str, ...]:
    """A named set or ``+``-joined term names → the terms in canonical order."""
    if spec in TERM_SETS:
        return TERM_SETS[spec]
    names = [s.strip() for s in spec.split("+") if s.strip()]
    bad = [n for n in names if n not in _ALL]
    if not names or bad:
        raise ValueError(
            f"unknown pos_terms {spec!r}; use one of {sorted(TERM_SETS)} or '+'-joined {list(_ALL)}"
        )
    return tuple(t for t in _ALL if t in names)


def select_term_qk(
    qx: Tensor, kx: Tensor, qp: Tensor, kp: Tensor, terms: tuple[str, ...]
) -> tuple[Tensor, Tensor]:
    """(q', k') whose scaled dot product (scale 1/sqrt(q'.shape[-1])) is scale_dh · Σ_τ q_a·k_b.

    ``qx, kx``: [B, H, L, d_h] content projections (with biases); ``qp, kp``: position projections, broadcastable
    to them (e.g. [1, H, L, d_h]).
    """
    if tuple(terms) == _ALL:
        return qx + qp, kx + kp
    src_q = {"c2c": qx, "c2p": qx, "p2c": qp, "p2p": qp}
    src_k = {"c2c": kx, "c2p": kp, "p2c": kx, "p2p": kp}
    qs = [src_q[t].expand_as(qx) for t in terms]
    ks = [src_k[t].expand_as(kx) for t in terms]
    q = torch.cat(qs, dim=-1) if len(qs) > 1 else qs[0]
    k = torch.cat(ks, dim=-1) if len(ks) > 1 else ks[0]
    if len(terms) > 1:
        q = q * math.sqrt(len(terms))
    return q, k
