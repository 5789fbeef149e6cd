"""Draw docs/figures/fusion_keys.png: what each cross-window fusion keeps, traced through the real operators.

A toy FaSA window branch: one head, c = 6 channels per head, a 14×14 K/V map, 7×7 windows with dilation 1, so
L = 4 windows (2×2). Every operator of ``favit_probsparse.attention.fusion`` is run on the candidates that
``window_candidates`` cuts from a random map, and autograd says which inputs each output key depends on (selection
is done without gradients, so a selected key depends on exactly the candidate it copies). Learned operators get
random weights first, so the picture shows what they *can* mix, not their mean-like initialisation.

Top row: every pixel of the map, shaded by how many keys read it; red: the pixels that output channel ``j`` of
one chosen key reads. Bottom row: the same channel's (window, channel) inputs.

    PYTHONPATH=src python docs/figures/fusion_keys.py          # rewrites docs/figures/fusion_keys.png
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from favit_probsparse.attention.fusion import build_fusion
from favit_probsparse.models.favit import window_candidates

H = W = 14
WS, DIL, C = 7, 1, 6
L = (H // WS) * (W // WS)
P = WS * WS
KEY_POS = 3 * WS + 4  # position (3, 4) inside a window
CHANNEL = 1
OPS = [
    ("official", {}, "official\n(code's AdaptiveAvgPool)"),
    ("max", {}, "max\n(paper: max pooling)"),
    ("mean", {}, "mean\n(global average pooling)"),
    ("linear", {}, "linear\n(learned, per channel)"),
    ("conv1x1", {}, "conv1x1\n(learned, all window-channels)"),
    ("probsparse", {}, "probsparse\n(top-49 of 196 candidates)"),
    ("hierarchical", {"topk": 4}, "hierarchical\n(4 points/window + tree)"),
]


def trace(name: str, kwargs: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(keys read per pixel [H, W], pixels of the chosen key [H, W], its (window, channel) inputs [L, C], K)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, C, H, W, generator=g, dtype=torch.float64, requires_grad=True)
    q = torch.randn(1, 1, H * W, C, generator=g, dtype=torch.float64)
    op = build_fusion(name, C, WS, L, **kwargs).double()
    for p in op.parameters():
        torch.nn.init.normal_(p, generator=g)
    cand = window_candidates(x, 1, WS, DIL)  # [1, 1, P, L, C]
    cand.retain_grad()
    out = op(cand, q)[0, 0]  # [K, C]
    K = out.shape[0]
    count = np.zeros((H, W))
    for k in range(K):
        (gx,) = torch.autograd.grad(out[k].sum(), x, retain_graph=True)
        count += (gx[0].abs().sum(0) > 0).numpy()
    if name in ("probsparse", "hierarchical"):
        key = K // 2 if name == "probsparse" else L * 4  # a kept candidate / the first window representative
    else:
        key = KEY_POS
    gx, gc = torch.autograd.grad(out[key, CHANNEL], (x, cand), retain_graph=True)
    pix = (gx[0].abs().sum(0) > 0).numpy()
    wc = (gc[0, 0].abs().sum(0) > 0).numpy().astype(float)  # [L, C]
    return count, pix, wc, key


def main() -> None:
    fig, axes = plt.subplots(
        2, len(OPS), figsize=(2.3 * len(OPS), 5.0), gridspec_kw={"height_ratios": [3, 2]}
    )
    for col, (name, kw, title) in enumerate(OPS):
        count, pix, wc, key = trace(name, kw)
        ax = axes[0, col]
        ax.imshow(count, cmap="Greys", vmin=0, vmax=max(count.max(), 1) * 2.5)
        ys, xs = np.nonzero(pix)
        ax.scatter(xs, ys, s=18, c="tab:red", marker="s", linewidths=0)
        for t in range(0, H + 1, WS):
            ax.axhline(t - 0.5, color="tab:blue", lw=1)
            ax.axvline(t - 0.5, color="tab:blue", lw=1)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel(f"{_n_keys(name)}; red: key {key}", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
        ax = axes[1, col]
        ax.imshow(wc, cmap="Reds", vmin=0, vmax=1.3, aspect="auto")
        ax.set_xticks(range(C))
        ax.set_yticks(range(L))
        ax.tick_params(labelsize=6)
        ax.set_xlabel(f"input channel (output channel {CHANNEL})", fontsize=7)
        if col == 0:
            ax.set_ylabel("window", fontsize=7)
            axes[0, 0].set_ylabel("14×14 map, 4 windows", fontsize=7)
    fig.suptitle(
        "What each cross-window fusion keeps (one head, c = 6, 7×7 windows, L = 4). Grey: pixels read by any key; "
        f"red: what output channel {CHANNEL} of one key reads (top: pixels, bottom: window × channel)",
        fontsize=9,
    )
    fig.tight_layout()
    out = Path(__file__).with_suffix(".png")
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def _n_keys(name: str) -> str:
    return {
        "probsparse": "49 of 196 candidates",
        "hierarchical": f"{L * 4} points + {L}+{L // 2}+1 tree nodes",
    }.get(name, "49 keys, one per position")


if __name__ == "__main__":
    main()
