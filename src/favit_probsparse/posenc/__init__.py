"""Positional encodings (operator layer: knows nothing of tasks).

Interface used by models (stable; the posenc work extends the registry, not the interface):

``build_pos_encoding(name, d_model, max_len=5000, **kwargs) -> PositionEncoding``

Every ``PositionEncoding`` has a ``kind`` attribute:

* ``"absolute"``: ``forward(x)`` with ``x`` of shape [B, L, d_model] returns the encoding rows [1, L, d_model]
  to be added to (or injected beside) the token embedding.
* ``"rotary"``: ``rotate(q, k)`` on [B, H, L, D] returns rotated (q, k); ``forward`` returns zeros-free ``None``.
* ``"bias"``: ``bias(l_q, l_k, n_heads)`` returns an additive logit bias [H, l_q, l_k].
* ``"none"``: ``forward(x)`` returns ``None``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["POS_ENCODINGS", "LearnedPositionEncoding", "NoPositionEncoding", "PositionEncoding",
           "SinusoidalPositionEncoding", "build_pos_encoding"]


class PositionEncoding(nn.Module):
    kind: str = "absolute"


class SinusoidalPositionEncoding(PositionEncoding):
    """Vaswani et al. fixed encoding, identical to Informer's ``PositionalEmbedding`` (sin on even, cos on odd)."""

    kind = "absolute"

    def __init__(self, d_model: int, max_len: int = 5000):
        super().__init__()
        pe = torch.zeros(max_len, d_model)
        position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / d_model))
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term[: d_model // 2])
        self.register_buffer("pe", pe.unsqueeze(0), persistent=False)
        self.max_len = max_len

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds the position encoding's max_len {self.max_len}")
        return self.pe[:, :length]


class LearnedPositionEncoding(PositionEncoding):
    kind = "absolute"

    def __init__(self, d_model: int, max_len: int = 5000):
        super().__init__()
        self.pe = nn.Parameter(torch.zeros(1, max_len, d_model))
        nn.init.trunc_normal_(self.pe, std=0.02)
        self.max_len = max_len

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds the position encoding's max_len {self.max_len}")
        return self.pe[:, :length]


class NoPositionEncoding(PositionEncoding):
    kind = "none"

    def __init__(self, d_model: int = 0, max_len: int = 0):
        super().__init__()

    def forward(self, x: torch.Tensor) -> None:
        return None


POS_ENCODINGS: dict[str, type[PositionEncoding]] = {
    "sinusoidal": SinusoidalPositionEncoding,
    "learned": LearnedPositionEncoding,
    "none": NoPositionEncoding,
}


def build_pos_encoding(name: str, d_model: int, max_len: int = 5000, **kwargs) -> PositionEncoding:
    """Build a position encoding by name (see :data:`POS_ENCODINGS`)."""
    try:
        cls = POS_ENCODINGS[name]
    except KeyError:
        raise ValueError(f"unknown pos_encoding {name!r}; choose one of {sorted(POS_ENCODINGS)}") from None
    return cls(d_model, max_len, **kwargs)
