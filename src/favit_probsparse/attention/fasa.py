"""FaSA, factorization self-attention, on tokens laid out on a grid of 1, 2 or 3 axes.

One operator for sequences ``(T,)``, images ``(H, W)`` and video ``(T, H, W)``. In 2-D it is exactly the released
FaViT code's attention (``docs/favit.md``); the same code runs on the other grids, with every size set per axis:

* **global branch** (the first ``Cg`` channels, one head): a convolution with kernel = stride = ``sr_ratio`` per
  axis reduces the grid, then LayerNorm → ``Linear(Cg, 2Cg)`` gives the keys/values every query attends to; a
  depthwise conv (kernel 3 per axis) is added to V.
* **window branches** (the remaining channels, ``num_heads`` heads each): a shared depthwise + pointwise conv
  makes the K/V source; branch ``i`` cuts it into non-overlapping windows of ``window_size`` samples per axis,
  with dilation 1 (branch 0) and dilation ``sr_ratio`` (branch 1, only where some axis has ``sr_ratio > 1``). A
  cross-window *fusion* (:mod:`favit_probsparse.attention.fusion`) turns the ``L`` windows of ``P`` samples into
  the branch's keys/values; ``Linear(c, c) → Linear(c, 2c)`` then projects them, and a depthwise conv over the
  window grid (kernel 3 per axis; along the key sequence for fusions whose key count is not ``P``) is added to V.

Grids (``grid_windows``) and windows (:func:`window_candidates`) follow the official 2-D rule on every axis:
windows tile an axis with stride = span ``d·(w − 1) + 1``, and the last window is completed by reflection about
the axis end (extended periodically, see :func:`reflect_index`).

**Random streams.** A sampled fusion (``probsparse``, ``hierarchical``) of branch ``i`` gets the seed
``fusion_kwargs["seed"] + fusion_seed_offset + i``: models pass a distinct ``fusion_seed_offset`` per block
(FaViT: ``1000 · block index``), so every branch of every block draws its own reproducible stream.

Tokens are ``[B, N, C]`` with ``N`` the product of the grid, row-major (the last axis fastest). Every convolution
sees a channels-last view of them (:func:`grid_view`), so no transpose copies surround the convolutions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from favit_probsparse.attention.dispatch import attend
from favit_probsparse.attention.fusion import FUSIONS, CrossWindowFusion, build_fusion

__all__ = [
    "DepthwiseSeparableConv",
    "FaSA",
    "as_axes",
    "conv_nd",
    "grid_tokens",
    "grid_view",
    "grid_windows",
    "reflect_index",
    "window_candidates",
    "window_span",
]


# ----------------------------------------------------------------------------------------------------------------
# grids
# ----------------------------------------------------------------------------------------------------------------
def as_axes(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    """An int (the same on every axis) or one value per axis, as a tuple of ``ndim`` positive ints."""
    t = (int(value),) * ndim if isinstance(value, int) else tuple(int(v) for v in value)
    if len(t) != ndim or min(t) < 1:
        raise ValueError(
            f"{name} must be a positive int or {ndim} positive ints (one per axis), got {value!r}"
        )
    return t


def conv_nd(ndim: int) -> type[nn.Module]:
    """``nn.Conv1d``/``nn.Conv2d``/``nn.Conv3d`` for a grid of ``ndim`` axes."""
    if ndim not in (1, 2, 3):
        raise ValueError(f"FaSA works on grids of 1, 2 or 3 axes, got {ndim}")
    return (nn.Conv1d, nn.Conv2d, nn.Conv3d)[ndim - 1]


def grid_view(x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Tokens ``[B, N, C]`` as a ``[B, C, *grid]`` map *without copying* (a channels-last view)."""
    return x.unflatten(1, tuple(grid)).movedim(-1, 1)


