"""Legendre-polynomial position encodings (PoPE, arXiv:2405.04585) — see ``docs/posenc.md`` §1.

Two layouts:

* **Layout A (the paper's Eq. 14):** ``PE[pos, i] = s_n · P_n(x_i)`` with polynomial order ``n = pos + pos_offset``
  (the *position* picks the degree) and ``x_i`` a grid over the *feature* index in [-1, 1]:
  ``grid="paper"``: ``x_i = -1 + 2i/d`` (the reading of Eq. 14, includes -1, excludes +1);
  ``grid="midpoint"``: ``x_i = -1 + (2i+1)/d`` (symmetric; adjacent rows exactly orthogonal).
  ``scale="none"`` (paper, s_n = 1; row norms decay like (2n+1)^-1/2), ``"orthonormal"``
  (``s_n = sqrt((2n+1)/2)·sqrt(2/d)``, row norm ≈ 1) or ``"sinusoidal"`` (orthonormal · sqrt(d/2): row norm ≈ that
  of the sinusoidal table, so the encoding has the same weight against the token embedding).
  Positions beyond ``d_model`` are linearly dependent (rank ≤ d).
* **Layout B ("conventional"):** degree = feature, position = argument. For a sequence of length T, position t is
  mapped to ``x_t`` in [-1, 1] and ``Φ[t, k] = φ_k(x_t)`` with orthonormal Legendre ``φ_k = sqrt((2k+1)/2) P_k``,
  k < K. Conditioning: ``"none"`` (midpoint grid, ``sqrt(2/T)·Φ``: approximately orthonormal columns, ill-conditioned
  for K ≳ 32 at T = 96), ``"qr"`` (QR of the uniform-grid Φ: the discrete Gram / "discrete Legendre" polynomials,
  exactly orthonormal), ``"gauss"`` (Gauss–Legendre nodes as positions and ``sqrt(w_t)`` weights: exactly
  orthonormal, non-uniform spacing). The [T, K] basis (scaled by sqrt(T) so entries are O(1)) is mapped to
  d_model by a learned ``Linear(K, d_model, bias=False)`` (``proj="linear"``) or by tiling (``proj="tile"``).
  Layout B is length-relative: the code of index t depends on T.

Polynomials are always evaluated by the three-term recurrence in float64 (never by Rodrigues' formula).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from ._base import PositionEncoding, _check_len

__all__ = ["LegendrePositionEncoding", "legendre_basis_b", "legendre_p", "legendre_table_a"]

_GRIDS_A = ("paper", "midpoint")
_SCALES_A = ("none", "orthonormal", "sinusoidal")
_CONDITIONING_B = ("none", "qr", "gauss")
_PROJ_B = ("linear", "tile")


def legendre_p(n_max: int, x):
    """``P_0..P_{n_max}`` at ``x`` by the recurrence ``(n+1)P_{n+1} = (2n+1) x P_n − n P_{n−1}``.

    ``x`` is a numpy array or a torch tensor; returns the same type with a leading axis of size n_max+1.
    """
    if n_max < 0:
        raise ValueError(f"n_max must be >= 0, got {n_max}")
    is_torch = isinstance(x, Tensor)
    xs = x if is_torch else np.asarray(x, dtype=np.float64)
    out = [torch.ones_like(xs) if is_torch else np.ones_like(xs)]
    if n_max >= 1:
        out.append(xs * 1)
    for n in range(1, n_max):
        out.append(((2 * n + 1) * xs * out[n] - n * out[n - 1]) / (n + 1))
    return torch.stack(out) if is_torch else np.stack(out)


def _grid_a(d_model: int, grid: str) -> np.ndarray:
    i = np.arange(d_model, dtype=np.float64)
    if grid == "paper":
        return -1.0 + 2.0 * i / d_model
    if grid == "midpoint":
        return -1.0 + (2.0 * i + 1.0) / d_model
    raise ValueError(f"unknown grid {grid!r}; choose one of {list(_GRIDS_A)}")


def legendre_table_a(
    n_positions: int, d_model: int, grid: str = "paper", scale: str = "none", pos_offset: int = 1
) -> np.ndarray:
    """Layout A table [n_positions, d_model] in float64: row ``pos`` is ``s_n P_n(x)``, ``n = pos + pos_offset``."""
    if scale not in _SCALES_A:
        raise ValueError(f"unknown scale {scale!r}; choose one of {list(_SCALES_A)}")
    if pos_offset < 0:
        raise ValueError(f"pos_offset must be >= 0, got {pos_offset}")
    x = _grid_a(d_model, grid)
    n_max = n_positions - 1 + pos_offset
    table = np.empty((n_positions, d_model), dtype=np.float64)
    p_prev, p_cur = np.zeros_like(x), np.ones_like(x)
    for n in range(n_max + 1):
        if n == 0:
            p = np.ones_like(x)
        elif n == 1:
            p = x.copy()
        else:
            p = ((2 * n - 1) * x * p_cur - (n - 1) * p_prev) / n
        p_prev, p_cur = p_cur, p
        if n >= pos_offset:
            table[n - pos_offset] = p
    if scale != "none":
        n = np.arange(pos_offset, pos_offset + n_positions, dtype=np.float64)[:, None]
        s = np.sqrt((2 * n + 1) / 2.0) * math.sqrt(2.0 / d_model)
        if scale == "sinusoidal":
            s = s * math.sqrt(d_model / 2.0)
        table = table * s
    return table


def legendre_basis_b(length: int, n_basis: int, conditioning: str = "qr") -> np.ndarray:
    """Layout B basis [length, n_basis] (float64), degree = column, position = row.

    ``"qr"`` and ``"gauss"`` have exactly orthonormal columns (ΦᵀΦ = I); ``"none"`` only approximately.
    """
    if conditioning not in _CONDITIONING_B:
        raise ValueError(f"unknown conditioning {conditioning!r}; choose one of {list(_CONDITIONING_B)}")
    if not 1 <= n_basis <= length:
        raise ValueError(f"n_basis must be in [1, length={length}], got {n_basis}")
    k = np.arange(n_basis, dtype=np.float64)
    norm = np.sqrt((2 * k + 1) / 2.0)
    if conditioning == "gauss":
        x, w = np.polynomial.legendre.leggauss(length)  # ascending nodes
        phi = legendre_p(n_basis - 1, x).T * norm  # [T, K]
        return phi * np.sqrt(w)[:, None]
    x = -1.0 + (2.0 * np.arange(length) + 1.0) / length
    phi = legendre_p(n_basis - 1, x).T * norm * math.sqrt(2.0 / length)
    if conditioning == "none":
        return phi
    q, r = np.linalg.qr(phi)
    return q * np.sign(np.diag(r))[None, :]  # keep the sign of each original polynomial


class LegendrePositionEncoding(PositionEncoding):
    """PoPE (``layout="A"``, the default, paper Eq. 14) or degree-per-feature Legendre features (``layout="B"``).

    Args:
        d_model: feature size.
        max_len: longest sequence (layout A precomputes this many rows).
        layout: ``"A"`` or ``"B"`` (module doc).
        grid: layout A grid, ``"paper"`` (default) or ``"midpoint"``.
        scale: layout A row scale, ``"none"`` (default, as in the paper), ``"orthonormal"`` or ``"sinusoidal"``.
        pos_offset: layout A: order of the first position (1 as in the paper's 1-based tokens; 0 gives P_0 ≡ 1).
        n_basis: layout B number K of polynomials (default min(32, T)).
        conditioning: layout B ``"qr"`` (default), ``"gauss"`` or ``"none"``.
        proj: layout B ``"linear"`` (learned K → d_model map, default) or ``"tile"``.
        learnable: layout A: make the table a parameter initialised from the Legendre table.
    """

    kind = "absolute"

    def __init__(
        self,
        d_model: int,
        max_len: int = 5000,
        layout: str = "A",
        grid: str = "paper",
        scale: str = "none",
        pos_offset: int = 1,
        n_basis: int | None = None,
        conditioning: str = "qr",
        proj: str = "linear",
        learnable: bool = False,
    ):
        super().__init__()
        layout = layout.upper()
        if layout not in ("A", "B"):
            raise ValueError(f"unknown layout {layout!r}; choose 'A' or 'B'")
        self.layout, self.d_model, self.max_len = layout, d_model, max_len
        self.grid, self.scale, self.pos_offset = grid, scale, pos_offset
        self.n_basis, self.conditioning, self.proj_kind = n_basis, conditioning, proj
        if layout == "A":
            table = (
                torch.from_numpy(legendre_table_a(max_len, d_model, grid, scale, pos_offset))
                .float()
                .unsqueeze(0)
            )
            if learnable:
                self.pe = nn.Parameter(table)
            else:
                self.register_buffer("pe", table, persistent=False)
            self.proj = None
        else:
            if conditioning not in _CONDITIONING_B:
                raise ValueError(
                    f"unknown conditioning {conditioning!r}; choose one of {list(_CONDITIONING_B)}"
                )
            if proj not in _PROJ_B:
                raise ValueError(f"unknown proj {proj!r}; choose one of {list(_PROJ_B)}")
            k_max = n_basis if n_basis is not None else 32
            self.proj = nn.Linear(k_max, d_model, bias=False) if proj == "linear" else None
            if self.proj is not None:
                # unit-variance output per feature for orthonormal inputs scaled to O(1) entries
                nn.init.normal_(self.proj.weight, std=1.0 / math.sqrt(k_max))
            self._cache: dict[tuple, Tensor] = {}
            self.register_buffer("_ref", torch.zeros(()), persistent=False)

    def extra_repr(self) -> str:
        if self.layout == "A":
            return f"layout=A, d_model={self.d_model}, grid={self.grid}, scale={self.scale}, pos_offset={self.pos_offset}"
        return f"layout=B, d_model={self.d_model}, n_basis={self.n_basis}, conditioning={self.conditioning}, proj={self.proj_kind}"

    def basis_b(self, length: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """Layout B: the [length, K] basis times sqrt(length) (entries O(1)), cached per length."""
        k = min(self.n_basis if self.n_basis is not None else 32, length)
        key = (length, k, dtype, str(device))
        if key not in self._cache:
            phi = legendre_basis_b(length, k, self.conditioning) * math.sqrt(length)
            self._cache[key] = torch.from_numpy(phi).to(dtype=dtype, device=device)
        return self._cache[key]

    def forward(self, x: Tensor) -> Tensor:
        length = x.shape[1]
        _check_len(length, self.max_len)
        if self.layout == "A":
            return self.pe[:, :length]
        dtype = self.proj.weight.dtype if self.proj is not None else self._ref.dtype
        basis = self.basis_b(length, dtype, self._ref.device)  # [T, k]
        if self.proj is not None:
            w = self.proj.weight[:, : basis.shape[1]]  # [d, k]
            return (basis @ w.T).unsqueeze(0)
        reps = math.ceil(self.d_model / basis.shape[1])
        return basis.repeat(1, reps)[:, : self.d_model].unsqueeze(0)
