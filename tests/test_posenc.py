"""Position encodings: docs/posenc.md §1.5 (Legendre), §4 (RoPE, ALiBi) and the registry interface."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import eval_legendre

from favit_probsparse.posenc import (
    POS_ENCODINGS,
    AlibiPositionEncoding,
    LegendrePositionEncoding,
    PositionEncoding,
    RotaryPositionEncoding,
    alibi_bias,
    alibi_slopes,
    build_pos_encoding,
    legendre_basis_b,
    legendre_p,
    legendre_table_a,
    rope_rotate,
)


# ---------------------------------------------------------------- T1.1 polynomial correctness
def test_recurrence_matches_scipy():
    x = np.linspace(-1, 1, 1001)
    p = legendre_p(100, x)
    ref = np.stack([eval_legendre(n, x) for n in range(101)])
    assert np.abs(p - ref).max() < 1e-12


def test_recurrence_torch_matches_numpy():
    x = torch.linspace(-1, 1, 257, dtype=torch.float64)
    assert np.abs(legendre_p(40, x).numpy() - legendre_p(40, x.numpy())).max() < 1e-14


def test_endpoints_parity_bound():
    n = np.arange(101)
    p1, pm1 = legendre_p(100, np.array([1.0]))[:, 0], legendre_p(100, np.array([-1.0]))[:, 0]
    assert np.abs(p1 - 1).max() < 1e-12
    assert np.abs(pm1 - (-1.0) ** n).max() < 1e-12
    x = np.random.default_rng(0).uniform(-1, 1, 500)
    assert np.abs(legendre_p(100, -x) - ((-1.0) ** n)[:, None] * legendre_p(100, x)).max() < 1e-12
    assert np.abs(legendre_p(100, np.linspace(-1, 1, 2001))).max() <= 1 + 1e-12


# ---------------------------------------------------------------- T1.2 exact discrete orthonormality
def test_gauss_legendre_orthonormality():
    m = 64
    nodes, w = np.polynomial.legendre.leggauss(m)
    phi = legendre_p(m - 1, nodes) * np.sqrt((2 * np.arange(m) + 1) / 2)[:, None]  # [K, M]
    g = (phi * w) @ phi.T
    assert np.abs(g - np.eye(m)).max() < 1e-12


# ---------------------------------------------------------------- T1.3 layout A (paper Eq. 14)
@pytest.mark.parametrize("grid", ["paper", "midpoint"])
def test_layout_a_row_recurrence(grid):
    d, n_pos, off = 128, 60, 1
    t = legendre_table_a(n_pos, d, grid, "none", off)
    x = -1 + 2 * np.arange(d) / d if grid == "paper" else -1 + (2 * np.arange(d) + 1) / d
    assert np.abs(t[0] - x).max() == 0  # pos 0 is P_1 with pos_offset 1
    for r in range(1, n_pos - 1):
        n = r + off
        pred = (2 * n + 1) / (n + 1) * x * t[r] - n / (n + 1) * t[r - 1]
        assert np.abs(pred - t[r + 1]).max() < 1e-12


@pytest.mark.parametrize("grid", ["paper", "midpoint"])
def test_layout_a_row_norms(grid):
    # unnormalised row norm² ≈ d/(2n+1): within 1% for n ≤ d/32 (docs/posenc.md §1.5: the design notes said d/16; measured 3.5-8% there)
    d = 512
    t = legendre_table_a(d // 32, d, grid, "none", 0)
    n = np.arange(d // 32)
    assert np.abs((t**2).sum(1) / (d / (2 * n + 1)) - 1).max() < 0.01


def _max_offdiag_cos(t):
    nn_ = t / np.linalg.norm(t, axis=1, keepdims=True)
    c = nn_ @ nn_.T
    np.fill_diagonal(c, 0)
    return np.abs(c).max(), c


def test_layout_a_midpoint_orthogonality_and_paper_value():
    d = 512
    mx, c = _max_offdiag_cos(legendre_table_a(128, d, "midpoint", "orthonormal", 1))
    assert np.abs(np.diagonal(c, 1)).max() < 1e-12  # adjacent rows: opposite parity on a symmetric grid
    assert mx < 0.10  # measured 0.090 at d=512, N=128
    mx_paper, _ = _max_offdiag_cos(legendre_table_a(128, d, "paper", "orthonormal", 1))
    assert mx_paper == pytest.approx(
        0.34, abs=0.01
    )  # documented paper-grid value: catches a silent grid switch


def test_layout_a_orthonormal_scale_row_norm():
    t = legendre_table_a(16, 512, "midpoint", "orthonormal", 1)
    assert np.abs(np.linalg.norm(t, axis=1) - 1).max() < 0.01
    ts = legendre_table_a(16, 512, "midpoint", "sinusoidal", 1)
    assert np.abs(np.linalg.norm(ts, axis=1) - math.sqrt(256)).max() < 0.2


# (N = d exactly is numerically rank-deficient on the symmetric grid: rank 62 of 64)
@pytest.mark.parametrize(("n_pos", "d"), [(40, 64), (128, 512), (300, 128)])
def test_layout_a_rank(n_pos, d):
    assert np.linalg.matrix_rank(legendre_table_a(n_pos, d, "midpoint", "orthonormal", 1)) == min(n_pos, d)


# ---------------------------------------------------------------- T1.4 layout B (degree = feature)
@pytest.mark.parametrize("cond", ["qr", "gauss"])
def test_layout_b_exact_orthonormality(cond):
    for t_len, k in [(96, 32), (96, 96), (64, 17)]:
        phi = legendre_basis_b(t_len, k, cond)
        assert np.abs(phi.T @ phi - np.eye(k)).max() < 1e-10
        assert np.linalg.cond(phi) < 1 + 1e-8


def test_layout_b_uniform_grid_conditioning():
    # plain midpoint grid: fine for small K, ill-conditioned for large K (why QR / Gauss exist)
    assert np.linalg.cond(legendre_basis_b(96, 16, "none")) < 10
    assert np.linalg.cond(legendre_basis_b(96, 64, "none")) > 1e6


def test_layout_b_qr_reconstructs_low_degree_polynomials():
    t_len, k = 96, 24
    phi = legendre_basis_b(t_len, k, "qr")
    x = -1 + (2 * np.arange(t_len) + 1) / t_len
    rng = np.random.default_rng(1)
    for deg in (0, 5, k - 1):
        f = np.polynomial.polynomial.polyval(x, rng.standard_normal(deg + 1))
        assert np.abs(phi @ (phi.T @ f) - f).max() < 1e-9 * max(1, np.abs(f).max())
    # QR keeps the sign (and span) of each original polynomial: column 0 is constant positive
    assert np.all(phi[:, 0] > 0) and np.ptp(phi[:, 0]) < 1e-12


def test_layout_b_module_shapes_and_length_relative():
    pe = LegendrePositionEncoding(32, 500, layout="B", conditioning="qr", proj="tile", n_basis=8)
    a, b = pe(torch.zeros(2, 16, 32)), pe(torch.zeros(2, 24, 32))
    assert a.shape == (1, 16, 32) and b.shape == (1, 24, 32)
    assert not torch.allclose(a[0, :16], b[0, :16])  # same index, different T -> different code
    lin = build_pos_encoding("legendre_orth", 32, 500)
    out = lin(torch.zeros(1, 40, 32))
    out.sum().backward()
    assert lin.proj.weight.grad is not None and out.shape == (1, 40, 32)


# ---------------------------------------------------------------- T1.5 integration
def test_legendre_module_integration():
    pe = build_pos_encoding("legendre", 64, 4096)
    assert pe.kind == "absolute"
    assert "pe" in dict(pe.named_buffers()) and not list(pe.parameters())
    out = pe(torch.zeros(3, 4096, 64))
    assert out.shape == (1, 4096, 64) and torch.isfinite(out).all()
    ref = torch.from_numpy(legendre_table_a(4096, 64, "paper", "none", 1))
    assert (out[0].double() - ref).abs().max() < 1e-5
    pe64 = pe.double()
    assert pe64(torch.zeros(1, 10, 64, dtype=torch.float64)).dtype == torch.float64
    learn = LegendrePositionEncoding(16, 50, learnable=True)
    assert [n for n, _ in learn.named_parameters()] == ["pe"]


def test_sinusoidal_matches_informer_formula():
    d, n = 16, 50
    pe = build_pos_encoding("sinusoidal", d, n).pe[0]
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d, 2).float() * -(math.log(10000.0) / d))
    assert torch.equal(pe[:, 0::2], torch.sin(pos * div)) and torch.equal(pe[:, 1::2], torch.cos(pos * div))
    with pytest.raises(ValueError, match="max_len"):
        build_pos_encoding("sinusoidal", d, 10)(torch.zeros(1, 11, d))


def test_registry_kinds_and_interface():
    kinds = {
        "sinusoidal": "absolute",
        "learned": "absolute",
        "legendre": "absolute",
        "pope": "absolute",
        "legendre_orth": "absolute",
        "legendre_gauss": "absolute",
        "rope": "rotary",
        "alibi": "bias",
        "none": "none",
    }
    assert set(kinds) == set(POS_ENCODINGS)
    x = torch.randn(2, 20, 32)
    for name, kind in kinds.items():
        pe = build_pos_encoding(name, 32, 100)
        assert isinstance(pe, PositionEncoding) and pe.kind == kind
        out = pe(x)
        if kind == "absolute":
            assert out.shape == (1, 20, 32)
            assert torch.equal(pe.table(20), out[0])
        else:
            assert out is None
    with pytest.raises(ValueError, match="unknown pos_encoding"):
        build_pos_encoding("nope", 8)


# ---------------------------------------------------------------- RoPE
@pytest.mark.parametrize("interleaved", [True, False])
def test_rope_relative_offset(interleaved):
    torch.manual_seed(0)
    d = 16
    q, k = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)

    def score(m, n):
        qm = rope_rotate(q[None], torch.tensor([m]), interleaved=interleaved)[0]
        kn = rope_rotate(k[None], torch.tensor([n]), interleaved=interleaved)[0]
        return float(qm @ kn)

    for m, n, s in [(3, 7, 11), (0, 20, 5), (40, 2, 100)]:
        assert score(m + s, n + s) == pytest.approx(score(m, n), abs=1e-10)
    assert abs(score(3, 7) - score(3, 8)) > 1e-6  # but it does depend on the offset


def test_rope_norm_identity_and_module():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 10, 9, dtype=torch.float64)  # odd head dim: last feature unrotated
    r = rope_rotate(x, torch.arange(10))
    assert torch.allclose(r.norm(dim=-1), x.norm(dim=-1), atol=1e-12)
    assert torch.allclose(r[..., 0, :], x[..., 0, :])  # position 0 is the identity
    assert torch.equal(r[..., -1], x[..., -1])
    pe = build_pos_encoding("rope", 64)
    assert isinstance(pe, RotaryPositionEncoding)
    q, k = torch.randn(2, 4, 12, 16), torch.randn(2, 4, 7, 16)
    rq, rk = pe.rotate(q, k)
    assert rq.shape == q.shape and rk.shape == k.shape
    # the logits of rotated q, k depend on positions only via offsets: shift both by s
    sq, sk = pe.rotate(q, k, q_offset=5, k_offset=5)
    assert torch.allclose(rq @ rk.mT, sq @ sk.mT, atol=1e-4)


# ---------------------------------------------------------------- ALiBi
def test_alibi_slopes():
    assert torch.allclose(alibi_slopes(8), torch.tensor([2.0**-k for k in range(1, 9)], dtype=torch.float64))
    s12 = alibi_slopes(12)
    assert torch.allclose(s12[:8], alibi_slopes(8))
    assert torch.allclose(s12[8:], torch.tensor([2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5], dtype=torch.float64))
    assert torch.allclose(alibi_slopes(1), torch.tensor([2.0**-8], dtype=torch.float64))


def test_alibi_bias_toeplitz_symmetric_and_causal_equivalence():
    b = alibi_bias(10, 10, 4, symmetric=True, dtype=torch.float64)
    assert b.shape == (4, 10, 10)
    assert torch.equal(b, b.transpose(-1, -2))
    for h in range(4):  # Toeplitz: constant along diagonals, −m·|δ|
        for delta in range(-9, 10):
            dg = torch.diagonal(b[h], offset=delta)
            assert torch.allclose(dg, torch.full_like(dg, -alibi_slopes(4)[h].item() * abs(delta)))
    # causal form −m(i−j) and BLOOM's +m·j give the same probabilities under a causal mask
    torch.manual_seed(0)
    s = torch.randn(4, 10, 10, dtype=torch.float64)
    causal = torch.ones(10, 10, dtype=torch.bool).tril()
    c1 = alibi_bias(10, 10, 4, symmetric=False, dtype=torch.float64)
    c2 = alibi_slopes(4)[:, None, None] * torch.arange(10, dtype=torch.float64)[None, None, :]
    p1 = torch.softmax((s + c1).masked_fill(~causal, -math.inf), -1)
    p2 = torch.softmax((s + c2).masked_fill(~causal, -math.inf), -1)
    assert (p1 - p2).abs().max() < 1e-12
    # without a mask the causal form rewards future keys (−m(i−j) > 0 for j > i): encoders need −m|i−j|
    assert (torch.softmax(s + c1, -1) - torch.softmax(s + b, -1)).abs().max() > 1e-2
    pe = AlibiPositionEncoding()
    assert pe.bias(5, 7, 8).shape == (8, 5, 7) and pe.bias(5, 7, 8).dtype == torch.float32
