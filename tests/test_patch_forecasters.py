"""FaSAForecaster and the PatchTST-style forecaster: RevIN and patching against numpy / explicit slicing, shapes
and one-line argument errors, FaSA with one window over all patches against a naive float64 full-attention
restatement, PatchTST's attention against ``torch.nn.MultiheadAttention``, ΔV against its formula, a few training
steps through the one Forecaster, export + from_pretrained, and the configs' wiring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from favit_probsparse.layers.patch_ts import RevIN, TimePatches, num_patches
from favit_probsparse.models.dlinear import DLinear
from favit_probsparse.models.fasa_forecaster import DeltaVFaSA, FaSAForecaster
from favit_probsparse.models.patchtst import DeltaValues, PatchTST

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[1]
TINY_FASA = dict(d_model=16, n_heads=1, e_layers=2, d_ff=32, window_size=4, sr_ratio=2, dropout=0.0)
TINY_TST = dict(d_model=16, n_heads=4, e_layers=2, d_ff=32, dropout=0.0)
SHAPES = dict(enc_in=3, seq_len=32, label_len=8, pred_len=8, patch_len=8, stride=4)  # 8 patches


# ------------------------------------------------------------------------------------------- RevIN, patches
@pytest.mark.parametrize("subtract_last", [False, True])
def test_revin_normalizes_each_window_and_channel_and_inverts(subtract_last):
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(4, 20, 3))
    rev = RevIN(3, affine=True, subtract_last=subtract_last).to(F64)
    with torch.no_grad():
        rev.affine_weight.copy_(torch.tensor([0.5, 2.0, -1.0], dtype=F64))
        rev.affine_bias.copy_(torch.tensor([0.1, 0.0, 3.0], dtype=F64))
    got = rev.norm(torch.from_numpy(x)).detach().numpy()
    center = x[:, -1:] if subtract_last else x.mean(1, keepdims=True)
    ref = (x - center) / np.sqrt(x.var(1, keepdims=True) + 1e-5) * [0.5, 2.0, -1.0] + [0.1, 0.0, 3.0]
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    # denorm of the normalized window gives the window back (up to the eps² of the official inverse)
    back = rev.denorm(torch.from_numpy(got)).detach().numpy()
    np.testing.assert_allclose(back, x, rtol=0, atol=1e-8)


@pytest.mark.parametrize(
    ("seq_len", "patch_len", "stride", "padding"), [(96, 16, 8, "end"), (32, 8, 4, None), (10, 3, 2, "end")]
)
def test_patches_are_the_slices_of_the_end_padded_window(seq_len, patch_len, stride, padding):
    x = torch.randn(2, seq_len, 3, dtype=F64)
    got = TimePatches(seq_len, patch_len, stride, padding)(x)
    padded = torch.cat([x, x[:, -1:].expand(-1, stride, -1)], 1) if padding == "end" else x
    n = num_patches(seq_len, patch_len, stride, padding)
    assert n == (seq_len - patch_len) // stride + 1 + (padding == "end")
    assert got.shape == (2, 3, n, patch_len)
    for i in range(n):
        torch.testing.assert_close(
            got[:, :, i], padded[:, i * stride : i * stride + patch_len].transpose(1, 2)
        )


# ------------------------------------------------------------------------------------------- shapes, errors
@pytest.mark.parametrize("cls", [FaSAForecaster, PatchTST])
@pytest.mark.parametrize(("c_out", "mixing"), [(3, False), (1, False), (3, True)])
def test_shapes_and_the_last_channels(cls, c_out, mixing):
    kw = TINY_FASA if cls is FaSAForecaster else TINY_TST
    torch.manual_seed(0)
    full = cls(**SHAPES, **kw, channel_mixing=mixing)
    torch.manual_seed(0)
    part = cls(**SHAPES, **kw, channel_mixing=mixing, c_out=c_out, dec_in=3).eval()
    x = torch.randn(5, 32, 3)
    out = part(x, torch.randn(5, 32, 4), torch.randn(5, 16, 3), torch.randn(5, 16, 4))
    assert out.shape == (5, 8, c_out)
    torch.testing.assert_close(out, full.eval()(x)[..., -c_out:])


@pytest.mark.parametrize("cls", [FaSAForecaster, PatchTST])
def test_channel_independent_forecast_of_a_channel_reads_only_that_channel(cls):
    kw = TINY_FASA if cls is FaSAForecaster else {**TINY_TST, "norm": "layer"}  # BatchNorm mixes the batch
    model = cls(**SHAPES, **kw).eval()
    x = torch.randn(2, 32, 3)
    y = x.clone()
    y[..., 0] += torch.randn(2, 32)
    a, b = model(x), model(y)
    torch.testing.assert_close(a[..., 1:], b[..., 1:])
    assert not torch.allclose(a[..., 0], b[..., 0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patch_len": 40}, "patch_len=40 must be <= seq_len=32"),
        ({"stride": 0}, "stride"),
        ({"c_out": 4}, "c_out"),
        ({"dec_in": 2}, "dec_in"),
        ({"padding_patch": "start"}, "padding_patch"),
        ({"pos_encoding": "wavelet"}, "unknown pos_encoding"),
        ({"dropout": 1.0}, "dropout"),
        ({"pos_encoding": "rope"}, "acts inside attention"),
        ({"pos_encoding": "alibi"}, "acts inside attention"),
        ({"sr_ratio": 9}, "sr_ratio=9 must be <= the number of patches 8"),
        ({"window_size": 9, "small_grid": "error"}, "window_size=9"),
        ({"fusion": "avg"}, "unknown fusion"),
        ({"fusion": "hierarchical", "delta_v": True}, "delta_v needs keys in time order"),
        ({"delta_v": {"gain": 1}}, "unknown delta_v options"),
        ({"n_heads": 3}, "divisible by num_heads"),
    ],
)
def test_fasa_forecaster_bad_arguments_are_one_line_errors(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        FaSAForecaster(**{**SHAPES, **TINY_FASA, **kwargs})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_heads": 3}, "divisible by n_heads"),
        ({"norm": "group"}, "unknown norm"),
        ({"e_layers": 0}, "e_layers"),
    ],
)
def test_patchtst_bad_arguments_are_one_line_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PatchTST(**{**SHAPES, **TINY_TST, **kwargs})


def test_wrong_input_shape_is_named():
    with pytest.raises(ValueError, match=r"x_enc must have shape \[B, seq_len=32, enc_in=3\]"):
        FaSAForecaster(**SHAPES, **TINY_FASA)(torch.randn(2, 30, 3))


# ------------------------------------------------------------------------------------------- FaSA = full attention
def _dw3(conv, t):
    """Depthwise conv (kernel 3, zero padding 1) along the tokens of ``t [B, N, ch]`` by explicit sums."""
    n = t.shape[1]
    out = torch.zeros_like(t) + conv.bias
    for i in range(n):
        for k in range(3):
            j = i + k - 1
            if 0 <= j < n:
                out[:, i] += conv.weight[:, 0, k] * t[:, j]
    return out


def _softmax_attend(q, k, v, scale):
    s = (q @ k.transpose(-1, -2)) * scale
    w = torch.exp(s - s.amax(-1, keepdim=True))
    return (w / w.sum(-1, keepdim=True)) @ v


def naive_one_window_fasa(m, x):
    """What FaSA computes with ``sr_ratio=1`` and one window of all N patches (``window_size=N``, fusion
    ``official``): two branches of *full* attention over all N patches.

    * global (first ``Cg = C/8`` channels, one head): keys/values ``LN(x_g W_sr + b_sr) W_kv``, plus a depthwise
      kernel-3 conv of V over the patches (sr 1: the reduction is a per-patch linear map);
    * window branch (the other ``7C/8`` channels, ``h`` heads of width ``c``): source ``s = pw(dw3(x_l))`` over all
      N patches; the one window holds every patch in order and ``official`` fusion of ``L = 1`` window is the
      identity, so head ``j``'s keys/values are ``fc_kv(fc(s[:, :, jc:(j+1)c]))`` plus a depthwise kernel-3 conv
      of V over the patches;
    * each query attends to all N keys with an explicit softmax; heads concatenated, then ``proj``.
    """
    C = x.shape[-1]
    cg, h = m.single_dim[0], m.num_heads
    c = (C - cg) // h

    def lin(layer, t):
        return t @ layer.weight.T + layer.bias

    q = lin(m.q, x)
    xg = x[:, :, :cg] @ m.sr.weight[:, :, 0].T + m.sr.bias
    xg = (xg - xg.mean(-1, keepdim=True)) / torch.sqrt(xg.var(-1, unbiased=False, keepdim=True) + m.norm.eps)
    kv = lin(m.kv_g, xg * m.norm.weight + m.norm.bias)
    kg, vg = kv[..., :cg], kv[..., cg:]
    outs = [_softmax_attend(q[:, :, :cg], kg, vg + _dw3(m.local_conv_g, vg), cg**-0.5)]
    s = _dw3(m.kv_l.depth_conv, x[:, :, cg:]) @ m.kv_l.point_conv.weight[:, :, 0].T + m.kv_l.point_conv.bias
    lc = m.local_convs[0]
    for j in range(h):
        kv = lin(m.single_heads[0], lin(m.fcs[0], s[:, :, j * c : (j + 1) * c]))
        kj, vj = kv[..., :c], kv[..., c:]
        conv_j = torch.nn.Conv1d(c, c, 3, padding=1, groups=c).to(F64)
        conv_j.weight.data, conv_j.bias.data = lc.weight[j * c : (j + 1) * c], lc.bias[j * c : (j + 1) * c]
        qj = q[:, :, cg + j * c : cg + (j + 1) * c]
        outs.append(_softmax_attend(qj, kj, vj + _dw3(conv_j, vj), c**-0.5))
    return lin(m.proj, torch.cat(outs, -1))


@pytest.mark.parametrize("heads", [1, 2])
def test_fasa_with_one_window_over_all_patches_is_full_attention(heads):
    n = num_patches(32, 8, 4)
    torch.manual_seed(0)
    model = FaSAForecaster(**SHAPES, d_model=32, n_heads=heads, e_layers=1, d_ff=16, dropout=0.0, sr_ratio=1,
                           window_size=n, fusion="official").to(F64)  # fmt: skip
    attn = model.blocks[0].attn
    assert attn.num_windows((n,)) == [1] and len(attn.dilations) == 1  # one window branch with one window
    with torch.no_grad():
        for p in attn.parameters():  # away from the default init (zero biases, unit LayerNorm)
            p.copy_(torch.randn_like(p) * 0.3)
    x = torch.randn(3, n, 32, dtype=F64)
    ref = naive_one_window_fasa(attn, x)
    torch.testing.assert_close(attn(x, n), ref, rtol=1e-10, atol=1e-10)
    # full attention: the first patch's output depends on the last patch through the attention
    y = x.clone()
    y[:, -1] += 1.0
    assert not torch.allclose(attn(y, n)[:, 0], attn(x, n)[:, 0])


# ------------------------------------------------------------------------------------------- PatchTST, ΔV
def test_patchtst_attention_equals_torch_multihead_attention():
    torch.manual_seed(0)
    model = PatchTST(**SHAPES, **TINY_TST).to(F64).eval()
    att = model.layers[0].self_attn
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=True).to(F64)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([att.W_Q.weight, att.W_K.weight, att.W_V.weight]))
        mha.in_proj_bias.copy_(torch.cat([att.W_Q.bias, att.W_K.bias, att.W_V.bias]))
        mha.out_proj.weight.copy_(att.to_out[0].weight)
        mha.out_proj.bias.copy_(att.to_out[0].bias)
    x = torch.randn(2, 8, 16, dtype=F64)
    out, scores = att(x)
    torch.testing.assert_close(out, mha(x, x, x, need_weights=False)[0], rtol=1e-12, atol=1e-12)
    # residual attention: the next layer's logits are its own plus these
    prev = torch.randn_like(scores)
    q = att.W_Q(x).view(2, 8, 4, 4).transpose(1, 2)
    k = att.W_K(x).view(2, 8, 4, 4).transpose(1, 2)
    _, s2 = att(x, prev)
    torch.testing.assert_close(s2, q @ k.transpose(-1, -2) / 2.0 + prev)


def test_patchtst_rope_and_alibi_make_attention_depend_on_patch_order():
    """Without any position encoding the encoder is permutation-equivariant over patches; RoPE/ALiBi break it."""
    x = torch.randn(2, 8, 16)
    perm = torch.randperm(8)
    for pe, equivariant in (("none", True), ("rope", False), ("alibi", False)):
        torch.manual_seed(0)
        m = PatchTST(**SHAPES, **TINY_TST, pos_encoding=pe, norm="layer").eval()
        a, b = m.forward_features(x)[:, perm], m.forward_features(x[:, perm])
        assert torch.allclose(a, b, atol=1e-5) == equivariant, pe


def test_delta_values_formula_and_fasa_with_zero_gate():
    v = torch.randn(2, 3, 5, 4, dtype=F64)
    ref = v.clone()
    for t in range(1, 5):
        ref[:, :, t] += 0.7 * (v[:, :, t] - v[:, :, t - 1])
    torch.testing.assert_close(DeltaValues(gate=0.7)(v), ref)
    torch.manual_seed(0)
    plain = FaSAForecaster(**SHAPES, **TINY_FASA).eval()
    torch.manual_seed(0)
    zero = FaSAForecaster(**SHAPES, **TINY_FASA, delta_v={"gate": 0.0}).eval()
    torch.manual_seed(0)
    one = FaSAForecaster(**SHAPES, **TINY_FASA, delta_v=True).eval()
    assert isinstance(one.blocks[0].attn, DeltaVFaSA)
    x = torch.randn(2, 32, 3)
    torch.testing.assert_close(zero(x), plain(x))
    assert not torch.allclose(one(x), plain(x))


# ------------------------------------------------------------------------------------------- Forecaster contract
def _sine_frame(n=600, seed=0):
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    cols = {
        f"s{i}": np.sin(2 * np.pi * t / p) + 0.1 * rng.standard_normal(n) for i, p in enumerate((24, 12, 48))
    }
    return pd.DataFrame({"date": pd.date_range("2020-01-01", periods=n, freq="h"), **cols})


@pytest.mark.parametrize(
    "spec",
    [
        {
            "class_path": "favit_probsparse.models.fasa_forecaster.FaSAForecaster",
            "init_args": {**TINY_FASA, "fusion": "probsparse"},
        },
        {"class_path": "favit_probsparse.models.patchtst.PatchTST", "init_args": TINY_TST},
    ],
    ids=["fasa", "patchtst"],
)
def test_training_steps_through_the_forecaster_lower_the_validation_loss(spec, tmp_path):
    from lightning.pytorch import Trainer

    from favit_probsparse.data.timeseries import TimeSeriesDataModule
    from favit_probsparse.training.forecast import Forecaster

    torch.manual_seed(0)
    dm = TimeSeriesDataModule.from_frame(_sine_frame(), seq_len=32, label_len=8, pred_len=8, batch_size=32)
    init = {**spec["init_args"], "enc_in": 3, "dec_in": 3, "c_out": 3, "seq_len": 32, "label_len": 8,
            "pred_len": 8, "patch_len": 8, "stride": 4}  # fmt: skip
    module = Forecaster.from_config({**spec, "init_args": init}, learning_rate=3e-3, label_len=8, pred_len=8)
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=25, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      default_root_dir=str(tmp_path))  # fmt: skip
    before = trainer.validate(module, datamodule=dm, verbose=False)[0]["val_loss"]
    trainer.fit(module, datamodule=dm)
    after = trainer.validate(module, datamodule=dm, verbose=False)[0]["val_loss"]
    assert np.isfinite(after) and after < 0.7 * before, (before, after)


@pytest.mark.parametrize(
    "spec",
    [
        {"class_path": "favit_probsparse.models.fasa_forecaster.FaSAForecaster",
         "init_args": {**SHAPES, **TINY_FASA, "fusion": "probsparse", "delta_v": True, "pos_encoding": "legendre"}},
        {"class_path": "favit_probsparse.models.patchtst.PatchTST", "init_args": {**SHAPES, **TINY_TST, "affine": True}},
    ],
    ids=["fasa", "patchtst"],
)  # fmt: skip
def test_export_and_from_pretrained(spec, tmp_path):
    from favit_probsparse.training.checkpoint import META_KEY
    from favit_probsparse.training.export import export_checkpoint, from_pretrained
    from favit_probsparse.training.forecast import Forecaster

    torch.manual_seed(0)
    module = Forecaster.from_config(spec, features="M", label_len=8, pred_len=8)
    with (
        torch.no_grad()
    ):  # trained-looking weights: BatchNorm statistics and affine RevIN away from their init
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.normal_()
        for name, p in module.named_parameters():
            if "affine" in name:
                p.add_(torch.rand_like(p))
    module.data_info = {"columns": ["a", "b", "c"], "freq": "h", "data_freq": "h", "timeenc": 1,
                        "scaler": {"mean": [1.0, 2.0, 3.0], "std": [2.0, 2.0, 2.0]}}  # fmt: skip
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
            META_KEY: module.checkpoint_metadata()}  # fmt: skip
    torch.save(ckpt, tmp_path / "m.ckpt")
    loaded = from_pretrained(export_checkpoint(tmp_path / "m.ckpt", tmp_path / "exp"))
    assert type(loaded.network).__name__ == spec["class_path"].rsplit(".", 1)[1]
    batch = [
        torch.randn(2, 32, 3),
        torch.randn(2, 16, 3),
        torch.rand(2, 32, 4) - 0.5,
        torch.rand(2, 16, 4) - 0.5,
    ]
    module.eval()
    torch.manual_seed(1)
    ref = module(*batch)
    torch.manual_seed(1)
    assert torch.equal(loaded(*batch), ref)


# ------------------------------------------------------------------------------------------- configs
CONFIGS = sorted((ROOT / "configs" / "forecast").glob("fasa_*.yaml")) + sorted(
    (ROOT / "configs" / "forecast").glob("patchtst_*.yaml")
)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_configs_build_their_network_with_the_data_shapes(path):
    from favit_probsparse.config import load_config
    from favit_probsparse.training import lightning_cli

    d_args = load_config(path)["data"]["init_args"]
    cli = lightning_cli(
        ["--config", str(path), "--trainer.logger", "false", "--trainer.callbacks", "[]"], run=False
    )
    net = cli.model.network
    assert isinstance(net, (FaSAForecaster, PatchTST))
    cli.model.check_data(cli.datamodule)
    assert (net.seq_len, net.pred_len, net.enc_in) == (d_args["seq_len"], d_args["pred_len"], 7)
    out = net.eval()(torch.randn(2, net.seq_len, 7))
    assert out.shape == (2, net.pred_len, 7)


def test_type3_schedule_is_patchtsts():
    """PatchTST's ``adjust_learning_rate`` type3, called after each (1-based) epoch ``e``: lr0 if e < 3 else
    lr0·0.9^(e − 3); the multiplier of 0-based epoch E is the one set after epoch E (1-based)."""
    from favit_probsparse.training.forecast import lr_lambda

    def official(e):
        return 1.0 if e < 3 else 0.9 ** (e - 3)

    f = lr_lambda("type3")
    assert [f(e) for e in range(8)] == pytest.approx([1.0] + [official(e) for e in range(1, 8)])


@pytest.mark.slow
def test_every_row_of_the_fasa_forecast_grid_builds_its_network(tmp_path):
    """Each row's resolved config (base + base_overrides + row overrides) parses under ``favit-ps`` and builds the
    intended network with the row's data shapes (a wrong override would build another model or fail)."""
    from favit_probsparse.config import apply_overrides
    from favit_probsparse.experiments.grid import load_grid
    from favit_probsparse.experiments.runner import _base_config
    from favit_probsparse.training import lightning_cli

    grid = load_grid(ROOT / "configs" / "ablations" / "fasa_forecast_ett.yaml")
    base = apply_overrides(_base_config(grid), grid.base_overrides)
    for row in grid.rows:
        cfg = apply_overrides(base, row.overrides)
        cfg["trainer"].update(logger=False, callbacks=[])
        path = tmp_path / f"{row.name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        cli = lightning_cli(["--config", str(path)], run=False)
        net, args = cli.model.network, cfg["model"]["init_args"]["network"]["init_args"]
        assert type(net).__name__ == cfg["model"]["init_args"]["network"]["class_path"].rsplit(".", 1)[1]
        assert net.pred_len == cfg["data"]["init_args"]["pred_len"], row.name
        if "d_model" in args and hasattr(net, "patch_embed"):  # no width inherited from another preset
            assert net.patch_embed.out_features == args["d_model"], row.name
        if "fusion" in args:
            assert net.blocks[0].attn.fusion_name == args["fusion"], row.name
        if args.get("pos_encoding") == "none":
            assert net.pos_encoding.kind == "none", row.name


@pytest.mark.parametrize("cls", [DLinear, PatchTST, FaSAForecaster], ids=lambda c: c.__name__)
def test_a_network_built_without_dec_in_agrees_with_multivariate_data(cls):
    """dec_in is not read by these networks; left out, it equals enc_in, so the Forecaster's check of the data's
    shapes (dec_in = 7 for M data) passes for a network built in Python."""
    from favit_probsparse.training.forecast import Forecaster

    net = cls(enc_in=7, seq_len=96, label_len=48, pred_len=24)
    assert net.dec_in == 7

    class Data:  # the shapes a TimeSeriesDataModule states for ETT, M 96/48/24
        seq_len, label_len, pred_len, features, enc_in, dec_in, c_out = 96, 48, 24, "M", 7, 7, 7

    Forecaster(net, features="M").check_data(Data())
