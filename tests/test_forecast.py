"""Forecast training: schedule, metrics, one epoch on real ETTh1 lowers the validation loss, kill-and-resume equals
an uninterrupted run, configs parse and agree with their data, the multi-seed runner aggregates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from lightning.pytorch import Trainer

from favit_probsparse.data.ett import ETTDataModule, ett_path
from favit_probsparse.models.informer import Informer
from favit_probsparse.training.forecast import Forecaster, _MetricSums, lr_lambda

ROOT = Path(__file__).resolve().parents[1]
needs_etth1 = pytest.mark.skipif(not ett_path("ETTh1").exists(), reason="real ETTh1.csv not present")
TINY = dict(d_model=16, n_heads=4, d_ff=32, e_layers=2, d_layers=1)
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_type1_schedule_matches_official():
    f = lr_lambda("type1")
    # official: epochs 1-2 at lr0, epoch 3 at lr0/2, epoch 4 at lr0/4, ...
    assert [f(e) for e in range(6)] == [1.0, 1.0, 0.5, 0.25, 0.125, 0.0625]
    g = lr_lambda("type2")
    assert g(0) == 1.0 and g(2) == pytest.approx(0.5) and g(4) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="unknown lradj"):
        lr_lambda("cosine")


def test_metric_sums_match_numpy():
    rng = np.random.default_rng(0)
    pred, true = rng.normal(size=(2, 50, 24, 7))
    sums = _MetricSums(torch.device("cpu"))
    for i in range(0, 50, 16):  # ragged last batch
        sums.update(torch.tensor(pred[i : i + 16]), torch.tensor(true[i : i + 16]))
    res = sums.compute()
    err = pred - true
    np.testing.assert_allclose(res["mse"], np.mean(err**2), rtol=1e-12)
    np.testing.assert_allclose(res["mae"], np.mean(np.abs(err)), rtol=1e-12)
    np.testing.assert_allclose(res["rmse"], np.sqrt(np.mean(err**2)), rtol=1e-12)
    np.testing.assert_allclose(res["mape"], np.mean(np.abs(err / true)), rtol=1e-10)
    np.testing.assert_allclose(res["mspe"], np.mean((err / true) ** 2), rtol=1e-10)


def test_original_scale_metrics():
    m = Forecaster(Informer(c_out=2, enc_in=2, dec_in=2, **TINY))
    m.set_scaler([0.0, 10.0, -1.0], [1.0, 2.0, 0.5])  # data scaler over 3 channels; the last 2 are predicted
    m._eval_start("t")
    pred, true = torch.zeros(4, 3, 2), torch.ones(4, 3, 2)
    m._eval_update("t", pred, true)
    res = m._eval_end("t")
    assert res["mse"] == pytest.approx(1.0)
    assert res["mse_original"] == pytest.approx((4.0 + 0.25) / 2)  # errors scaled by std: 2 and 0.5
    assert res["mae_original"] == pytest.approx((2.0 + 0.5) / 2)


def _dm(**kw):
    return ETTDataModule("ETTh1", **{**dict(seq_len=24, label_len=12, pred_len=12, batch_size=128), **kw})


def _module(learning_rate=1e-4, **kw):
    net = Informer(**{**dict(seq_len=24, label_len=12, pred_len=12, **TINY), **kw})
    return Forecaster(net, learning_rate=learning_rate)


def _trainer(tmp_path, **kw):
    return Trainer(
        **{
            **dict(
                accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                default_root_dir=str(tmp_path),
            ),
            **kw,
        }
    )  # fmt: skip


@needs_etth1
@pytest.mark.slow
def test_one_epoch_lowers_the_validation_loss(tmp_path):
    """A whole epoch (all 67 training batches of 128 windows) of a tiny Informer on the real ETTh1 data."""
    torch.manual_seed(0)
    dm, model = _dm(eval_batch_size=1024), _module(learning_rate=1e-3)
    trainer = _trainer(tmp_path)
    before = trainer.validate(model, datamodule=dm, verbose=False)[0]["val_loss"]
    trainer.fit(model, datamodule=dm)
    assert trainer.fit_loop.epoch_loop.batch_progress.total.completed == (8640 - 24 - 12 + 1) // 128
    after = trainer.validate(model, datamodule=dm, verbose=False)[0]["val_loss"]
    assert after < 0.85 * before, (before, after)
    # validation is deterministic for fixed weights although ProbSparse samples keys at random
    again = trainer.validate(model, datamodule=dm, verbose=False)[0]["val_loss"]
    assert again == pytest.approx(after, rel=1e-6)
    test = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert set(test) >= {"test_mse", "test_mae", "test_rmse", "test_mape", "test_mspe"}
    assert test["test_rmse"] == pytest.approx(test["test_mse"] ** 0.5, rel=1e-5)


def test_bf16_autocast_tracks_float32():
    """CPU bf16 autocast (``trainer.precision: bf16-mixed``) against the float32 forward of the same weights.

    Full attention: with ProbSparse, bf16 rounding of the sparsity measure flips which queries are active on a
    random-init model (14 % output change here), a discontinuity of the method, not an error of the cast.
    """
    torch.manual_seed(0)
    model = Forecaster(
        Informer(seq_len=24, label_len=12, pred_len=12, attention="full", **{**TINY, "d_model": 64})
    )
    model.eval()
    x, y = torch.randn(8, 24, 7), torch.randn(8, 24, 7)
    xm, ym = torch.randn(8, 24, 4), torch.randn(8, 24, 4)
    with torch.no_grad():
        ref = model(x, y, xm, ym)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, y, xm, ym)
    assert ref.dtype == torch.float32 and low.dtype == torch.bfloat16  # autocast engaged
    rel = (low.float() - ref).norm() / ref.norm()
    assert 1e-5 < rel < 2e-2, rel  # bf16 keeps ~3 significant digits


@needs_etth1
def test_bf16_mixed_training_runs_and_reports_float_metrics(tmp_path):
    torch.manual_seed(0)
    dm, model = _dm(), _module(learning_rate=1e-3)
    trainer = _trainer(tmp_path, precision="bf16-mixed", limit_train_batches=4, limit_val_batches=2)
    trainer.fit(model, datamodule=dm)
    val = trainer.callback_metrics["val_loss"]
    assert val.dtype == torch.float32 and torch.isfinite(val) and 0 < float(val) < 10
    assert trainer.fit_loop.epoch_loop.batch_progress.total.completed == 4


@needs_etth1
def test_model_data_mismatch_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="model pred_len=12 but data pred_len=6"):
        _trainer(tmp_path, limit_train_batches=1, limit_val_batches=1).fit(
            _module(), datamodule=_dm(pred_len=6)
        )
    with pytest.raises(ValueError, match="network c_out=1 but M data has c_out=7"):
        _trainer(tmp_path).fit(_module(c_out=1), datamodule=_dm())
    with pytest.raises(ValueError, match="network expects 5 time features per step but the data gives 4"):
        _trainer(tmp_path).fit(_module(freq="t"), datamodule=_dm())


@needs_etth1
def test_type1_lrs_seen_by_the_training_steps(tmp_path):
    from lightning.pytorch import Callback

    seen: list[float] = []

    class Record(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = _trainer(
        tmp_path, max_epochs=4, limit_train_batches=1, limit_val_batches=1, callbacks=[Record()]
    )
    trainer.fit(_module(), datamodule=_dm())
    assert seen == pytest.approx([1e-4, 1e-4, 5e-5, 2.5e-5])
    assert trainer.callback_metrics["lr"] == pytest.approx(
        2.5e-5
    )  # logged: the lr the last epoch trained with


RESUME_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, torch
    torch.set_num_threads(1)
    from lightning.pytorch import Callback, Trainer, seed_everything
    from lightning.pytorch.callbacks import ModelCheckpoint
    from favit_probsparse.data.ett import ETTDataModule
    from favit_probsparse.models.informer import Informer
    from favit_probsparse.training.forecast import Forecaster
    mode, out = sys.argv[1], sys.argv[2]

    class Kill(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 2:
                os.kill(os.getpid(), signal.SIGKILL)  # a real kill, no clean-up

    seed_everything(0)
    model = Forecaster(Informer(seq_len=48, label_len=24, pred_len=24, d_model=16, n_heads=4, d_ff=32), seed=5)
    dm = ETTDataModule("ETTh1", seq_len=48, label_len=24, pred_len=24, batch_size=16, seed=5)
    ckpt = ModelCheckpoint(dirpath=os.path.join(out, "ckpt"), monitor="val_loss", save_last=True)
    cbs = [ckpt] + ([Kill()] if mode == "kill" else [])
    trainer = Trainer(accelerator="cpu", max_epochs=4, limit_train_batches=6, limit_val_batches=3, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=cbs, default_root_dir=out)
    trainer.fit(model, datamodule=dm, ckpt_path=os.path.join(out, "ckpt", "last.ckpt") if mode == "resume" else None)
    torch.save({"state": model.state_dict(), "lr": trainer.optimizers[0].param_groups[0]["lr"],
                "val": float(trainer.callback_metrics["val_loss"])}, os.path.join(out, "final.pt"))
    """
)


