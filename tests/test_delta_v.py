"""ΔV attention: docs/posenc.md §3.4 (T3.1-T3.7) and the report's definition (report §2.1)."""

from __future__ import annotations

import torch
from torch import nn

from favit_probsparse.attention.delta_v import (
    DeltaVAttention,
    delta_v_attention,
    ema_kernel,
    momentum_ema,
    temporal_difference,
)
from favit_probsparse.attention.probsparse import FullAttention, ProbSparseAttention

B, T, D, H = 2, 12, 16, 4


class SelfAttn(nn.Module):
    """A multi-head self-attention layer around an attention operator (no position encoding)."""

    def __init__(self, op: nn.Module, d=D, h=H):
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.op, self.h = op, h

    def forward(self, x):
        b, t, d = x.shape
        split = lambda z: z.view(b, t, self.h, d // self.h).transpose(1, 2)
        y = self.op(split(self.q(x)), split(self.k(x)), split(self.v(x)))
        return self.o(y.transpose(1, 2).reshape(b, t, d))


def _x(seed=1, t=T):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, t, D, generator=g, dtype=torch.float64)


def _layer(op):
    return SelfAttn(op).double()


def _perm(t=T, seed=3):
    g = torch.Generator().manual_seed(seed)
    while True:
        p = torch.randperm(t, generator=g)
        if not torch.equal(p, torch.arange(t)):
            return p


# ---------------------------------------------------------------- T3.1 / T3.2
def test_plain_attention_is_permutation_equivariant():
    f, x = _layer(FullAttention()), _x()
    for p in (_perm(), torch.arange(T - 1, -1, -1)):
        assert (f(x[:, p]) - f(x)[:, p]).abs().max() < 1e-10


def test_delta_v_is_order_sensitive():
    x = _x()
    for op in (
        DeltaVAttention(),
        DeltaVAttention(momentum=True, beta=0.5),
        DeltaVAttention(gate=0.0, tangent_logits=1.0),
    ):
        f = _layer(op)
        ref = f(x).abs().max()
        for p in (_perm(), torch.arange(T - 1, -1, -1)):
            assert (f(x[:, p]) - f(x)[:, p]).abs().max() > 1e-2 * ref


def test_report_formula_for_one_query():
    # the report §2.1: out_i = Σ_j A_ij v_j + Σ_j A_ij (v_j − v_{j−1}) with Δv_0 = 0 (replicate boundary)
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 1, 5, 3, dtype=torch.float64) for _ in range(3))
    a = torch.softmax(q @ k.mT / 3**0.5, -1)
    dv = torch.cat((torch.zeros_like(v[..., :1, :]), v[..., 1:, :] - v[..., :-1, :]), dim=-2)
    assert torch.allclose(DeltaVAttention()(q, k, v), a @ v + a @ dv, atol=1e-12)


# ---------------------------------------------------------------- T3.3 relative only
def test_circular_boundary_is_cyclic_shift_equivariant():
    f, x = _layer(DeltaVAttention(boundary="circular")), _x()
    for s in (1, 5):
        assert (f(torch.roll(x, s, 1)) - torch.roll(f(x), s, 1)).abs().max() < 1e-10
    # momentum with a zero initial state is causal Toeplitz, not circulant: breaks exact cyclic equivariance
    fm = _layer(DeltaVAttention(boundary="circular", momentum=True, beta=0.5))
    assert (fm(torch.roll(x, 1, 1)) - torch.roll(fm(x), 1, 1)).abs().max() > 1e-3


# ---------------------------------------------------------------- T3.4 reduction and identities
def test_zero_gate_equals_plain_bit_for_bit():
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, T, 8) for _ in range(3))
    for causal in (False, True):
        plain = FullAttention(causal=causal)(q, k, v)
        assert torch.equal(DeltaVAttention(causal=causal, gate=0.0)(q, k, v), plain)
        assert torch.equal(DeltaVAttention(causal=causal, gate=0.0, momentum=True)(q, k, v), plain)


def test_zero_gate_equals_inner_probsparse():
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, 40, 8) for _ in range(3))
    a = ProbSparseAttention(factor=2, seed=7)(q, k, v)
    b = DeltaVAttention(ProbSparseAttention(factor=2, seed=7), gate=0.0)(q, k, v)
    assert torch.equal(a, b)
    c = DeltaVAttention(ProbSparseAttention(factor=2, seed=7))(q, k, v)
    assert c.shape == a.shape and not torch.allclose(a, c)


def test_difference_commutes_with_linear_maps_and_boundaries():
    x = _x()
    w = torch.randn(D, 5, dtype=torch.float64)
    for bd in ("replicate", "zero", "circular"):
        assert torch.allclose(
            temporal_difference(x @ w, bd, dim=1), temporal_difference(x, bd, dim=1) @ w, atol=1e-12
        )
    assert torch.equal(temporal_difference(x, "replicate", 1)[:, 0], torch.zeros(B, D, dtype=torch.float64))
    assert torch.equal(temporal_difference(x, "zero", 1)[:, 0], x[:, 0])
    assert torch.allclose(temporal_difference(x, "circular", 1)[:, 0], x[:, 0] - x[:, -1])


