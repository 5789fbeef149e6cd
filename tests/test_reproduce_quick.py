"""`favit-ps reproduce quick` (the README's main job) shows both halves: the vision grid, then the forecasting grid
and a forecast past the end of ETTh1 from its run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from favit_probsparse.config import apply_overrides, config_path, read_config
from favit_probsparse.data.ett import ett_path
from favit_probsparse.experiments import ablate, reproduce
from favit_probsparse.experiments.grid import load_grid, redirect_outputs

ETTH1 = ett_path("ETTh1")


def test_quick_runs_the_vision_grid_then_the_forecasting_grid_and_its_forecast(tmp_path, monkeypatch):
    calls = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(reproduce, "prepare_grid_data", lambda grid: calls.append(("data", Path(grid).stem)))
    monkeypatch.setattr(
        ablate, "main", lambda argv: calls.append(("grid", Path(argv[0]).stem, argv[1:])) or 0
    )
    monkeypatch.setattr(
        reproduce, "forecast_after", lambda grid, seeds: calls.append(("forecast", Path(grid).stem)) or {}
    )
    assert reproduce.main(["quick", "--seeds", "3"]) == 0
    assert calls == [
        ("data", "quick"),  # every download before any training
        ("data", "quick_forecast"),
        ("grid", "quick", ["--seeds", "3"]),
        ("forecast", "quick"),
        ("grid", "quick_forecast", ["--seeds", "3"]),
        ("forecast", "quick_forecast"),
    ]


def test_a_failed_grid_fails_the_job_and_the_other_grid_still_runs(tmp_path, monkeypatch):
    ran = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(reproduce, "prepare_grid_data", lambda grid: 0)
    monkeypatch.setattr(
        ablate, "main", lambda argv: ran.append(Path(argv[0]).stem) or int("forecast" not in argv[0])
    )
    monkeypatch.setattr(reproduce, "forecast_after", lambda grid, seeds: {})
    assert reproduce.main(["quick"]) == 1
    assert ran == ["quick", "quick_forecast"]


def test_the_quick_forecasting_grid_is_dlinear_on_etth1_scored_beside_the_naive_forecasts():
    grid = load_grid(reproduce._grid_file("quick_forecast"))
    cfg = read_config(grid.base_config)  # the `base:` chain merged: a run folder's config.yaml stands alone
    assert "base" not in cfg
    cfg = apply_overrides(cfg, grid.base_overrides)
    data, net = cfg["data"]["init_args"], cfg["model"]["init_args"]["network"]
    assert cfg["data"]["class_path"].endswith("ETTDataModule") and data["name"] == "ETTh1"
    assert (data["features"], data["seq_len"], data["label_len"], data["pred_len"]) == ("M", 96, 48, 24)
    assert net["class_path"].endswith("DLinear")
    assert reproduce._writes_forecasts(cfg)
    # the in-fit test is off (the runner tests the best checkpoint once)
    test_after_fit = cfg["trainer"]["callbacks"][2]
    assert (
        test_after_fit["class_path"].endswith("TestAfterFit")
        and test_after_fit["init_args"]["enabled"] is False
    )
    assert grid.test_ckpt == "best"
    shown = {m.name for m in grid.extra_metrics}
    assert {"test_mse_seasonal_naive", "test_mse_last_value"} <= shown
    # the vision grid has no forecast step: nothing is predicted, no run is looked for
    assert not reproduce._writes_forecasts(read_config(load_grid(reproduce._grid_file("quick")).base_config))
    assert reproduce.forecast_after(reproduce._grid_file("quick"), [0]) == {}


def _tiny_quick_forecast_run(tmp_path):
    """A (tiny) finished run of the quick forecasting grid, laid out as the runner leaves it."""
    import yaml

    from favit_probsparse.experiments.records import DONE, write_record
    from favit_probsparse.experiments.runner import run_dir_of
    from favit_probsparse.training.project_cli import lightning_cli

    grid_file = reproduce._grid_file("quick_forecast")
    grid = load_grid(grid_file)
    run = run_dir_of(grid, grid.rows[0], 0, tmp_path / "runs")
    tiny = {
        "trainer.max_epochs": 1,
        "trainer.limit_train_batches": 2,
        "trainer.limit_val_batches": 2,
        "trainer.enable_progress_bar": False,
    }
    cfg = apply_overrides(read_config(grid.base_config), {**grid.base_overrides, **tiny})
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(redirect_outputs(cfg, run, 0), sort_keys=False))
    lightning_cli(["fit", "--config", str(run / "config.yaml")])
    write_record(run / DONE, status="done", seed=0, metrics={"test_mse": 1.0})
    return grid_file, grid, run


@pytest.mark.skipif(not ETTH1.exists(), reason=f"real data not present at {ETTH1}")
def test_forecast_after_writes_the_held_out_window_and_the_24_hours_after_etth1(tmp_path, monkeypatch):
    """The forecast step writes the CSVs + PNG in the run's folder: the forecast past the end equals the Python
    API's forecast from the tested (best) checkpoint, and the last held-out window's observed values and seasonal
    naive forecast equal the raw ETTh1 rows (the official test border ends at row 14400)."""
    from favit_probsparse.data.ett import ETTDataModule
    from favit_probsparse.training.forecast import forecaster_from_checkpoint

    monkeypatch.setenv("FAVIT_DATA", str(ETTH1.parents[1]))  # the data root found from the repo
    monkeypatch.chdir(tmp_path)
    grid_file, grid, run = _tiny_quick_forecast_run(tmp_path)
    written = reproduce.forecast_after(grid_file, None, runs_dir=tmp_path / "runs")
    assert set(written) == {grid.rows[0].name}
    paths = written[grid.rows[0].name]
    assert paths["csv"] == run / "forecast" / "forecast.csv" and paths["png"].stat().st_size > 1000
    got = pd.read_csv(paths["csv"], parse_dates=["date"])
    raw = pd.read_csv(ETTH1, parse_dates=["date"])
    # the 24 hours after the last row of ETTh1, every column in original units
    assert list(got.columns) == list(raw.columns)
    expected_dates = pd.date_range(raw["date"].iloc[-1] + pd.Timedelta(hours=1), periods=24, freq="h")
    assert (got["date"] == expected_dates).all()
    best = reproduce._tested_checkpoint(run / "checkpoints", "best")
    assert best.name.startswith("best")
    api = forecaster_from_checkpoint(best).forecast(
        ETTDataModule(name="ETTh1", seq_len=96, label_len=48, pred_len=24, features="M")
    )
    np.testing.assert_allclose(got.iloc[:, 1:].to_numpy(), api.iloc[:, 1:].to_numpy(), rtol=1e-5, atol=1e-5)

    held = pd.read_csv(paths["held_out"], parse_dates=["date"])
    rows = raw.iloc[14400 - 120 : 14400].reset_index(drop=True)  # 96 history + 24 horizon steps
    assert (held["date"] == rows["date"]).all()
    for c in raw.columns[1:]:
        np.testing.assert_allclose(held[c], rows[c], rtol=1e-12)
        assert held[f"{c}_forecast"].iloc[:96].isna().all() and held[f"{c}_forecast"].iloc[96:].notna().all()
        # seasonal naive on hourly data: the same hour one day earlier
        np.testing.assert_allclose(held[f"{c}_seasonal_naive"].iloc[96:], rows[c].iloc[72:96], rtol=1e-12)


@pytest.mark.skipif(not ETTH1.exists(), reason=f"real data not present at {ETTH1}")
def test_the_forecaster_scores_the_naive_forecasts_on_the_same_test_windows():
    """test_mse_last_value / test_mse_seasonal_naive equal the naive forecasts computed here by direct indexing of
    the z-scored test windows (1.222: repeat the last step; 0.424: repeat the last day)."""
    from lightning.pytorch import Trainer

    from favit_probsparse.data.ett import ETTDataModule
    from favit_probsparse.models.dlinear import DLinear
    from favit_probsparse.training.forecast import Forecaster

    dm = ETTDataModule(name="ETTh1", seq_len=96, label_len=48, pred_len=24, features="M", batch_size=256)
    dm.setup("test")
    ds = dm.dataset("test")
    x = np.stack([ds[i][0].numpy() for i in range(len(ds))]).astype(np.float64)  # [N, 96, 7]
    y = np.stack([ds[i][1][-24:].numpy() for i in range(len(ds))]).astype(np.float64)  # the 24 future steps
    assert len(ds) == 2857
    last_value = float(((y - x[:, -1:, :]) ** 2).mean())
    seasonal = float(((y - x[:, 72:96, :]) ** 2).mean())
    assert round(last_value, 3) == 1.222 and round(seasonal, 3) == 0.424

    module = Forecaster(DLinear(enc_in=7, seq_len=96, pred_len=24), features="M", label_len=48, pred_len=24)
    trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.test(module, datamodule=dm, verbose=False)
    res = module.test_results
    assert res["mse_last_value"] == pytest.approx(last_value, rel=1e-6)
    assert res["mse_seasonal_naive"] == pytest.approx(seasonal, rel=1e-6)
    assert res["mae_last_value"] == pytest.approx(float(np.abs(y - x[:, -1:, :]).mean()), rel=1e-6)


@pytest.mark.skipif(not ETTH1.exists(), reason=f"real data not present at {ETTH1}")
def test_the_main_jobs_forecaster_beats_both_naive_forecasts_clearly_after_two_epochs(tmp_path, monkeypatch):
    """The quick forecasting config, cut to 2 epochs: its test MSE is well below the seasonal naive (0.424) and
    last-value (1.222) forecasts of the same windows (measured at 10 epochs: 0.309, results/quick-forecast.md)."""
    from favit_probsparse.training.project_cli import lightning_cli

    monkeypatch.setenv("FAVIT_DATA", str(ETTH1.parents[1]))
    monkeypatch.chdir(tmp_path)
    cli = lightning_cli(
        [
            "fit",
            "--config",
            str(config_path("forecast/quick_dlinear_etth1.yaml")),
            "--trainer.max_epochs=2",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    res = cli.model.test_results
    assert res["mse"] < 0.85 * res["mse_seasonal_naive"] and res["mse"] < 0.5 * res["mse_last_value"]
