"""Checkpoints: safe loading with named errors, no option dropped silently with --ckpt, exports that timm and
`from_pretrained` load in a fresh process, and the one-line CLI errors."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from _helpers import CLASSIFIER, checkpoint_callback, run_python, vision_config, write_yaml
from favit_probsparse import cli
from favit_probsparse.data.ett import ett_path
from favit_probsparse.data.vision import write_toy_image_folder
from favit_probsparse.training.checkpoint import (
    CHECKPOINT_FORMAT,
    META_KEY,
    CheckpointError,
    hparam_differences,
    load_checkpoint,
)
from favit_probsparse.training.export import (
    ExportError,
    export_checkpoint,
    from_pretrained,
    load_export_weights,
)

ROOT = Path(__file__).resolve().parents[1]
needs_etth1 = pytest.mark.skipif(not ett_path("ETTh1").exists(), reason="real ETTh1.csv not present")
FORECASTER = "favit_probsparse.training.forecast.Forecaster"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


def _meta(**kw):
    return {
        "format": CHECKPOINT_FORMAT,
        "package_version": "0.1.0",
        "task": "image-classification",
        "module": CLASSIFIER,
        **kw,
    }


def _fake(path: Path, **kw) -> Path:
    ckpt = {"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": {"lr": 0.1}, META_KEY: _meta()}
    ckpt.update(kw)
    torch.save(ckpt, path)
    return path


# ---------------------------------------------------------------------------------------------- library
def test_load_checkpoint_names_every_failure(tmp_path):
    good = _fake(tmp_path / "good.ckpt")
    assert load_checkpoint(good, expected=CLASSIFIER)["hyper_parameters"] == {"lr": 0.1}
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "random.ckpt").write_bytes(os.urandom(4096))
    (tmp_path / "trunc.ckpt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    torch.save({"weight": torch.ones(1)}, tmp_path / "bare.ckpt")
    _fake(tmp_path / "old.ckpt", **{META_KEY: None})
    _fake(tmp_path / "newer.ckpt", **{META_KEY: _meta(format=CHECKPOINT_FORMAT + 1, package_version="9.0")})
    cases = {
        "missing.ckpt": "no such file",
        "empty.ckpt": "the file is empty",
        "random.ckpt": "not a PyTorch checkpoint",
        "trunc.ckpt": "truncated or damaged",
        "bare.ckpt": "not a Lightning checkpoint",
        "old.ckpt": "incompatible version",
        "newer.ckpt": "incompatible version (favit-probsparse 9.0",
    }
    for name, msg in cases.items():
        with pytest.raises(CheckpointError, match="checkpoint .*" + name) as e:
            load_checkpoint(tmp_path / name)
        assert msg in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(
        CheckpointError, match=r"wrong model: it holds a .*ImageClassifier.* config's model is a .*Forecaster"
    ):
        load_checkpoint(good, expected=FORECASTER)
    with pytest.raises(CheckpointError, match="wrong task"):
        load_checkpoint(good, task="time-series-forecasting")


class Payload:  # not allow-listed: unpickling it would need the class (arbitrary code)
    pass


def test_load_checkpoint_refuses_objects_outside_the_allow_list(tmp_path):
    _fake(tmp_path / "evil.ckpt", extra=Payload())
    with pytest.raises(CheckpointError, match=r"outside the weights-only allow-list.*Payload"):
        load_checkpoint(tmp_path / "evil.ckpt")


def test_hparam_differences_nested_and_unset():
    ckpt = {"_class_path": "x", "lr": 0.001, "kw": {"fusion": "max", "depth": 2}, "num_classes": 4, "seed": 3}
    config = {"lr": 0.5, "kw": {"fusion": "mean", "depth": 2, "extra": 1}, "num_classes": None, "seed": 3}
    diffs, filled = hparam_differences(ckpt, config)
    assert diffs == [("lr", 0.001, 0.5), ("kw.fusion", "max", "mean"), ("kw.extra", None, 1)]
    assert filled["num_classes"] == 4  # unset in the config: the checkpoint's value
    assert hparam_differences(ckpt, {"lr": 1e-3, "betas": None})[0] == []


# ---------------------------------------------------------------------------------------------- a tiny run
def _vision_config(root: Path, toy: Path, **model) -> Path:
    trainer = {
        "default_root_dir": str(root),
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_train_batches": 2,
        "limit_val_batches": 1,
        "limit_test_batches": 1,
        "num_sanity_val_steps": 0,
        "callbacks": [checkpoint_callback(root / "ckpt")],
    }
    model = {"lr": 3e-3, "base_batch_size": None, "warmup_epochs": 0.0, "ema_decay": 0.5, **model}
    data = {"color_jitter": None, "train_crop": "pad_crop"}
    return write_yaml(root / "cfg.yaml", vision_config(toy, trainer, model, data))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision")
    toy = write_toy_image_folder(root / "toy", num_classes=4, train_per_class=8, test_per_class=4, size=16)
    cfg = _vision_config(root, toy)
    assert cli.main(["fit", "--config", str(cfg)]) == 0
    return cfg, root / "ckpt" / "last.ckpt"


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


@pytest.mark.slow
def test_cli_checkpoint_errors_are_one_line(trained, tmp_path, capsys):
    cfg, ckpt = trained
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "random.ckpt").write_bytes(os.urandom(2048))
    for name, msg in (("empty.ckpt", "is empty"), ("random.ckpt", "not a PyTorch checkpoint")):
        assert cli.main(["test", "--config", str(cfg), "--ckpt", str(tmp_path / name)]) == 2
        line = _err(capsys)
        assert line.startswith("favit-ps test: error: checkpoint ") and name in line and msg in line
    # a vision checkpoint given to a forecasting config
    fc = ROOT / "configs/forecast/informer_etth1_M_48_48_24.yaml"
    assert cli.main(["test", "--config", str(fc), "--ckpt", str(ckpt)]) == 2
    assert "wrong model" in _err(capsys)
    # analyze cross-terms reads through the same loader
    assert cli.main(["analyze", "cross-terms", "--ckpt", str(ckpt), "--out", str(tmp_path / "ct")]) == 2
    assert "wrong task" in _err(capsys)


@pytest.mark.slow
def test_cli_refuses_options_that_differ_from_the_checkpoint(trained, tmp_path, capsys):
    cfg, ckpt = trained
    argv = [
        "test",
        "--config",
        str(cfg),
        "--ckpt",
        str(ckpt),
        "--model.init_args.lr",
        "0.5",
        "--model.init_args.model_kwargs.fusion",
        "mean",
    ]
    assert cli.main(argv) == 2
    line = _err(capsys)
    assert "model_kwargs.fusion: 'max' in the checkpoint, 'mean' in the config" in line
    assert "lr: 0.003 in the checkpoint, 0.5 in the config" in line and "--ckpt_override" in line
    # resuming `last` (resolved inside Lightning) is checked too
    resume = [
        "fit",
        "--config",
        str(cfg),
        "--ckpt",
        "last",
        "--trainer.max_epochs",
        "2",
        "--model.init_args.lr",
        "0.5",
    ]
    assert cli.main(resume) == 2
    assert "lr: 0.003 in the checkpoint, 0.5 in the config" in _err(capsys)
    # explicit: the config's fusion is applied to the checkpoint's weights (max and mean have no weights)
    from favit_probsparse.cli import run_lightning

    res = run_lightning([*argv[:-4], "--model.init_args.model_kwargs.fusion", "mean", "--ckpt_override"])
    assert res.model.hparams.model_kwargs["fusion"] == "mean"
    sd = torch.load(ckpt, weights_only=True)["state_dict"]
    assert torch.equal(res.model.state_dict()["model.head.weight"], sd["model.head.weight"])
    # fit with --ckpt_override: a new run from the checkpoint's weights, with the config's lr
    # (into a fresh checkpoint folder: a fit never writes over another run's checkpoints)
    fresh = yaml.safe_load(cfg.read_text())
    fresh["trainer"]["callbacks"][0]["init_args"]["dirpath"] = str(tmp_path / "new")
    (tmp_path / "fresh.yaml").write_text(yaml.safe_dump(fresh))
    new = run_lightning(
        [
            "fit",
            "--config",
            str(tmp_path / "fresh.yaml"),
            "--ckpt",
            str(ckpt),
            "--model.init_args.lr",
            "0.5",
            "--ckpt_override",
            "--trainer.limit_train_batches",
            "0",
            "--trainer.limit_val_batches",
            "0",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    assert new.model.hparams.lr == 0.5 and new.trainer.current_epoch == 0
    assert torch.equal(new.model.state_dict()["model.head.weight"], sd["model.head.weight"])


@pytest.mark.slow
def test_cli_test_requires_a_checkpoint_or_untrained(trained, capsys):
    cfg, _ = trained
    assert cli.main(["test", "--config", str(cfg)]) == 2
    assert "untrained weights" in _err(capsys) and "--untrained" in capsys.readouterr().err + "--untrained"
    assert cli.main(["test", "--config", str(cfg), "--untrained"]) == 0


# ---------------------------------------------------------------------------------------------- export
_TIMM_LOAD = """
import sys, torch, timm
import favit_probsparse.models  # registers FaViT with timm
model = timm.create_model("local-dir:" + sys.argv[1], pretrained=True).eval()
x = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    torch.save(model(x), sys.argv[3])
print(timm.data.resolve_data_config({}, model=model))
"""


@pytest.mark.slow
def test_favit_export_loads_through_timm_in_a_fresh_process(trained, tmp_path, capsys):
    from favit_probsparse.training.checkpoint import rebuild_module

    _, ckpt = trained
    assert cli.main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "exp")]) == 0
    cfg = json.loads((tmp_path / "exp" / "config.json").read_text())
    assert cfg["architecture"] == "favit_b0_cifar" and cfg["num_classes"] == 4
    assert cfg["label_names"] == ["class_00", "class_01", "class_02", "class_03"]
    assert cfg["pretrained_cfg"]["input_size"] == [3, 16, 16]
    assert cfg["pretrained_cfg"]["mean"] == [0.485, 0.456, 0.406]
    card = (tmp_path / "exp" / "README.md").read_text()
    for needle in (
        "image-classification",
        "seed: 0",
        "val/acc1",
        "- command: `",
        "license of the data",
    ):
        assert needle in card
    module, _ = rebuild_module(ckpt)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    out = run_python(_TIMM_LOAD, tmp_path / "exp", tmp_path / "x.pt", tmp_path / "y.pt", env=ENV)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "'crop_pct': 1.0" in out.stdout
    with torch.no_grad():
        ema, raw = module.ema.module(x), module.model(x)
    y = torch.load(tmp_path / "y.pt", weights_only=True)
    assert torch.equal(y, ema)  # the EMA weights were exported
    assert not torch.allclose(y, raw)


@pytest.mark.slow
def test_tampered_or_truncated_weights_are_named(trained, tmp_path):
    _, ckpt = trained
    out = export_checkpoint(ckpt, tmp_path / "exp")
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    load_export_weights(out)  # intact
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ExportError, match=r"model.safetensors: modified since export"):
        load_export_weights(out)
    weights.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ExportError, match=r"model.safetensors: truncated \(\d+ of \d+ bytes\)"):
        load_export_weights(out)
    with pytest.raises(ExportError, match="not a forecaster"):
        from_pretrained(out)


_FORECAST_LOAD = """
import sys, torch, pandas as pd
from favit_probsparse.training.export import from_pretrained
model = from_pretrained(sys.argv[1])
batch = torch.load(sys.argv[2], weights_only=True)
torch.manual_seed(0)  # ProbSparse samples keys in eval too
with torch.no_grad():
    torch.save(model(*batch), sys.argv[3])
