"""Cross-window fusion operators for FaSA's window branches (:mod:`favit_probsparse.attention.fasa`).

A FaSA window branch cuts its K/V source into ``L`` windows of ``P`` dilated samples (FaViT: ``7×7``; a window is
given per grid axis, so ``P`` is ``7`` on a sequence or ``2×7×7`` on a video grid). A *fusion* operator turns the
``L`` candidate windows into the key/value source the branch's queries attend to. The operators see only ``P``
and ``L``, so every one of them works on grids of any number of axes.

Interface (every operator):

* input ``cand``: ``[B, heads, P, L, c]`` with ``P`` positions inside a window (row-major), ``L`` windows
  (row-major over the window grid, in 2-D exactly ``nn.Unfold``'s order) and ``c`` channels per head;
* input ``q`` (only for operators with ``needs_query = True``): the branch's queries ``[B, heads, N, c]``;
* output ``[B, heads, K, c]`` with ``K = num_keys(L) = P`` for every operator except ``hierarchical``.

Operators (``build_fusion(name, ...)``, registry ``FUSIONS``):

``official``
    The released FaViT code's ``nn.AdaptiveAvgPool2d((None, c))`` over the window-major flattened ``(L·c)`` axis:
    ``out[..., p, j] = mean(cand[..., p, :, :].flatten()[j·L:(j+1)·L])`` (it mixes windows *and* channels). It calls
    the same ``adaptive_avg_pool2d`` kernel on the same layout as the official code, so it is bit-compatible.
``max`` / ``mean``
    Per channel over the ``L`` windows (``max`` is the paper's "max pooling (original)" row of report Table 1).
``conv1x1``
    A pointwise convolution over the ``7×7`` window grid whose input channels are the ``(window, channel)`` pairs:
    ``out[..., p, :] = W · cand[..., p, :, :].flatten() + b`` with ``W ∈ R^{c × L·c}`` shared across heads. It mixes
    windows and channels; initialised to the per-channel mean over windows.
``linear``
    A learned per-channel linear map over the windows: ``out[..., p, j] = Σ_l w[j, l] · cand[..., p, l, j] + b[j]``
    (``w ∈ R^{c × L}``); initialised to the mean. ``conv1x1`` and ``linear`` hold parameters whose shape depends on
    ``L``, so they are built for one input resolution and raise a clear error at another.
``probsparse``
    Informer-style ProbSparse selection of the ``P`` most relevant candidates ("top-L² keys", the report §1):
    score each query's sparsity ``M = max − mean`` of its dot products with a random sample of the ``P·L``
    candidates, keep the top ``u = factor·ceil(ln N)`` queries ``Q_s``, compute ``S = Q_s · candᵀ``
    (``u × P·L``), aggregate over the kept queries (``mean``; ``max`` as an option) into one score per candidate
    and keep the top ``P`` candidates, **in their original (position-major) order**, so the branch's V-side
    ``7×7`` depthwise conv sees a consistent layout. Selection is not differentiable; gradients flow through the
    selected candidates.
``hierarchical``
    The report's log 002 "smart neighbourhood": inside every window, each of its ``P`` points is scored as a query against a
    random half of the window's points (``M = max − mean``); the top-``k`` points are kept (``topk``, default 4),
    averaged into one window representative, and the representatives are merged pairwise (mean) in a log-depth
    tree. Keys: the kept points (``use_points``, ``L·k`` keys, window-major) and/or the representatives with all
    their tree nodes (``use_windows``, ``L + ceil(L/2) + … + 1`` keys). ``K`` depends on ``L``; the model replaces
    the branch's ``7×7`` V-side depthwise conv by a depthwise ``Conv1d`` (kernel 3) along the key sequence.

Random sampling (``probsparse``, ``hierarchical``) draws from the module's own counter-based stream: draw ``d`` of
seed ``s`` ranks the indices by an integer hash of ``(s, d, index)`` and keeps the lowest ranks. The state
``(s, d)`` is a (non-persistent) buffer advanced in place, so a run is reproducible from its seed, independent of
the global RNG, identical on every device, and ``torch.compile`` traces it into the model's graph (a
``torch.Generator`` would break the graph at every branch). All scores are
computed in float32, so the operators are bf16-safe; outputs keep the input dtype.

Each operator reports ``extra_params`` (its learned parameter count) and ``macs(B, N, L)`` (multiply-accumulates
of one forward for ``B`` images, ``N`` queries, ``L`` windows); ``FaViT.fusion_summary()`` sums them.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FUSIONS",
    "ConvFusion",
    "CrossWindowFusion",
    "HierarchicalFusion",
    "LinearFusion",
    "MaxFusion",
    "MeanFusion",
    "OfficialFusion",
    "ProbSparseFusion",
    "WindowSize",
    "build_fusion",
    "check_fusion_name",
    "fusion_options",
    "hierarchical_num_keys",
    "probsparse_scores",
    "reset_sampling",
]


#: a window's extent: an int (a square 2-D window, FaViT's 7×7) or one extent per grid axis (1-D, 2-D or 3-D)
WindowSize = int | Sequence[int]


class CrossWindowFusion(nn.Module):
    """Base class: ``forward(cand [B, h, P, L, c], q [B, h, N, c] | None) -> [B, h, K, c]``."""

    needs_query: ClassVar[bool] = False
    #: whether the operator draws random samples (then the model gives each branch of each block its own seed)
    samples: ClassVar[bool] = False
    #: whether the output keeps the ``window_size × window_size`` layout (K == P), so a 2-D V-side conv applies
    keeps_grid: ClassVar[bool] = True

    def __init__(self, head_dim: int, window_size: WindowSize = 7, num_windows: int | None = None):
        super().__init__()
        shape = (window_size, window_size) if isinstance(window_size, int) else tuple(window_size)
        if head_dim < 1 or not shape or min(shape) < 1:
            raise ValueError(f"head_dim and window_size must be positive, got {head_dim}, {window_size}")
        self.head_dim = head_dim
        self.window_size = window_size
        #: the window's extent per grid axis (an int window_size means a square 2-D window)
        self.window_shape = shape
        self.num_points = math.prod(shape)
        self.num_windows = num_windows

    def num_keys(self, num_windows: int) -> int:
        return self.num_points

    @property
    def extra_params(self) -> int:
        return sum(p.numel() for p in self.parameters(recurse=False))

    def macs(self, batch: int, num_queries: int, num_windows: int, heads: int = 1) -> int:
        return 0

    def init_weights(self) -> None:  # learned operators override
        pass

    def _check(self, cand: torch.Tensor) -> None:
        if cand.dim() != 5 or cand.shape[2] != self.num_points or cand.shape[-1] != self.head_dim:
            raise ValueError(
                f"{type(self).__name__}: expected candidates [B, heads, {self.num_points}, L, {self.head_dim}], "
                f"got {list(cand.shape)}"
            )

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, window_size={self.window_size}"


class OfficialFusion(CrossWindowFusion):
    """The official code's ``AdaptiveAvgPool2d((None, c))`` over the flattened window-major ``(L·c)`` axis."""

    def forward(self, cand: torch.Tensor, q: torch.Tensor | None = None) -> torch.Tensor:
        self._check(cand)
        B, h, P, L, c = cand.shape
        if L == 1:  # the pool is the identity
            return cand.reshape(B, h, P, c)
        # same kernel, same input layout as the official ``nn.AdaptiveAvgPool2d((None, c))(kv.reshape(B,h,P,L*c))``
        return F.adaptive_avg_pool2d(cand.reshape(B, h, P, L * c), (P, c))