def _run(tmp_path: Path, mode: str, out: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "resume_script.py"
    script.write_text(RESUME_SCRIPT)
    return subprocess.run(
        [sys.executable, str(script), mode, str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        env={**os.environ, **ONE_THREAD},
    )


@needs_etth1
@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted_run(tmp_path):
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    full = _run(tmp_path, "full", full_dir)
    assert full.returncode == 0, full.stderr[-3000:]
    killed = _run(tmp_path, "kill", cut_dir)
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL at the start of the third epoch
    assert (cut_dir / "ckpt" / "last.ckpt").exists() and not (cut_dir / "final.pt").exists()
    resumed = _run(tmp_path, "resume", cut_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = torch.load(full_dir / "final.pt"), torch.load(cut_dir / "final.pt")
    assert a["lr"] == b["lr"] == pytest.approx(1e-4 * 0.125)  # type1, stepped after each of the 4 epochs
    assert a["val"] == b["val"]
    for k, v in a["state"].items():
        torch.testing.assert_close(b["state"][k], v, rtol=0, atol=0, msg=k)


# ------------------------------------------------------------------------------------------------- configs
# the Informer configs (the patch forecasters' configs are checked in test_patch_forecasters.py)
CONFIGS = sorted(
    p
    for p in (ROOT / "configs" / "forecast").glob("*_ett*.yaml")
    # quick_dlinear_etth1 (the main job's) is checked in test_reproduce_quick.py
    if not p.name.startswith(("fasa_", "patchtst_", "quick_dlinear_"))
)
assert len(CONFIGS) == 32  # 31 protocol configs + quick_informer_etth1 (a small smoke-scale Informer)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_configs_parse_and_agree_with_their_data(path):
    from favit_probsparse.config import load_config
    from favit_probsparse.training.project_cli import lightning_cli

    cfg = load_config(path)
    d_args = cfg["data"]["init_args"]
    # build the network small: this checks the config's wiring, not the width
    small = ["--model.init_args.network.init_args.d_model", "8", "--model.init_args.network.init_args.n_heads", "2",
             "--model.init_args.network.init_args.d_ff", "8"]  # fmt: skip
    cli = lightning_cli(
        ["--config", str(path), *small, "--trainer.logger", "false", "--trainer.callbacks", "[]"], run=False
    )
    assert isinstance(cli.model, Forecaster) and isinstance(cli.model.network, Informer)
    cli.model.check_data(cli.datamodule)
    net, n_in = cli.model.network, (7 if d_args["features"] in ("M", "MS") else 1)
    # the data's shapes reached the network through the links (the configs state them once, in data)
    assert (net.seq_len, net.label_len, net.pred_len) == (
        d_args["seq_len"],
        d_args["label_len"],
        d_args["pred_len"],
    )
    assert (net.enc_in, net.dec_in, net.c_out) == (n_in, n_in, 7 if d_args["features"] == "M" else 1)
    assert (
        cli.model.hparams.pred_len == d_args["pred_len"] and cli.model.hparams.features == d_args["features"]
    )
    # and nowhere else in the config
    for key in ("seq_len", "label_len", "pred_len", "enc_in", "dec_in", "c_out", "freq", "embed", "features"):
        assert key not in cfg["model"]["init_args"]["network"].get("init_args", {}), key
        assert key not in cfg["model"]["init_args"], key


@needs_etth1
@pytest.mark.slow
def test_multi_seed_runner(tmp_path):
    from favit_probsparse.config import load_config

    cfg = load_config(ROOT / "configs" / "forecast" / "informer_etth1_M_96_48_24.yaml")
    cfg["trainer"].update(
        dict(max_epochs=1, limit_train_batches=2, limit_val_batches=2, limit_test_batches=2, default_root_dir=str(tmp_path),
             logger=False, enable_progress_bar=False, callbacks=[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
             "init_args": {"monitor": "val_loss", "dirpath": str(tmp_path / "ck")}}])
    )  # fmt: skip
    cfg["model"]["init_args"]["network"]["init_args"].update(d_model=8, n_heads=2, d_ff=8)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "favit_probsparse.cli", "fit", "--config", str(path), "--itr", "2",
         "--out", str(out), "--threads", "1", "--runs-dir", str(tmp_path / "runs")],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, **ONE_THREAD},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "cfg.json").read_text())
    assert [r["seed"] for r in report["runs"]] == [0, 1] and report["seeds"] == [0, 1]
    mses = [r["metrics"]["test_mse"] for r in report["runs"]]
    assert report["summary"][0]["metrics"]["test_mse"]["mean"] == pytest.approx(sum(mses) / 2)
    assert mses[0] != mses[1]  # different seeds, different runs
    assert "test_mse:" in proc.stdout
    for seed in (0, 1):  # one training-epoch time per epoch, validation excluded, so below the fit time
        rec = json.loads((tmp_path / "runs" / "cfg" / "itr" / f"seed{seed}" / "metrics.json").read_text())
        assert rec["seed"] == seed and rec["hardware"]["cpu"] and rec["command"].startswith("favit-ps fit")
        assert 0 < rec["metrics"]["train_epoch_s"] <= rec["fit_s"]


