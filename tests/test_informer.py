"""Informer model: shapes for every protocol preset, distilling, causality of the masked decoder, mix semantics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from favit_probsparse.attention import FullAttention, ProbSparseAttention
from favit_probsparse.models.informer import (
    PRESETS,
    AttentionLayer,
    ConvLayer,
    DataEmbedding,
    Decoder,
    DecoderLayer,
    Informer,
    decoder_input,
    distilled_length,
)

TINY = dict(d_model=16, n_heads=4, d_ff=32)


def _inputs(b=3, seq_len=96, label_len=48, pred_len=24, c_in=7, d_time=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, seq_len, c_in, generator=g)
    xm = torch.rand(b, seq_len, d_time, generator=g) - 0.5
    y = torch.randn(b, label_len + pred_len, c_in, generator=g)
    ym = torch.rand(b, label_len + pred_len, d_time, generator=g) - 0.5
    return x, xm, decoder_input(y, label_len, pred_len), ym


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("attention", ["prob", "full"])
@pytest.mark.parametrize(("features", "dims"), [("M", (7, 7, 7)), ("S", (1, 1, 1)), ("MS", (7, 7, 1))])
def test_output_shapes_every_mode(preset, attention, features, dims):
    enc_in, dec_in, c_out = dims
    m = Informer(enc_in, dec_in, c_out, 96, 48, 24, preset=preset, attention=attention, **TINY)
    x, xm, xd, xdm = _inputs(c_in=enc_in)
    out = m(x, xm, xd[..., :dec_in], xdm)
    assert out.shape == (3, 24, c_out)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None for n, p in m.named_parameters() if p.requires_grad), (
        "some weights get no grad"
    )


@pytest.mark.parametrize(("impl", "distil", "e_layers"), [("exact", True, 3), ("fast", False, 2)])
def test_shapes_exact_path_no_distil_and_other_lengths(impl, distil, e_layers):
    m = Informer(7, 7, 7, 48, 48, 24, prob_impl=impl, distil=distil, e_layers=e_layers, factor=3, **TINY)
    out = m(*_inputs(seq_len=48, label_len=48, pred_len=24))
    assert out.shape == (3, 24, 7)
    assert m.encoder_length() == (48 if not distil else 12)


def test_distilling_halves_the_length():
    layer = ConvLayer(8, padding=1).eval()
    for length, expected in [(96, 48), (48, 24), (95, 48), (168, 84), (720, 360)]:
        assert layer(torch.randn(2, length, 8)).shape == (2, expected, 8)
        assert distilled_length(length, 1) == expected
    # TSL / old-torch padding 2: 96 -> 49
    assert ConvLayer(8, padding=2)(torch.randn(2, 96, 8)).shape == (2, 49, 8)
    assert distilled_length(96, 2) == 49
    # through the whole encoder: 96 -> 48 -> 24 with three layers
    m = Informer(7, 7, 7, 96, 48, 24, e_layers=3, **TINY).eval()
    x, xm, _, _ = _inputs()
    assert m.encoder(m.enc_embedding(x, xm)).shape == (3, 24, 16)
    assert m.encoder_length() == 24
    assert Informer(7, 7, 7, 96, 48, 24, preset="tsl", **TINY).encoder_length() == 49


def _decoder(attention: nn.Module, mix: bool) -> Decoder:
    d, h = 16, 4
    layer = DecoderLayer(
        AttentionLayer(attention, d, h, mix=mix), AttentionLayer(FullAttention(), d, h), d, 32, dropout=0.0
    )
    return Decoder([layer, layer], norm_layer=nn.LayerNorm(d)).eval()


def test_masked_decoder_does_not_see_the_future():
    torch.manual_seed(0)
    dec = _decoder(FullAttention(causal=True), mix=False)
    x = torch.randn(2, 72, 16)
    cross = torch.randn(2, 48, 16)
    ref = dec(x, cross)
    for t in (0, 10, 47, 71):
        x2 = x.clone()
        x2[:, t:] = torch.randn_like(x2[:, t:]) * 5
        out = dec(x2, cross)
        torch.testing.assert_close(out[:, :t], ref[:, :t], rtol=0, atol=1e-6)
        assert not torch.allclose(out[:, t:], ref[:, t:])


def test_whole_model_decoder_is_causal_in_full_attention_mode_without_mix():
    """With full attention and mix off, decoder outputs before t do not depend on later decoder inputs.

    The official value embedding is a k=3 *circular* conv: position t also reads t+1, and position 0 reads the
    last position L-1 (which every later position then attends to). So we perturb positions t+1 .. L-2.
    """
    torch.manual_seed(0)
    m = Informer(7, 7, 7, 96, 48, 24, attention="full", mix=False, **TINY).eval()
    x, xm, xd, xdm = _inputs()
    enc = m.encoder(m.enc_embedding(x, xm))

    def dec_out(xd_):
        return m.projection(m.decoder(m.dec_embedding(xd_, xdm), enc))

    ref = dec_out(xd)
    t = 50
    xd2 = xd.clone()
    xd2[:, t + 1 : -1] = torch.randn_like(xd2[:, t + 1 : -1])
    xdm2 = xdm.clone()
    xdm2[:, t + 1 : -1] = 0.3  # future time stamps too
    out = m.projection(m.decoder(m.dec_embedding(xd2, xdm2), enc))
    torch.testing.assert_close(out[:, :t], ref[:, :t], rtol=0, atol=1e-6)
    assert not torch.allclose(out[:, t + 1 :], ref[:, t + 1 :])
    # ...whereas the last position leaks into every position through the circular padding (official behaviour)
    xd3 = xd.clone()
    xd3[:, -1] += 1.0
    assert not torch.allclose(dec_out(xd3)[:, :t], ref[:, :t])


def test_official_mix_breaks_position_causality():
    """The official decoder-self 'mix' reads other positions' (head, time) fragments: earlier rows change."""
    torch.manual_seed(0)
    dec = _decoder(FullAttention(causal=True), mix=True)
    x = torch.randn(2, 72, 16)
    cross = torch.randn(2, 48, 16)
    x2 = x.clone()
    x2[:, 60:] += 3.0
    assert not torch.allclose(dec(x2, cross)[:, :10], dec(x, cross)[:, :10])