class MaxFusion(CrossWindowFusion):
    """Per-channel max over the windows (the paper's max pooling)."""

    def forward(self, cand: torch.Tensor, q: torch.Tensor | None = None) -> torch.Tensor:
        self._check(cand)
        return cand.amax(dim=3)


class MeanFusion(CrossWindowFusion):
    """Per-channel mean over the windows (global average pooling across windows)."""

    def forward(self, cand: torch.Tensor, q: torch.Tensor | None = None) -> torch.Tensor:
        self._check(cand)
        return cand.mean(dim=3)


class _LearnedFusion(CrossWindowFusion):
    def __init__(self, head_dim: int, window_size: WindowSize = 7, num_windows: int | None = None):
        if num_windows is None or num_windows < 1:
            raise ValueError(
                f"{type(self).__name__} has parameters over the window axis and needs num_windows (L) at build "
                "time: build the model with the img_size it will run at"
            )
        super().__init__(head_dim, window_size, num_windows)

    def _check_windows(self, L: int) -> None:
        if self.num_windows != L:
            raise ValueError(
                f"{type(self).__name__} was built for L={self.num_windows} windows but got L={L}: learned fusions "
                "are tied to one input resolution; rebuild the model with a matching img_size"
            )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", num_windows={self.num_windows}"