def test_momentum_impulse_response_and_level_shift():
    u = torch.zeros(1, 1, 8, 1, dtype=torch.float64)
    u[0, 0, 0, 0] = 1.0
    m = momentum_ema(u, 0.5)[0, 0, :, 0]
    assert torch.allclose(m, torch.tensor([0.5**k for k in range(1, 9)], dtype=torch.float64))
    assert torch.equal(momentum_ema(u, 0.0), u)  # β = 0: M = U
    v = torch.randn(2, 3, 10, 4, dtype=torch.float64)
    shifted = v + torch.randn(2, 3, 1, 4, dtype=torch.float64)  # level shift per channel
    m1 = momentum_ema(temporal_difference(v), 0.7)
    m2 = momentum_ema(temporal_difference(shifted), 0.7)
    assert torch.allclose(m1, m2, atol=1e-12)  # replicate boundary: level-shift invariant


def test_momentum_matches_loop_and_gradcheck():
    torch.manual_seed(0)
    u = torch.randn(2, 3, 9, 4, dtype=torch.float64)
    beta = torch.tensor([0.0, 0.3, 0.9], dtype=torch.float64)
    ref, state = [], torch.zeros(2, 3, 4, dtype=torch.float64)
    for t in range(9):
        state = beta[None, :, None] * state + (1 - beta[None, :, None]) * u[:, :, t]
        ref.append(state)
    assert torch.allclose(momentum_ema(u, beta), torch.stack(ref, 2), atol=1e-12)
    b = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64, requires_grad=True)
    uu = u[:1, :, :5, :2].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, bb: momentum_ema(a, bb), (uu, b))
    assert torch.allclose(ema_kernel(beta, 4)[0], torch.eye(4, dtype=torch.float64))


# ---------------------------------------------------------------- T3.5 causal
def test_causal_no_future_leak_and_prefix_permutation():
    x = _x()
    for op in (DeltaVAttention(causal=True), DeltaVAttention(causal=True, momentum=True, tangent_logits=1.0)):
        f = _layer(op)
        y = f(x)
        x2 = x.clone()
        x2[:, 7:] += torch.randn_like(x2[:, 7:])
        assert (f(x2)[:, :7] - y[:, :7]).abs().max() < 1e-12
    p = torch.cat((_perm(T - 1), torch.tensor([T - 1])))  # permute the prefix, keep the last token
    plain, dv = _layer(FullAttention(causal=True)), _layer(DeltaVAttention(causal=True))
    assert (plain(x[:, p])[:, -1] - plain(x)[:, -1]).abs().max() < 1e-10
    assert (dv(x[:, p])[:, -1] - dv(x)[:, -1]).abs().max() > 1e-2


# ---------------------------------------------------------------- T3.6 pooled separability
def test_pooled_reversal_separability():
    x = _x()
    r = torch.arange(T - 1, -1, -1)
    plain, dv = _layer(FullAttention()), _layer(DeltaVAttention())
    assert (plain(x).mean(1) - plain(x[:, r]).mean(1)).abs().max() < 1e-10
    assert (dv(x).mean(1) - dv(x[:, r]).mean(1)).abs().max() > 1e-2


def test_reversal_classifier_trains_with_delta_v_only():
    """Training version of T3.6: tell an upward-trending sequence from its reversal (the same multiset of tokens).
    NoPE + mean pool is exactly at chance (its pooled features are identical for both classes); ΔV separates them.
    (For i.i.d. tokens the task is impossible for any model: x and its reversal have the same distribution.)"""
    torch.manual_seed(0)
    n, t, d = 64, 8, 8
    x = torch.randn(n, t, d) + 0.5 * torch.arange(t, dtype=torch.float32)[None, :, None]
    data = torch.cat((x, x.flip(1)))
    labels = torch.cat((torch.zeros(n), torch.ones(n)))

    def train(op):
        torch.manual_seed(0)
        layer = SelfAttn(op, d=d, h=2)
        head = nn.Linear(d, 1)
        opt = torch.optim.Adam([*layer.parameters(), *head.parameters()], lr=1e-2)
        for _ in range(40):
            logit = head(layer(data).mean(1)).squeeze(-1)
            loss = nn.functional.binary_cross_entropy_with_logits(logit, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return ((head(layer(data).mean(1)).squeeze(-1) > 0).float() == labels).float().mean().item()

    assert train(FullAttention()) == 0.5
    assert train(DeltaVAttention()) > 0.95


def test_learned_gate_and_beta_get_gradients():
    op = DeltaVAttention(learn_gate=True, momentum=True, learn_beta=True, beta=0.3, n_heads=H, gate=0.5)
    q, k, v = (torch.randn(B, H, T, 8) for _ in range(3))
    op(q, k, v).sum().backward()
    assert op.gate.grad is not None and op.beta_logit.grad is not None
    assert torch.allclose(op.beta(), torch.full((H,), 0.3), atol=1e-6)
    out = delta_v_attention(q, k, v, gate=torch.zeros(H))
    assert torch.equal(out, FullAttention()(q, k, v))