class _ReturnV(nn.Module):
    def forward(self, q, k, v, attn_mask=None):
        return v


def test_attention_layer_mix_reinterprets_the_buffer():
    torch.manual_seed(0)
    layer = AttentionLayer(_ReturnV(), 16, 4, mix=True)
    x = torch.randn(2, 10, 16)
    v = layer.value_projection(x).view(2, 10, 4, 4).transpose(1, 2)  # [B, H, L, D]
    expected_mixed = layer.out_projection(v.contiguous().view(2, 10, 16))
    expected_plain = layer.out_projection(v.transpose(1, 2).reshape(2, 10, 16))
    torch.testing.assert_close(layer(x, x, x), expected_mixed)
    layer.mix = False
    torch.testing.assert_close(layer(x, x, x), expected_plain)


def _roles(m: Informer):
    enc = m.encoder.attn_layers[0].attention
    dec = m.decoder.layers[0]
    return [(type(a.inner_attention).__name__, a.mix) for a in (enc, dec.self_attention, dec.cross_attention)]


@pytest.mark.parametrize(
    ("preset", "attention", "mix", "expected"),
    [
        ("official-head", "prob", None, [("ProbSparseAttention", False), ("ProbSparseAttention", True), ("FullAttention", False)]),
        ("official-head", "prob", False, [("ProbSparseAttention", False), ("ProbSparseAttention", False), ("FullAttention", False)]),
        ("official-head", "full", None, [("FullAttention", False), ("FullAttention", True), ("FullAttention", False)]),
        ("paper-2021-03", "prob", None, [("ProbSparseAttention", True), ("ProbSparseAttention", True), ("FullAttention", False)]),
        ("paper-2021-03", "full", None, [("FullAttention", False), ("FullAttention", False), ("FullAttention", False)]),
        ("tsl", "prob", None, [("ProbSparseAttention", True), ("ProbSparseAttention", True), ("ProbSparseAttention", True)]),
    ],
)  # fmt: skip
def test_presets_wire_the_documented_layers(preset, attention, mix, expected):
    m = Informer(preset=preset, attention=attention, mix=mix, **TINY)
    assert _roles(m) == expected