class ConvFusion(_LearnedFusion):
    """Pointwise conv over the 7×7 grid with the ``(window, channel)`` pairs as input channels: ``L·c -> c``."""

    def __init__(self, head_dim: int, window_size: WindowSize = 7, num_windows: int | None = None):
        super().__init__(head_dim, window_size, num_windows)
        self.weight = nn.Parameter(torch.empty(head_dim, self.num_windows * head_dim))
        self.bias = nn.Parameter(torch.empty(head_dim))
        self.init_weights()

    def init_weights(self) -> None:
        # start as the per-channel mean over windows: W[j, l·c + j] = 1/L
        c, L = self.head_dim, self.num_windows
        with torch.no_grad():
            eye = torch.eye(c, dtype=self.weight.dtype, device=self.weight.device)
            self.weight.copy_(eye.repeat(1, L) / L)
            self.bias.zero_()

    def forward(self, cand: torch.Tensor, q: torch.Tensor | None = None) -> torch.Tensor:
        self._check(cand)
        B, h, P, L, c = cand.shape
        self._check_windows(L)
        return F.linear(cand.reshape(B, h, P, L * c), self.weight, self.bias)

    def macs(self, batch: int, num_queries: int, num_windows: int, heads: int = 1) -> int:
        return batch * heads * self.num_points * num_windows * self.head_dim * self.head_dim


class LinearFusion(_LearnedFusion):
    """Learned per-channel linear map over windows: ``out[..., j] = Σ_l w[j, l] x[..., l, j] + b[j]``."""

    def __init__(self, head_dim: int, window_size: WindowSize = 7, num_windows: int | None = None):
        super().__init__(head_dim, window_size, num_windows)
        self.weight = nn.Parameter(torch.empty(head_dim, self.num_windows))
        self.bias = nn.Parameter(torch.empty(head_dim))
        self.init_weights()

    def init_weights(self) -> None:
        with torch.no_grad():
            self.weight.fill_(1.0 / self.num_windows)
            self.bias.zero_()

    def forward(self, cand: torch.Tensor, q: torch.Tensor | None = None) -> torch.Tensor:
        self._check(cand)
        L = cand.shape[3]
        self._check_windows(L)
        # [B,h,P,L,c] * [L,c] summed over L
        return (cand * self.weight.t()).sum(dim=3) + self.bias

    def macs(self, batch: int, num_queries: int, num_windows: int, heads: int = 1) -> int:
        return batch * heads * self.num_points * num_windows * self.head_dim


_HASH_P = 2**31 - 1  # Mersenne prime: the product of two residues fits in int64, so no step overflows
_HASH_ROUNDS = ((1_103_515_245, 12_345), (1_664_525, 1_013_904_223), (69_069, 1), (48_271, 11))


def _hash31(x: torch.Tensor) -> torch.Tensor:
    """Integer mix of int64 values in ``[0, 2³¹)``: affine steps modulo a prime, each followed by an xor-shift.

    Every step is exact int64 arithmetic (no overflow: both factors are below 2³¹), so eager, compiled and CUDA
    code give the same bits.
    """
    for a, b in _HASH_ROUNDS:
        x = (x * a + b) % _HASH_P
        x = x ^ (x >> 13)  # breaks the affine structure; stays below 2³¹
    return x


