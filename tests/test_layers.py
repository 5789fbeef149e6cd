"""BitsDropout against the definition of dropout: Bernoulli keep rate, exact scaling, independent elements,
gradient = mask * scale, and its wiring into Informer (``dropout_impl="bits"``)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from favit_probsparse.layers import BitsDropout, bits_dropout, effective_p, swap_dropout
from favit_probsparse.models.informer import Informer


@pytest.mark.parametrize("p", [0.05, 0.3, 0.9])
def test_keep_rate_and_scale(p):
    n = 1 << 21
    torch.manual_seed(0)
    y = bits_dropout(torch.ones(n), p)
    pe = effective_p(p)
    assert abs(pe - p) <= 2**-16
    dropped = (y == 0).double().mean().item()
    assert abs(dropped - pe) < 5 * math.sqrt(pe * (1 - pe) / n), (dropped, pe)
    survivors = y[y != 0]
    assert torch.all(survivors == torch.tensor(1 / (1 - pe), dtype=y.dtype))
    # each of the four 16-bit lanes of a 64-bit word is used; each must have the same rate
    lanes = (y == 0).double().view(-1, 4).mean(0)
    assert torch.all((lanes - pe).abs() < 5 * math.sqrt(pe * (1 - pe) / (n / 4))), lanes


def test_mask_elements_are_uncorrelated():
    n = 1 << 21
    torch.manual_seed(1)
    m = (bits_dropout(torch.ones(n), 0.5) != 0).double()
    m = m - m.mean()
    bound = 5 / math.sqrt(n)
    for lag in (1, 2, 3, 4, 5, 8):
        corr = (m[:-lag] * m[lag:]).mean() / m.var()
        assert abs(corr) < bound, (lag, corr)


def test_gradient_is_mask_times_scale():
    torch.manual_seed(2)
    x = torch.randn(64, 33, dtype=torch.float64, requires_grad=True)
    g = torch.randn(64, 33, dtype=torch.float64)
    y = bits_dropout(x, 0.2)
    y.backward(g)
    keep = y.detach() != 0
    scale = 1 / (1 - effective_p(0.2))
    torch.testing.assert_close(y.detach(), x.detach() * keep * scale, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, g * keep * scale, rtol=0, atol=0)


def test_identity_cases_dtype_and_errors():
    x = torch.randn(10, dtype=torch.bfloat16)
    assert bits_dropout(x, 0.5, training=False) is x
    assert bits_dropout(x, 0.0) is x
    assert torch.all(bits_dropout(x, 1.0) == 0)
    assert bits_dropout(x, 0.5).dtype == torch.bfloat16
    torch.manual_seed(3)
    a = bits_dropout(torch.ones(1000), 0.5)
    torch.manual_seed(3)
    assert torch.equal(a, bits_dropout(torch.ones(1000), 0.5))  # reproducible from the seed
    with pytest.raises(ValueError, match="dropout probability must be in"):
        bits_dropout(x, 1.5)
    with pytest.raises(ValueError, match="dropout probability must be in"):
        BitsDropout(-0.1)
    with pytest.raises(ValueError, match="unknown dropout impl 'cuda'"):
        swap_dropout(nn.Sequential(nn.Dropout(0.1)), "cuda")


def test_informer_dropout_impl_swaps_every_layer_and_keeps_eval_outputs():
    torch.manual_seed(0)
    ref = Informer(d_model=16, n_heads=4, d_ff=32)
    bits = Informer(d_model=16, n_heads=4, d_ff=32, dropout_impl="bits")
    bits.load_state_dict(ref.state_dict())  # no parameters or buffers added
    n_ref = sum(type(m) is nn.Dropout for m in ref.modules())
    assert n_ref > 0 and sum(type(m) is nn.Dropout for m in bits.modules()) == 0
    assert sum(isinstance(m, BitsDropout) for m in bits.modules()) == n_ref
    assert all(m.p == 0.05 for m in bits.modules() if isinstance(m, BitsDropout))
    x, xm = torch.randn(2, 96, 7), torch.randn(2, 96, 4)
    y, ym = torch.randn(2, 72, 7), torch.randn(2, 72, 4)
    ref.eval(), bits.eval()
    torch.manual_seed(5)
    a = ref(x, xm, y, ym)
    torch.manual_seed(5)
    torch.testing.assert_close(bits(x, xm, y, ym), a)