def test_preset_details():
    off = Informer(preset="official-head", **TINY)
    tsl = Informer(preset="tsl", **TINY)
    assert off.enc_embedding.value_embedding.token_conv.bias is not None
    assert off.enc_embedding.temporal_embedding.embed.bias is not None
    assert tsl.enc_embedding.value_embedding.token_conv.bias is None
    assert tsl.enc_embedding.temporal_embedding.embed.bias is None
    assert off.settings.dropout == 0.05 and tsl.settings.dropout == 0.1
    assert off.settings.factor == 5 and tsl.settings.factor == 3
    enc_attn = off.encoder.attn_layers[0].attention.inner_attention
    dec_attn = off.decoder.layers[0].self_attention.inner_attention
    assert isinstance(enc_attn, ProbSparseAttention) and not enc_attn.causal
    assert isinstance(dec_attn, ProbSparseAttention) and dec_attn.causal
    assert (dec_attn.measure, dec_attn.masked_lazy, dec_attn.causal_sampling) == ("official", "cumsum", False)
    cross = off.decoder.layers[0].cross_attention.inner_attention
    assert isinstance(cross, FullAttention) and cross.dropout == 0.05 and not cross.causal
    # overrides win over the preset
    m = Informer(
        preset="tsl", cross_attention="full", distil_padding=1, embed_bias=True, dropout=0.0, factor=2, **TINY
    )
    assert (m.settings.cross_attention, m.settings.distil_padding, m.settings.embed_bias) == ("full", 1, True)
    assert m.encoder_length() == 48


def test_exact_and_fast_paths_agree():
    torch.manual_seed(0)
    fast = Informer(prob_impl="fast", dropout=0.0, **TINY).eval()
    exact = Informer(prob_impl="exact", dropout=0.0, **TINY).eval()
    exact.load_state_dict(fast.state_dict())
    inputs = _inputs()
    torch.manual_seed(123)
    a = fast(*inputs)
    torch.manual_seed(123)
    b = exact(*inputs)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "trims"),
    [
        (dict(preset="official-head"), True),
        (dict(preset="paper-2021-03", d_layers=2), True),
        (dict(preset="official-head", attention="full", mix="none"), True),
        (
            dict(preset="tsl"),
            False,
        ),  # ProbSparse cross-attention picks its active queries among all positions
        (dict(preset="official-head", mix="prob_layers", cross_attention="prob"), False),
        (dict(preset="official-head", delta_v=True, delta_v_layers="all"), False),
    ],
)
def test_trimmed_decoder_equals_the_untrimmed_one(kwargs, trims):
    """Dropping the label_len rows after the last decoder self-attention changes neither outputs nor gradients.

    Reference: the same weights with trimming switched off, in float64 (eval mode: no dropout; seeded sampling).
    """
    torch.manual_seed(0)
    model = Informer(**{**TINY, **kwargs}).double().eval()
    assert model.trim_decoder is trims
    inputs = [t.double() for t in _inputs(b=2)]
    outs, grads = [], []
    for trim in (trims, False):
        model.trim_decoder = trim
        model.zero_grad()
        torch.manual_seed(7)
        out = model(*inputs)
        out.pow(2).sum().backward()
        outs.append(out)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert outs[0].shape == (2, 24, 7)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-12)
    assert grads[0].keys() == grads[1].keys()
    for n in grads[1]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-9, atol=1e-11, msg=n)


@pytest.mark.parametrize("embed", ["fixed", "learned"])
@pytest.mark.parametrize("freq", ["h", "t"])
def test_calendar_embeddings(embed, freq):
    d_time = 4 if freq == "h" else 5
    marks = torch.stack(
        [torch.randint(1, 13, (2, 96)), torch.randint(1, 32, (2, 96)), torch.randint(0, 7, (2, 96)),
         torch.randint(0, 24, (2, 96)), torch.randint(0, 4, (2, 96))], dim=-1
    )[..., :d_time].float()  # fmt: skip
    emb = DataEmbedding(7, 16, embed=embed, freq=freq)
    assert emb(torch.randn(2, 96, 7), marks).shape == (2, 96, 16)
    fixed_params = [p for p in emb.temporal_embedding.parameters() if p.requires_grad]
    assert (len(fixed_params) == 0) == (embed == "fixed")


@pytest.mark.parametrize("pos", ["sinusoidal", "learned", "none"])
def test_pos_encoding_option(pos):
    m = Informer(pos_encoding=pos, **TINY)
    assert m(*_inputs()).shape == (3, 24, 7)


def test_value_embedding_is_circular_conv_and_timef_width():
    emb = DataEmbedding(7, 16, embed="timeF", freq="t")
    assert emb.value_embedding.token_conv.padding_mode == "circular"
    assert emb.temporal_embedding.embed.in_features == 5
    assert DataEmbedding(7, 16, freq="h").temporal_embedding.embed.in_features == 4


