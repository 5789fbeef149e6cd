"""DLinear against naive float64 loops written from the paper / official LTSF-Linear code."""

import numpy as np
import pytest
import torch

from favit_probsparse.models.dlinear import DLinear, MovingAverage, SeriesDecomposition
from favit_probsparse.models.informer import Informer

F64 = torch.float64


def naive_moving_average(x: np.ndarray, k: int) -> np.ndarray:
    """Step t averages x[t-p .. t+p], indices clamped to [0, L-1] (first/last step repeated p times)."""
    length = x.shape[1]
    p = (k - 1) // 2
    out = np.zeros_like(x)
    for t in range(length):
        for j in range(t - p, t + p + 1):
            out[:, t] += x[:, min(max(j, 0), length - 1)]
        out[:, t] /= k
    return out


def naive_dlinear(x, w_s, b_s, w_t, b_t, k):
    """x [B, S, C]; weights [C, P, S] and biases [C, P] (per channel): out[b, p, c] by explicit sums."""
    trend = naive_moving_average(x, k)
    seasonal = x - trend
    bsz, s_len, c_n = x.shape
    p_len = w_s.shape[1]
    out = np.zeros((bsz, p_len, c_n))
    for b in range(bsz):
        for c in range(c_n):
            for p in range(p_len):
                acc = b_s[c, p] + b_t[c, p]
                for s in range(s_len):
                    acc += w_s[c, p, s] * seasonal[b, s, c] + w_t[c, p, s] * trend[b, s, c]
                out[b, p, c] = acc
    return out


def _set(model: DLinear, w_s, b_s, w_t, b_t):
    with torch.no_grad():
        for layer, w, b in ((model.seasonal, w_s, b_s), (model.trend, w_t, b_t)):
            layer.weight.copy_(torch.from_numpy(w))
            layer.bias.copy_(torch.from_numpy(b))


@pytest.mark.parametrize(("length", "k"), [(30, 25), (10, 25), (12, 5), (7, 1)])
def test_moving_average_matches_naive_loop_with_replicated_edges(length, k):
    x = np.random.default_rng(0).standard_normal((2, length, 3))
    got = MovingAverage(k)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, naive_moving_average(x, k), rtol=0, atol=1e-13)
    # edges by hand: step 0 with kernel k reads x[0] (p+1) times and x[1..p] once each
    p = (k - 1) // 2
    if length > p:
        edge = ((p + 1) * x[:, 0] + x[:, 1 : p + 1].sum(1)) / k
        np.testing.assert_allclose(got[:, 0], edge, rtol=0, atol=1e-13)


def test_decomposition_sums_back_to_the_series():
    x = torch.randn(2, 40, 3, dtype=F64)
    seasonal, trend = SeriesDecomposition(25)(x)
    torch.testing.assert_close(seasonal + trend, x, rtol=0, atol=1e-14)
    torch.testing.assert_close(trend, torch.from_numpy(naive_moving_average(x.numpy(), 25)))


@pytest.mark.parametrize("individual", [False, True])
def test_known_weights_match_hand_computed_map(individual):
    rng = np.random.default_rng(1)
    s_len, p_len, c_n, k = 30, 6, 3, 25
    x = rng.standard_normal((2, s_len, c_n))
    shape = (c_n, p_len) if individual else (p_len,)
    w_s, w_t = rng.standard_normal((*shape, s_len)), rng.standard_normal((*shape, s_len))
    b_s, b_t = rng.standard_normal(shape), rng.standard_normal(shape)
    model = DLinear(enc_in=c_n, seq_len=s_len, label_len=0, pred_len=p_len, individual=individual).to(F64)
    _set(model, w_s, b_s, w_t, b_t)
    per_channel = [np.broadcast_to(a, (c_n, *a.shape[-2:])) if not individual else a for a in (w_s, w_t)]
    bias = [np.broadcast_to(a, (c_n, p_len)) if not individual else a for a in (b_s, b_t)]
    ref = naive_dlinear(x, per_channel[0], bias[0], per_channel[1], bias[1], k)
    got = model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


