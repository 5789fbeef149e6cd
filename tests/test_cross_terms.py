"""Cross-term decomposition: docs/posenc.md §2.5 (T2.1-T2.4), T1.5's p2p check, and the pos-decay study."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from favit_probsparse.analysis.cross_terms import (
    TERMS,
    cross_terms,
    layernorm_split,
    mean_decomposition,
    term_metrics,
    toeplitz_fit,
)
from favit_probsparse.analysis.pos_decay import cosine_vs_distance, decay_tables, report_estimator
from favit_probsparse.posenc import alibi_bias, build_pos_encoding

B, T, D, H = 3, 10, 16, 4


def _proj(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(D, D).to(dtype), nn.Linear(D, D).to(dtype), nn.Linear(D, D).to(dtype)


def _heads(z):
    return z.view(z.shape[0], z.shape[1], H, -1).transpose(1, 2)


def _module_logits(h, lq, lk):
    return _heads(lq(h)) @ _heads(lk(h)).mT / math.sqrt(D // H)


def _sum(t):
    return t["c2c"] + t["c2p"] + t["p2c"] + t["p2p"] + t["bias"]


# ---------------------------------------------------------------- T2.1 exact sum
def test_terms_sum_exactly_fp64_plain():
    lq, lk, _ = _proj()
    x, p = torch.randn(B, T, D, dtype=torch.float64), torch.randn(T, D, dtype=torch.float64)
    t = cross_terms(x, p, lq.weight, lk.weight, lq.bias, lk.bias, n_heads=H)
    ref = _module_logits(x + p, lq, lk)
    assert (t["logits"] - ref).abs().max() < 1e-10
    assert (_sum(t) - ref).abs().max() < 1e-10
    assert set(t) == {*TERMS, "bias", "logits"}


def test_terms_sum_fp32_relative():
    lq, lk, _ = _proj(torch.float32)
    x, p = torch.randn(B, T, D), torch.randn(1, T, D)
    t = cross_terms(x, p, lq.weight, lk.weight, lq.bias, lk.bias, n_heads=H)
    ref = _module_logits(x + p, lq, lk)
    assert ((_sum(t) - ref).abs().max() / ref.abs().max()) < 1e-4


def test_terms_sum_with_layernorm_split():
    lq, lk, _ = _proj()
    ln = nn.LayerNorm(D).double()
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.normal_()
    x, p = torch.randn(B, T, D, dtype=torch.float64), torch.randn(T, D, dtype=torch.float64)
    xt, pt, beta = layernorm_split(x, p, ln)
    assert (xt + pt + beta - ln(x + p)).abs().max() < 1e-12
    # β folded into the biases: b' = b + β Wᵀ
    bq, bk = lq.bias + beta @ lq.weight.T, lk.bias + beta @ lk.weight.T
    t = cross_terms(xt, pt, lq.weight, lk.weight, bq, bk, n_heads=H)
    assert (_sum(t) - _module_logits(ln(x + p), lq, lk)).abs().max() < 1e-10


def test_terms_sum_with_mean_decomposition_deep_layer():
    lq, lk, _ = _proj()
    h = torch.randn(8, T, D, dtype=torch.float64) + torch.randn(
        1, T, D, dtype=torch.float64
    )  # windows share a pos effect
    md = mean_decomposition(h)
    # T2.4 identities
    assert md["pos"].sum(1).abs().max() < 1e-12 and md["ctx"].sum(0).abs().max() < 1e-12
    assert md["resid"].sum(0).abs().max() < 1e-12 and md["resid"].sum(1).abs().max() < 1e-12
    x = md["mu"] + md["ctx"] + md["resid"]
    t = cross_terms(x, md["pos"], lq.weight, lk.weight, lq.bias, lk.bias, n_heads=H)
    assert (_sum(t) - _module_logits(h, lq, lk)).abs().max() < 1e-10


# ---------------------------------------------------------------- T2.2 flag equivalence
def test_all_terms_equal_plain_attention_and_zero_position():
    lq, lk, lv = _proj()
    x, p = torch.randn(B, T, D, dtype=torch.float64), torch.randn(T, D, dtype=torch.float64)
    t = cross_terms(x, p, lq.weight, lk.weight, lq.bias, lk.bias, n_heads=H)
    v = _heads(lv(x + p))
    ours = torch.softmax(_sum(t), -1) @ v
    plain = nn.functional.scaled_dot_product_attention(_heads(lq(x + p)), _heads(lk(x + p)), v)
    assert (ours - plain).abs().max() < 1e-10
    t0 = cross_terms(
        x, torch.zeros(T, D, dtype=torch.float64), lq.weight, lk.weight, lq.bias, lk.bias, n_heads=H
    )
    for n in ("c2p", "p2c", "p2p"):
        assert torch.count_nonzero(t0[n]) == 0


def test_zero_content_gives_p2p_only():
    # T1.5: zero token embeddings, zero biases -> layer-1 logits are exactly the p2p term
    lq, lk, _ = _proj()
    pe = build_pos_encoding("legendre", D, 100).double()
    p = pe.table(T)
    x = torch.zeros(1, T, D, dtype=torch.float64)
    t = cross_terms(x, p, lq.weight, lk.weight, n_heads=H)
    assert torch.equal(t["logits"], t["p2p"]) or (t["logits"] - t["p2p"]).abs().max() < 1e-14
    hd = torch.stack([lq.weight.T.reshape(D, H, -1)[:, i] for i in range(H)])  # [H, D, dh]
    t3 = cross_terms(x, p, hd, torch.stack([lk.weight.T.reshape(D, H, -1)[:, i] for i in range(H)]))
    assert (t3["p2p"] - t["p2p"]).abs().max() < 1e-12  # per-head [H, d, dh] weights give the same result


# ---------------------------------------------------------------- T2.3 row invariance and metrics
def test_row_invariance_and_metrics():
    lq, lk, _ = _proj()
    x, p = torch.randn(B, T, D, dtype=torch.float64), torch.randn(T, D, dtype=torch.float64)
    t = cross_terms(x, p, lq.weight, lk.weight, lq.bias, lk.bias, n_heads=H)
    f = torch.randn(B, H, T, 1, dtype=torch.float64)
    assert (torch.softmax(t["logits"] + f, -1) - torch.softmax(t["logits"], -1)).abs().max() < 1e-12
    m = term_metrics(t)
    shares = sum(m[n]["share"] for n in m)
    assert torch.allclose(shares, torch.ones(H, dtype=torch.float64))
    # a query-only term changes neither the centred metrics nor the KL
    t2 = dict(t)
    t2["bias"], t2["logits"] = t["bias"] + f, t["logits"] + f
    m2 = term_metrics(t2)
    for n in TERMS:
        assert torch.allclose(m2[n]["centred_rms"], m[n]["centred_rms"])
        assert torch.allclose(m2[n]["kl_removed"], m[n]["kl_removed"])
    t3 = dict(t)
    t3["p2p"] = torch.zeros_like(t["p2p"])
    assert torch.equal(term_metrics(t3)["p2p"]["kl_removed"], torch.zeros(H, dtype=torch.float64))
    assert (m["c2c"]["kl_removed"] > 0).all()
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    mm = term_metrics(t, mask=mask)
    assert all(torch.isfinite(mm[n]["kl_removed"]).all() for n in mm)


def test_toeplitz_fit():
    diag, r2 = toeplitz_fit(alibi_bias(12, 12, 4, dtype=torch.float64))
    assert torch.allclose(r2, torch.ones(4, dtype=torch.float64))
    assert torch.allclose(
        diag[0, 11 + 3], torch.tensor(-3 * 0.25**1, dtype=torch.float64) * 1
    )  # δ = +3, m_1 = 1/4
    _, r2_rand = toeplitz_fit(torch.randn(2, 30, 30, dtype=torch.float64))
    assert (r2_rand < 0.2).all()


# ---------------------------------------------------------------- pos-decay study (the report's pos_embedding_decay.py)
def test_report_estimator_is_zero_mean_noise():
    pe = decay_tables(60, 64)["sinusoidal"]
    ests = np.stack([report_estimator(pe, 10, n_trials=100, seed=s)[0] for s in range(400)])
    _, std = report_estimator(pe, 10, n_trials=100)
    assert np.abs(ests.mean(0)).max() < 4 * std.max() / math.sqrt(400)  # E = 0
    assert np.allclose(ests.std(0), std, rtol=0.15)  # analytic noise level


def test_cosine_vs_distance_sinusoidal_vs_legendre():
    tabs = decay_tables(100, 512)
    sin_hi, _, _ = cosine_vs_distance(tabs["sinusoidal"], slice(256, None))
    assert sin_hi[1:].min() > 0.94  # the report §2.2: upper sinusoidal dims nearly identical across positions
    leg, _, _ = cosine_vs_distance(tabs["legendre A (midpoint, orthonormal)"])
    assert np.abs(leg[1:]).max() < 0.05
    assert np.abs(leg[1::2][:1]).max() < 1e-12  # adjacent rows exactly orthogonal on the midpoint grid
