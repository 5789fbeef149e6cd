"""What each cross-window fusion keeps, traced on real images through a FaViT (``favit-ps analyze fusion``).

A FaSA window branch cuts its K/V source map ``[H, W]`` into ``L`` windows of ``P = 7×7`` dilated samples (the
*candidates* ``[B, heads, P, L, c]``) and a fusion turns them into ``K`` keys (:mod:`favit_probsparse.attention.fusion`).
This module captures, for chosen FaSA layers, every branch's candidates, queries and fused keys during one forward
pass, and answers three questions with autograd, so it needs no knowledge of any operator's internals:

* **where the keys come from**: the read weight of candidate ``(p, l)``,
  ``w[p, l] = (1/c) · |∂ Σ keys / ∂ cand[p, l, :]|₁`` — for ``max`` the number of channels whose maximum window is
  ``l`` (/c), for ``probsparse`` 1 on the selected candidates and 0 elsewhere, for ``mean``/``official`` ``1/L``
  everywhere, for ``hierarchical`` the kept points. Selection happens without gradients inside the operators, so
  the support of ``w`` is exactly the set of candidates a key copies or averages (for the learned ``linear`` and
  ``conv1x1`` it is ``|Σ`` of the weights that multiply the candidate``|``, a rough measure: signed weights can cancel);
* **which pixels those are**: :func:`window_pixel_index` maps ``(p, l)`` to the token of the stage map it samples
  (padding positions map back to the real token they copy), :func:`to_token_map` sums weights per token;
* **what a query attends to**: ``softmax(q · kᵀ · scale)`` over the branch's ``K`` keys (``k`` from the fusion
  output through the branch's ``fcs``/``single_heads`` linears, as in FaSA), pulled back to the candidates through
  the same Jacobian: ``a[p, l] = (1/c) · Σ_k attn_k · ∂ Σ_j keys[k, j] / ∂ cand[p, l, :]``; it sums to 1 for
  selection and averaging fusions.

Capture uses forward hooks only: a pre-hook on each fusion replaces its candidate input by a detached leaf that
requires grad (same values, so the forward is unchanged) and a hook keeps its output; a pre-hook on the FaSA module
keeps its input tokens, from which the branch queries are sliced in the official layout. The fusion runs once, so
sampled operators (``probsparse``, ``hierarchical``) are traced with the very sample they drew.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from favit_probsparse.attention.fasa import FaSA, window_candidates
from favit_probsparse.attention.fusion import CrossWindowFusion, reset_sampling

__all__ = [
    "BranchRecord",
    "analyze_model",
    "attention_keys",
    "attention_weights",
    "branch_queries",
    "capture_fusions",
    "describe",
    "grid_token_index",
    "query_attention",
    "query_tokens",
    "reset_sampling",
    "source_weights",
    "summarize",
    "to_token_map",
    "token_boxes",
    "window_pixel_index",
]


# --------------------------------------------------------------------------------------------- pure index maps
def grid_token_index(
    grid: Sequence[int], window_size: int | Sequence[int] = 7, dilation: int | Sequence[int] = 1
) -> torch.Tensor:
    """Flat (row-major) token index of the grid position that candidate ``(p, l)`` samples: ``[P, L]``.

    Runs the model's own :func:`~favit_probsparse.attention.fasa.window_candidates` on a grid of token indices, so
    it follows the model's window order (``l`` row-major over windows, ``p`` row-major inside one) and its padding
    rule (padding positions give the index of the real token they copy). Grids of 1, 2 or 3 axes.
    """
    idx = torch.arange(math.prod(grid), dtype=torch.float64).reshape(1, 1, *grid)
    return window_candidates(idx, 1, window_size, dilation)[0, 0, :, :, 0].round().long()


def window_pixel_index(H: int, W: int, window_size: int = 7, dilation: int = 1) -> torch.Tensor:
    """:func:`grid_token_index` of an ``H×W`` stage map: the flat index ``r·W + col`` per candidate ``(p, l)``."""
    return grid_token_index((H, W), window_size, dilation)


def token_boxes(feat_hw: tuple[int, int], img_hw: tuple[int, int]) -> torch.Tensor:
    """Image-pixel box ``[y0, x0, y1, x1)`` covered by each token of an ``H×W`` stage map: ``[H·W, 4]``.

    A token of a map downsampled by ``s = img / H`` stands for the ``s × s`` pixel block it is centred on (its
    receptive field is larger; this is the usual stride-grid placement).
    """
    H, W = feat_hw
    ih, iw = img_hw
    r = torch.arange(H, dtype=torch.float64).repeat_interleave(W)
    c = torch.arange(W, dtype=torch.float64).repeat(H)
    sy, sx = ih / H, iw / W
    return torch.stack([r * sy, c * sx, (r + 1) * sy, (c + 1) * sx], dim=1)


def to_token_map(weights: torch.Tensor, pix_index: torch.Tensor, feat_hw: Sequence[int]) -> torch.Tensor:
    """Sum candidate weights ``[..., P, L]`` onto the token grid ``[..., *feat_hw]`` (``[..., H, W]`` for a stage
    map, ``[..., T, H, W]`` for a video grid) through ``pix_index [P, L]``."""
    lead = weights.shape[:-2]
    flat = weights.reshape(*lead, -1).to(torch.float64)
    out = torch.zeros(*lead, math.prod(feat_hw), dtype=torch.float64, device=weights.device)
    out.scatter_add_(-1, pix_index.reshape(-1).expand_as(flat).to(weights.device), flat)
    return out.reshape(*lead, *feat_hw)


def query_tokens(feat_hw: tuple[int, int], rel_points: Sequence[tuple[float, float]]) -> list[int]:
    """Flat token index of each image-relative point ``(y, x) ∈ [0, 1)²`` on an ``H×W`` map."""
    H, W = feat_hw
    return [min(int(y * H), H - 1) * W + min(int(x * W), W - 1) for y, x in rel_points]


# --------------------------------------------------------------------------------------------- capture
@dataclass
class BranchRecord:
    """One window branch of one FaSA layer, captured during a forward pass (see the module docstring)."""

    stage: int
    block: int
    branch: int
    fusion: str
    dilation: int | tuple[int, ...]  # an int for FaViT's square 2-D windows, else one per grid axis
    window_size: int | tuple[int, ...]
    feat_hw: tuple[int, ...]  # the token grid: (H, W), or (T, H, W) for video
    attn: FaSA
    cand: torch.Tensor | None = None  # [B, h, P, L, c] leaf, requires grad
    keys: torch.Tensor | None = None  # [B, h, K, c] fusion output, with its graph to ``cand``
    q: torch.Tensor | None = None  # [B, h, N, c] branch queries (no grad)
    fusion_q: torch.Tensor | None = field(default=None, repr=False)  # the q the fusion received, if any

    @property
    def num_windows(self) -> int:
        return self.cand.shape[3]

    @property
    def num_keys(self) -> int:
        return self.keys.shape[2]

    @property
    def name(self) -> str:
        return f"stage{self.stage + 1}.block{self.block}.branch{self.branch} (d={self.dilation})"

    def pixel_index(self) -> torch.Tensor:
        return grid_token_index(self.feat_hw, self.window_size, self.dilation)


def branch_queries(attn: FaSA, x: torch.Tensor) -> list[torch.Tensor]:
    """Queries ``[B, heads, N, c]`` of each window branch from FaSA's input tokens ``x [B, N, C]``.

    The official layout: ``q = attn.q(x)``; the window channels after the global branch's ``Cg`` are split into
    heads, and branch ``i`` takes channels ``[Σ_{j<i} c_j, Σ_{j≤i} c_j)`` *within* each head.
    """
    q = attn.q(x)
    cg, h = attn.single_dim[0], attn.num_heads
    q_l = q[:, :, cg:].unflatten(2, (h, -1))
    out, off = [], 0
    for c in attn.head_dims:
        out.append(q_l[..., off : off + c].transpose(1, 2))
        off += c
    return out


def _favit_layers(model: nn.Module, blocks: Sequence[int] | int) -> list[tuple[int, int, FaSA]]:
    stages = getattr(model, "stages", None)
    if stages is None:
        raise ValueError(f"{type(model).__name__} has no FaViT stages; `analyze fusion` needs a FaViT model")
    per_stage = [blocks] * len(stages) if isinstance(blocks, int) else list(blocks)
    if len(per_stage) != len(stages):
        raise ValueError(f"blocks has {len(per_stage)} entries for {len(stages)} stages")
    out = []
    for s, (stage, j) in enumerate(zip(stages, per_stage)):
        n = len(stage.blocks)
        jj = j if j >= 0 else n + j
        if not 0 <= jj < n:
            raise ValueError(f"stage {s + 1} has {n} blocks; block {j} does not exist")
        attn = stage.blocks[jj].attn
        if not isinstance(attn, FaSA):
            raise ValueError(f"stages.{s}.blocks.{jj}.attn is {type(attn).__name__}, not FaSA")
        out.append((s, jj, attn))
    return out


def _compact(per_axis: Sequence[int]) -> int | tuple[int, ...]:
    """FaViT's square 2-D windows and dilations as one int (what the 2-D pictures label), others per axis."""
    t = tuple(per_axis)
    return t[0] if len(t) == 2 and t[0] == t[1] else t