class _SampledFusion(CrossWindowFusion):
    """Owns a reproducible random stream (seed, draw count): see the module docstring."""

    samples = True

    def __init__(
        self, head_dim: int, window_size: WindowSize = 7, num_windows: int | None = None, seed: int = 0
    ):
        super().__init__(head_dim, window_size, num_windows)
        self.seed = int(seed)
        # [seed, draws]: not in the state dict (the trainer re-seeds the stream each epoch), never cast by .to(dtype)
        self.register_buffer(
            "_rng", torch.tensor([self.seed % _HASH_P, 0], dtype=torch.long), persistent=False
        )

    def reset_generator(self, seed: int | None = None) -> None:
        """Restart the random stream (from ``seed`` if given, else the construction seed)."""
        if seed is not None:
            self.seed = int(seed)
        with torch.no_grad():
            self._rng[0] = self.seed % _HASH_P
            self._rng[1] = 0

    def _sample(self, n: int, k: int) -> torch.Tensor:
        """``k`` distinct indices of ``range(n)``, uniformly at random, in random order; one draw of the stream
        (on the module's device)."""
        seed, draw = self._rng.unbind()
        key = _hash31((_hash31(seed) + draw) % _HASH_P)  # this draw's key
        ranks = _hash31((torch.arange(n, device=self._rng.device) + key) % _HASH_P)
        with torch.no_grad():
            self._rng[1:].add_(1)
        return ranks.argsort(stable=True)[:k]


def reset_sampling(model: nn.Module) -> None:
    """Restart every sampled fusion's random stream in ``model`` from its seed (what evaluation does), so that
    two forward passes draw the same samples."""
    for m in model.modules():
        if isinstance(m, _SampledFusion):
            m.reset_generator()


def probsparse_scores(
    cand: torch.Tensor,
    q: torch.Tensor,
    n_queries: int,
    sample_idx: torch.Tensor | None,
    aggregate: str = "mean",
) -> torch.Tensor:
    """One score per candidate: aggregate of ``Q_s · candᵀ`` over the ``n_queries`` sparsest queries.

    ``cand``: ``[B, h, M, c]`` (flattened candidates), ``q``: ``[B, h, N, c]``. Query sparsity is
    ``max − mean`` of ``q · cand[sample_idx]ᵀ`` (all candidates when ``sample_idx`` is None). With
    ``n_queries = N`` and ``sample_idx = None`` this is the dense ``(q · candᵀ).mean(queries)`` (or max).
    Returns ``[B, h, M]`` float32.
    """
    qf, kf = q.float(), cand.float()
    N = qf.shape[2]
    if n_queries >= N:
        q_s = qf
    else:
        ks = kf if sample_idx is None else kf.index_select(2, sample_idx)
        qk = qf @ ks.transpose(-1, -2)  # [B,h,N,s]
        sparsity = qk.amax(-1) - qk.mean(-1)  # Informer's M(q, K)
        top = sparsity.topk(n_queries, dim=-1, sorted=False).indices  # [B,h,u]
        q_s = torch.gather(qf, 2, top.unsqueeze(-1).expand(-1, -1, -1, qf.shape[-1]))
    s = q_s @ kf.transpose(-1, -2)  # [B,h,u,M]
    if aggregate == "mean":
        return s.mean(dim=2)
    return s.amax(dim=2)


