"""The report's ``pos_embedding_decay`` study, made exact, for sinusoidal versus Legendre tables.

The report's script averages ``p_iᵀ W p_j`` over 25 000 random ``W ~ N(0, 1/d)`` and plots it against j. Because the
map is linear in W, that average equals ``p_iᵀ W̄ p_j`` with ``W̄`` the mean matrix, itself ``N(0, 1/(d·n))``: the
expectation is **identically zero** and the plotted curve is Monte-Carlo noise with standard deviation
``‖p_i‖‖p_j‖/sqrt(d·n)``. We therefore reproduce the report's estimator (one draw of W̄, same distribution) with its
analytic ±2σ band, and add the quantities that do carry a decay:

* ``p_iᵀ p_j`` (= E_W[(W p_i)ᵀ(W p_j)] for any W with E[WᵀW] = I, e.g. W ~ N(0, 1/d)), against j;
* the cosine similarity of table rows against the distance |i − j| (mean over i), for all features and for the
  upper half of the features (where the report shows > 0.999 correlation for sinusoidal tables).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..posenc import legendre_basis_b, legendre_table_a, sinusoidal_table
from ..utils.io import save_figure, write_text

__all__ = ["cosine_vs_distance", "decay_tables", "gram_row", "make_pos_decay_plots", "report_estimator"]


def decay_tables(max_len: int = 100, d_model: int = 512) -> dict[str, np.ndarray]:
    """The tables compared: sinusoidal; Legendre layout A (paper grid, unnormalised and midpoint-orthonormal);
    Legendre layout B (QR-conditioned, K = min(32, T), tiled to d_model)."""
    k = min(32, max_len)
    b = legendre_basis_b(max_len, k, "qr") * math.sqrt(max_len)
    return {
        "sinusoidal": sinusoidal_table(max_len, d_model).double().numpy(),
        "legendre A (paper)": legendre_table_a(max_len, d_model, "paper", "none", 1),
        "legendre A (midpoint, orthonormal)": legendre_table_a(max_len, d_model, "midpoint", "sinusoidal", 1),
        "legendre B (QR, K=32, tiled)": np.tile(b, (1, math.ceil(d_model / k)))[:, :d_model],
    }


def report_estimator(
    pe: np.ndarray, i: int, n_trials: int = 25000, seed: int = 42
) -> tuple[np.ndarray, np.ndarray]:
    """The report's Monte-Carlo mean of ``p_iᵀ W p_j`` over n_trials W ~ N(0, 1/d), for j > i, drawn exactly in
    distribution with one mean matrix; returns (estimate, analytic standard deviation)."""
    d = pe.shape[1]
    rng = np.random.default_rng(seed)
    w_bar = rng.standard_normal((d, d)) / math.sqrt(d * n_trials)
    pj = pe[i + 1 :]
    est = (pj @ w_bar.T) @ pe[i]
    std = np.linalg.norm(pe[i]) * np.linalg.norm(pj, axis=1) / math.sqrt(d * n_trials)
    return est, std


def gram_row(pe: np.ndarray, i: int) -> np.ndarray:
    """``p_iᵀ p_j / ‖p_i‖²`` for all j."""
    return pe @ pe[i] / float(pe[i] @ pe[i])


def cosine_vs_distance(
    pe: np.ndarray, features: slice | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min and max over i of cos(p_i, p_{i+δ}) for δ = 0..N−1 (optionally on a slice of the features)."""
    t = pe if features is None else pe[:, features]
    n = t / np.linalg.norm(t, axis=1, keepdims=True).clip(1e-300)
    c = n @ n.T
    mean, lo, hi = [], [], []
    for delta in range(t.shape[0]):
        dg = np.diagonal(c, offset=delta)
        mean.append(dg.mean()), lo.append(dg.min()), hi.append(dg.max())
    return np.array(mean), np.array(lo), np.array(hi)


