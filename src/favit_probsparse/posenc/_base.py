"""Base class and the classic absolute encodings (sinusoidal, learned, none)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "LearnedPositionEncoding",
    "NoPositionEncoding",
    "PositionEncoding",
    "SinusoidalPositionEncoding",
    "sinusoidal_table",
]


class PositionEncoding(nn.Module):
    """Base class. ``kind`` is one of ``"absolute"``, ``"rotary"``, ``"bias"``, ``"none"`` (see the package doc)."""

    kind: str = "absolute"

    def table(self, length: int) -> Tensor | None:
        """The [length, d_model] table of an absolute encoding (None for other kinds)."""
        if self.kind != "absolute":
            return None
        ref = next(iter(self.buffers()), None)
        if ref is None:
            ref = next(iter(self.parameters()))
        x = torch.zeros(1, length, 1, dtype=ref.dtype, device=ref.device)
        return self.forward(x)[0]


def sinusoidal_table(length: int, d_model: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Vaswani et al. table [length, d_model]: sin on even features, cos on odd ones."""
    pe = torch.zeros(length, d_model, dtype=dtype)
    position = torch.arange(length, dtype=dtype).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2, dtype=dtype) * -(math.log(10000.0) / d_model))
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term[: d_model // 2])
    return pe


def _check_len(length: int, max_len: int) -> None:
    if length > max_len:
        raise ValueError(f"sequence length {length} exceeds the position encoding's max_len {max_len}")


class SinusoidalPositionEncoding(PositionEncoding):
    """Vaswani et al. fixed encoding, identical to Informer's ``PositionalEmbedding`` (sin on even, cos on odd)."""

    kind = "absolute"

    def __init__(self, d_model: int, max_len: int = 5000):
        super().__init__()
        self.register_buffer("pe", sinusoidal_table(max_len, d_model).unsqueeze(0), persistent=False)
        self.max_len = max_len

    def forward(self, x: Tensor) -> Tensor:
        _check_len(x.shape[1], self.max_len)
        return self.pe[:, : x.shape[1]]


class LearnedPositionEncoding(PositionEncoding):
    kind = "absolute"

    def __init__(self, d_model: int, max_len: int = 5000):
        super().__init__()
        self.pe = nn.Parameter(torch.zeros(1, max_len, d_model))
        nn.init.trunc_normal_(self.pe, std=0.02)
        self.max_len = max_len

    def forward(self, x: Tensor) -> Tensor:
        _check_len(x.shape[1], self.max_len)
        return self.pe[:, : x.shape[1]]


class NoPositionEncoding(PositionEncoding):
    kind = "none"

    def __init__(self, d_model: int = 0, max_len: int = 0):
        super().__init__()

    def forward(self, x: Tensor) -> None:
        return None
