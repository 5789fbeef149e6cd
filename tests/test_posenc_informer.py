"""Position-encoding / ΔV options of the Informer (DataEmbedding, AttentionLayer) and the cross-term analysis
of a whole model (``favit-ps analyze cross-terms``)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from favit_probsparse.analysis.cross_terms import cross_terms
from favit_probsparse.analysis.informer_terms import informer_cross_terms
from favit_probsparse.attention.delta_v import DeltaVAttention
from favit_probsparse.attention.probsparse import FullAttention
from favit_probsparse.models.informer import AttentionLayer, DataEmbedding, Informer
from favit_probsparse.posenc import build_pos_encoding

D, H, T = 16, 4, 10
SMALL = dict(seq_len=16, label_len=8, pred_len=8, d_model=16, n_heads=4, d_ff=32)


class Recorder(torch.nn.Module):
    """Inner attention that records q, k and runs full attention."""

    def __init__(self):
        super().__init__()
        self.inner = FullAttention()

    def forward(self, q, k, v, attn_mask=None):
        self.q, self.k, self.mask = q, k, attn_mask
        return self.inner(q, k, v, attn_mask)


def _batch(b=2, seq=16, dec=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    return r(b, seq, 7), r(b, seq, 4), r(b, dec, 7), r(b, dec, 4)


# ---------------------------------------------------------------- AttentionLayer: injected terms
@pytest.mark.parametrize("terms", ["all", "cross", "pospos", "no_cross", "c2p+p2p"])
def test_injected_logits_are_the_selected_terms(terms):
    torch.manual_seed(0)
    pe = build_pos_encoding("sinusoidal", D, 100).double()
    layer = AttentionLayer(Recorder(), D, H, pos_encoding=pe, pos_terms=terms).double()
    zero_bias = terms != "all"  # with biases, the remainder attaches to the content projections
    if zero_bias:
        torch.nn.init.zeros_(layer.query_projection.bias)
        torch.nn.init.zeros_(layer.key_projection.bias)
    x = torch.randn(2, T, D, dtype=torch.float64)
    layer(x, x, x)
    rec = layer.inner_attention
    logits = rec.q @ rec.k.mT / math.sqrt(rec.q.shape[-1])
    t = cross_terms(
        x,
        pe.table(T),
        layer.query_projection.weight,
        layer.key_projection.weight,
        layer.query_projection.bias,
        layer.key_projection.bias,
        n_heads=H,
    )
    want = {
        "all": t["logits"],
        "cross": t["c2p"] + t["p2c"],
        "pospos": t["p2p"],
        "no_cross": t["c2c"] + t["p2p"],
        "c2p+p2p": t["c2p"] + t["p2p"],
    }[terms]
    assert (logits - want.expand_as(logits)).abs().max() < 1e-10


def test_injected_all_equals_plain_attention_on_x_plus_p_logits_and_values_from_content():
    torch.manual_seed(0)
    pe = build_pos_encoding("sinusoidal", D, 100).double()
    inj = AttentionLayer(FullAttention(), D, H, pos_encoding=pe, pos_terms="all").double()
    plain = AttentionLayer(FullAttention(), D, H).double()
    plain.load_state_dict(inj.state_dict())
    x = torch.randn(2, T, D, dtype=torch.float64)
    xp = x + pe.table(T)
    # logits from x + p, values from x: equal to plain attention with queries/keys x+p and values x
    assert (inj(x, x, x) - plain(xp, xp, x)).abs().max() < 1e-10


def test_rope_and_alibi_inside_attention():
    torch.manual_seed(0)
    x = torch.randn(2, T, D, dtype=torch.float64)
    al = AttentionLayer(Recorder(), D, H, pos_encoding=build_pos_encoding("alibi", D)).double()
    al(x, x, x)
    assert al.inner_attention.mask.shape == (1, H, T, T)
    assert torch.allclose(
        al.inner_attention.mask[0, 1, 2, 5], torch.tensor(-3 * 2.0**-4, dtype=torch.float64)
    )
    ro = AttentionLayer(Recorder(), D, H, pos_encoding=build_pos_encoding("rope", D)).double()
    plain = AttentionLayer(Recorder(), D, H).double()
    plain.load_state_dict(ro.state_dict())
    ro(x, x, x), plain(x, x, x)
    assert torch.allclose(
        ro.inner_attention.q[:, :, 0], plain.inner_attention.q[:, :, 0]
    )  # position 0: identity
    assert not torch.allclose(ro.inner_attention.q, plain.inner_attention.q)
    assert torch.allclose(ro.inner_attention.q.norm(dim=-1), plain.inner_attention.q.norm(dim=-1))


def test_delta_v_and_deep_mlp_wiring():
    m = Informer(**SMALL, delta_v=True)
    assert isinstance(m.encoder.attn_layers[0].attention.inner_attention, DeltaVAttention)
    assert isinstance(m.decoder.layers[0].self_attention.inner_attention, DeltaVAttention)
    assert not isinstance(m.decoder.layers[0].cross_attention.inner_attention, DeltaVAttention)
    assert m.decoder.layers[0].self_attention.inner_attention.causal
    m_all = Informer(**SMALL, delta_v={"momentum": True, "learn_beta": True}, delta_v_layers="all")
    assert isinstance(m_all.decoder.layers[0].cross_attention.inner_attention, DeltaVAttention)
    assert m_all.encoder.attn_layers[0].attention.inner_attention.momentum
    base, deep = Informer(**SMALL), Informer(**SMALL, deep_mlp=True)
    n = lambda mm: sum(p.numel() for p in mm.parameters())
    assert n(deep) - n(base) == 4 * (16 * 16 + 16)  # 2 encoder + decoder self + cross layers
    # ΔV with gate 0 reproduces the plain model exactly
    torch.manual_seed(0)
    plain = Informer(**SMALL, attention="full", dropout=0.0)
    dv0 = Informer(**SMALL, attention="full", dropout=0.0, delta_v={"gate": 0.0})
    dv0.load_state_dict(plain.state_dict())
    b = _batch()
    plain.eval(), dv0.eval()
    assert torch.equal(plain(*b), dv0(*b))


def test_embedding_parts_and_injection_wiring():
    torch.manual_seed(0)
    emb = DataEmbedding(7, 16, dropout=0.0, parts="value")
    x, xm = torch.randn(2, 12, 7), torch.randn(2, 12, 4)
    assert torch.equal(emb(x, xm), emb.value_embedding(x))
    emb2 = DataEmbedding(7, 16, dropout=0.0, parts="value+temporal")
    assert torch.allclose(emb2(x, xm), emb2.value_embedding(x) + emb2.temporal_embedding(xm))
    with pytest.raises(ValueError):
        DataEmbedding(7, 16, parts="temporal")
    m = Informer(**SMALL, attention="full", pos_inject="layers", pos_terms="cross")
    assert m.enc_embedding.parts == {"value", "temporal"}
    assert m.encoder.attn_layers[1].attention.pos_terms == ("c2p", "p2c")
    assert m.decoder.layers[0].cross_attention.pos_encoding is None
    m2 = Informer(**SMALL, pos_encoding="rope")
    assert m2.encoder.attn_layers[0].attention.pos_encoding.kind == "rotary"
    assert m2.decoder.layers[0].cross_attention.pos_encoding is None
    assert Informer(**SMALL).encoder.attn_layers[0].attention.pos_encoding is None  # default: official model
    leg = Informer(**SMALL, pos_encoding="legendre", pos_kwargs={"grid": "midpoint", "scale": "orthonormal"})
    assert leg.enc_embedding.position_embedding.grid == "midpoint"
    with pytest.raises(ValueError, match="pos_inject"):
        Informer(**SMALL, pos_inject="nowhere")
    for kw in (
        {"pos_encoding": "alibi"},
        {"pos_encoding": "legendre_orth"},
        {"pos_inject": "both", "pos_terms": "pospos"},
    ):
        out = Informer(**SMALL, **kw)(*_batch())
        assert out.shape == (2, 8, 7) and torch.isfinite(out).all()


# ---------------------------------------------------------------- whole-model cross-term analysis
@pytest.mark.parametrize(
    "kw", [{}, {"attention": "full", "pos_inject": "layers", "pos_terms": "cross"}, {"pos_encoding": "none"}]
)
def test_informer_cross_terms_sum_exactly_to_the_layer_logits(kw):
    torch.manual_seed(0)
    m = Informer(**SMALL, **kw).double()
    b = _batch(dtype=torch.float64)
    res = informer_cross_terms(m, *b)
    assert [r.name for r in res] == ["encoder.0", "encoder.1", "decoder.0.self"]
    for r in res:
        assert r.max_abs_sum_error < 1e-10
    # the analysed logits are the ones the layer computes
    m.eval()
    layer = m.encoder.attn_layers[0].attention
    inner = layer.inner_attention
    layer.inner_attention = Recorder()
    m(*b)
    q, k = layer.inner_attention.q, layer.inner_attention.k
    layer.inner_attention = inner
    actual = q @ k.mT / math.sqrt(q.shape[-1])
    raw = informer_cross_terms(m, *b)[0]
    # maps are row-centred batch means: compare the same reduction of the actual logits
    centred = (actual - actual.mean(-1, keepdim=True)).mean(0)
    assert (raw.maps["logits"] - centred).abs().max() < 1e-10
    if not kw:
        assert res[0].mode == "input (exact)" and res[0].extra["input_reconstruction_error"] < 1e-12
        assert res[1].mode == "mean decomposition"


def _fake_etth1(path):
    n = 17420
    dates = pd.date_range("2016-07-01", periods=n, freq="h")
    rng = np.random.default_rng(0)
    t = np.arange(n)[:, None]
    vals = np.sin(2 * np.pi * t / 24 + np.arange(7)) + 0.1 * rng.standard_normal((n, 7))
    df = pd.DataFrame(vals, columns=["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"])
    df.insert(0, "date", dates.strftime("%Y-%m-%d %H:%M:%S"))
    df.to_csv(path, index=False)


def test_analyze_cli_cross_terms_and_pos_decay(tmp_path):
    from favit_probsparse.analysis.cli import main
    from favit_probsparse.training.forecast import Forecaster

    torch.manual_seed(0)
    module = Forecaster.from_config(
        {
            "class_path": "favit_probsparse.models.informer.Informer",
            "init_args": dict(**SMALL, attention="full", pos_inject="layers", pos_terms="pospos"),
        },
        label_len=SMALL["label_len"],
        pred_len=SMALL["pred_len"],
    )
    ckpt = tmp_path / "m.ckpt"
    meta = {"favit_probsparse": module.checkpoint_metadata()}  # what Lightning's save adds through the hook
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict(), **meta}, ckpt)
    csv = tmp_path / "ETTh1.csv"
    _fake_etth1(csv)
    out = tmp_path / "ct"
    assert (
        main(
            [
                "cross-terms",
                "--ckpt",
                str(ckpt),
                "--data-path",
                str(csv),
                "--batches",
                "1",
                "--batch-size",
                "4",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    text = (out / "cross_terms.md").read_text()
    assert "pos-pos" in text and (out / "cross_terms_encoder_0.png").stat().st_size < 300_000
    assert (out / "cross_terms_shares.png").exists() and (out / "cross_terms.json").exists()
    pd_out = tmp_path / "pd"
    assert (
        main(["pos-decay", "--out", str(pd_out), "--max-len", "40", "--d-model", "64", "--trials", "100"])
        == 0
    )
    for f in (
        "pos_decay_report_estimator.png",
        "pos_decay_gram.png",
        "pos_decay_cosine.png",
        "pos_decay_summary.csv",
    ):
        assert (pd_out / f).exists()


def test_posenc_report_tables(tmp_path):
    import json

    from favit_probsparse.analysis.posenc_report import tables

    def row(name, ref, vals):
        m = {"values": vals, "mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)), "n": len(vals)}
        return {"row": name, "label": name, "reference": ref, "metrics": {"test_mse": m, "test_mae": m}}

    summary = [row("vanilla", "0.5 / 0.5", [0.7, 0.8]), row("nope", "0.9 / 0.7", [0.9, 1.0])]
    (tmp_path / "posenc-ablation-etth1.json").write_text(json.dumps({"summary": summary}))
    text = tables(tmp_path)
    assert "Table 6" in text and "| nope | 0.950 ± 0.071 (0.900, 1.000)" in text
    assert "+0.200 | +0.400 |" in text  # ours and the report's change against vanilla
    assert "Table 3" not in text  # no ETTm1 file