def grid_tokens(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, *grid]`` map -> tokens ``[B, N, C]`` (free for a channels-last map)."""
    return x.movedim(1, -1).flatten(1, -2)


def reflect_index(i: int, n: int) -> int:
    """Source index of padded position ``i`` in a length-``n`` axis (reflection, extended periodically)."""
    if i < n:
        return i
    if n == 1:
        return 0
    period = 2 * (n - 1)
    m = i % period
    return m if m < n else period - m


def window_span(window_size: int, dilation: int) -> int:
    """Extent of one dilated window, which is also the window stride (windows tile the map without overlap)."""
    return dilation * (window_size - 1) + 1


def grid_windows(grid: Sequence[int], window_size: Sequence[int], dilation: Sequence[int]) -> int:
    """Number of windows ``L`` that tile ``grid`` (the last window of each axis completed by padding)."""
    return math.prod(-(-n // window_span(w, d)) for n, w, d in zip(grid, window_size, dilation))


_INDEX_CACHE: dict[tuple[int, int, int, str], torch.Tensor | None] = {}


def _sample_index(n: int, window_size: int, dilation: int, device: torch.device) -> torch.Tensor | None:
    """Indices of the sampled positions along one axis, window-major; None when no padding is needed."""
    span = window_span(window_size, dilation)
    if n % span == 0:
        return None
    key = (n, window_size, dilation, str(device))
    compiling = torch.compiler.is_compiling()
    if not compiling and key in _INDEX_CACHE:
        return _INDEX_CACHE[key]
    nw = -(-n // span)
    idx = [reflect_index(w * span + k * dilation, n) for w in range(nw) for k in range(window_size)]
    t = torch.tensor(idx, dtype=torch.long, device=device)
    if not compiling:
        _INDEX_CACHE[key] = t
    return t


def _strided_windows(x: torch.Tensor, dim: int, window_size: int, dilation: int) -> torch.Tensor:
    """View axis ``dim`` (length a multiple of the span) as ``(windows, window_size)`` without copying.

    Split the axis into spans, then keep every ``dilation``-th position of each span (``0, d, …, d·(ws − 1)`` is
    the whole dilated window). Both are views that ``torch.compile`` traces; ``as_strided`` would need the
    storage offset, a graph break.
    """
    x = x.unflatten(dim, (-1, window_span(window_size, dilation)))  # [..., windows, span, ...]
    if dilation == 1:
        return x
    return x[(slice(None),) * (dim + 1) + (slice(None, None, dilation),)]


def window_candidates(
    x: torch.Tensor,
    num_heads: int,
    window_size: int | Sequence[int] = 7,
    dilation: int | Sequence[int] = 1,
) -> torch.Tensor:
    """Cut ``x [B, C, *grid]`` into non-overlapping dilated windows: ``[B, heads, P, L, C/heads]``.

    ``P = prod(window_size)`` samples per window (row-major inside it), ``L`` windows (row-major over the window
    grid), channels head-major. In 2-D this is the official ``ReflectionPad2d`` (right/bottom, to a multiple of
    the span) + ``nn.Unfold(window_size, dilation, stride=span)`` + ``reshape(B, h, c, P, L).permute(0, 1, 3, 4,
    2)``, with the padding rule of :func:`reflect_index`, without materialising the padded map: an axis that
    needs no padding is a strided view, an axis that does is a gather of only the sampled positions. ``window_size``
    and ``dilation`` are an int (every axis) or one value per axis.
    """
    k = x.dim() - 2
    ws, ds = as_axes(window_size, k, "window_size"), as_axes(dilation, k, "dilation")
    for a in reversed(range(k)):  # the last axis first, so the earlier axes keep their dim index
        dim = 2 + a
        idx = _sample_index(x.shape[dim], ws[a], ds[a], x.device)
        if idx is None:
            x = _strided_windows(x, dim, ws[a], ds[a])
        else:
            x = x.index_select(dim, idx).unflatten(dim, (-1, ws[a]))
    # x: [B, C, n_0, w_0, ..., n_k-1, w_k-1] -> [B, C, w_0..w_k-1 (P), n_0..n_k-1 (L)]
    x = x.permute(0, 1, *range(3, 2 + 2 * k, 2), *range(2, 2 + 2 * k, 2))
    B, C = x.shape[:2]
    L = math.prod(x.shape[2 + k :])
    return x.reshape(B, num_heads, C // num_heads, math.prod(ws), L).permute(0, 1, 3, 4, 2)


class DepthwiseSeparableConv(nn.Module):
    """Depthwise (kernel 3 per axis) then a full pointwise conv (the official ``DEPTHWISECONV``; FaSA's window
    K/V source)."""

    def __init__(self, in_ch: int, out_ch: int, ndim: int = 2):
        super().__init__()
        conv = conv_nd(ndim)
        self.depth_conv = conv(in_ch, in_ch, 3, 1, 1, groups=in_ch)
        self.point_conv = conv(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(x))


class FaSA(nn.Module):
    """Factorization self-attention on a grid of 1, 2 or 3 axes (see the module docstring).

    In 2-D with the default options it is exactly the released FaViT code's attention, with its module names
    (``q``, ``kv_g``, ``kv_l.depth_conv``, ``sr``, ``norm``, ``local_conv_g``, ``fcs.i``, ``single_heads.i``,
    ``local_convs.i``, ``proj``), so official checkpoints load.

    Args:
        dim: channels C.
        num_heads: heads of the window branches (the global branch has one head).
        sr_ratio: reduction ratio of the global branch, an int or one per axis; also the dilation of the second
            window branch. All ones gives the one-branch layout (channels split 1:7, the official stage 4);
            otherwise 2:7:7.
        window_size: window extent, an int or one per axis (7: 49 keys per 2-D window branch).
        qkv_bias: biases of the q, kv and branch projections.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
        fusion: cross-window fusion operator name (``favit_probsparse.attention.fusion.FUSIONS``).
        fusion_kwargs: options of the fusion operator.
        fusion_seed_offset: added to ``fusion_kwargs["seed"]`` (and the branch index) for sampled fusions; give
            every block its own (see the module docstring).
        feat_size: the grid this layer is built for; needed by learned fusions (``conv1x1``, ``linear``) whose
            parameters depend on the number of windows, and sets ``ndim`` when given.
        ndim: number of grid axes (1, 2 or 3) when neither ``feat_size`` nor a per-axis option gives it.
        small_grid: what a window larger than its grid axis does: ``"reflect"`` completes it by the padding rule
            (the official 2-D behaviour, e.g. 7×7 windows on FaViT-CIFAR's 4×4 stage-4 map); ``"error"`` refuses
            the grid with a one-line error.
    """

    #: pad head dims to a multiple of 8 before SDPA: "auto" on CUDA only (the fused flash / memory-efficient
    #: kernels need aligned head dims; FaViT's are 4, 14, 28, ...; otherwise SDPA falls back to the math path,
    #: which materialises the attention matrix), True / False to force. Zero-padding q/k/v leaves q·k and the
    #: kept output columns unchanged.
    sdpa_pad: bool | str = "auto"

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        sr_ratio: int | Sequence[int] = 1,
        window_size: int | Sequence[int] = 7,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        fusion: str = "official",
        fusion_kwargs: dict[str, Any] | None = None,
        fusion_seed_offset: int = 0,
        feat_size: Sequence[int] | None = None,
        ndim: int | None = None,
        small_grid: str = "reflect",
    ):
        super().__init__()
        ndim = _infer_ndim(ndim, feat_size, sr_ratio, window_size)
        if small_grid not in ("reflect", "error"):
            raise ValueError(f"small_grid must be 'reflect' or 'error', got {small_grid!r}")
        self.small_grid = small_grid
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.ndim = dim, num_heads, ndim
        self.window_size = window_size  # as given (int in FaViT); the per-axis form is window_shape
        self.window_shape = as_axes(window_size, ndim, "window_size")
        self.sr_ratio = sr_ratio
        sr = as_axes(sr_ratio, ndim, "sr_ratio")
        self.mul = [2, 7, 7] if max(sr) > 1 else [1, 7]
        self.single_dim = [dim // sum(self.mul) * m for m in self.mul]
        cg, cl = self.single_dim[0], dim - self.single_dim[0]
        for d in self.single_dim[1:]:
            if d % num_heads:
                raise ValueError(
                    f"window branch width {d} (dim {dim}) must be divisible by num_heads {num_heads}"
                )
        self.head_dims = [d // num_heads for d in self.single_dim[1:]]
        self.scales = [cg**-0.5] + [c**-0.5 for c in self.head_dims]
        #: per-axis dilation of each window branch
        self.dilations = [(1,) * ndim] + ([sr] if max(sr) > 1 else [])
        self.attn_drop = attn_drop
        self.fusion_name = fusion
        conv = conv_nd(ndim)

        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv_g = nn.Linear(cg, 2 * cg, bias=qkv_bias)
        self.kv_l = DepthwiseSeparableConv(cl, cl, ndim)
        self.sr = conv(cg, cg, kernel_size=sr, stride=sr)
        self.norm = nn.LayerNorm(cg)  # eps 1e-5 as in the official code
        self.local_conv_g = conv(cg, cg, 3, 1, 1, groups=cg)
        self._build_branches(fusion, dict(fusion_kwargs or {}), fusion_seed_offset, feat_size, qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _build_branches(
        self,
        fusion: str,
        fusion_kwargs: dict[str, Any],
        seed_offset: int,
        feat_size: Sequence[int] | None,
        qkv_bias: bool,
    ) -> None:
        base_seed = int(fusion_kwargs.pop("seed", 0))
        self.fcs, self.single_heads = nn.ModuleList(), nn.ModuleList()
        self.local_convs, self.fusions = nn.ModuleList(), nn.ModuleList()
        for i, (c, cb, d) in enumerate(zip(self.head_dims, self.single_dim[1:], self.dilations)):
            self.fcs.append(nn.Linear(c, c, bias=qkv_bias))
            self.single_heads.append(nn.Linear(c, 2 * c, bias=qkv_bias))
            L = None if feat_size is None else grid_windows(feat_size, self.window_shape, d)
            kw = dict(fusion_kwargs)
            if fusion in FUSIONS and FUSIONS[fusion].samples:  # one random stream per branch of every block
                kw["seed"] = base_seed + seed_offset + i
            fz = build_fusion(fusion, c, self.window_shape, L, **kw)
            self.fusions.append(fz)
            # V-side depthwise conv over the window grid, or along the key sequence when K != P
            conv = conv_nd(self.ndim) if fz.keeps_grid else nn.Conv1d
            self.local_convs.append(conv(cb, cb, 3, 1, 1, groups=cb))

    def num_windows(self, grid: Sequence[int]) -> list[int]:
        """Windows ``L`` each window branch fuses on ``grid``."""
        return [grid_windows(grid, self.window_shape, d) for d in self.dilations]

    def fusion_cost(self, grid: Sequence[int], batch: int = 1) -> tuple[int, int, list[int]]:
        """Learned parameters and MACs of the fusions on ``grid``, and the keys of each window branch."""
        params = macs = 0
        keys = []
        for fz, L in zip(self.fusions, self.num_windows(grid)):
            params += fz.extra_params
            macs += fz.macs(batch, math.prod(grid), L, self.num_heads)
            keys.append(fz.num_keys(L))
        return params, macs, keys

    def check_grid(self, n_tokens: int, grid: Sequence[int]) -> None:
        """One-line errors for a grid that does not fit the tokens or this layer."""
        sr = self.sr.kernel_size
        if len(grid) != self.ndim:
            raise ValueError(f"FaSA is built for grids of {self.ndim} axes, got grid {tuple(grid)}")
        if math.prod(grid) != n_tokens:
            raise ValueError(
                f"FaSA: the grid {tuple(grid)} has {math.prod(grid)} positions, but there are "
                f"{n_tokens} tokens"
            )
        if any(n < s for n, s in zip(grid, sr)):
            raise ValueError(
                f"FaSA: grid {tuple(grid)} is smaller than the global branch's reduction {sr} on some axis"
            )
        if self.small_grid == "error" and any(n < w for n, w in zip(grid, self.window_shape)):
            raise ValueError(
                f"FaSA: window {self.window_shape} is larger than the grid {tuple(grid)} on some axis; use a "
                "smaller window_size for that axis"
            )

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """Softmax attention through the measured kernel choice (:func:`~favit_probsparse.attention.dispatch.attend`)."""
        c = q.shape[-1]
        pad = (-c) % 8
        if pad and (self.sdpa_pad is True or (self.sdpa_pad == "auto" and q.is_cuda)):
            q, k, v = (F.pad(t, (0, pad)) for t in (q, k, v))
            return attend(q, k, v, scale, self.attn_drop, self.training)[..., :c]
        return attend(q, k, v, scale, self.attn_drop, self.training)

    def _branch_kv(self, i: int, kv_l: torch.Tensor, q_i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[B, h, K, c]`` of window branch ``i`` from its slice of the shared K/V source."""
        B, h = kv_l.shape[0], self.num_heads
        c, cb = self.head_dims[i], self.single_dim[i + 1]
        cand = window_candidates(kv_l[:, i * cb : (i + 1) * cb], h, self.window_shape, self.dilations[i])
        fz: CrossWindowFusion = self.fusions[i]
        kv = fz(cand, q_i if fz.needs_query else None)  # [B,h,K,c]
        k, v = self.single_heads[i](self.fcs[i](kv)).chunk(2, dim=-1)
        K = v.shape[2]
        v_t = v.transpose(2, 3).reshape(B, cb, K)  # channels head-major
        if fz.keeps_grid:  # the keys keep the window's layout: conv over the window grid
            lc = self.local_convs[i](v_t.unflatten(2, self.window_shape)).flatten(2)
        else:
            lc = self.local_convs[i](v_t)
        return k, v + lc.unflatten(1, (h, c)).transpose(2, 3)

    def _global(self, x: torch.Tensor, q: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """The global branch: one head over the reduced grid, ``[B, N, Cg]``."""
        cg = self.single_dim[0]
        x_g = self.sr(grid_view(x[:, :, :cg], grid))
        k_g, v_g = self.kv_g(self.norm(grid_tokens(x_g))).chunk(2, dim=-1)  # [B,Ng,Cg] each
        v_g = v_g + grid_tokens(self.local_conv_g(grid_view(v_g, x_g.shape[2:])))
        o_g = self._attend(q[:, :, :cg].unsqueeze(1), k_g.unsqueeze(1), v_g.unsqueeze(1), self.scales[0])
        return o_g.squeeze(1)

    def forward(self, x: torch.Tensor, *grid: int) -> torch.Tensor:
        """``x [B, N, C]`` on ``grid`` (``forward(x, T)``, ``forward(x, H, W)`` or ``forward(x, T, H, W)``)."""
        if not torch.compiler.is_compiling():
            self.check_grid(x.shape[1], grid)
        h, nb = self.num_heads, len(self.dilations)
        cg = self.single_dim[0]
        q = self.q(x)
        o_g = self._global(x, q, grid)
        # window branches: shared dw+pw K/V source over the remaining Cl channels. Within each head of the
        # official ``q_l.reshape(B, N, h, Cl/h)`` branch i takes channels [i·c, (i+1)·c); the branches have the
        # same width c, so viewing q_l as h·nb heads of width c (head index = head·nb + branch) puts every branch
        # into one attention call without a copy.
        kv_l = self.kv_l(grid_view(x[:, :, cg:], grid))  # channels-last [B, Cl, *grid]
        c = self.head_dims[0]
        q_l = q[:, :, cg:].unflatten(2, (h * nb, c)).transpose(1, 2)  # [B, h·nb, N, c]
        q_b = q_l.unflatten(1, (h, nb))  # [B, h, nb, N, c]
        kvs = [self._branch_kv(i, kv_l, q_b[:, :, i]) for i in range(nb)]
        if len({k.shape[2] for k, _ in kvs}) == 1:  # same key count: one call for all branches
            k_l = torch.stack([k for k, _ in kvs], dim=2).flatten(1, 2)  # [B, h·nb, K, c]
            v_l = torch.stack([v for _, v in kvs], dim=2).flatten(1, 2)
            o_l = self._attend(q_l, k_l, v_l, self.scales[1]).unflatten(1, (h, nb))  # [B,h,nb,N,c]
        else:  # hierarchical fusion: K depends on the branch's window count
            o_l = torch.stack(
                [self._attend(q_b[:, :, i], k, v, self.scales[1 + i]) for i, (k, v) in enumerate(kvs)], dim=2
            )
        # output channels: [global Cg | branch 0 (h, c) | branch 1 (h, c)], as the official concatenation
        o_l = rearrange(o_l, "b h nb n c -> b n (nb h c)")
        return self.proj_drop(self.proj(torch.cat([o_g, o_l], dim=-1)))


def _infer_ndim(
    ndim: int | None,
    feat_size: Sequence[int] | None,
    sr_ratio: int | Sequence[int],
    window_size: int | Sequence[int],
) -> int:
    """The grid rank from the first of ``ndim``, ``feat_size`` and the per-axis options that gives it (else 2);
    a one-line error when they disagree."""
    given = {
        name: len(v)
        for name, v in (("feat_size", feat_size), ("sr_ratio", sr_ratio), ("window_size", window_size))
        if v is not None and not isinstance(v, int)
    }
    if ndim is not None:
        given = {"ndim": int(ndim), **given}
    if len(set(given.values())) > 1:
        raise ValueError(f"FaSA: the grid rank differs between {given}")
    n = next(iter(given.values()), 2)
    conv_nd(n)  # 1, 2 or 3
    return n
