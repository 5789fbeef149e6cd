"""Positional encodings (operator layer: knows nothing of tasks).

Interface used by models (stable; the posenc work extends the registry, not the interface):

``build_pos_encoding(name, d_model, max_len=5000, **kwargs) -> PositionEncoding``

Every ``PositionEncoding`` has a ``kind`` attribute:

* ``"absolute"``: ``forward(x)`` with ``x`` of shape [B, L, d_model] returns the encoding rows [1, L, d_model]
  to be added to (or injected beside) the token embedding. ``table(L)`` returns the [L, d_model] rows.
* ``"rotary"``: ``rotate(q, k)`` on [B, H, L, D] returns rotated (q, k); ``forward`` returns ``None``.
* ``"bias"``: ``bias(l_q, l_k, n_heads)`` returns an additive logit bias [H, l_q, l_k]; ``forward`` returns ``None``.
* ``"none"``: ``forward(x)`` returns ``None``.

Registered names (``POS_ENCODINGS``):

=================  ==========  ==========================================================================
name               kind        what
=================  ==========  ==========================================================================
``sinusoidal``     absolute    Vaswani et al. (Informer's ``PositionalEmbedding``)
``learned``        absolute    trainable table, trunc-normal(0.02) init
``legendre``       absolute    PoPE, paper Eq. 14 layout (degree = position; ``layout="B"`` for degree = feature)
``pope``           absolute    alias of ``legendre`` (layout A, paper grid, unnormalised, 1-based orders)
``legendre_orth``  absolute    layout B, QR-conditioned (discrete Legendre), learned K → d_model map
``legendre_gauss`` absolute    layout B on Gauss–Legendre nodes
``rope``           rotary      RoFormer rotation of q, k
``alibi``          bias        −m_h·|i−j| (bidirectional; ``symmetric=False`` for the causal −m_h(i−j))
``none``           none        no position information
=================  ==========  ==========================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from ._base import (
    LearnedPositionEncoding,
    NoPositionEncoding,
    PositionEncoding,
    SinusoidalPositionEncoding,
    sinusoidal_table,
)
from .alibi import AlibiPositionEncoding, alibi_bias, alibi_slopes
from .legendre import LegendrePositionEncoding, legendre_basis_b, legendre_p, legendre_table_a
from .rope import RotaryPositionEncoding, rope_rotate
from .terms import TERM_SETS, parse_terms, select_term_qk

__all__ = [
    "POS_ENCODINGS",
    "TERM_SETS",
    "AlibiPositionEncoding",
    "LearnedPositionEncoding",
    "LegendrePositionEncoding",
    "NoPositionEncoding",
    "PositionEncoding",
    "RotaryPositionEncoding",
    "SinusoidalPositionEncoding",
    "alibi_bias",
    "alibi_slopes",
    "build_pos_encoding",
    "legendre_basis_b",
    "legendre_p",
    "legendre_table_a",
    "parse_terms",
    "rope_rotate",
    "select_term_qk",
    "sinusoidal_table",
]


POS_ENCODINGS: dict[str, Callable[..., PositionEncoding]] = {
    "sinusoidal": SinusoidalPositionEncoding,
    "learned": LearnedPositionEncoding,
    "legendre": LegendrePositionEncoding,
    "pope": LegendrePositionEncoding,
    "legendre_orth": partial(LegendrePositionEncoding, layout="B", conditioning="qr"),
    "legendre_gauss": partial(LegendrePositionEncoding, layout="B", conditioning="gauss"),
    "rope": RotaryPositionEncoding,
    "alibi": AlibiPositionEncoding,
    "none": NoPositionEncoding,
}


def build_pos_encoding(name: str, d_model: int, max_len: int = 5000, **kwargs) -> PositionEncoding:
    """Build a position encoding by name (see :data:`POS_ENCODINGS`); kwargs go to its constructor."""
    try:
        cls = POS_ENCODINGS[name]
    except KeyError:
        raise ValueError(f"unknown pos_encoding {name!r}; choose one of {sorted(POS_ENCODINGS)}") from None
    return cls(d_model, max_len, **kwargs)
