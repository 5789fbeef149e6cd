"""What a video FaViT's cross-window fusion keeps in space and time (``favit-ps analyze fusion`` on a video
checkpoint).

The same capture as the image pictures (:mod:`.fusion_maps`): hooks record each FaSA window branch's candidates
and fused keys during one forward pass, and autograd maps the keys back to the ``(T, H, W)`` token grid. For a
selecting fusion (``probsparse``) the read weight is 1 on exactly the kept tokens. The figure shows, for one clip
and one stage, the frames with the tokens the fusion keeps (one colour per head), then for each query (a point of
the middle frame) its attention over the kept keys, pulled back onto the frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from favit_probsparse.analysis.fusion_maps import (
    capture_fusions,
    query_attention,
    reset_sampling,
    source_weights,
    to_token_map,
)

__all__ = ["analyze_video", "describe_video", "plot_video_keys", "query_tokens_3d"]


def query_tokens_3d(grid: Sequence[int], rel_points: Sequence[tuple[float, float]]) -> list[int]:
    """Flat token index of each frame-relative point ``(y, x)`` on the middle frame of a ``(T, H, W)`` grid."""
    T, H, W = grid
    t = T // 2
    return [t * H * W + min(int(y * H), H - 1) * W + min(int(x * W), W - 1) for y, x in rel_points]


def analyze_video(
    model: nn.Module,
    clips: torch.Tensor,
    queries_rel: Sequence[tuple[float, float]] = ((0.3, 0.3), (0.6, 0.7)),
    block: int = 0,
) -> list[dict]:
    """Run ``clips [B, C, T, H, W]`` through a video FaViT with FaSA; per window branch of block ``block`` of
    every stage: the read weight of each token ``[B, h, T, H, W]`` and each query's attention on the grid."""
    model.eval()
    model.requires_grad_(False)
    reset_sampling(model)
    with capture_fusions(model, block) as records, torch.enable_grad():
        model(clips)
    out = []
    for rec in records:
        if rec.keys is None or len(rec.feat_hw) != 3:
            raise ValueError(f"{rec.name}: no space-time FaSA layer was traced (is this a fasa video model?)")
        pix = rec.pixel_index()
        w = source_weights(rec)
        qtok = query_tokens_3d(rec.feat_hw, queries_rel)
        out.append(
            {
                "record": rec,
                "weight_map": to_token_map(w, pix, rec.feat_hw),  # [B, h, T, H, W]
                "query_tokens": qtok,
                "attention_map": to_token_map(query_attention(rec, qtok), pix, rec.feat_hw),  # [B,h,nq,T,H,W]
            }
        )
    return out


def describe_video(summaries: Sequence[dict]) -> list[dict]:
    """JSON-ready: per branch, its grid, windows and keys, and for clip 0 the kept tokens ``[t, y, x]`` of each
    head (for selecting fusions) with how many frames they come from."""
    out = []
    for s in summaries:
        r = s["record"]
        wm = s["weight_map"][0]  # [h, T, H, W]
        kept = [torch.nonzero(wm[h] > 0).tolist() for h in range(wm.shape[0])]
        out.append(
            {
                "layer": f"stages.{r.stage}.blocks.{r.block}.attn",
                "branch": r.branch,
                "fusion": r.fusion,
                "grid": list(r.feat_hw),
                "window": list(r.window_size) if isinstance(r.window_size, tuple) else r.window_size,
                "dilation": list(r.dilation) if isinstance(r.dilation, tuple) else r.dilation,
                "num_windows": r.num_windows,
                "num_keys": r.num_keys,
                "kept_tokens_clip0": kept if r.fusion == "ProbSparseFusion" else None,
                "frames_read_clip0": [len({t for t, _, _ in k}) for k in kept],
            }
        )
    return out


def plot_video_keys(summary: dict, frames: torch.Tensor, path: str | Path, title: str, dpi: int = 80) -> Path:
    """One branch, clip 0: ``frames [C, T, H, W]`` (display range [0, 1]) with the kept tokens, then a row per
    query with its attention (head 0) on the frames; the query is marked on the middle frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wm, am = summary["weight_map"][0], summary["attention_map"][0]  # [h,T,H,W], [h,nq,T,H,W]
    T = wm.shape[1]
    nq = am.shape[1]
    img = frames.mean(0).numpy()  # grey [T, H, W]
    fig, axes = plt.subplots(1 + nq, T, figsize=(1.6 * T, 1.7 * (1 + nq)), squeeze=False)
    colors = plt.cm.tab10.colors
    ext = (0, img.shape[2], img.shape[1], 0)
    for t in range(T):
        ax = axes[0, t]
        ax.imshow(img[t], cmap="gray", vmin=0, vmax=1, extent=ext)
        for h in range(wm.shape[0]):
            mask = (wm[h, t] > 0).double().numpy()
            rgba = [(*colors[h % 10], 0.45 * m) for m in mask.ravel()]
            ax.imshow(torch.tensor(rgba).reshape(*mask.shape, 4).numpy(), extent=ext, interpolation="nearest")
        ax.set_title(f"t={t}", fontsize=7)
        for q in range(nq):
            a = am[0, q, t].numpy()
            axq = axes[1 + q, t]
            axq.imshow(img[t], cmap="gray", vmin=0, vmax=1, extent=ext)
            axq.imshow(a, cmap="magma", alpha=0.6, vmin=0, vmax=max(float(am[0, q].max()), 1e-9), extent=ext)
            tq, rem = divmod(summary["query_tokens"][q], wm.shape[2] * wm.shape[3])
            if tq == t:
                y, x = divmod(rem, wm.shape[3])
                sy, sx = img.shape[1] / wm.shape[2], img.shape[2] / wm.shape[3]
                axq.plot((x + 0.5) * sx, (y + 0.5) * sy, "c+", ms=9, mew=2)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("kept keys", fontsize=7)
    for q in range(nq):
        axes[1 + q, 0].set_ylabel(f"query {q} attn", fontsize=7)
    fig.suptitle(title, fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path