@contextlib.contextmanager
def capture_fusions(model: nn.Module, blocks: Sequence[int] | int = 0) -> Iterator[list[BranchRecord]]:
    """Record every window branch of one FaSA layer per stage (``blocks``: block index per stage, or one for all;
    negative counts from the end) during the forwards run inside the ``with``. Run the forward with grad enabled;
    the model's own parameters may be frozen. The last forward's values are kept."""
    records: list[BranchRecord] = []
    handles = []
    layers = _favit_layers(model, blocks)
    for s, j, attn in layers:
        recs = []
        for i, fz in enumerate(attn.fusions):
            rec = BranchRecord(
                stage=s,
                block=j,
                branch=i,
                fusion=type(fz).__name__,
                dilation=_compact(attn.dilations[i]),
                window_size=_compact(attn.window_shape),
                feat_hw=(0, 0),
                attn=attn,
            )
            recs.append(rec)
            handles += _hook_fusion(fz, rec)
        records += recs

        def attn_pre(mod, args, kwargs, recs=recs):
            x, *grid = args  # forward(x, *grid)
            with torch.no_grad():
                qs = branch_queries(mod, x)
            for rec, q in zip(recs, qs):
                rec.feat_hw = tuple(int(n) for n in grid)
                rec.q = q.detach()

        handles.append(attn.register_forward_pre_hook(attn_pre, with_kwargs=True))
    try:
        yield records
    finally:
        for h in handles:
            h.remove()


