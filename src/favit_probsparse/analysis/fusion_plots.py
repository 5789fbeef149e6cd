"""Pictures of :mod:`.fusion_maps` summaries (matplotlib, Agg): where each fusion's keys come from, per branch.

Every panel draws one window branch over the input image: the stage map's tokens are placed on the stride grid
(:func:`.fusion_maps.token_boxes`), dashed lines are window borders (only where the branch has more than one
window), dots mark the tokens a selecting fusion (``probsparse``, ``hierarchical``) kept. Values are means over the
branch's heads. Nothing here computes an index; it only draws what :func:`.fusion_maps.summarize` returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from favit_probsparse.utils.io import save_figure

from .fusion_maps import token_boxes

__all__ = ["SELECTING", "plot_attention", "plot_compare", "plot_sources", "plot_windows"]

#: fusion classes whose keys are a subset (or averages of a subset) of the candidates
SELECTING = ("ProbSparseFusion", "HierarchicalFusion")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _centres(tokens: torch.Tensor, feat_hw, img_hw) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres (x, y) of flat token indices on the image (the stride grid of :func:`token_boxes`)."""
    b = token_boxes(tuple(feat_hw), tuple(img_hw))[tokens]
    return (b[:, 1] + b[:, 3]) / 2, (b[:, 0] + b[:, 2]) / 2


def _layout(fig, title_in: float = 0.75) -> None:
    # fixed margins: tight_layout would render every panel once more just to measure it
    h = fig.get_figheight()
    fig.subplots_adjust(left=0.03, right=0.99, bottom=0.2 / h, top=1 - title_in / h, wspace=0.08, hspace=0.3)


def _label(s: dict) -> str:
    r = s["record"]
    return f"stage {r.stage + 1}, d={r.dilation}\nL={r.num_windows} windows, K={r.num_keys} keys"


def _short_fusion(s: dict) -> str:
    return s["record"].fusion.removesuffix("Fusion").lower()


def _draw(ax, img: torch.Tensor, heat: torch.Tensor, s: dict, cmap: str = "magma", vmax: float | None = None):
    """Image in grey, ``heat`` (stage map ``[H, W]``) on top, window borders and kept tokens."""
    r = s["record"]
    ih, iw = img.shape[-2:]
    H, W = r.feat_hw
    ax.imshow(img.mean(0).numpy(), cmap="gray", extent=(0, iw, ih, 0), vmin=0, vmax=1)
    h = np.ma.masked_less_equal(heat.float().numpy(), 0)  # tokens nothing reads stay uncovered
    ax.imshow(
        h,
        cmap=cmap,
        alpha=0.7,
        extent=(0, iw, ih, 0),
        interpolation="nearest",
        vmin=0,
        vmax=vmax or h.max() or 1,
    )
    if r.num_windows > 1:
        span = r.dilation * (r.window_size - 1) + 1
        for t in range(span, max(H, W), span):
            if t < H:
                ax.axhline(t * ih / H, color="white", lw=0.6, ls="--")
            if t < W:
                ax.axvline(t * iw / W, color="white", lw=0.6, ls="--")
    ax.set_xlim(0, iw), ax.set_ylim(ih, 0)
    ax.set_xticks([]), ax.set_yticks([])


def _kept_dots(ax, s: dict, b: int, img_hw) -> None:
    r = s["record"]
    if r.fusion not in SELECTING:
        return
    kept = s["weight_map"][b].gt(0).any(0).flatten()  # kept by at least one head
    xs, ys = _centres(torch.nonzero(kept).flatten(), r.feat_hw, img_hw)
    ax.scatter(xs, ys, s=4, c="cyan", linewidths=0)


def _mark_query(ax, s: dict, qi: int, img_hw) -> None:
    x, y = _centres(torch.tensor([s["query_tokens"][qi]]), s["record"].feat_hw, img_hw)
    ax.plot(x, y, "c+", ms=7, mew=1.5)


def plot_sources(summaries: Sequence[dict], images: torch.Tensor, path: Path, title: str = "", dpi: int = 80):
    """Rows: images; columns: branches. Heat: keys' read weight per token (mean over heads); dots: kept tokens."""
    plt = _plt()
    n, m = images.shape[0], len(summaries)
    fig, axes = plt.subplots(n, m, figsize=(1.55 * m, 1.55 * n + 1.0), squeeze=False)
    for b in range(n):
        for j, s in enumerate(summaries):
            ax = axes[b, j]
            _draw(ax, images[b], s["weight_map"][b].mean(0), s)
            _kept_dots(ax, s, b, images.shape[-2:])
            if b == 0:
                ax.set_title(_label(s), fontsize=6)
    fig.suptitle(
        title + "\nheat: how much the branch's keys read each token (mean over heads); dots: kept", fontsize=7
    )
    _layout(fig)
    save_figure(fig, path, dpi)
    plt.close(fig)