def test_individual_with_equal_channel_weights_equals_shared():
    torch.manual_seed(0)
    shared = DLinear(enc_in=4, seq_len=20, pred_len=5).to(F64)
    indiv = DLinear(enc_in=4, seq_len=20, pred_len=5, individual=True).to(F64)
    with torch.no_grad():
        for name in ("seasonal", "trend"):
            src, dst = getattr(shared, name), getattr(indiv, name)
            dst.weight.copy_(src.weight.expand(4, -1, -1))
            dst.bias.copy_(src.bias.expand(4, -1))
    x = torch.randn(3, 20, 4, dtype=F64)
    torch.testing.assert_close(indiv(x), shared(x), rtol=0, atol=1e-13)
    # and distinct channel weights make channels differ from the shared map
    with torch.no_grad():
        indiv.trend.weight[1].mul_(2.0)
    assert not torch.allclose(indiv(x)[..., 1], shared(x)[..., 1])
    torch.testing.assert_close(indiv(x)[..., 0], shared(x)[..., 0], rtol=0, atol=1e-13)


def test_official_init_forecasts_the_window_mean_plus_bias():
    """Weights start at 1/seq_len: seasonal + trend = x, so the forecast is mean(x) + the two biases."""
    torch.manual_seed(0)
    model = DLinear(enc_in=3, seq_len=24, pred_len=4)
    assert torch.equal(model.trend.weight, torch.full((4, 24), 1 / 24))
    model = model.to(F64)
    x = torch.randn(2, 24, 3, dtype=F64)
    expected = x.mean(1, keepdim=True) + (model.seasonal.bias + model.trend.bias)[None, :, None]
    # the float32 init 1/24 is off by < 1e-8 relative
    torch.testing.assert_close(model(x), expected.expand(2, 4, 3), rtol=0, atol=1e-7)
    bound = 1 / 24**0.5
    assert model.seasonal.bias.abs().max() <= bound and model.seasonal.bias.std() > 0


def test_ms_outputs_the_last_channels_and_ignores_the_decoder_inputs():
    torch.manual_seed(0)
    full = DLinear(enc_in=5, dec_in=5, c_out=5, seq_len=16, pred_len=3, individual=True)
    torch.manual_seed(0)
    ms = DLinear(enc_in=5, dec_in=5, c_out=1, seq_len=16, pred_len=3, individual=True)
    x = torch.randn(2, 16, 5)
    out = ms(x, torch.randn(2, 16, 4), torch.randn(2, 11, 5), torch.randn(2, 11, 4))
    assert out.shape == (2, 3, 1)
    torch.testing.assert_close(out, full(x)[..., -1:])
    assert DLinear(enc_in=5, seq_len=16, pred_len=3)(x).shape == (2, 3, 5)  # c_out defaults to enc_in


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pred_len": 0}, "pred_len"),
        ({"seq_len": 0}, "seq_len"),
        ({"seq_len": 8.5}, "seq_len"),
        ({"label_len": -1}, "label_len"),
        ({"enc_in": 0}, "enc_in"),
        ({"c_out": 8}, "c_out"),
        ({"dec_in": 6}, "dec_in"),
        ({"kernel_size": 24}, "kernel_size"),
        ({"kernel_size": 0}, "kernel_size"),
    ],
)
def test_bad_arguments_raise_named_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DLinear(**{"enc_in": 7, "seq_len": 96, "label_len": 48, "pred_len": 24, **kwargs})


def test_wrong_input_shape_is_named():
    model = DLinear(enc_in=3, seq_len=12, pred_len=2)
    with pytest.raises(ValueError, match=r"x_enc must have shape \[B, seq_len=12, enc_in=3\]"):
        model(torch.randn(2, 12, 4))
    with pytest.raises(ValueError, match="x_enc"):
        model(torch.randn(2, 10, 3))


@pytest.mark.parametrize(("enc_in", "c_out"), [(7, 7), (1, 1), (7, 1)])  # features M, S, MS
def test_same_shape_arguments_and_call_as_informer(enc_in, c_out):
    """One forecasting config links the same shape and time-feature names into either network."""
    shapes = dict(enc_in=enc_in, dec_in=enc_in, c_out=c_out, seq_len=32, label_len=16, pred_len=8)
    shapes.update(embed="timeF", freq="h")
    informer = Informer(**shapes, d_model=16, n_heads=2, d_ff=16)
    dlinear = DLinear(**shapes)
    x_enc, x_mark_enc = torch.randn(2, 32, enc_in), torch.rand(2, 32, 4) - 0.5
    x_dec, x_mark_dec = torch.randn(2, 24, enc_in), torch.rand(2, 24, 4) - 0.5
    inputs = (x_enc, x_mark_enc, x_dec, x_mark_dec)
    assert dlinear(*inputs).shape == informer(*inputs).shape == (2, 8, c_out)
