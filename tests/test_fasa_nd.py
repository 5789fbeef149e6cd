"""FaSA on grids of 1, 2 and 3 axes against a naive float64 loop re-statement of its math.

The reference below builds every window sample with explicit loops and :func:`reflect_index`, fuses with the
documented formula of each fusion, and attends with an explicit softmax; it shares only the module's parameters.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from favit_probsparse.attention.fasa import FaSA, reflect_index, window_candidates, window_span
from favit_probsparse.attention.fusion import hierarchical_num_keys

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _conv(m, x, **kw):
    return CONV[x.dim() - 2](x, m.weight, m.bias, stride=m.stride, padding=m.padding, groups=m.groups)


def _naive_candidates(src, heads, ws, ds):
    """``src [B, C, *grid]`` -> ``[B, h, P, L, c]`` by loops over windows and positions."""
    B, C, *grid = src.shape
    counts = [-(-n // window_span(w, d)) for n, w, d in zip(grid, ws, ds)]
    wins = list(itertools.product(*map(range, counts)))
    poss = list(itertools.product(*map(range, ws)))
    out = torch.empty(B, heads, len(poss), len(wins), C // heads, dtype=src.dtype)
    for li, win in enumerate(wins):
        for pi, pos in enumerate(poss):
            idx = tuple(
                reflect_index(wi * window_span(w, d) + k * d, n)
                for wi, k, w, d, n in zip(win, pos, ws, ds, grid)
            )
            out[:, :, pi, li] = src[(slice(None), slice(None), *idx)].reshape(B, heads, -1)
    return out


def _naive_fusion(fz, cand, q):
    """The documented formula of each fusion (``probsparse`` dense, ``hierarchical`` with sample_ratio 1)."""
    B, h, P, L, c = cand.shape
    name = type(fz).__name__
    if name == "OfficialFusion":  # adaptive-pool bins over the window-major (L·c) axis
        flat = cand.reshape(B, h, P, L * c)
        return torch.stack(
            [flat[..., (j * L * c) // c : -(-((j + 1) * L * c) // c)].mean(-1) for j in range(c)], -1
        )
    if name == "MaxFusion":
        return torch.stack([cand[:, :, :, i] for i in range(L)]).amax(0)
    if name == "MeanFusion":
        return sum(cand[:, :, :, i] for i in range(L)) / L
    if name == "ConvFusion":
        return cand.reshape(B, h, P, L * c) @ fz.weight.T + fz.bias
    if name == "LinearFusion":
        return sum(cand[:, :, :, i] * fz.weight[:, i] for i in range(L)) + fz.bias
    if (
        name == "ProbSparseFusion"
    ):  # every query, no sampling: the mean score of each candidate, top P in order
        flat = cand.reshape(B, h, P * L, c)
        score = (q @ flat.transpose(-1, -2)).mean(2)
        idx = score.topk(P, dim=-1).indices.sort(-1).values
        return torch.stack([torch.stack([flat[b, i, idx[b, i]] for i in range(h)]) for b in range(B)])
    assert name == "HierarchicalFusion"
    out = []
    for b, i in itertools.product(range(B), range(h)):
        pts, reps = [], []
        for w in range(L):
            X = cand[b, i, :, w]
            S = X @ X.T
            top = sorted((S.max(-1).values - S.mean(-1)).topk(fz.topk).indices.tolist())
            pts += list(X[top])
            reps.append(X[top].mean(0))
        keys, level = [*pts], reps
        keys += level
        while len(level) > 1:
            level = level + level[-1:] if len(level) % 2 else level
            level = [(level[j] + level[j + 1]) / 2 for j in range(0, len(level), 2)]
            keys += level
        out.append(torch.stack(keys))
    return torch.stack(out).reshape(B, h, -1, c)


def _softmax_attend(q, k, v, scale):
    return torch.softmax(q @ k.transpose(-1, -2) * scale, -1) @ v


def naive_fasa(m: FaSA, x: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    B, N, C = x.shape
    cg, h = m.single_dim[0], m.num_heads
    q = F.linear(x, m.q.weight, m.q.bias)
    xm = x.transpose(1, 2).reshape(B, C, *grid)  # [B, C, *grid]
    xg = _conv(m.sr, xm[:, :cg])
    gg = xg.shape[2:]
    tg = F.layer_norm(xg.flatten(2).transpose(1, 2), (cg,), m.norm.weight, m.norm.bias, m.norm.eps)
    k_g, v_g = F.linear(tg, m.kv_g.weight, m.kv_g.bias).chunk(2, -1)
    v_g = v_g + _conv(m.local_conv_g, v_g.transpose(1, 2).reshape(B, cg, *gg)).flatten(2).transpose(1, 2)
    outs = [_softmax_attend(q[:, :, :cg], k_g, v_g, m.scales[0])]
    src = _conv(m.kv_l.point_conv, _conv(m.kv_l.depth_conv, xm[:, cg:]))
    for i, (c, fz) in enumerate(zip(m.head_dims, m.fusions)):
        cb = m.single_dim[i + 1]
        cand = _naive_candidates(src[:, i * cb : (i + 1) * cb], h, m.window_shape, m.dilations[i])
        # branch i's queries: within each head of q_l, channels [i·c, (i+1)·c)
        q_i = q[:, :, cg:].reshape(B, N, h, -1)[..., i * c : (i + 1) * c].transpose(1, 2)
        kv = _naive_fusion(fz, cand, q_i)
        kv = F.linear(
            F.linear(kv, m.fcs[i].weight, m.fcs[i].bias), m.single_heads[i].weight, m.single_heads[i].bias
        )
        k, v = kv.chunk(2, -1)
        K = v.shape[2]
        v_t = v.transpose(2, 3).reshape(B, cb, K)
        shape = m.window_shape if fz.keeps_grid else (K,)
        lc = _conv(m.local_convs[i], v_t.reshape(B, cb, *shape)).reshape(B, h, c, K).transpose(2, 3)
        o = _softmax_attend(q_i, k, v + lc, m.scales[1 + i])  # [B, h, N, c]
        outs.append(o.transpose(1, 2).reshape(B, N, h * c))
    return F.linear(torch.cat(outs, -1), m.proj.weight, m.proj.bias)


FUSION_CASES = [
    ("official", {}),
    ("max", {}),
    ("mean", {}),
    ("conv1x1", {}),
    ("linear", {}),
    ("probsparse", {"n_queries": 10_000, "sample_factor": 10_000}),
    ("hierarchical", {"topk": 2, "sample_ratio": 1.0}),
]
GRIDS = [  # (grid, window, sr): a sequence, a video grid, a 2-D map; padded last windows on some axes
    ((23,), 5, 2),
    ((4, 6, 5), (2, 3, 3), (1, 2, 2)),
    ((9, 8), 3, 2),
]


def _randomise(m):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


# no padded samples: probsparse keeps candidates by score, and a padded copy ties with its source, so which of the
# two it keeps (and so the kept layout) is the sort's choice
EXACT_GRIDS = [((45,), 5, 2), ((4, 9, 9), (2, 3, 3), (1, 4, 4)), ((9, 9), 3, 4)]
CASES = [(*g, *f) for f in FUSION_CASES for g in (EXACT_GRIDS if f[0] == "probsparse" else GRIDS)]


@pytest.mark.parametrize(("grid", "window", "sr", "fusion", "kw"), CASES)
def test_fasa_equals_naive_loop(grid, window, sr, fusion, kw):
    m = FaSA(
        32, num_heads=2, sr_ratio=sr, window_size=window, fusion=fusion, fusion_kwargs=kw, feat_size=grid
    )
    _randomise(m)
    m = m.double().eval()
    x = torch.randn(2, math.prod(grid), 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = m(x, *grid)
    torch.testing.assert_close(out, naive_fasa(m, x, grid), rtol=1e-9, atol=1e-9)
    if fusion == "hierarchical":  # the keys each branch reports are the tree's count on this grid
        assert m.fusion_cost(grid)[2] == [
            hierarchical_num_keys(n, 2, True, True) for n in m.num_windows(grid)
        ]


def test_window_candidates_nd_equal_loops():
    src = torch.randn(2, 6, 5, 9, 4)
    ref = _naive_candidates(src, 3, (2, 7, 3), (2, 1, 2))
    assert torch.equal(window_candidates(src, 3, (2, 7, 3), (2, 1, 2)), ref)


def _copy_2d_into_3d(m2: FaSA, m3: FaSA) -> None:
    """2-D weights into the 3-D layer: every 3-D kernel gets the 2-D kernel in its centre time slice."""
    sd3 = m3.state_dict()
    for k, w in m2.state_dict().items():
        t = sd3[k]
        if t.shape == w.shape:
            t.copy_(w)
        else:  # [..., kh, kw] -> [..., kt, kh, kw]: zeros but the centre slice
            t.zero_()
            t[:, :, t.shape[2] // 2] = w
    m3.load_state_dict(sd3)


@pytest.mark.parametrize("fusion", ["official", "max", "probsparse", "hierarchical"])
def test_3d_grid_with_one_frame_gives_the_2d_result(fusion):
    m2 = FaSA(32, num_heads=2, sr_ratio=2, window_size=3, fusion=fusion, feat_size=(9, 8)).eval()
    _randomise(m2)
    m3 = FaSA(32, num_heads=2, sr_ratio=(1, 2, 2), window_size=(1, 3, 3), fusion=fusion, feat_size=(1, 9, 8))
    _copy_2d_into_3d(m2, m3.eval())
    x = torch.randn(2, 72, 32)
    with torch.no_grad():
        torch.testing.assert_close(m3(x, 1, 9, 8), m2(x, 9, 8), rtol=1e-5, atol=1e-6)


def test_gradients_reach_every_parameter_in_3d():
    m = FaSA(
        32, num_heads=2, sr_ratio=(1, 2, 2), window_size=(2, 3, 3), fusion="probsparse", feat_size=(4, 6, 6)
    )
    m(torch.randn(2, 144, 32, requires_grad=True), 4, 6, 6).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_bad_grids_get_one_line_errors():
    m = FaSA(32, num_heads=2, sr_ratio=2, window_size=(2, 3, 3), small_grid="error")
    x = torch.randn(1, 60, 32)
    with pytest.raises(ValueError, match=r"grid \(3, 4, 4\) has 48 positions, but there are 60 tokens"):
        m(x, 3, 4, 4)
    with pytest.raises(ValueError, match=r"built for grids of 3 axes, got grid \(6, 10\)"):
        m(x, 6, 10)
    with pytest.raises(ValueError, match=r"smaller than the global branch's reduction \(2, 2, 2\)"):
        m(torch.randn(1, 30, 32), 1, 5, 6)
    with pytest.raises(ValueError, match=r"window \(2, 3, 3\) is larger than the grid \(2, 2, 15\)"):
        m(x, 2, 2, 15)
    with pytest.raises(ValueError, match="grid rank differs"):
        FaSA(32, 2, sr_ratio=(1, 2), window_size=(1, 3, 3))
    with pytest.raises(ValueError, match="grids of 1, 2 or 3 axes"):
        FaSA(32, 2, ndim=4)
    with pytest.raises(ValueError, match="window_size must be a positive int or 3 positive ints"):
        FaSA(32, 2, sr_ratio=(1, 2, 2), window_size=(0, 3, 3))