model.forecast(pd.read_csv(sys.argv[4])).to_csv(sys.argv[5], index=False)
"""


@needs_etth1
@pytest.mark.slow
def test_forecaster_export_round_trip_in_a_fresh_process(tmp_path, capsys):
    import pandas as pd
    from lightning.pytorch import Trainer, seed_everything

    from favit_probsparse.data.ett import ETTDataModule
    from favit_probsparse.training.forecast import Forecaster

    seed_everything(0)
    win = dict(seq_len=24, label_len=12, pred_len=6)
    net = dict(enc_in=7, dec_in=7, c_out=1, d_model=16, n_heads=2, e_layers=1, d_layers=1, d_ff=16, **win)
    spec = {"class_path": "favit_probsparse.models.informer.Informer", "init_args": net}
    model = Forecaster.from_config(spec, features="MS", label_len=12, pred_len=6)
    dm = ETTDataModule(name="ETTh1", batch_size=8, features="MS", **win)
    trainer = Trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=1,
        logger=False,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    assert cli.main(["export", "--ckpt", str(tmp_path / "m.ckpt"), "--out", str(tmp_path / "exp")]) == 0
    cfg = json.loads((tmp_path / "exp" / "config.json").read_text())
    assert cfg["network"]["class_path"] == "favit_probsparse.models.informer.Informer"
    assert cfg["windows"] == {"seq_len": 24, "label_len": 12, "pred_len": 6}
    assert cfg["data"]["columns"][-1] == "OT" and cfg["data"]["freq"] == "h"
    assert cfg["data"]["scaler"]["mean"] == pytest.approx(list(dm.scaler.mean))
    assert "CC BY-ND 4.0" in (tmp_path / "exp" / "README.md").read_text()

    batch = [t[None].float() for t in dm.dataset("test")[5]]
    torch.save(batch, tmp_path / "batch.pt")
    frame = pd.read_csv(ett_path("ETTh1")).iloc[100:140]
    frame.to_csv(tmp_path / "recent.csv", index=False)
    out = run_python(
        _FORECAST_LOAD,
        *(tmp_path / f for f in ("exp", "batch.pt", "y.pt", "recent.csv", "f.csv")),
        env=ENV,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    model.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        ref = model(*batch)
    assert torch.equal(torch.load(tmp_path / "y.pt", weights_only=True), ref)
    # forecast of the future from a CSV: the same as the module on the hand-built scaled window
    fut = pd.read_csv(tmp_path / "f.csv")
    assert list(fut.columns) == ["date", "OT"] and len(fut) == 6
    assert fut["date"].iloc[0] == str(pd.Timestamp(frame["date"].iloc[-1]) + pd.Timedelta(hours=1))
    # the same through the command line
    assert (
        cli.main(
            [
                "predict",
                "--model",
                str(tmp_path / "exp"),
                "--input",
                str(tmp_path / "recent.csv"),
                "--out",
                str(tmp_path / "g.csv"),
            ]
        )
        == 0
    )
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "g.csv"), fut, rtol=1e-6)
    bad = frame.drop(columns=["HULL"])
    bad.to_csv(tmp_path / "bad.csv", index=False)
    assert cli.main(["predict", "--model", str(tmp_path / "exp"), "--input", str(tmp_path / "bad.csv")]) == 2
    assert "bad.csv: no column 'HULL'" in _err(capsys)


# ---------------------------------------------------------------------------------------------- one-line errors
def test_cli_choice_and_type_errors_print_the_cause_in_one_line(capsys):
    cfg = str(ROOT / "configs/forecast/informer_etth1_M_48_48_24.yaml")
    assert cli.main(["fit", "--config", cfg, "--model.init_args.network.init_args.preset", "bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("favit-ps fit: error: unknown preset 'bogus'"), err
    assert cli.main(["fit", "--config", cfg, "--model.init_args.lradj", "cosine"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["favit-ps fit: error: unknown lradj 'cosine'; choose type1, type2, type3 or constant"], err
    assert cli.main(["fit", "--config", cfg, "--model.init_args.learning_rate", "abc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "model.init_args.learning_rate: Expected a <class 'float'>. Got value: abc" in err[0]
    )


@pytest.mark.parametrize("n", ["0", "-1"])
def test_itr_must_be_positive(n, capsys):
    assert cli.main(["fit", "--config", "c.yaml", "--itr", n]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"favit-ps fit: error: --itr must be a positive number of runs, got {n}"]


def test_no_lightning_args_warning(monkeypatch):
    from favit_probsparse.training.project_cli import lightning_cli

    cfg = str(ROOT / "configs/forecast/informer_etth1_M_48_48_24.yaml")
    monkeypatch.setattr(sys, "argv", ["favit-ps", "fit", "--config", cfg])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(SystemExit):  # --help after parsing the config: no run
            lightning_cli(["fit", "--config", cfg, "--help"])
    assert not [w for w in caught if "args parameter is intended" in str(w.message)]


@pytest.mark.parametrize(
    "spec",
    [
        {
            "class_path": "favit_probsparse.models.informer.Informer",
            "init_args": {
                "enc_in": 3,
                "dec_in": 3,
                "c_out": 3,
                "seq_len": 16,
                "label_len": 8,
                "pred_len": 4,
                "d_model": 8,
                "n_heads": 2,
                "e_layers": 1,
                "d_layers": 1,
                "d_ff": 8,
            },
        },
        {
            "class_path": "favit_probsparse.models.dlinear.DLinear",
            "init_args": {
                "enc_in": 3,
                "c_out": 3,
                "seq_len": 16,
                "label_len": 8,
                "pred_len": 4,
                "kernel_size": 5,
            },
        },
    ],
    ids=["informer", "dlinear"],
)
def test_every_forecasting_network_exports_and_reloads(spec, tmp_path):
    """Export through the forecaster's hooks and `from_pretrained` for each network class (no training: the
    weights are the random init, written as a checkpoint with the metadata entry Lightning's save adds)."""
    from favit_probsparse.training.forecast import Forecaster

    torch.manual_seed(0)
    module = Forecaster.from_config(spec, features="M", label_len=8, pred_len=4)
    module.data_info = {
        "columns": ["a", "b", "c"],
        "freq": "h",
        "data_freq": "h",
        "timeenc": 1,
        "scaler": {"mean": [1.0, 2.0, 3.0], "std": [2.0, 2.0, 2.0]},
    }
    ckpt = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        META_KEY: module.checkpoint_metadata(),
    }
    torch.save(ckpt, tmp_path / "m.ckpt")
    out = export_checkpoint(tmp_path / "m.ckpt", tmp_path / "exp")
    loaded = from_pretrained(out)
    assert type(loaded.network).__name__ == spec["class_path"].rsplit(".", 1)[1]
    batch = [
        torch.randn(2, 16, 3),
        torch.randn(2, 12, 3),
        torch.rand(2, 16, 4) - 0.5,
        torch.rand(2, 12, 4) - 0.5,
    ]
    module.eval()
    torch.manual_seed(1)
    ref = module(*batch)
    torch.manual_seed(1)
    assert torch.equal(loaded(*batch), ref)