def test_decoder_input_start_token():
    y = torch.arange(2 * 10 * 3, dtype=torch.float32).view(2, 10, 3)
    d = decoder_input(y, label_len=6, pred_len=4)
    torch.testing.assert_close(d[:, :6], y[:, :6])
    assert (d[:, 6:] == 0).all() and d.shape == (2, 10, 3)
    assert (decoder_input(y, 6, 4, dec_fill=1)[:, 6:] == 1).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(preset="nope"), "unknown preset"),
        (dict(attention="sparse"), "unknown attention"),
        (dict(mix="sometimes"), "unknown mix"),
        (dict(cross_attention="x"), "unknown cross_attention"),
        (dict(embed="onehot"), "unknown embed"),
        (dict(activation="tanh"), "unknown activation"),
        (dict(label_len=100), "label_len"),
        (dict(label_len=-1), "label_len"),
        (dict(pred_len=0), "pred_len"),
        (dict(pred_len=-3), "pred_len"),
        (dict(seq_len=0, label_len=0), "seq_len"),
        (dict(seq_len=96.0), "seq_len"),
        (dict(c_out=0), "c_out"),
        (dict(pos_encoding="nope"), "unknown pos_encoding"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Informer(**{**TINY, **kwargs})


def test_every_length_is_checked_by_name():
    """``pred_len=0`` used to return ``label_len`` steps without complaint."""
    for name, bad in (("pred_len", 0), ("seq_len", -1), ("label_len", -2), ("pred_len", True)):
        with pytest.raises(ValueError, match=rf"^{name} must be an integer"):
            Informer(**{**TINY, name: bad})
    with pytest.raises(ValueError, match=r"label_len must be in \[0, seq_len=8\], got 9"):
        Informer(seq_len=8, label_len=9, **TINY)
    # an encoder window of another length is refused, not run on positions the model never saw
    m = Informer(seq_len=24, label_len=12, pred_len=6, **TINY)
    with pytest.raises(ValueError, match=r"x_enc has 30 steps; this Informer is built for seq_len=24"):
        m(*_inputs(seq_len=30, label_len=12, pred_len=6))
    # the edges are valid: no start token, or a start token as long as the window
    for label_len in (0, 8):
        m = Informer(seq_len=8, label_len=label_len, pred_len=1, **TINY)
        assert m(*_inputs(seq_len=8, label_len=label_len, pred_len=1)).shape == (3, 1, 7)


@pytest.mark.parametrize(
    ("embed", "freq", "width"), [("timeF", "h", 4), ("timeF", "t", 5), ("fixed", "h", 4)]
)
def test_time_feature_width_that_does_not_match_freq_is_named(embed, freq, width):
    m = Informer(embed=embed, freq=freq, **TINY)
    x, _, xd, _ = _inputs()
    good_enc, good_dec = torch.zeros(3, 96, width), torch.zeros(3, 72, width)
    assert m(x, good_enc, xd, good_dec).shape == (3, 24, 7)
    msg = rf"x_mark_enc must have shape \[B=3, L=96, {width}\] \({width} time features for embed='{embed}', freq='{freq}'\)"
    with pytest.raises(ValueError, match=msg):
        m(x, torch.zeros(3, 96, width + 1), xd, good_dec)
    with pytest.raises(ValueError, match=rf"x_mark_dec must have shape \[B=3, L=72, {width}\]"):
        m(x, good_enc, xd, torch.zeros(3, 72, width - 1))
    with pytest.raises(
        ValueError, match="x_mark_dec must have shape"
    ):  # length of the marks != of the values
        m(x, good_enc, xd, torch.zeros(3, 71, width))
    # without temporal embedding (or without marks) the marks are not read, so not checked
    assert m(x, None, xd, None).shape == (3, 24, 7)
    m2 = Informer(embed=embed, freq=freq, embed_parts="value", **TINY)
    assert m2(x, torch.zeros(3, 96, 9), xd, torch.zeros(3, 72, 9)).shape == (3, 24, 7)


def test_wrong_channel_count_is_named():
    m = Informer(enc_in=7, dec_in=5, c_out=1, **TINY)
    x, xm, xd, xdm = _inputs()
    with pytest.raises(ValueError, match=r"x_dec must have shape \[B, L, 5\], got \[3, 72, 7\]"):
        m(x, xm, xd, xdm)
    with pytest.raises(ValueError, match=r"x_enc must have shape \[B, L, 7\]"):
        m(x[..., :6], xm, xd[..., :5], xdm)
    assert m(x, xm, xd[..., :5], xdm).shape == (3, 24, 1)