def plot_windows(summaries: Sequence[dict], path: Path, title: str = "", dpi: int = 80):
    """Per branch: read weight of in-window position ``p`` (rows) × window ``l`` (columns), mean over images/heads."""
    plt = _plt()
    m = len(summaries)
    fig, axes = plt.subplots(1, m, figsize=(1.6 * m, 3.2), squeeze=False)
    for j, s in enumerate(summaries):
        ax = axes[0, j]
        w = s["weights"].float().mean((0, 1))  # [P, L]
        ax.imshow(w.numpy(), aspect="auto", cmap="viridis", interpolation="nearest", vmin=0)
        ax.set_title(_label(s), fontsize=6)
        ax.set_xlabel("window l", fontsize=6)
        L = w.shape[1]
        ax.set_xticks(range(0, L, max(1, L // 5)))
        ax.tick_params(labelsize=5)
        if j == 0:
            ax.set_ylabel("position p in the 7×7 window", fontsize=6)
    fig.suptitle(
        title + "\nread weight of candidate (p, l): which windows and positions the keys come from",
        fontsize=7,
    )
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.12, top=0.72, wspace=0.35)
    save_figure(fig, path, dpi)
    plt.close(fig)


def plot_attention(
    summaries: Sequence[dict], images: torch.Tensor, path: Path, title: str = "", dpi: int = 80
):
    """Rows: (image, query); columns: branches. Heat: the query's attention over the keys, pulled back to tokens."""
    plt = _plt()
    n, m = images.shape[0], len(summaries)
    nq = len(summaries[0]["query_tokens"])
    fig, axes = plt.subplots(n * nq, m, figsize=(1.55 * m, 1.55 * n * nq + 1.0), squeeze=False)
    for b in range(n):
        for qi in range(nq):
            for j, s in enumerate(summaries):
                ax = axes[b * nq + qi, j]
                _draw(ax, images[b], s["attention_map"][b, :, qi].mean(0), s, cmap="inferno")
                _mark_query(ax, s, qi, images.shape[-2:])
                if b == 0 and qi == 0:
                    ax.set_title(_label(s), fontsize=6)
    fig.suptitle(
        title + "\nattention of the query (+) over the branch's keys, drawn on the tokens they read",
        fontsize=7,
    )
    _layout(fig)
    save_figure(fig, path, dpi)
    plt.close(fig)


def plot_compare(rows: Sequence[tuple[str, Sequence[dict]]], images: torch.Tensor, path: Path, dpi: int = 80):
    """One row per (image, checkpoint), two panels per branch that fuses several windows (``L > 1``; with one
    window every fusion but ``hierarchical`` passes it through): the keys' read weight and the first query's
    attention."""
    plt = _plt()
    cols = [j for j, s in enumerate(rows[0][1]) if any(r[1][j]["record"].num_windows > 1 for r in rows)]
    cols = cols or list(range(len(rows[0][1])))
    n, m = images.shape[0] * len(rows), len(cols)
    fig, axes = plt.subplots(n, 2 * m, figsize=(1.5 * 2 * m, 1.55 * n + 0.9), squeeze=False)
    for b in range(images.shape[0]):
        for i, (label, summaries) in enumerate(rows):
            row = b * len(rows) + i
            for jj, j in enumerate(cols):
                s = summaries[j]
                a0, a1 = axes[row, 2 * jj], axes[row, 2 * jj + 1]
                _draw(a0, images[b], s["weight_map"][b].mean(0), s)
                _kept_dots(a0, s, b, images.shape[-2:])
                _draw(a1, images[b], s["attention_map"][b, :, 0].mean(0), s, cmap="inferno")
                _mark_query(a1, s, 0, images.shape[-2:])
                r = s["record"]
                a0.text(1, 1, f"K={r.num_keys}", color="white", fontsize=5, va="top", ha="left")
                if row == 0:
                    a0.set_title(
                        f"stage {r.stage + 1}, d={r.dilation}, L={r.num_windows}\nkeys read", fontsize=6
                    )
                    a1.set_title("attention of +", fontsize=6)
                if jj == 0:
                    a0.set_ylabel(f"{label}\nimage {b}", fontsize=7)
    fig.suptitle(
        "what each fusion keeps (heat: tokens its keys read, mean over heads; dots: kept tokens) and what one query "
        "attends to\n(branches with one window, where the fusions other than hierarchical pass it through, are left "
        "out)",
        fontsize=7,
    )
    _layout(fig, 0.85)
    save_figure(fig, path, dpi)
    plt.close(fig)