def _plot_report_estimator(plt, tables, i, max_len, d_model, n_trials, path: Path, dpi: int) -> None:
    fig, axes = plt.subplots(1, len(tables), figsize=(4 * len(tables), 3.2), sharex=True)
    j = np.arange(i + 1, max_len)
    for ax, (name, pe) in zip(axes, tables.items()):
        est, std = report_estimator(pe, i, n_trials)
        ax.plot(j, est, "o-", ms=2, lw=0.8, label="report's estimator")
        ax.fill_between(j, -2 * std, 2 * std, color="grey", alpha=0.3, label="±2σ of noise (E = 0)")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("position j")
    axes[0].set_ylabel(r"mean over W of $p_i^T W p_j$")
    axes[0].legend(fontsize=7)
    fig.suptitle(
        f"Report's E_W[p_iᵀ W p_j] (i={i}, d={d_model}, {n_trials} W ~ N(0,1/d)): zero in expectation",
        fontsize=10,
    )
    fig.tight_layout()
    save_figure(fig, path, dpi=dpi)
    plt.close(fig)


def _plot_gram(plt, tables, i, max_len, d_model, path: Path, dpi: int) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    jj = np.arange(max_len)
    for name, pe in tables.items():
        ax.plot(jj, gram_row(pe, i), lw=1, label=name)
    ax.axvline(i, color="k", lw=0.5, ls=":")
    ax.set_xlabel("position j")
    ax.set_ylabel(r"$p_i^T p_j / \|p_i\|^2$ (= E_W[(Wp_i)ᵀ(Wp_j)] / ‖p_i‖²)")
    ax.set_title(f"Position–position inner product, i = {i}, d = {d_model}", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=dpi)
    plt.close(fig)


def _plot_cosine(plt, tables, d_model, path: Path, dpi: int) -> list[tuple]:
    """The cosine-vs-distance figure; returns the summary rows (table, features, three statistics)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    rows = []
    for name, pe in tables.items():
        for ax, (label, feats) in zip(
            axes, (("all features", None), ("upper half of features", slice(d_model // 2, None)))
        ):
            mean, lo, hi = cosine_vs_distance(pe, feats)
            dd = np.arange(len(mean))
            (line,) = ax.plot(dd, mean, lw=1, label=name)
            ax.fill_between(dd, lo, hi, color=line.get_color(), alpha=0.12)
            ax.set_title(f"cos(p_i, p_i+δ), {label}", fontsize=10)
            ax.set_xlabel("distance δ")
            rows.append(
                (
                    name,
                    label,
                    float(np.abs(mean[1:]).max()),
                    float(mean[1:].min()),
                    float(mean[min(50, len(mean) - 1)]),
                )
            )
    axes[0].set_ylabel("cos (mean; band: min..max)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=dpi)
    plt.close(fig)
    return rows


def make_pos_decay_plots(
    out_dir: str | Path,
    max_len: int = 100,
    d_model: int = 512,
    i: int = 10,
    n_trials: int = 25000,
    dpi: int = 90,
) -> dict[str, Path]:
    """Write the three PNGs and a small CSV summary; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = decay_tables(max_len, d_model)
    paths = {
        "report_estimator": out / "pos_decay_report_estimator.png",
        "gram": out / "pos_decay_gram.png",
        "cosine": out / "pos_decay_cosine.png",
        "summary": out / "pos_decay_summary.csv",
    }
    _plot_report_estimator(plt, tables, i, max_len, d_model, n_trials, paths["report_estimator"], dpi)
    _plot_gram(plt, tables, i, max_len, d_model, paths["gram"], dpi)
    rows = _plot_cosine(plt, tables, d_model, paths["cosine"], dpi)
    csv = ["table,features,max_abs_mean_cos_offdiag,min_mean_cos,mean_cos_at_delta50"]
    csv += [f"{r[0]},{r[1]},{r[2]:.4f},{r[3]:.4f},{r[4]:.4f}" for r in rows]
    write_text(paths["summary"], "\n".join(csv) + "\n")
    return paths
