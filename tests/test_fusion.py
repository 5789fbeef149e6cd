"""Cross-window fusion operators: semantics, shapes, gradients, reproducibility, errors."""

from __future__ import annotations

import math

import pytest
import torch

from favit_probsparse.attention.fusion import (
    FUSIONS,
    HierarchicalFusion,
    ProbSparseFusion,
    build_fusion,
    hierarchical_num_keys,
    probsparse_scores,
)

B, H, P, C = 2, 3, 49, 6


def _cand(L, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, P, L, C, generator=g).to(dtype)


def _q(N=40, seed=1):
    return torch.randn(B, H, N, C, generator=torch.Generator().manual_seed(seed))


def _build(name, L, **kw):
    return build_fusion(name, C, 7, L, **kw)


# ---------------------------------------------------------------------------------------------------- semantics
@pytest.mark.parametrize("L", [1, 2, 4, 6, 7, 16])
def test_official_equals_naive_adaptive_pool_loop(L):
    cand = _cand(L)
    out = _build("official", L)(cand)
    flat = cand.reshape(B, H, P, L * C)
    ref = torch.empty(B, H, P, C)
    n_in, n_out = L * C, C
    for j in range(n_out):  # adaptive-pool bins: [floor(j·n_in/n_out), ceil((j+1)·n_in/n_out))
        start = (j * n_in) // n_out
        end = -(-((j + 1) * n_in) // n_out)
        ref[..., j] = flat[..., start:end].mean(-1)
    torch.testing.assert_close(out, ref)
    # the documented closed form: mean of contiguous chunks of length L of the window-major (L, c) axis
    torch.testing.assert_close(out, flat.reshape(B, H, P, C, L).mean(-1))


@pytest.mark.parametrize("L", [1, 4, 9])
def test_max_mean_equal_torch_reductions(L):
    cand = _cand(L)
    assert torch.equal(_build("max", L)(cand), cand.amax(dim=3))
    assert torch.equal(_build("mean", L)(cand), cand.mean(dim=3))


@pytest.mark.parametrize("name", ["conv1x1", "linear"])
def test_learned_fusions_start_as_mean(name):
    cand = _cand(5)
    torch.testing.assert_close(_build(name, 5)(cand), cand.mean(dim=3), rtol=1e-5, atol=1e-6)


def test_probsparse_dense_reference():
    """u = N queries and every candidate sampled: scores are the dense (Q·Kᵀ) aggregate; top-49 in index order."""
    L, N = 4, 30
    cand, q = _cand(L), _q(N)
    flat = cand.reshape(B, H, P * L, C)
    for agg in ("mean", "max"):
        fz = ProbSparseFusion(C, 7, L, n_queries=N, sample_factor=10**6, aggregate=agg)
        dense = q @ flat.transpose(-1, -2)  # [B,H,N,M]
        dense = dense.mean(2) if agg == "mean" else dense.amax(2)
        torch.testing.assert_close(probsparse_scores(flat, q, N, None, agg), dense, rtol=1e-5, atol=1e-5)
        idx = dense.topk(P, dim=-1).indices.sort(-1).values
        ref = torch.gather(flat, 2, idx.unsqueeze(-1).expand(-1, -1, -1, C))
        torch.testing.assert_close(fz(cand, q), ref)


def test_probsparse_keep_all_is_identity():
    L = 3
    cand, q = _cand(L), _q()
    fz = ProbSparseFusion(C, 7, L, n_keep=P * L, n_queries=q.shape[2])
    assert torch.equal(fz(cand, q), cand.reshape(B, H, P * L, C))
    # L = 1 (stage 4): 49 candidates, 49 kept -> identity
    c1 = _cand(1)
    assert torch.equal(ProbSparseFusion(C)(c1, q), c1.reshape(B, H, P, C))


def test_probsparse_selects_sorted_subset_and_query_count():
    L, N = 8, 100
    cand, q = _cand(L), _q(N)
    fz = ProbSparseFusion(C, 7, L)
    u, s = fz._sizes(N, P * L)
    assert u == 5 * math.ceil(math.log(N)) and s == 5 * math.ceil(math.log(P * L))
    out = fz(cand, q)
    flat = cand.reshape(B, H, P * L, C)
    # every output row is a candidate, taken in increasing candidate order
    match = (out.unsqueeze(3) == flat.unsqueeze(2)).all(-1)  # [B,H,49,M]
    assert bool(match.any(-1).all())
    pos = match.float().argmax(-1)
    assert bool((pos[..., 1:] > pos[..., :-1]).all())


def _hier_reference(cand, topk, use_points, use_windows):
    """Naive per-window loop (sample_ratio=1: every point of the window is a reference)."""
    Bn, Hn, _, L, c = cand.shape
    out = torch.empty(Bn, Hn, hierarchical_num_keys(L, topk, use_points, use_windows), c)
    for b in range(Bn):
        for h in range(Hn):
            pts, reps = [], []
            for w in range(L):
                X = cand[b, h, :, w]  # [P, c]
                S = X @ X.T
                M = S.max(-1).values - S.mean(-1)
                idx = sorted(M.topk(topk).indices.tolist())
                pts.append(X[idx])
                reps.append(X[idx].mean(0))
            keys = []
            if use_points:
                keys += [p for pp in pts for p in pp]
            if use_windows:
                level = reps
                keys += level
                while len(level) > 1:
                    if len(level) % 2:
                        level = [*level, level[-1]]
                    level = [(level[i] + level[i + 1]) / 2 for i in range(0, len(level), 2)]
                    keys += level
            out[b, h] = torch.stack(keys)
    return out


@pytest.mark.parametrize(("use_points", "use_windows"), [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("L", [1, 5, 8])
def test_hierarchical_equals_naive_loop(use_points, use_windows, L):
    cand = _cand(L)
    fz = HierarchicalFusion(C, 7, L, topk=3, use_points=use_points, use_windows=use_windows, sample_ratio=1.0)
    out = fz(cand)
    assert out.shape[2] == fz.num_keys(L)
    torch.testing.assert_close(out, _hier_reference(cand, 3, use_points, use_windows), rtol=1e-5, atol=1e-6)


def test_hierarchical_num_keys():
    assert hierarchical_num_keys(64, 4, True, False) == 256
    assert hierarchical_num_keys(64, 4, False, True) == 64 + 32 + 16 + 8 + 4 + 2 + 1
    assert hierarchical_num_keys(5, 3, True, True) == 15 + 5 + 3 + 2 + 1
    assert hierarchical_num_keys(1, 5, True, True) == 6


# ------------------------------------------------------------------------------------------ shapes / gradients
ALL = [
    ("official", {}),
    ("max", {}),
    ("mean", {}),
    ("conv1x1", {}),
    ("linear", {}),
    ("probsparse", {}),
    ("probsparse", {"aggregate": "max"}),
    ("hierarchical", {}),
    ("hierarchical", {"use_points": False}),
    ("hierarchical", {"use_windows": False, "topk": 5}),
]


def test_registry_lists_seven_operators():
    assert set(FUSIONS) == {"official", "max", "mean", "conv1x1", "linear", "probsparse", "hierarchical"}


@pytest.mark.parametrize(("name", "kw"), ALL)
@pytest.mark.parametrize("L", [1, 4, 7])
def test_shapes_and_gradients(name, kw, L):
    fz = _build(name, L, **kw)
    cand = _cand(L).requires_grad_(True)
    q = _q(50)
    out = fz(cand, q if fz.needs_query else None)
    K = fz.num_keys(L)
    assert out.shape == (B, H, K, C)
    if name != "hierarchical":
        assert K == P
    out.square().sum().backward()
    assert cand.grad is not None and cand.grad.abs().sum() > 0
    for p in fz.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize(("name", "kw"), ALL)
def test_bf16(name, kw):
    L = 4
    fz = _build(name, L, **kw).to(torch.bfloat16)
    cand = _cand(L, dtype=torch.bfloat16)
    out = fz(cand, _q().to(torch.bfloat16) if fz.needs_query else None)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("name", ["probsparse", "hierarchical"])
def test_sampling_reproducible_from_seed(name):
    L = 16
    cand, q = _cand(L), _q(200)
    a, b, c = (_build(name, L, seed=s) for s in (3, 3, 4))
    torch.manual_seed(0)
    oa = [a(cand, q) for _ in range(3)]
    torch.manual_seed(123)  # the global RNG does not matter
    ob = [b(cand, q) for _ in range(3)]
    for x, y in zip(oa, ob):
        assert torch.equal(x, y)
    assert any(not torch.equal(x, c(cand, q)) for x in oa)
    a.reset_generator()
    assert torch.equal(a(cand, q), oa[0])


def test_sample_stream_is_uniform_distinct_and_seeded():
    """The counter-based stream: distinct indices per draw, every index equally likely (chi-square), draws differ,
    seeds differ, and ``reset_generator`` restarts it."""
    n, k, draws = 50, 5, 4000
    fz = _build("probsparse", 4, seed=7)
    samples = torch.stack([fz._sample(n, k) for _ in range(draws)])
    assert all(len(set(row.tolist())) == k for row in samples)
    assert int(samples.min()) >= 0 and int(samples.max()) < n
    counts = torch.bincount(samples.flatten(), minlength=n).double()
    expected = draws * k / n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 100.0  # 49 degrees of freedom: P(chi2 > 100) < 3e-5 for a uniform sampler
    first = samples[:, 0]  # the first index of a draw is uniform too (the order is random)
    assert torch.bincount(first, minlength=n).max() < 3 * draws / n
    assert (samples[1:] != samples[:-1]).any(dim=1).float().mean() > 0.99
    other = _build("probsparse", 4, seed=8)
    assert not torch.equal(samples[:20], torch.stack([other._sample(n, k) for _ in range(20)]))
    fz.reset_generator()
    assert torch.equal(fz._sample(n, k), samples[0])
    fz.reset_generator(8)
    assert torch.equal(fz._sample(n, k), _build("probsparse", 4, seed=8)._sample(n, k))


def test_sample_state_is_not_in_the_state_dict_and_survives_dtype_casts():
    fz = _build("hierarchical", 4, seed=3)
    assert not any("rng" in key for key in fz.state_dict())
    fz.to(torch.bfloat16)
    assert fz._rng.dtype == torch.long and fz._rng.tolist() == [3, 0]


def test_macs_and_params_reported():
    assert _build("official", 4).extra_params == 0
    assert _build("conv1x1", 4).extra_params == C * 4 * C + C
    assert _build("linear", 4).extra_params == C * 4 + C
    assert _build("probsparse", 4).macs(1, 100, 4) > 0
    assert _build("hierarchical", 4).macs(1, 100, 4) > 0


# ------------------------------------------------------------------------------------------------------ errors
def test_errors():
    with pytest.raises(ValueError, match="unknown fusion"):
        build_fusion("avgmax", C)
    with pytest.raises(ValueError, match="does not take"):
        build_fusion("max", C, topk=3)
    with pytest.raises(ValueError, match="does not take"):
        build_fusion("probsparse", C, topk=3)
    with pytest.raises(ValueError, match="use_points and/or use_windows"):
        build_fusion("hierarchical", C, use_points=False, use_windows=False)
    with pytest.raises(ValueError, match="topk"):
        build_fusion("hierarchical", C, topk=0)
    with pytest.raises(ValueError, match="aggregate"):
        build_fusion("probsparse", C, aggregate="median")
    with pytest.raises(ValueError, match="needs num_windows"):
        build_fusion("conv1x1", C)
    with pytest.raises(ValueError, match="built for L=4"):
        _build("linear", 4)(_cand(5))
    with pytest.raises(ValueError, match="needs the branch queries"):
        _build("probsparse", 4)(_cand(4))
    with pytest.raises(ValueError, match="expected candidates"):
        _build("max", 4)(torch.randn(B, H, 48, 4, C))