def _hook_fusion(fz: CrossWindowFusion, rec: BranchRecord) -> list:
    def pre(mod, args, kwargs):
        cand = args[0] if args else kwargs["cand"]
        leaf = cand.detach().requires_grad_(True)
        rec.cand = leaf
        q = args[1] if len(args) > 1 else kwargs.get("q")
        rec.fusion_q = None if q is None else q.detach()
        if args:
            return (leaf, *args[1:]), kwargs
        return args, {**kwargs, "cand": leaf}

    def post(mod, args, kwargs, out):
        rec.keys = out

    return [
        fz.register_forward_pre_hook(pre, with_kwargs=True),
        fz.register_forward_hook(post, with_kwargs=True),
    ]


# --------------------------------------------------------------------------------------------- analyses
def source_weights(rec: BranchRecord) -> torch.Tensor:
    """Read weight of each candidate, ``(1/c) · |∂ Σ keys / ∂ cand|`` summed over channels: ``[B, h, P, L]``."""
    (g,) = torch.autograd.grad(rec.keys.sum(), rec.cand, retain_graph=True)
    return g.abs().sum(-1).detach() / rec.cand.shape[-1]


def attention_keys(rec: BranchRecord) -> torch.Tensor:
    """The branch's attention keys ``[B, h, K, c]``: ``single_heads(fcs(fused)).chunk(2)[0]`` as in FaSA."""
    attn, i = rec.attn, rec.branch
    with torch.no_grad():
        return attn.single_heads[i](attn.fcs[i](rec.keys.detach())).chunk(2, dim=-1)[0]


def attention_weights(rec: BranchRecord, queries: Sequence[int]) -> torch.Tensor:
    """``softmax(q · kᵀ · scale)`` of the chosen query tokens over the branch's keys: ``[B, h, nq, K]``."""
    k = attention_keys(rec).float()
    q = rec.q[:, :, list(queries)].float()
    scale = rec.attn.scales[rec.branch + 1]
    return torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)


