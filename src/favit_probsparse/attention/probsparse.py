"""ProbSparse self-attention (Informer, Zhou et al. 2021) and full attention under one interface.

Layout everywhere: ``q`` [B, H, L_Q, D], ``k`` [B, H, L_K, D], ``v`` [B, H, L_K, D_v]; output [B, H, L_Q, D_v]
(the layout of :func:`torch.nn.functional.scaled_dot_product_attention`).

Official semantics (Informer2020 ``models/attn.py``, ``ProbAttention``; see ``docs/informer.md`` §1.1):

1. ``U_part = c·ceil(ln L_K)`` keys are sampled per query, with replacement, from one ``[L_Q, U_part]`` index
   matrix shared by the whole batch and all heads; ``u = c·ceil(ln L_Q)`` active queries. Both capped at L.
2. Sparsity measure on the unscaled sampled scores: ``M = max − sum / L_K`` (``measure="official"``; the sum
   runs over the U_part samples but is divided by L_K). ``measure="mean"`` uses the paper's max − mean.
3. The top-u queries by M attend to all keys with scale 1/sqrt(D) (softmax, no dropout).
4. The other ("lazy") queries output mean(V) (unmasked) or cumsum(V) (causal; ``masked_lazy="cummean"`` gives
   the cumulative mean instead, which is what a uniform causal attention row would output).

``causal_sampling=True`` draws query i's samples from keys ``j <= i`` only, so that with a causal mask the
choice of active queries cannot depend on the future (the official code samples from all keys).

Two implementations with identical results for the same sample:

* ``impl="exact"``: the official algorithm, statement by statement (it materialises the ``[B, H, L_Q, U, D]``
  tensor of sampled keys, like the official code).
* ``impl="fast"``: the sparsity measure is computed without autograd (it only feeds ``topk``, so no gradient
  flows through it in either path): on CPU by one sampled dense-dense matmul (exactly the L_Q·U sampled dot
  products), elsewhere from dense or gathered query chunks that never exceed ``[B, H, L_Q, D]``. The active
  queries run, on CPU, through a small autograd function with a hand-written backward, and elsewhere through
  ``scaled_dot_product_attention`` (Flash / memory-efficient kernels on GPU). Peak memory is
  O(L·log L + L·D) per (batch, head) instead of O(L·U·D).

Masks: an active query whose keys are all masked (``attn_mask`` all False / -inf on its row) outputs 0 with
zero gradient, in both implementations, as ``scaled_dot_product_attention`` (and so :func:`full_attention`)
does; a lazy query keeps its mean/cumsum output whatever the mask (as in the official code).
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = [
    "FullAttention",
    "ProbSparseAttention",
    "build_attention",
    "full_attention",
    "probsparse_attention",
    "probsparse_counts",
    "sample_key_index",
    "sparsity_measure",
]

Measure = Literal["official", "mean"]
MaskedLazy = Literal["cumsum", "cummean"]
Impl = Literal["fast", "exact"]
MeasurePath = Literal["sddmm", "dense", "gather"]

_MEASURES = ("official", "mean")
_MASKED_LAZY = ("cumsum", "cummean")
_IMPLS = ("fast", "exact")
_MEASURE_PATHS = ("sddmm", "dense", "gather")
_SDDMM_DTYPES = (torch.float32, torch.float64)  # sampled_addmm on CPU has no bfloat16/half kernel
_ROWS_FUNCTION_DTYPES = (torch.float32, torch.float64)  # lower precisions keep SDPA (float accumulation)
_CHUNK_ELEMENTS = 2**22  # element budget of one chunk's temporary in the fast sparsity measure
_ROWS_FUNCTION_ON_CPU = True  # fast path on CPU: _RowsAttention (False: SDPA + autograd, for comparison)
_DENSE_MEASURE_MAX_RATIO = 40  # fast measure: dense chunked scores while L_K <= ratio * U (CPU-calibrated)


# --------------------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------------------
def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {list(choices)}")


def _validate_qkv(q: Tensor, k: Tensor, v: Tensor, check_finite: bool) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape [B, H, L, D] (4 dims), got shape {tuple(t.shape)}")
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(f"batch sizes differ: q {q.shape[0]}, k {k.shape[0]}, v {v.shape[0]}")
    if not (q.shape[1] == k.shape[1] == v.shape[1]):
        raise ValueError(f"head counts differ: q {q.shape[1]}, k {k.shape[1]}, v {v.shape[1]}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"head dims of q and k differ: {q.shape[-1]} vs {k.shape[-1]}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v lengths differ: {k.shape[2]} vs {v.shape[2]}")
    if q.shape[2] == 0 or k.shape[2] == 0:
        raise ValueError(f"empty sequence: L_Q={q.shape[2]}, L_K={k.shape[2]} (both must be >= 1)")
    if q.shape[-1] == 0 or v.shape[-1] == 0:
        raise ValueError("head dim must be >= 1")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"dtypes differ: q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if not q.is_floating_point():
        raise ValueError(f"q, k, v must be floating point, got {q.dtype}")
    if check_finite:
        for name, t in (("q", q), ("k", k), ("v", v)):
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} contains NaN or inf values")


def _validate_mask(attn_mask: Tensor | None, q: Tensor, k: Tensor) -> None:
    if attn_mask is None:
        return
    b, h, l_q, _ = q.shape
    target = (b, h, l_q, k.shape[2])
    shape = tuple(attn_mask.shape)
    ok = attn_mask.dim() <= 4 and all(
        s in (1, t) for s, t in zip(reversed(shape), reversed(target), strict=False)
    )
    if not ok:
        raise ValueError(
            f"attn_mask of shape {shape} does not broadcast to [B, H, L_Q, L_K] = {list(target)}"
        )
    if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
        raise ValueError(f"attn_mask must be bool (True = attend) or float (additive), got {attn_mask.dtype}")


def _validate_factor(factor: float) -> None:
    if (
        isinstance(factor, bool)
        or not isinstance(factor, int | float)
        or not math.isfinite(factor)
        or not factor > 0
    ):
        raise ValueError(f"factor must be finite and > 0, got {factor!r}")


# --------------------------------------------------------------------------------------------------------------
# sampling and the sparsity measure
# --------------------------------------------------------------------------------------------------------------
def probsparse_counts(l_q: int, l_k: int, factor: float) -> tuple[int, int]:
    """``(U_part, u)``: sampled keys per query and active queries, as the official code computes them.

    ``U_part = min(c·ceil(ln L_K), L_K)`` and ``u = min(c·ceil(ln L_Q), L_Q)`` (at least 1: ln 1 = 0).
    """
    _validate_factor(factor)
    u_part = int(factor * math.ceil(math.log(l_k)))
    u = int(factor * math.ceil(math.log(l_q)))
    return max(1, min(u_part, l_k)), max(1, min(u, l_q))


def sample_key_index(
    l_q: int,
    l_k: int,
    n_samples: int,
    *,
    causal: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """The ``[L_Q, n_samples]`` int64 matrix of sampled key positions (with replacement), shared by B and H.

    ``causal=True`` draws row i from ``0..min(i, L_K-1)`` (no future keys).
    """
    gen_device = generator.device if generator is not None else device
    if causal:
        r = torch.rand(l_q, n_samples, generator=generator, device=gen_device)
        hi = torch.arange(1, l_q + 1, device=gen_device).clamp(max=l_k).unsqueeze(1)
        idx = (r * hi).long().clamp(max=l_k - 1)
    else:
        idx = torch.randint(l_k, (l_q, n_samples), generator=generator, device=gen_device)
    return idx if device is None else idx.to(device, non_blocking=True)


def _measure_path(q: Tensor, l_k: int, n_samples: int) -> MeasurePath:
    """How :func:`sparsity_measure` gets the sampled scores when ``path="auto"``."""
    if q.device.type == "cpu" and q.dtype in _SDDMM_DTYPES:
        return "sddmm"
    return "dense" if l_k <= _DENSE_MEASURE_MAX_RATIO * n_samples else "gather"


def _sampled_scores_sddmm(q: Tensor, k: Tensor, index: Tensor) -> Tensor:
    """[B, H, L_Q, U] sampled scores by one sampled dense-dense matmul (SDDMM) over a CSR pattern with
    exactly U entries per row, in the sample's own order (duplicates included): L_Q·U·D multiply-adds and no
    gathered copy of the keys."""
    b, h, l_q, d = q.shape
    l_k = k.shape[2]
    n = index.shape[1]
    crow = torch.arange(0, l_q * n + 1, n, device=q.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        pattern = torch.sparse_csr_tensor(
            crow.expand(b * h, -1),
            index.reshape(1, -1).expand(b * h, -1),
            q.new_zeros(b * h, l_q * n),  # zeros, not empty: the kernel computes beta * value + dot
            size=(b * h, l_q, l_k),
            check_invariants=False,  # unsorted and repeated columns are what we want here
        )
        # out=pattern writes the values in place; otherwise the pattern (indices and values) is copied first
        torch.sparse.sampled_addmm(
            pattern,
            q.reshape(b * h, l_q, d),
            k.reshape(b * h, l_k, d).transpose(1, 2),
            beta=0.0,
            out=pattern,
        )
    return pattern.values().view(b, h, l_q, n)


def _max_minus_sum(s: Tensor, divisor: int) -> Tensor:
    """``max − sum / divisor`` over the last dim (the samples).

    On CPU in float32/64: two ATen calls, ``amax`` and one ``addmv`` (``max − s · (1/divisor)``), instead of
    sum, divide and subtract; and ATen's max over a contiguous last dim is vectorised in blocks of 32 floats
    and runs scalar code for fewer samples (U = 25 at L = 96, 30 at L = 336), so the rows are padded with -inf
    up to 32 first (which cannot change the max; it halves that time). Elsewhere (GPU, bfloat16: 1/divisor
    would be rounded to the low precision) the plain formula."""
    n = s.shape[-1]
    if s.device.type != "cpu" or s.dtype not in _SDDMM_DTYPES:
        return s.amax(-1) - s.sum(-1) / divisor
    rows = s.reshape(-1, n)
    if n < 32 and n % 8:
        mx = F.pad(rows, (0, 32 - n), value=float("-inf")).amax(-1)
    else:
        mx = rows.amax(-1)
    return torch.addmv(mx, rows, s.new_full((n,), 1.0 / divisor), alpha=-1).view(s.shape[:-1])


def sparsity_measure(
    q: Tensor, k: Tensor, index: Tensor, measure: Measure = "official", path: MeasurePath | None = None
) -> Tensor:
    """M [B, H, L_Q] from the unscaled sampled scores, without building [B, H, L_Q, U, D].

    No autograd (M only feeds ``topk``). Three ways to get the sampled scores, same values up to rounding
    (``path``; None picks one):

    * ``"sddmm"`` (default on CPU for float32/float64): :func:`torch.sparse.sampled_addmm` computes exactly
      the L_Q·U sampled dot products, with no copy of the keys (~7x faster than ``"dense"`` at L=1440 on one
      CPU thread).
    * ``"dense"`` (elsewhere while ``L_K <= 40·U``): query chunks of dense scores q_chunk·Kᵀ [B, H, chunk, L_K],
      then gather the sampled columns. More FLOPs than needed, at matrix-multiply speed.
    * ``"gather"`` (elsewhere for longer keys): gather the sampled keys of a query chunk [B, H, chunk, U, D]
      and contract over D.

    ``"dense"`` and ``"gather"`` work in query chunks whose temporary holds at most max(size of q, 2**22)
    elements; the 40 was calibrated on one CPU thread and is checked on GPU by ``make gpu-check``.
    """
    l_q, n_samples = index.shape
    b, h, l_k, d = k.shape
    divisor = l_k if measure == "official" else n_samples
    path = path or _measure_path(q, l_k, n_samples)
    _check_choice("measure path", path, _MEASURE_PATHS)
    with torch.no_grad():
        if path == "sddmm":
            return _max_minus_sum(_sampled_scores_sddmm(q, k, index), divisor)
        dense = path == "dense"
        per_query = b * h * (l_k if dense else n_samples * d)
        chunk = max(1, math.ceil(l_q * d / (l_k if dense else n_samples * d)), _CHUNK_ELEMENTS // per_query)
        out = q.new_empty(q.shape[:3])
        k_t = k.transpose(-2, -1)
        k_rows = k.reshape(b * h, l_k, d)  # index_select on this is ~3x faster than k[:, :, index] on CPU
        for start in range(0, l_q, chunk):
            stop = min(start + chunk, l_q)
            if dense:
                scores = q[:, :, start:stop] @ k_t  # [B, H, chunk, L_K]
                s = torch.gather(scores, 3, index[start:stop].expand(b, h, -1, -1))  # [B, H, chunk, U]
            else:
                k_sample = k_rows.index_select(1, index[start:stop].reshape(-1)).view(
                    b, h, stop - start, n_samples, d
                )
                s = (q[:, :, start:stop].unsqueeze(-2) @ k_sample.transpose(-2, -1)).squeeze(
                    -2
                )  # [B, H, chunk, U]
            out[:, :, start:stop] = _max_minus_sum(s, divisor)
    return out


def _lazy_context(v: Tensor, l_q: int, causal: bool, masked_lazy: MaskedLazy) -> Tensor:
    """Output of the queries that are not selected: mean(V), or cumsum/cummean(V) under a causal mask."""
    if not causal:
        return v.mean(dim=-2, keepdim=True).expand(*v.shape[:2], l_q, v.shape[-1])
    if l_q != v.shape[2]:
        raise ValueError(
            f"causal ProbSparse attention needs L_Q == L_K (self-attention), got {l_q} vs {v.shape[2]}"
        )
    ctx = v.cumsum(dim=-2)
    if masked_lazy == "cummean":
        ctx = ctx / torch.arange(1, l_q + 1, device=v.device, dtype=v.dtype).unsqueeze(-1)
    return ctx


def _as_additive(attn_mask: Tensor, dtype: torch.dtype) -> Tensor:
    if attn_mask.dtype == torch.bool:
        return torch.zeros((), dtype=dtype, device=attn_mask.device).masked_fill(~attn_mask, float("-inf"))
    return attn_mask.to(dtype)


def _rows_mask(
    attn_mask: Tensor | None, top: Tensor, l_k: int, causal: bool, dtype: torch.dtype
) -> Tensor | None:
    """Additive mask [B, H, u, L_K] for the active query rows ``top`` [B, H, u] (causal and/or user mask)."""
    mask = None
    if causal:
        keys = torch.arange(l_k, device=top.device)
        mask = torch.zeros((), dtype=dtype, device=top.device).masked_fill(
            keys > top.unsqueeze(-1), float("-inf")
        )  # [B, H, u, L_K]
    if attn_mask is not None:
        b, h, u = top.shape
        full = attn_mask.expand(b, h, attn_mask.shape[-2] if attn_mask.dim() >= 2 else 1, l_k)
        if full.shape[-2] == 1:
            rows = full.expand(b, h, u, l_k)
        else:
            rows = torch.gather(full, 2, top.unsqueeze(-1).expand(b, h, u, l_k))
        rows = _as_additive(rows, dtype)
        mask = rows if mask is None else mask + rows
    return mask


# --------------------------------------------------------------------------------------------------------------
# the two implementations
# --------------------------------------------------------------------------------------------------------------
def _probsparse_exact(q, k, v, index, u, scale, causal, measure, masked_lazy, attn_mask):
    """The official ``ProbAttention.forward`` statement by statement (with our named options)."""
    b, h, l_q, d = q.shape
    l_k = k.shape[2]
    n_samples = index.shape[1]
    k_expand = k.unsqueeze(-3).expand(b, h, l_q, l_k, d)
    k_sample = k_expand[:, :, torch.arange(l_q, device=q.device).unsqueeze(1), index, :]  # [B, H, L_Q, U, D]
    qk_sample = torch.matmul(q.unsqueeze(-2), k_sample.transpose(-2, -1)).squeeze(-2)
    divisor = l_k if measure == "official" else n_samples
    m = qk_sample.max(-1)[0] - torch.div(qk_sample.sum(-1), divisor)
    m_top = m.topk(u, sorted=False)[1]
    q_reduce = q[torch.arange(b)[:, None, None], torch.arange(h)[None, :, None], m_top, :]
    scores = torch.matmul(q_reduce, k.transpose(-2, -1)) * scale  # [B, H, u, L_K]
    if causal:
        prob_mask = torch.ones(l_q, l_k, dtype=torch.bool, device=q.device).triu(1)
        prob_mask = prob_mask[None, None].expand(b, h, l_q, l_k)[
            torch.arange(b)[:, None, None], torch.arange(h)[None, :, None], m_top, :
        ]
        scores = scores.masked_fill(prob_mask, float("-inf"))
    if attn_mask is not None:
        scores = scores + _rows_mask(attn_mask, m_top, l_k, False, scores.dtype)
    attn = _softmax_rows(scores, attn_mask is not None)
    context = _lazy_context(v, l_q, causal, masked_lazy).clone()
    context[torch.arange(b)[:, None, None], torch.arange(h)[None, :, None], m_top, :] = torch.matmul(
        attn, v
    ).type_as(context)
    return context


def _softmax_rows(scores: Tensor, masked: bool) -> Tensor:
    """Softmax over keys; a row whose keys are all masked (all -inf) gives 0, not NaN, as SDPA does (its
    gradient is 0 too: the row is made finite before the softmax, not patched after it)."""
    if not masked:
        return torch.softmax(scores, dim=-1)
    dead = scores.amax(-1, keepdim=True) == float("-inf")
    return torch.softmax(scores.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0)


class _RowsAttention(torch.autograd.Function):
    """Forward and hand-written backward of the fast path after the top-u choice (CPU, float32/64).

    The u active rows get softmax attention, the other rows the lazy context. Written out, the backward needs
    four matmuls of [u, L] by [L, D] shapes and one pass over the output gradient for the lazy rows; autograd
    over gather/SDPA/scatter/mean adds zero-filled [L, D] buffers, a clone of the output gradient and
    gradient accumulations, which are most of the time at L ~ 300 on one CPU thread. The exact path (autograd
    over the official statements) checks this backward in the tests.

    At L ~ 300 the whole step is ~0.07 GFLOP, so the number of ATen calls matters as much as the FLOPs:
    everything runs on [B·H, L, D] views of contiguous inputs, with ``bmm``/``baddbmm`` (no 4-d ``matmul``
    reshapes), the active rows addressed as rows of a [B·H·L, D] view (``index_select`` / ``index_copy_``
    copy whole rows, where a 4-d ``gather``/``scatter`` reads one index per element), the lazy rows' share of
    dV fused into its matmul (``baddbmm``), and ATen's fused softmax backward.
    """

    @staticmethod
    def forward(ctx, q, k, v, top, mask, scale, causal, masked_lazy):
        b, h, l_q, d = q.shape
        l_k, d_v, u = k.shape[2], v.shape[-1], top.shape[-1]
        bh = b * h
        # the active queries as rows of q viewed as [B·H·L_Q, D]
        rows = (top.reshape(bh, u) + torch.arange(0, bh * l_q, l_q, device=q.device).unsqueeze(1)).view(-1)
        q_reduce = q.reshape(-1, d).index_select(0, rows).view(bh, u, d)
        k3, v3 = k.reshape(bh, l_k, d), v.reshape(bh, l_k, d_v)
        # baddbmm with beta=0 ignores its input: a matmul that applies the scale (alpha) without another call
        scores = torch.baddbmm(q.new_empty(()), q_reduce, k3.transpose(1, 2), beta=0, alpha=scale)
        if mask is not None:
            scores.view(b, h, u, l_k).add_(mask)
        attn = _softmax_rows(scores, mask is not None)
        active = torch.bmm(attn, v3)  # [B·H, u, D_v]
        out = _lazy_context(v, l_q, causal, masked_lazy).contiguous()  # a fresh tensor in every case
        out.view(-1, d_v).index_copy_(0, rows, active.view(-1, d_v))
        ctx.save_for_backward(q_reduce, k3, v3, rows, attn)
        ctx.scale, ctx.causal, ctx.masked_lazy, ctx.shape = scale, causal, masked_lazy, (b, h, l_q)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        q_reduce, k3, v3, rows, attn = ctx.saved_tensors
        b, h, l_q = ctx.shape
        bh, u, d = q_reduce.shape
        l_k, d_v = k3.shape[1], v3.shape[-1]
        g = grad.reshape(bh, l_q, d_v)
        g_active = g.reshape(-1, d_v).index_select(0, rows).view(bh, u, d_v)
        d_attn = torch.bmm(g_active, v3.transpose(1, 2))  # [B·H, u, L_K]
        # softmax backward attn * (d_attn - rowsum(d_attn * attn)) in one kernel (the one autograd uses);
        # rows that _softmax_rows zeroed (all keys masked) have attn = 0 and get 0
        d_scores = torch._softmax_backward_data(d_attn, attn, -1, attn.dtype)
        unused = grad.new_empty(())  # baddbmm input with beta=0: matmuls scaled by alpha
        dq = grad.new_zeros(bh * l_q, d)
        dq_active = torch.baddbmm(unused, d_scores, k3, beta=0, alpha=ctx.scale)
        dq.index_copy_(0, rows, dq_active.view(-1, d))
        dk = torch.baddbmm(unused, d_scores.transpose(1, 2), q_reduce, beta=0, alpha=ctx.scale)
        if not ctx.causal:  # lazy rows output mean(V): each key gets (sum of the lazy rows' gradients) / L_K
            g_lazy = g.sum(1, keepdim=True).sub_(g_active.sum(1, keepdim=True))  # [B·H, 1, D_v]
            dv_lazy, beta = g_lazy.expand(bh, l_k, d_v), 1.0 / l_k
        else:  # lazy rows output cumsum(V) (or its running mean): a reverse cumulative sum of their gradients
            g_lazy = g.clone(memory_format=torch.contiguous_format)
            g_lazy.view(-1, d_v).index_fill_(0, rows, 0.0)
            if ctx.masked_lazy == "cummean":
                g_lazy /= torch.arange(1, l_q + 1, device=grad.device, dtype=grad.dtype).unsqueeze(-1)
            dv_lazy, beta = g_lazy.flip(1).cumsum(1).flip(1), 1.0
        dv = torch.baddbmm(dv_lazy, attn.transpose(1, 2), g_active, beta=beta)  # lazy part + attn^T @ g
        return (
            dq.view(b, h, l_q, d),
            dk.view(b, h, l_k, d),
            dv.view(b, h, l_k, d_v),
            None,
            None,
            None,
            None,
            None,
        )


def _probsparse_fast(q, k, v, index, u, scale, causal, measure, masked_lazy, attn_mask):
    b, h, _, d = q.shape
    l_k = k.shape[2]
    rows_function = (
        q.device.type == "cpu"
        and q.dtype in _ROWS_FUNCTION_DTYPES
        and (attn_mask is None or not attn_mask.requires_grad)
        and _ROWS_FUNCTION_ON_CPU
    )
    if rows_function:  # one copy of strided inputs (e.g. heads split from [B, L, H·D]) serves every step
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    m = sparsity_measure(q, k, index, measure)
    top = m.topk(u, dim=-1, sorted=False).indices  # [B, H, u]
    mask = _rows_mask(attn_mask, top, l_k, causal, q.dtype)
    if rows_function:
        return _RowsAttention.apply(q, k, v, top, mask, scale, causal, masked_lazy)
    # elsewhere (GPU, bfloat16/half, a mask that needs a gradient): SDPA (Flash / memory-efficient kernels)
    q_reduce = torch.gather(q, 2, top.unsqueeze(-1).expand(b, h, u, d))
    active = F.scaled_dot_product_attention(q_reduce, k, v, attn_mask=mask, scale=scale)  # [B, H, u, D_v]
    lazy = _lazy_context(v, q.shape[2], causal, masked_lazy)
    return lazy.scatter(2, top.unsqueeze(-1).expand(b, h, u, v.shape[-1]), active.to(lazy.dtype))


def probsparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    factor: float = 5,
    causal: bool = False,
    scale: float | None = None,
    attn_mask: Tensor | None = None,
    measure: Measure = "official",
    masked_lazy: MaskedLazy = "cumsum",
    causal_sampling: bool = False,
    impl: Impl = "fast",
    index: Tensor | None = None,
    generator: torch.Generator | None = None,
    check_finite: bool = False,
) -> Tensor:
    """ProbSparse attention; see the module docstring for the semantics.

    Args:
        q, k, v: [B, H, L_Q, D], [B, H, L_K, D], [B, H, L_K, D_v].
        factor: the sampling factor c (Informer ``--factor``, default 5).
        causal: causal mask (decoder self-attention); needs L_Q == L_K.
        scale: score scale for the active queries, default 1/sqrt(D).
        attn_mask: optional extra mask broadcastable to [B, H, L_Q, L_K], bool (True = attend) or additive float.
            It applies to the active queries; lazy queries keep the official mean/cumsum output. An active
            query with every key masked outputs 0 (as SDPA does), not NaN.
        measure: ``"official"`` (max − sum/L_K) or ``"mean"`` (max − mean over the samples).
        masked_lazy: lazy-query output under ``causal``: ``"cumsum"`` (official) or ``"cummean"``.
        causal_sampling: sample only non-future keys for each query.
        impl: ``"fast"`` or ``"exact"`` (same results for the same ``index``).
        index: a precomputed ``[L_Q, U]`` sample (see :func:`sample_key_index`); drawn here when None.
        generator: RNG for drawing the sample (reproducible runs).
        check_finite: raise if q, k or v hold NaN/inf (costs a device sync).
    """
    _validate_qkv(q, k, v, check_finite)
    _validate_mask(attn_mask, q, k)
    _check_choice("measure", measure, _MEASURES)
    _check_choice("masked_lazy", masked_lazy, _MASKED_LAZY)
    _check_choice("impl", impl, _IMPLS)
    l_q, l_k = q.shape[2], k.shape[2]
    if causal and l_q != l_k:
        raise ValueError(f"causal ProbSparse attention needs L_Q == L_K (self-attention), got {l_q} vs {l_k}")
    n_samples, u = probsparse_counts(l_q, l_k, factor)
    if index is None:
        index = sample_key_index(
            l_q, l_k, n_samples, causal=causal_sampling, generator=generator, device=q.device
        )
    elif index.dim() != 2 or index.shape[0] != l_q:
        raise ValueError(f"index must have shape [L_Q={l_q}, U], got {tuple(index.shape)}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    fn = _probsparse_fast if impl == "fast" else _probsparse_exact
    return fn(q, k, v, index, u, scale, causal, measure, masked_lazy, attn_mask)


def full_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    check_finite: bool = False,
) -> Tensor:
    """Softmax attention through ``scaled_dot_product_attention``; the causal mask is top-left aligned
    (query i sees keys j <= i), as Informer's ``TriangularCausalMask``. A query whose keys are all masked
    outputs 0 (SDPA's convention; ProbSparse's active queries do the same)."""
    _validate_qkv(q, k, v, check_finite)
    _validate_mask(attn_mask, q, k)
    if causal and attn_mask is not None:
        causal_mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
        attn_mask = _as_additive(causal_mask, q.dtype) + _as_additive(attn_mask, q.dtype)
        causal = False
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=causal, scale=scale
    )


# --------------------------------------------------------------------------------------------------------------
# modules
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _SampleKey:
    l_q: int
    l_k: int
    n_samples: int
    device: str


class ProbSparseAttention(nn.Module):
    """ProbSparse attention as a module (see :func:`probsparse_attention`).

    Args:
        factor: sampling factor c.
        causal: causal (decoder self-attention) mask.
        scale: score scale, default 1/sqrt(D).
        measure: ``"official"`` or ``"mean"`` sparsity measure.
        masked_lazy: ``"cumsum"`` (official) or ``"cummean"`` lazy output under the causal mask.
        causal_sampling: sample only non-future keys.
        impl: ``"fast"`` or ``"exact"``.
        fixed_eval_sample: in eval mode reuse one sample per (L_Q, L_K) (the official code redraws it on every
            call, test time included, which makes evaluation itself random).
        seed: seed of a module-owned generator for the key sample; None uses torch's global RNG.
        check_finite: raise on NaN/inf inputs.
    """

    def __init__(
        self,
        factor: float = 5,
        causal: bool = False,
        scale: float | None = None,
        measure: Measure = "official",
        masked_lazy: MaskedLazy = "cumsum",
        causal_sampling: bool = False,
        impl: Impl = "fast",
        fixed_eval_sample: bool = False,
        seed: int | None = None,
        check_finite: bool = False,
    ):
        super().__init__()
        _validate_factor(factor)
        _check_choice("measure", measure, _MEASURES)
        _check_choice("masked_lazy", masked_lazy, _MASKED_LAZY)
        _check_choice("impl", impl, _IMPLS)
        self.factor = factor
        self.causal = causal
        self.scale = scale
        self.measure = measure
        self.masked_lazy = masked_lazy
        self.causal_sampling = causal_sampling
        self.impl = impl
        self.fixed_eval_sample = fixed_eval_sample
        self.seed = seed
        self.check_finite = check_finite
        self._generator: torch.Generator | None = None
        self._eval_samples: dict[_SampleKey, Tensor] = {}

    def extra_repr(self) -> str:
        return (
            f"factor={self.factor}, causal={self.causal}, measure={self.measure!r}, impl={self.impl!r}, "
            f"causal_sampling={self.causal_sampling}, fixed_eval_sample={self.fixed_eval_sample}"
        )

    def _get_generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator

    def _index(self, l_q: int, l_k: int, device: torch.device) -> Tensor:
        n_samples, _ = probsparse_counts(l_q, l_k, self.factor)
        sample = lambda: sample_key_index(
            l_q,
            l_k,
            n_samples,
            causal=self.causal_sampling,
            generator=self._get_generator(device),
            device=device,
        )
        if self.training or not self.fixed_eval_sample:
            return sample()
        key = _SampleKey(l_q, l_k, n_samples, str(device))
        if key not in self._eval_samples:
            self._eval_samples[key] = sample()
        return self._eval_samples[key]

    def forward(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        _validate_qkv(q, k, v, False)  # shape errors before we index with these shapes
        return probsparse_attention(
            q,
            k,
            v,
            factor=self.factor,
            causal=self.causal,
            scale=self.scale,
            attn_mask=attn_mask,
            measure=self.measure,
            masked_lazy=self.masked_lazy,
            causal_sampling=self.causal_sampling,
            impl=self.impl,
            index=self._index(q.shape[2], k.shape[2], q.device),
            check_finite=self.check_finite,
        )


class FullAttention(nn.Module):
    """Full softmax attention (SDPA) with the same interface as :class:`ProbSparseAttention`.

    Args:
        causal: causal mask (top-left aligned).
        scale: score scale, default 1/sqrt(D).
        dropout: dropout on the attention weights in training mode (Informer's FullAttention uses 0.05).
        check_finite: raise on NaN/inf inputs.
    """

    def __init__(
        self,
        causal: bool = False,
        scale: float | None = None,
        dropout: float = 0.0,
        check_finite: bool = False,
    ):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.causal = causal
        self.scale = scale
        self.dropout = dropout
        self.check_finite = check_finite

    def extra_repr(self) -> str:
        return f"causal={self.causal}, dropout={self.dropout}"

    def forward(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        return full_attention(
            q,
            k,
            v,
            causal=self.causal,
            scale=self.scale,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            check_finite=self.check_finite,
        )


ATTENTIONS: dict[str, type[nn.Module]] = {"prob": ProbSparseAttention, "full": FullAttention}


def build_attention(kind: str, **kwargs) -> nn.Module:
    """``build_attention("prob" | "full", **kwargs)``; kwargs the chosen module does not take are an error."""
    _check_choice("attention", kind, tuple(ATTENTIONS))
    cls = ATTENTIONS[kind]
    accepted = [name for name in inspect.signature(cls).parameters if name != "self"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"{cls.__name__} ({kind!r}) does not take {unknown}; its options are {accepted}")
    return cls(**kwargs)
