"""ΔV ("tangential space") attention — report §2.1, ``docs/posenc.md`` §3.

The report's definition: the context of token i adds attention-weighted *value differences*,

    out_i = Σ_j A_ij v_j + g · Σ_j A_ij (v_j − v_{j−1}),

so the output depends on the order of the keys even without any position encoding (plain attention without a
mask is permutation-equivariant; ``D P ≠ P D`` for the difference operator D and any permutation P ≠ I).
Because the ΔV term uses the same weights A, ``out = A (V + g·ΔV)``: the operator wraps any attention
(full or ProbSparse) and hands it the values ``V + g·M(V)``.

Options (``docs/posenc.md`` §3.2):

* ``boundary``: the rule for t = 0: ``"replicate"`` (v_{−1} := v_0, Δv_0 = 0; default, no absolute marker),
  ``"zero"`` (v_{−1} := 0, leaks position 0), ``"circular"`` (v_{−1} := v_{T−1}; cyclic-shift-equivariant).
* ``momentum=True``: replace the tangent U = ΔV by its EMA ``M_t = β M_{t−1} + (1−β) U_t`` (M_{−1} = 0), β per head
  (``learn_beta``: β = sigmoid(b_h), learned), computed as a causal Toeplitz product.
* ``tangent_logits`` (λ): add ``λ·scale·(ΔQ)(ΔK)ᵀ`` to the logits (the "full TSA" of ``docs/posenc.md`` §3.2; tied projections,
  since D(XW) = (DX)W). λ = 0 (default) is the report's value-only ΔV.
* ``gate`` (g): fixed scalar (default 1, the report's unweighted sum) or learned per head (``learn_gate``).

With g = 0 and λ = 0 the output equals the inner attention's exactly. D and the EMA are causal, so under a causal
mask y_{≤t} never depends on x_{>t}.

Layout: q [B, H, L_Q, D], k [B, H, L_K, D], v [B, H, L_K, D_v] → [B, H, L_Q, D_v], like the rest of the package.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .probsparse import FullAttention

__all__ = ["DeltaVAttention", "delta_v_attention", "momentum_ema", "temporal_difference"]

_BOUNDARIES = ("replicate", "zero", "circular")


def temporal_difference(x: Tensor, boundary: str = "replicate", dim: int = -2) -> Tensor:
    """``u_t = x_t − x_{t−1}`` along ``dim`` with the given boundary rule at t = 0."""
    if boundary not in _BOUNDARIES:
        raise ValueError(f"unknown boundary {boundary!r}; choose one of {list(_BOUNDARIES)}")
    dim = dim % x.dim()
    if boundary == "circular":
        return x - torch.roll(x, shifts=1, dims=dim)
    first = x.narrow(dim, 0, 1)
    prev0 = first if boundary == "replicate" else torch.zeros_like(first)
    prev = torch.cat((prev0, x.narrow(dim, 0, x.shape[dim] - 1)), dim=dim)
    return x - prev


def ema_kernel(beta: Tensor, length: int) -> Tensor:
    """Causal Toeplitz EMA kernel ``K[t, s] = (1−β) β^(t−s)`` for s ≤ t; ``beta`` of shape [H] → [H, L, L]."""
    beta = beta.reshape(-1)
    t = torch.arange(length, device=beta.device)
    lag = (t[:, None] - t[None, :]).to(beta.dtype)  # [L, L]
    causal = lag >= 0
    log_beta = torch.log(beta.clamp_min(torch.finfo(beta.dtype).tiny))[:, None, None]
    powers = torch.exp(lag.clamp_min(0)[None] * log_beta)  # β^(t−s)
    powers = torch.where(causal[None], powers, torch.zeros((), dtype=beta.dtype, device=beta.device))
    zero_beta = beta[:, None, None] == 0  # exact: β = 0 gives the identity (0^0 = 1)
    eye = torch.eye(length, dtype=beta.dtype, device=beta.device)[None]
    powers = torch.where(zero_beta, eye, powers)
    return (1 - beta)[:, None, None] * powers


def momentum_ema(u: Tensor, beta: Tensor | float) -> Tensor:
    """EMA along the sequence axis (−2) of ``u`` [B, H, L, D]: ``M_t = β M_{t−1} + (1−β) u_t``, M_{−1} = 0.

    ``beta``: a float or a tensor broadcastable to [H] (one β per head).
    """
    h, length = u.shape[1], u.shape[-2]
    beta_t = torch.as_tensor(beta, dtype=u.dtype, device=u.device).reshape(-1)
    if beta_t.numel() == 1:
        beta_t = beta_t.expand(h)
    kernel = ema_kernel(beta_t, length)  # [H, L, L]
    return torch.einsum("hts,bhsd->bhtd", kernel, u)


def delta_v_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    attention: nn.Module | None = None,
    gate: Tensor | float = 1.0,
    boundary: str = "replicate",
    beta: Tensor | float | None = None,
    tangent_logits: Tensor | float = 0.0,
    scale: float | None = None,
    attn_mask: Tensor | None = None,
) -> Tensor:
    """Functional ΔV attention; ``attention`` is the inner operator (default: full, non-causal).

    ``gate`` and ``tangent_logits`` may be floats or tensors broadcastable to [B, H, 1, 1]; ``beta=None`` means
    no momentum (M = ΔV).
    """
    inner = attention if attention is not None else FullAttention(scale=scale)
    u = temporal_difference(v, boundary)
    m = u if beta is None else momentum_ema(u, beta)
    values = v + _as_gate(gate, v) * m
    lam = tangent_logits
    if isinstance(lam, Tensor) or lam != 0.0:
        sc = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
        tq, tk = temporal_difference(q, boundary), temporal_difference(k, boundary)
        if beta is not None:
            tq, tk = momentum_ema(tq, beta), momentum_ema(tk, beta)
        extra = _as_gate(lam, q) * sc * (tq @ tk.transpose(-1, -2))
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                extra = extra.masked_fill(~attn_mask, float("-inf"))
            else:
                extra = extra + attn_mask
        attn_mask = extra
    return inner(q, k, values, attn_mask=attn_mask)


def _as_gate(g: Tensor | float, like: Tensor) -> Tensor | float:
    if isinstance(g, Tensor):
        return g.to(like.dtype).reshape(1, -1, 1, 1) if g.dim() == 1 else g.to(like.dtype)
    return g


class DeltaVAttention(nn.Module):
    """ΔV attention as a module with the attention package's ``forward(q, k, v, attn_mask=None)`` interface.

    Args:
        attention: inner operator (e.g. ``ProbSparseAttention(...)``); default ``FullAttention(causal, scale,
            dropout)``.
        causal, scale, dropout: for the default inner full attention.
        gate: initial/fixed g (1.0 = the report's plain sum). ``learn_gate=True`` learns one g per head (needs
            ``n_heads``).
        momentum: use the EMA of ΔV (β = ``beta``; ``learn_beta=True`` learns β_h = sigmoid(b_h) per head).
        boundary: ``"replicate"`` | ``"zero"`` | ``"circular"``.
        tangent_logits: λ of the tangent–tangent logit term (0 = value-only ΔV, the report's).
        n_heads: needed for learned per-head gate/β.
    """

    def __init__(
        self,
        attention: nn.Module | None = None,
        causal: bool = False,
        scale: float | None = None,
        dropout: float = 0.0,
        gate: float = 1.0,
        learn_gate: bool = False,
        momentum: bool = False,
        beta: float = 0.5,
        learn_beta: bool = False,
        boundary: str = "replicate",
        tangent_logits: float = 0.0,
        n_heads: int | None = None,
    ):
        super().__init__()
        if boundary not in _BOUNDARIES:
            raise ValueError(f"unknown boundary {boundary!r}; choose one of {list(_BOUNDARIES)}")
        if momentum and not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        if (learn_gate or (momentum and learn_beta)) and not n_heads:
            raise ValueError("learn_gate / learn_beta need n_heads")
        self.inner = (
            attention if attention is not None else FullAttention(causal=causal, scale=scale, dropout=dropout)
        )
        self.scale, self.boundary, self.momentum = scale, boundary, momentum
        self.tangent_logits = tangent_logits
        if learn_gate:
            self.gate = nn.Parameter(torch.full((n_heads,), float(gate)))
        else:
            self.register_buffer("gate", torch.tensor(float(gate)), persistent=False)
        if momentum and learn_beta:
            b = math.log(beta / (1 - beta)) if beta > 0 else -20.0
            self.beta_logit = nn.Parameter(torch.full((n_heads,), b))
        else:
            self.beta_logit = None
            self.beta_value = beta

    def extra_repr(self) -> str:
        return (
            f"boundary={self.boundary!r}, momentum={self.momentum}, tangent_logits={self.tangent_logits}, "
            f"learned_gate={isinstance(self.gate, nn.Parameter)}"
        )

    @property
    def causal(self) -> bool:
        return bool(getattr(self.inner, "causal", False))

    def beta(self) -> Tensor | float | None:
        if not self.momentum:
            return None
        return torch.sigmoid(self.beta_logit) if self.beta_logit is not None else self.beta_value

    def forward(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        return delta_v_attention(
            q,
            k,
            v,
            attention=self.inner,
            gate=self.gate,
            boundary=self.boundary,
            beta=self.beta(),
            tangent_logits=self.tangent_logits,
            scale=self.scale,
            attn_mask=attn_mask,
        )