def test_any_network_gets_the_linked_shapes_and_rebuilds_from_its_hyperparameters(tmp_path):
    """DLinear through the same forecaster: the data's shapes reach it, the saved init_args hold only arguments
    DLinear accepts, and the saved class_path/init_args rebuild the same network."""
    import inspect

    from favit_probsparse.models.dlinear import DLinear
    from favit_probsparse.training.forecast import build_network
    from favit_probsparse.training.project_cli import lightning_cli

    csv = tmp_path / "s.csv"
    n = 400
    df = pd.DataFrame(
        {"date": pd.date_range("2020-01-01", periods=n, freq="D"), "x": np.arange(n) * 1.0,
         "y": np.sin(np.arange(n)), "z": np.cos(np.arange(n))}
    )  # fmt: skip
    df.to_csv(csv, index=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"""
model:
  class_path: favit_probsparse.training.forecast.Forecaster
  init_args:
    network: {{class_path: favit_probsparse.models.dlinear.DLinear, init_args: {{individual: true}}}}
data:
  class_path: favit_probsparse.data.timeseries.TimeSeriesDataModule
  init_args: {{path: {csv}, features: MS, target: y, seq_len: 30, label_len: 10, pred_len: 7}}
"""
    )
    cli = lightning_cli(["--config", str(cfg), "--trainer.logger", "false"], run=False)
    net = cli.model.network
    assert isinstance(net, DLinear)
    saved = dict(cli.model.hparams["network"])
    assert saved["class_path"] == "favit_probsparse.models.dlinear.DLinear"
    args = saved["init_args"]
    assert (args["enc_in"], args["c_out"], args["seq_len"], args["pred_len"]) == (3, 1, 30, 7)
    assert args["individual"] is True and args["freq"] == "d"  # daily data -> Informer's time-feature code
    assert set(args) <= set(inspect.signature(DLinear).parameters)
    assert cli.model.hparams.features == "MS" and cli.model.hparams.label_len == 10
    again = build_network(saved)
    assert [p.shape for p in again.parameters()] == [p.shape for p in net.parameters()]
    out = net(torch.randn(2, 30, 3), None, torch.randn(2, 17, 3), None)
    assert out.shape == (2, 7, 1)