class ProbSparseFusion(_SampledFusion):
    """ProbSparse "top-L² keys" selection over all ``P·L`` candidates (see the module docstring)."""

    needs_query = True

    def __init__(
        self,
        head_dim: int,
        window_size: WindowSize = 7,
        num_windows: int | None = None,
        *,
        factor: int = 5,
        sample_factor: int = 5,
        aggregate: str = "mean",
        n_keep: int | None = None,
        n_queries: int | None = None,
        seed: int = 0,
    ):
        super().__init__(head_dim, window_size, num_windows, seed)
        if aggregate not in ("mean", "max"):
            raise ValueError(f"probsparse aggregate must be 'mean' or 'max', got {aggregate!r}")
        if factor < 1 or sample_factor < 1:
            raise ValueError(
                f"probsparse factor and sample_factor must be >= 1, got {factor}, {sample_factor}"
            )
        self.factor = factor
        self.sample_factor = sample_factor
        self.aggregate = aggregate
        self.n_keep = self.num_points if n_keep is None else int(n_keep)
        if self.n_keep < 1:
            raise ValueError(f"probsparse n_keep must be >= 1, got {n_keep}")
        self.n_queries = n_queries

    def num_keys(self, num_windows: int) -> int:
        return min(self.n_keep, self.num_points * num_windows)

    def _sizes(self, N: int, M: int) -> tuple[int, int]:
        u = self.n_queries if self.n_queries is not None else self.factor * math.ceil(math.log(max(N, 2)))
        s = self.sample_factor * math.ceil(math.log(max(M, 2)))
        return min(u, N), min(s, M)

    def forward(self, cand: torch.Tensor, q: torch.Tensor | None = None) -> torch.Tensor:
        self._check(cand)
        if q is None:
            raise ValueError("probsparse fusion needs the branch queries q [B, heads, N, c]")
        B, h, P, L, c = cand.shape
        M = P * L
        flat = cand.reshape(B, h, M, c)  # candidate index = p·L + l (position-major)
        k = self.num_keys(L)
        if k >= M:
            return flat
        u, s = self._sizes(q.shape[2], M)
        sample_idx = None if s >= M else self._sample(M, s)
        with torch.no_grad():
            score = probsparse_scores(flat, q, u, sample_idx, self.aggregate)
            idx = score.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values  # keep the original order
        return torch.gather(flat, 2, idx.unsqueeze(-1).expand(-1, -1, -1, c))

    def macs(self, batch: int, num_queries: int, num_windows: int, heads: int = 1) -> int:
        M = self.num_points * num_windows
        if self.num_keys(num_windows) >= M:
            return 0
        u, s = self._sizes(num_queries, M)
        sample = 0 if u >= num_queries else num_queries * s
        return batch * heads * (sample + u * M) * self.head_dim

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", factor={self.factor}, sample_factor={self.sample_factor}, aggregate={self.aggregate!r}, "
            f"n_keep={self.n_keep}, seed={self.seed}"
        )


def hierarchical_num_keys(num_windows: int, topk: int, use_points: bool, use_windows: bool) -> int:
    """``L·k`` kept points (use_points) + ``L + ceil(L/2) + … + 1`` tree nodes (use_windows)."""
    k = num_windows * topk if use_points else 0
    if use_windows:
        n = num_windows
        k += n
        while n > 1:
            n = (n + 1) // 2
            k += n
    return k