def query_attention(rec: BranchRecord, queries: Sequence[int]) -> torch.Tensor:
    """Attention of each query pulled back to the candidates: ``[B, h, nq, P, L]`` (see the module docstring)."""
    a = attention_weights(rec, queries)  # [B,h,nq,K]
    c = rec.cand.shape[-1]
    out = []
    for n in range(a.shape[2]):
        go = a[:, :, n, :, None].to(rec.keys.dtype).expand_as(rec.keys) / c
        (g,) = torch.autograd.grad(rec.keys, rec.cand, grad_outputs=go, retain_graph=True)
        out.append(g.sum(-1).detach())
    return torch.stack(out, dim=2)


def summarize(rec: BranchRecord, queries_rel: Sequence[tuple[float, float]]) -> dict:
    """Everything the pictures show for one branch, as tensors on the stage map (float64)."""
    pix = rec.pixel_index()
    w = source_weights(rec)  # [B,h,P,L]
    qtok = query_tokens(rec.feat_hw, queries_rel)
    qa = query_attention(rec, qtok)  # [B,h,nq,P,L]
    return {
        "record": rec,
        "pixel_index": pix,
        "weights": w,
        "selected": w > 0,
        "weight_map": to_token_map(w, pix, rec.feat_hw),  # [B,h,H,W]
        "query_tokens": qtok,
        "attention_map": to_token_map(qa, pix, rec.feat_hw),  # [B,h,nq,H,W]
    }


def analyze_model(
    model: nn.Module,
    images: torch.Tensor,
    queries_rel: Sequence[tuple[float, float]] = ((0.3, 0.3), (0.6, 0.7)),
    blocks: Sequence[int] | int = 0,
) -> list[dict]:
    """Run ``images`` (normalised, ``[B, 3, H, W]``) through a FaViT and :func:`summarize` one FaSA layer per stage.

    The model is put in eval mode and its parameters frozen; sampled fusions restart from their seeds.
    """
    model.eval()
    model.requires_grad_(False)
    reset_sampling(model)
    with capture_fusions(model, blocks) as records, torch.enable_grad():
        model(images)
    missing = [r.name for r in records if r.keys is None or r.q is None]
    if missing:
        raise RuntimeError(
            f"the forward pass did not go through the fusion modules of {missing}; the FaSA layout changed and "
            "favit_probsparse.analysis.fusion_maps must follow it"
        )
    return [summarize(r, queries_rel) for r in records]


def describe(summaries: Sequence[dict]) -> list[dict]:
    """The indices behind the pictures, JSON-ready: per branch, per image and head, the kept tokens
    ``[row, col]`` (selecting fusions; ``None`` for the others, which read every window) and the share of the keys' read weight per window."""
    out = []
    for s in summaries:
        r: BranchRecord = s["record"]
        w = s["weights"]  # [B,h,P,L]
        share = (w.sum(2) / w.sum((2, 3), keepdim=False).unsqueeze(-1)).mean(1)  # [B, L], mean over heads
        W = r.feat_hw[1]
        kept = [] if r.fusion in ("ProbSparseFusion", "HierarchicalFusion") else None
        for b in range(w.shape[0] if kept is not None else 0):
            per_head = []
            for hh in range(w.shape[1]):
                toks = torch.nonzero(s["weight_map"][b, hh].reshape(-1) > 0).flatten().tolist()
                per_head.append([[t // W, t % W] for t in toks])
            kept.append(per_head)
        out.append(
            {
                "layer": f"stages.{r.stage}.blocks.{r.block}.attn",
                "branch": r.branch,
                "fusion": r.fusion,
                "dilation": r.dilation,
                "feat_hw": list(r.feat_hw),
                "num_windows": r.num_windows,
                "num_keys": r.num_keys,
                "window_share": [[round(float(v), 5) for v in row] for row in share],
                "query_tokens": [[t // W, t % W] for t in s["query_tokens"]],
                "kept_tokens": kept,
                # distinct real tokens the keys read, per image and head (padding copies count once)
                "tokens_read": (s["weight_map"].flatten(2) > 0).sum(-1).tolist(),
            }
        )
    return out
