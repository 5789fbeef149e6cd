"""ProbSparse / full attention against independent reference computations (naive loops, float64)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from favit_probsparse.attention import (
    FullAttention,
    ProbSparseAttention,
    build_attention,
    full_attention,
    probsparse_attention,
    probsparse_counts,
    sample_key_index,
    sparsity_measure,
)
from favit_probsparse.attention import probsparse as pp

F64 = torch.float64


def rand_qkv(b=2, h=3, l_q=20, l_k=20, d=8, dv=None, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, l_q, d, generator=g, dtype=dtype)
    k = torch.randn(b, h, l_k, d, generator=g, dtype=dtype)
    v = torch.randn(b, h, l_k, dv or d, generator=g, dtype=dtype)
    return q, k, v


# ---- naive references ----------------------------------------------------------------------------------------
def naive_softmax_attention(q, k, v, causal=False, scale=None):
    """Plain loops over (b, h, i): softmax(q_i k^T * scale) v, with keys j > i dropped when causal."""
    b, h, l_q, d = q.shape
    scale = 1 / math.sqrt(d) if scale is None else scale
    out = torch.zeros(b, h, l_q, v.shape[-1], dtype=q.dtype)
    for bi in range(b):
        for hi in range(h):
            for i in range(l_q):
                n = i + 1 if causal else k.shape[2]
                w = torch.softmax(k[bi, hi, :n] @ q[bi, hi, i] * scale, dim=0)
                out[bi, hi, i] = w @ v[bi, hi, :n]
    return out


def naive_measure(q, k, index, divisor):
    """M[b, h, i] = max_s q_i·k_{idx[i, s]} − sum_s q_i·k_{idx[i, s]} / divisor, element by element."""
    b, h, l_q, _ = q.shape
    m = torch.zeros(b, h, l_q, dtype=q.dtype)
    for bi in range(b):
        for hi in range(h):
            for i in range(l_q):
                s = [float(q[bi, hi, i] @ k[bi, hi, j]) for j in index[i].tolist()]
                m[bi, hi, i] = max(s) - sum(s) / divisor
    return m


def naive_probsparse(q, k, v, index, u, causal=False, measure="official", masked_lazy="cumsum"):
    """The official algorithm in loops: pick the u queries with the largest M per (b, h), give them full
    attention, and give every other query mean(V) (unmasked) or cumsum/cummean(V) (causal)."""
    b, h, l_q, _d = q.shape
    l_k = k.shape[2]
    divisor = l_k if measure == "official" else index.shape[1]
    m = naive_measure(q, k, index, divisor)
    full = naive_softmax_attention(q, k, v, causal=causal)
    out = torch.zeros(b, h, l_q, v.shape[-1], dtype=q.dtype)
    for bi in range(b):
        for hi in range(h):
            top = set(torch.argsort(m[bi, hi], descending=True)[:u].tolist())
            for i in range(l_q):
                if i in top:
                    out[bi, hi, i] = full[bi, hi, i]
                elif not causal:
                    out[bi, hi, i] = v[bi, hi].mean(0)
                else:
                    s = v[bi, hi, : i + 1].sum(0)
                    out[bi, hi, i] = s / (i + 1) if masked_lazy == "cummean" else s
    return out


# ---- counts and sampling -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("l", "factor", "expected"),
    [(96, 5, 25), (48, 5, 20), (72, 5, 25), (96, 3, 15), (1440, 5, 40), (720, 5, 35), (10, 5, 10)],
)
def test_counts_match_official_formula(l, factor, expected):
    # docs/informer.md §1.1: U_part = c * ceil(ln L), capped at L; e.g. 5*ceil(ln 96) = 25, capped 5*3=15 -> 10 at L=10.
    assert probsparse_counts(l, l, factor) == (expected, expected)


def test_sample_index_shape_range_and_reproducible():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = sample_key_index(30, 17, 12, generator=g1)
    b = sample_key_index(30, 17, 12, generator=g2)
    assert a.shape == (30, 12) and a.dtype == torch.int64
    assert int(a.min()) >= 0 and int(a.max()) <= 16
    assert torch.equal(a, b)


def test_causal_sampling_never_samples_the_future():
    idx = sample_key_index(200, 200, 30, causal=True, generator=torch.Generator().manual_seed(0))
    rows = torch.arange(200).unsqueeze(1)
    assert bool((idx <= rows).all())
    assert int(idx[-1].max()) > 100  # late rows do reach far back-to-front, not just position 0


# ---- the sparsity measure -------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["sddmm", "dense", "gather"])  # the three ways to get the sampled scores
@pytest.mark.parametrize("chunk_budget", [1, 2**22])  # 1 forces the smallest chunks
@pytest.mark.parametrize("measure", ["official", "mean"])
def test_measure_equals_naive_loop(measure, chunk_budget, path, monkeypatch):
    monkeypatch.setattr("favit_probsparse.attention.probsparse._CHUNK_ELEMENTS", chunk_budget)
    q, k, _ = rand_qkv(b=2, h=2, l_q=17, l_k=9, d=4)
    idx = sample_key_index(17, 9, 5, generator=torch.Generator().manual_seed(1))
    idx[3] = 4  # a row that samples one key five times: repeated CSR columns must all count
    got = sparsity_measure(q, k, idx, measure, path=path)
    ref = naive_measure(q, k, idx, 9 if measure == "official" else 5)
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)


def test_measure_path_dispatch(monkeypatch):
    # CPU float32/64: SDDMM; otherwise dense scores while L_K <= ratio * U, gathered keys beyond
    q = torch.zeros(1, 1, 4, 2)
    assert pp._measure_path(q, 1000, 10) == "sddmm"
    assert pp._measure_path(q.bfloat16(), 400, 10) == "dense"
    assert pp._measure_path(q.bfloat16(), 401, 10) == "gather"
    monkeypatch.setattr(pp, "_DENSE_MEASURE_MAX_RATIO", 0)
    assert pp._measure_path(q.bfloat16(), 11, 10) == "gather"
    with pytest.raises(ValueError, match="unknown measure path"):
        sparsity_measure(q, q, torch.zeros(4, 1, dtype=torch.long), path="magic")


# ---- reduction to full attention -----------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["fast", "exact"])
@pytest.mark.parametrize("causal", [False, True])
def test_all_queries_active_equals_full_attention(impl, causal):
    # with c large, u = L_Q: every query is active, so ProbSparse is exactly (causal) softmax attention.
    q, k, v = rand_qkv(l_q=24, l_k=24)
    out = probsparse_attention(q, k, v, factor=1000, causal=causal, impl=impl)
    torch.testing.assert_close(out, naive_softmax_attention(q, k, v, causal=causal), atol=1e-10, rtol=0)


def test_full_attention_matches_naive_and_cross_lengths():
    q, k, v = rand_qkv(l_q=11, l_k=17, dv=5)
    torch.testing.assert_close(full_attention(q, k, v), naive_softmax_attention(q, k, v), atol=1e-10, rtol=0)
    q, k, v = rand_qkv(l_q=13, l_k=13)
    torch.testing.assert_close(
        full_attention(q, k, v, causal=True),
        naive_softmax_attention(q, k, v, causal=True),
        atol=1e-10,
        rtol=0,
    )


# ---- both paths against the naive official algorithm ---------------------------------------------------------
@pytest.mark.parametrize("impl", ["fast", "exact"])
@pytest.mark.parametrize(
    ("causal", "measure", "masked_lazy"),
    [
        (False, "official", "cumsum"),
        (False, "mean", "cumsum"),
        (True, "official", "cumsum"),
        (True, "mean", "cummean"),
    ],
)
def test_probsparse_equals_naive_official(impl, causal, measure, masked_lazy):
    l = 30
    q, k, v = rand_qkv(b=2, h=2, l_q=l, l_k=l, d=6)
    n_samples, u = probsparse_counts(l, l, 2)
    assert u < l  # lazy queries exist, so the test exercises them
    idx = sample_key_index(l, l, n_samples, generator=torch.Generator().manual_seed(5))
    out = probsparse_attention(
        q, k, v, factor=2, causal=causal, measure=measure, masked_lazy=masked_lazy, impl=impl, index=idx
    )
    ref = naive_probsparse(q, k, v, idx, u, causal=causal, measure=measure, masked_lazy=masked_lazy)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)


def test_cross_attention_lengths():
    q, k, v = rand_qkv(l_q=40, l_k=23, dv=5)
    n_samples, u = probsparse_counts(40, 23, 2)
    idx = sample_key_index(40, 23, n_samples, generator=torch.Generator().manual_seed(2))
    for impl in ("fast", "exact"):
        out = probsparse_attention(q, k, v, factor=2, index=idx, impl=impl)
        torch.testing.assert_close(out, naive_probsparse(q, k, v, idx, u), atol=1e-10, rtol=0)


def _outputs_and_grads(q, k, v, **kwargs):
    qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
    out = probsparse_attention(qq, kk, vv, **kwargs)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return out.detach(), qq.grad, kk.grad, vv.grad


@pytest.mark.parametrize(
    ("causal", "masked_lazy", "with_mask"),
    [(True, "cumsum", False), (True, "cummean", True), (False, "cumsum", False), (False, "cumsum", True)],
)
def test_fast_equals_exact_outputs_and_gradients(causal, masked_lazy, with_mask):
    # the fast path's hand-written backward (CPU) against autograd over the official statements
    q, k, v = rand_qkv(b=2, h=2, l_q=33, l_k=33, d=8, dtype=torch.float32)
    idx = sample_key_index(
        33, 33, probsparse_counts(33, 33, 3)[0], generator=torch.Generator().manual_seed(0)
    )
    mask = (torch.arange(33) % 5 != 2).view(1, 1, 1, 33) if with_mask else None
    kwargs = dict(factor=3, causal=causal, masked_lazy=masked_lazy, index=idx, attn_mask=mask)
    exact = _outputs_and_grads(q, k, v, impl="exact", **kwargs)
    fast = _outputs_and_grads(q, k, v, impl="fast", **kwargs)
    for a, b in zip(exact, fast):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_fast_cpu_function_equals_sdpa_route(monkeypatch):
    # the CPU route (_RowsAttention) and the route used elsewhere (SDPA + autograd), float64
    q, k, v = rand_qkv(b=2, h=2, l_q=40, l_k=40, d=5)
    idx = sample_key_index(
        40, 40, probsparse_counts(40, 40, 2)[0], generator=torch.Generator().manual_seed(1)
    )
    mask = torch.rand(2, 1, 40, 40, generator=torch.Generator().manual_seed(2)) > 0.3
    kwargs = dict(factor=2, causal=True, index=idx, attn_mask=mask)
    ours = _outputs_and_grads(q, k, v, **kwargs)
    monkeypatch.setattr(pp, "_ROWS_FUNCTION_ON_CPU", False)
    sdpa = _outputs_and_grads(q, k, v, **kwargs)
    for a, b in zip(ours, sdpa):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("impl", ["fast", "exact"])
@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck(impl, causal):
    q, k, v = rand_qkv(b=1, h=2, l_q=9, l_k=9, d=3)
    idx = sample_key_index(9, 9, probsparse_counts(9, 9, 1)[0], generator=torch.Generator().manual_seed(4))
    q, k, v = (t.requires_grad_() for t in (q, k, v))

    def fn(q, k, v):
        return probsparse_attention(q, k, v, factor=1, causal=causal, index=idx, impl=impl)

    assert torch.autograd.gradcheck(fn, (q, k, v))


# ---- masks ---------------------------------------------------------------------------------------------------
def test_user_mask_on_active_queries():
    # a key-padding mask: with every query active, ProbSparse equals attention over the unmasked keys only.
    q, k, v = rand_qkv(l_q=12, l_k=12)
    keep = torch.ones(12, dtype=torch.bool)
    keep[8:] = False
    for impl in ("fast", "exact"):
        out = probsparse_attention(q, k, v, factor=1000, attn_mask=keep.view(1, 1, 1, 12), impl=impl)
        torch.testing.assert_close(
            out, naive_softmax_attention(q, k[:, :, :8], v[:, :, :8]), atol=1e-10, rtol=0
        )
    out = full_attention(q, k, v, attn_mask=keep.view(1, 1, 1, 12))
    torch.testing.assert_close(out, naive_softmax_attention(q, k[:, :, :8], v[:, :, :8]), atol=1e-10, rtol=0)


@pytest.mark.parametrize("impl", ["fast", "exact"])
def test_fully_masked_active_row_is_zero_like_sdpa(impl):
    # query row 2 may attend to no key: its output is 0 (as SDPA's), in both paths and in full attention;
    # the other rows are unaffected and no gradient is NaN
    q, k, v = rand_qkv(l_q=10, l_k=10)
    keep = torch.ones(1, 1, 10, 10, dtype=torch.bool)
    keep[..., 2, :] = False
    keep[..., 7, 4:] = False
    ref = naive_softmax_attention(q, k, v)
    ref[:, :, 7] = naive_softmax_attention(q, k[:, :, :4], v[:, :, :4])[:, :, 7]
    ref[:, :, 2] = 0.0
    sparse = _outputs_and_grads(q, k, v, factor=1000, attn_mask=keep, impl=impl)  # u = L: all rows active
    qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
    full = full_attention(qq, kk, vv, attn_mask=keep)
    full.sum().backward()
    for out, *grads in [sparse, (full.detach(), qq.grad, kk.grad, vv.grad)]:
        torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
        assert all(bool(torch.isfinite(g).all()) for g in grads)
    assert float(sparse[1][:, :, 2].abs().max()) == 0.0  # the dead row's query gets no gradient


def test_full_attention_causal_plus_user_mask():
    q, k, v = rand_qkv(l_q=10, l_k=10)
    keep = torch.ones(1, 1, 10, 10, dtype=torch.bool)
    out = full_attention(q, k, v, causal=True, attn_mask=keep)
    torch.testing.assert_close(out, naive_softmax_attention(q, k, v, causal=True), atol=1e-10, rtol=0)


# ---- modules ---------------------------------------------------------------------------------------------------
def test_module_seed_reproducible_and_fixed_eval_sample():
    q, k, v = rand_qkv(l_q=60, l_k=60, d=4, dtype=torch.float32)
    a = ProbSparseAttention(factor=1, seed=7)(q, k, v)
    b = ProbSparseAttention(factor=1, seed=7)(q, k, v)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    m = ProbSparseAttention(factor=1, seed=7, fixed_eval_sample=True).eval()
    first, second = m(q, k, v), m(q, k, v)
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    m.train()
    # training redraws the sample each call; with u << L some lazy/active assignment changes
    outs = [m(q, k, v) for _ in range(4)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_build_attention_and_dropout_only_in_training():
    assert isinstance(build_attention("prob", factor=3), ProbSparseAttention)
    full = build_attention("full", dropout=0.5)
    assert isinstance(full, FullAttention)
    q, k, v = rand_qkv(dtype=torch.float32)
    full.eval()
    torch.testing.assert_close(full(q, k, v), full_attention(q, k, v))


def test_build_attention_rejects_options_the_module_does_not_take():
    with pytest.raises(ValueError, match=r"FullAttention \('full'\) does not take \['factor'\]"):
        build_attention("full", dropout=0.5, factor=5)
    with pytest.raises(ValueError, match=r"ProbSparseAttention \('prob'\) does not take \['dropout'\]"):
        build_attention("prob", factor=5, dropout=0.1)  # the official ProbAttention's dropout is never used
    with pytest.raises(ValueError, match=r"\['facter'\]; its options are \['factor', 'causal'"):
        build_attention("prob", facter=5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_dtypes_finite_and_close_to_float64(dtype):
    q, k, v = rand_qkv(l_q=50, l_k=50, dtype=F64)
    idx = sample_key_index(
        50, 50, probsparse_counts(50, 50, 5)[0], generator=torch.Generator().manual_seed(0)
    )
    ref = probsparse_attention(q, k, v, factor=1000)  # all active: no selection ties to worry about
    out = probsparse_attention(q.to(dtype), k.to(dtype), v.to(dtype), factor=1000, index=idx)
    assert out.dtype == dtype and bool(torch.isfinite(out).all())
    tol = {torch.bfloat16: 5e-2, torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)


# ---- property tests ------------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 3),
    h=st.integers(1, 3),
    l_q=st.integers(1, 40),
    l_k=st.integers(1, 40),
    d=st.integers(1, 6),
    factor=st.integers(1, 4),
    seed=st.integers(0, 10_000),
)
def test_property_fast_equals_naive(b, h, l_q, l_k, d, factor, seed):
    q, k, v = rand_qkv(b=b, h=h, l_q=l_q, l_k=l_k, d=d, seed=seed)
    n_samples, u = probsparse_counts(l_q, l_k, factor)
    assert 1 <= n_samples <= l_k and 1 <= u <= l_q
    idx = sample_key_index(l_q, l_k, n_samples, generator=torch.Generator().manual_seed(seed))
    if u < l_q:  # a tie at the selection boundary makes the active set ambiguous (e.g. one key sampled twice)
        m = naive_measure(q, k, idx, l_k).sort(dim=-1, descending=True).values
        assume(bool(((m[..., u - 1] - m[..., u]).abs() > 1e-9).all()))
    out = probsparse_attention(q, k, v, factor=factor, index=idx)
    assert out.shape == (b, h, l_q, d)
    ref = naive_probsparse(q, k, v, idx, u)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)


@settings(max_examples=15, deadline=None)
@given(l=st.integers(2, 40), factor=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_property_causal_output_rows_are_convex_or_prefix_sums(l, factor, seed):
    # every causal output row i is either a convex combination of v_0..v_i (active) or the prefix sum (lazy);
    # with v = 1 both give known values: 1 (active) or i + 1 (lazy cumsum).
    q, k, _ = rand_qkv(b=1, h=1, l_q=l, l_k=l, d=3, seed=seed)
    v = torch.ones(1, 1, l, 1, dtype=F64)
    out = probsparse_attention(
        q, k, v, factor=factor, causal=True, generator=torch.Generator().manual_seed(seed)
    )[0, 0, :, 0]
    pos = torch.arange(1, l + 1, dtype=F64)
    ok = torch.isclose(out, torch.ones_like(out)) | torch.isclose(out, pos)
    assert bool(ok.all())
    _, u = probsparse_counts(l, l, factor)
    assert int(torch.isclose(out, torch.ones_like(out)).sum()) >= min(u, l) - 1  # row 0 is 1 either way


# ---- errors ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: (torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)), "head dims"),
        (lambda: (torch.randn(2, 3, 5, 8), torch.randn(1, 3, 5, 8), torch.randn(1, 3, 5, 8)), "batch sizes"),
        (lambda: (torch.randn(2, 3, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)), "head counts"),
        (
            lambda: (torch.randn(2, 3, 0, 8), torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)),
            "empty sequence",
        ),
        (lambda: (torch.randn(2, 5, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8)), r"shape \[B, H, L, D\]"),
        (
            lambda: (torch.randn(2, 3, 5, 8), torch.randn(2, 3, 6, 8), torch.randn(2, 3, 5, 8)),
            "lengths differ",
        ),
    ],
)
@pytest.mark.parametrize("fn", [probsparse_attention, full_attention])
def test_bad_shapes_raise_clear_errors(make, match, fn):
    with pytest.raises(ValueError, match=match):
        fn(*make())


@pytest.mark.parametrize("factor", [0, -1, float("nan"), float("inf"), -float("inf")])
def test_bad_factor(factor):
    # inf used to reach int(inf * ceil(ln L)) and raise OverflowError
    q, k, v = rand_qkv()
    with pytest.raises(ValueError, match="factor must be finite and > 0"):
        probsparse_attention(q, k, v, factor=factor)
    with pytest.raises(ValueError, match="factor must be finite and > 0"):
        ProbSparseAttention(factor=factor)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_check_finite(bad):
    q, k, v = rand_qkv()
    k[0, 0, 3, 1] = bad
    with pytest.raises(ValueError, match="k contains NaN or inf"):
        probsparse_attention(q, k, v, check_finite=True)
    with pytest.raises(ValueError, match="NaN or inf"):
        FullAttention(check_finite=True)(q, k, v)


def test_wrong_mask_shape_and_unknown_options():
    q, k, v = rand_qkv(l_q=6, l_k=6)
    with pytest.raises(ValueError, match="attn_mask of shape"):
        probsparse_attention(q, k, v, attn_mask=torch.ones(5, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_mask of shape"):
        full_attention(q, k, v, attn_mask=torch.ones(2, 3, 6, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="unknown impl"):
        probsparse_attention(q, k, v, impl="turbo")
    with pytest.raises(ValueError, match="unknown measure"):
        ProbSparseAttention(measure="median")
    with pytest.raises(ValueError, match="unknown attention"):
        build_attention("sparse")
    q2, k2, v2 = rand_qkv(l_q=6, l_k=7)
    with pytest.raises(ValueError, match="L_Q == L_K"):
        probsparse_attention(q2, k2, v2, causal=True)
