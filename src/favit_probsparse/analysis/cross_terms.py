"""Exact four-term decomposition of attention logits under an additive position encoding (``docs/posenc.md`` §2).

For one attention layer with input ``h = x + p`` (content + position), per head,

    S_ij = scale · (h_i W_Q + b_Q)·(h_j W_K + b_K)
         = scale · [ (x_i W_Q)(x_j W_K)   c2c  token–token
                   + (x_i W_Q)(p_j W_K)   c2p  token–pos
                   + (p_i W_Q)(x_j W_K)   p2c  pos–token
                   + (p_i W_Q)(p_j W_K)   p2p  pos–pos
                   + B_ij ]               bias remainder  (b_Q·k_j + q_i·b_K − b_Q·b_K, k and q with biases)

The terms sum to the logits exactly (bilinearity); the remainder is computed as logits − Σ terms so the identity
holds to rounding. Metrics follow §2.3: row-centred RMS (softmax ignores anything constant over keys) and its
share, ``KL(softmax(S) ‖ softmax(S − T_k))`` when a term is removed, Pearson correlation with S, and the Toeplitz
fit of p2p (how much of the pos–pos term is a function of j − i only).

Helpers for deep layers: :func:`mean_decomposition` (position mean vs. context/residual over a batch of windows, so
x and p are defined at any layer and the terms still sum exactly) and :func:`layernorm_split` (LN(x+p) written as
x̃ + p̃ + β with the β folded into the biases).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "TERMS",
    "TERM_LABELS",
    "cross_terms",
    "layernorm_split",
    "mean_decomposition",
    "split_heads",
    "term_metrics",
    "toeplitz_fit",
]

TERMS = ("c2c", "c2p", "p2c", "p2p")
TERM_LABELS = {"c2c": "token-token", "c2p": "token-pos", "p2c": "pos-token", "p2p": "pos-pos", "bias": "bias"}


def split_heads(weight: Tensor, bias: Tensor | None, n_heads: int) -> tuple[Tensor, Tensor | None]:
    """``nn.Linear`` weight [H·d_h, d] (+ bias [H·d_h]) → per-head [H, d, d_h] (+ [H, d_h]).

    A 3-D weight is taken to be [H, d, d_h] already.
    """
    if weight.dim() == 3:
        return weight, bias
    out, d = weight.shape
    if out % n_heads:
        raise ValueError(f"output size {out} is not divisible by n_heads={n_heads}")
    w = weight.reshape(n_heads, out // n_heads, d).transpose(1, 2)
    b = None if bias is None else bias.reshape(n_heads, out // n_heads)
    return w, b


def cross_terms(
    x: Tensor,
    p: Tensor,
    wq: Tensor,
    wk: Tensor,
    bq: Tensor | None = None,
    bk: Tensor | None = None,
    n_heads: int | None = None,
    scale: float | None = None,
    x_k: Tensor | None = None,
    p_k: Tensor | None = None,
) -> dict[str, Tensor]:
    """The four maps + bias remainder, and the logits they sum to.

    Args:
        x, p: content and position parts of the query-side input, [B, T, d] (p may be [T, d] or [1, T, d]).
        wq, wk: ``nn.Linear`` weights [H·d_h, d] (needs ``n_heads``) or per-head [H, d, d_h].
        bq, bk: biases [H·d_h] or [H, d_h] (optional).
        scale: logit scale, default 1/sqrt(d_h).
        x_k, p_k: key-side content/position if different from the query side (default: self-attention).
    Returns:
        dict with ``c2c, c2p, p2c, p2p, bias, logits``, each [B, H, T_q, T_k];
        ``logits == c2c + c2p + p2c + p2p + bias``.
    """
    if wq.dim() == 2 and n_heads is None:
        raise ValueError("n_heads is required with nn.Linear-shaped weights")
    wq, bq = split_heads(wq, bq, n_heads or wq.shape[0])
    wk, bk = split_heads(wk, bk, n_heads or wk.shape[0])
    x_k = x if x_k is None else x_k
    p_k = p if p_k is None else p_k
    p, p_k = _batch(p, x), _batch(p_k, x_k)
    d_h = wq.shape[-1]
    s = 1.0 / math.sqrt(d_h) if scale is None else scale
    qx, qp = torch.einsum("btd,hde->bhte", x, wq), torch.einsum("btd,hde->bhte", p, wq)
    kx, kp = torch.einsum("btd,hde->bhte", x_k, wk), torch.einsum("btd,hde->bhte", p_k, wk)
    terms = {"c2c": qx @ kx.mT, "c2p": qx @ kp.mT, "p2c": qp @ kx.mT, "p2p": qp @ kp.mT}
    q, k = qx + qp, kx + kp
    if bq is not None:
        q = q + bq[None, :, None, :]
    if bk is not None:
        k = k + bk[None, :, None, :]
    logits = q @ k.mT
    terms["bias"] = logits - (terms["c2c"] + terms["c2p"] + terms["p2c"] + terms["p2p"])
    out = {n: s * v for n, v in terms.items()}
    out["logits"] = s * logits
    return out


def _batch(p: Tensor, like: Tensor) -> Tensor:
    if p.dim() == 2:
        p = p.unsqueeze(0)
    return p.expand(like.shape[0], -1, -1) if p.shape[0] == 1 else p


def _row_centre(t: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return t - t.mean(dim=-1, keepdim=True)
    m = mask.to(t.dtype)
    mean = (t * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp_min(1)
    return (t - mean) * m


def _kl_rows(s: Tensor, s2: Tensor, mask: Tensor | None) -> Tensor:
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
        s2 = s2.masked_fill(~mask, float("-inf"))
    lp, lq = torch.log_softmax(s, -1), torch.log_softmax(s2, -1)
    pr = lp.exp()
    kl = torch.where(pr > 0, pr * (lp - lq), torch.zeros((), dtype=s.dtype, device=s.device)).sum(-1)
    return kl  # [B, H, T_q]


def term_metrics(
    terms: dict[str, Tensor], mask: Tensor | None = None, names=(*TERMS, "bias")
) -> dict[str, dict[str, Tensor]]:
    """Per-head metrics of each term (averaged over batch and rows), each a tensor [H].

    ``rms``: raw RMS; ``centred_rms``: RMS after row-centring; ``share``: centred_rms / Σ centred_rms over ``names``;
    ``kl_removed``: mean over rows of KL(softmax(S) ‖ softmax(S − T)); ``corr``: Pearson correlation of the
    row-centred term with the row-centred logits. ``mask``: bool [T_q, T_k] or broadcastable (True = attended).
    """
    s = terms["logits"]
    if mask is not None:
        mask = mask.to(torch.bool).expand_as(s)
    n_el = s.shape[0] * s.shape[2] * s.shape[3] if mask is None else mask.sum(dim=(0, 2, 3)).clamp_min(1)
    sc = _row_centre(s, mask)
    out: dict[str, dict[str, Tensor]] = {}
    for n in names:
        t = terms[n]
        tm = t if mask is None else t * mask
        tc = _row_centre(t, mask)
        rms = (tm.pow(2).sum(dim=(0, 2, 3)) / n_el).sqrt()
        crms = (tc.pow(2).sum(dim=(0, 2, 3)) / n_el).sqrt()
        kl = _kl_rows(s, s - t, mask).mean(dim=(0, 2))
        cov = (tc * sc).sum(dim=(0, 2, 3))
        corr = cov / (tc.pow(2).sum(dim=(0, 2, 3)).sqrt() * sc.pow(2).sum(dim=(0, 2, 3)).sqrt()).clamp_min(
            1e-30
        )
        out[n] = {"rms": rms, "centred_rms": crms, "kl_removed": kl, "corr": corr}
    total = sum(out[n]["centred_rms"] for n in names)
    for n in names:
        out[n]["share"] = out[n]["centred_rms"] / torch.as_tensor(total).clamp_min(1e-30)
    return out


def toeplitz_fit(t: Tensor) -> tuple[Tensor, Tensor]:
    """Diagonal means ``t(δ) = mean_{j−i=δ} T_ij`` and the R² of that Toeplitz fit.

    ``t``: [..., T, T] (square); returns (t(δ) for δ = −(T−1)..T−1 of shape [..., 2T−1], R² of shape [...]).
    """
    n = t.shape[-1]
    i = torch.arange(n, device=t.device)
    delta = (i[None, :] - i[:, None]) + (n - 1)  # [T, T] in 0..2T-2
    flat = t.reshape(*t.shape[:-2], n * n)
    idx = delta.reshape(-1)
    sums = torch.zeros(*t.shape[:-2], 2 * n - 1, dtype=t.dtype, device=t.device).index_add_(-1, idx, flat)
    counts = torch.bincount(idx, minlength=2 * n - 1).to(t.dtype)
    diag = sums / counts
    fit = diag[..., idx].reshape(t.shape)
    ss_res = (t - fit).pow(2).sum(dim=(-1, -2))
    ss_tot = (t - t.mean(dim=(-1, -2), keepdim=True)).pow(2).sum(dim=(-1, -2))
    return diag, 1.0 - ss_res / ss_tot.clamp_min(1e-30)


def mean_decomposition(h: Tensor) -> dict[str, Tensor]:
    """``h[c, t] = μ + pos_t + ctx_c + resid_{c,t}`` over C windows × T positions (``h``: [C, T, d]).

    pos sums to 0 over t, ctx over c, resid over both. For the cross-term analysis at a deep layer use
    ``p = pos`` and ``x = ctx + resid`` (μ is constant: it goes into ``x`` too, or into the biases).
    """
    mu = h.mean(dim=(0, 1), keepdim=True)
    pos = h.mean(dim=0, keepdim=True) - mu
    ctx = h.mean(dim=1, keepdim=True) - mu
    resid = h - mu - pos - ctx
    return {"mu": mu, "pos": pos, "ctx": ctx, "resid": resid}


def layernorm_split(x: Tensor, p: Tensor, ln: torch.nn.LayerNorm) -> tuple[Tensor, Tensor, Tensor]:
    """``LN(x + p) = x̃ + p̃ + β`` exactly (σ from x + p; γ multiplies both parts). Returns (x̃, p̃, β)."""
    h = x + p
    var = h.var(dim=-1, unbiased=False, keepdim=True)
    sigma = (var + ln.eps).sqrt()
    gamma = ln.weight if ln.weight is not None else torch.ones(h.shape[-1], dtype=h.dtype, device=h.device)
    beta = ln.bias if ln.bias is not None else torch.zeros(h.shape[-1], dtype=h.dtype, device=h.device)
    xt = gamma * (x - x.mean(-1, keepdim=True)) / sigma
    pt = gamma * (p - p.mean(-1, keepdim=True)) / sigma
    return xt, pt, beta