class HierarchicalFusion(_SampledFusion):
    """The report's log 002: per-window ProbSparse points + log-depth tree of window representatives."""

    keeps_grid = False

    def __init__(
        self,
        head_dim: int,
        window_size: WindowSize = 7,
        num_windows: int | None = None,
        *,
        topk: int = 4,
        use_points: bool = True,
        use_windows: bool = True,
        sample_ratio: float = 0.5,
        seed: int = 0,
    ):
        super().__init__(head_dim, window_size, num_windows, seed)
        if not (use_points or use_windows):
            raise ValueError("hierarchical fusion needs use_points and/or use_windows")
        if not 1 <= topk <= self.num_points:
            raise ValueError(f"hierarchical topk must be in [1, {self.num_points}], got {topk}")
        if not 0.0 < sample_ratio <= 1.0:
            raise ValueError(f"hierarchical sample_ratio must be in (0, 1], got {sample_ratio}")
        self.topk = int(topk)
        self.use_points = bool(use_points)
        self.use_windows = bool(use_windows)
        self.sample_ratio = float(sample_ratio)

    def num_keys(self, num_windows: int) -> int:
        return hierarchical_num_keys(num_windows, self.topk, self.use_points, self.use_windows)

    @property
    def n_sample(self) -> int:
        return max(1, round(self.num_points * self.sample_ratio))

    def forward(self, cand: torch.Tensor, q: torch.Tensor | None = None) -> torch.Tensor:
        self._check(cand)
        B, h, P, L, c = cand.shape
        win = cand.transpose(2, 3)  # [B,h,L,P,c]
        s = self.n_sample
        with torch.no_grad():
            wf = win.float()
            ref = wf if s >= P else wf.index_select(3, self._sample(P, s))
            qk = wf @ ref.transpose(-1, -2)  # [B,h,L,P,s]: each point as a query against half the window
            sparsity = qk.amax(-1) - qk.mean(-1)  # [B,h,L,P]
            idx = sparsity.topk(self.topk, dim=-1, sorted=False).indices.sort(dim=-1).values
        points = torch.gather(win, 3, idx.unsqueeze(-1).expand(-1, -1, -1, -1, c))  # [B,h,L,k,c]
        keys = []
        if self.use_points:
            keys.append(points.reshape(B, h, L * self.topk, c))
        if self.use_windows:
            node = points.mean(dim=3)  # window representatives [B,h,L,c]
            keys.append(node)
            while node.shape[2] > 1:
                n = node.shape[2]
                if n % 2:  # odd count: the last node is carried up (mean of itself)
                    node = torch.cat([node, node[:, :, -1:]], dim=2)
                node = node.reshape(B, h, (n + 1) // 2, 2, c).mean(dim=3)
                keys.append(node)
        return keys[0] if len(keys) == 1 else torch.cat(keys, dim=2)

    def macs(self, batch: int, num_queries: int, num_windows: int, heads: int = 1) -> int:
        return batch * heads * num_windows * self.num_points * self.n_sample * self.head_dim

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", topk={self.topk}, use_points={self.use_points}, use_windows={self.use_windows}, "
            f"sample_ratio={self.sample_ratio}, seed={self.seed}"
        )


FUSIONS: dict[str, type[CrossWindowFusion]] = {
    "official": OfficialFusion,
    "max": MaxFusion,
    "mean": MeanFusion,
    "conv1x1": ConvFusion,
    "linear": LinearFusion,
    "probsparse": ProbSparseFusion,
    "hierarchical": HierarchicalFusion,
}


def fusion_options(name: str) -> set[str]:
    """The options (keyword-only constructor arguments) of fusion ``name``."""
    params = inspect.signature(FUSIONS[name].__init__).parameters.values()
    return {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def check_fusion_name(name: str) -> None:
    if name not in FUSIONS:
        raise ValueError(f"unknown fusion {name!r}; choose one of {sorted(FUSIONS)}")


def build_fusion(
    name: str, head_dim: int, window_size: WindowSize = 7, num_windows: int | None = None, **kwargs
) -> CrossWindowFusion:
    """Build the fusion operator ``name`` (one of ``FUSIONS``) for one window branch.

    ``window_size``: an int (a square 2-D window) or one extent per grid axis. ``num_windows`` (L at the build
    size) is required by ``conv1x1`` and ``linear``; ``kwargs`` are the operator's keyword-only options
    (:func:`fusion_options`: ``probsparse``: factor, sample_factor, aggregate, n_keep, n_queries, seed;
    ``hierarchical``: topk, use_points, use_windows, sample_ratio, seed). Unknown names or options raise
    ``ValueError``.
    """
    check_fusion_name(name)
    allowed = fusion_options(name)
    bad = set(kwargs) - allowed
    if bad:
        raise ValueError(
            f"fusion {name!r} does not take option(s) {sorted(bad)}; it takes {sorted(allowed) or 'no options'}"
        )
    return FUSIONS[name](head_dim, window_size, num_windows, **kwargs)
