"""`favit-ps reproduce quick` (the README's main job) shows both halves: the vision grid, then the forecasting grid
and a forecast past the end of ETTh1 from its run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from favit_probsparse.config import apply_overrides, read_config
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


def test_the_quick_forecasting_grid_is_a_small_probsparse_informer_on_etth1_that_writes_forecasts():
    grid = load_grid(reproduce._grid_file("quick_forecast"))
    cfg = read_config(grid.base_config)  # the `base:` chain merged: a run folder's config.yaml stands alone
    assert "base" not in cfg
    cfg = apply_overrides(cfg, grid.base_overrides)
    data, net = cfg["data"]["init_args"], cfg["model"]["init_args"]["network"]
    assert cfg["data"]["class_path"].endswith("ETTDataModule") and data["name"] == "ETTh1"
    assert (data["features"], data["seq_len"], data["label_len"], data["pred_len"]) == ("M", 96, 48, 24)
    assert net["class_path"].endswith("Informer") and net["init_args"]["attention"] == "prob"
    assert reproduce._writes_forecasts(cfg)
    # the in-fit test is off (the runner tests the final weights once) and there is no validation to wait for
    test_after_fit = cfg["trainer"]["callbacks"][1]
    assert (
        test_after_fit["class_path"].endswith("TestAfterFit")
        and test_after_fit["init_args"]["enabled"] is False
    )
    assert cfg["trainer"]["limit_val_batches"] == 0
    # the vision grid has no forecast step: nothing is predicted, no run is looked for
    assert not reproduce._writes_forecasts(read_config(load_grid(reproduce._grid_file("quick")).base_config))
    assert reproduce.forecast_after(reproduce._grid_file("quick"), [0]) == {}


@pytest.mark.skipif(not ETTH1.exists(), reason=f"real data not present at {ETTH1}")
def test_forecast_after_writes_the_24_hours_after_etth1_from_the_run(tmp_path, monkeypatch):
    """A (tiny) finished run of the quick forecasting grid, laid out as the runner leaves it; the forecast step
    writes the CSV + PNG in its folder, and the CSV equals the Python API's forecast from the same checkpoint."""
    from favit_probsparse.data.ett import ETTDataModule
    from favit_probsparse.experiments.records import DONE, write_record
    from favit_probsparse.experiments.runner import run_dir_of
    from favit_probsparse.training.forecast import forecaster_from_checkpoint
    from favit_probsparse.training.project_cli import lightning_cli

    monkeypatch.setenv(
        "FAVIT_DATA", str(ETTH1.parents[1])
    )  # the data root found from the repo, not from tmp_path
    monkeypatch.chdir(tmp_path)
    grid_file = reproduce._grid_file("quick_forecast")
    grid = load_grid(grid_file)
    runs = tmp_path / "runs"
    run = run_dir_of(grid, grid.rows[0], 0, runs)
    tiny = {
        "model.init_args.network.init_args.d_model": 8,
        "model.init_args.network.init_args.n_heads": 2,
        "model.init_args.network.init_args.d_ff": 8,
        "trainer.limit_train_batches": 2,
        "trainer.enable_progress_bar": False,
    }
    cfg = apply_overrides(read_config(grid.base_config), {**grid.base_overrides, **tiny})
    run.mkdir(parents=True)
    import yaml

    (run / "config.yaml").write_text(yaml.safe_dump(redirect_outputs(cfg, run, 0), sort_keys=False))
    lightning_cli(["fit", "--config", str(run / "config.yaml")])
    write_record(run / DONE, status="done", seed=0, metrics={"test_mse": 1.0})

    written = reproduce.forecast_after(grid_file, None, runs_dir=runs)
    assert set(written) == {grid.rows[0].name}
    paths = written[grid.rows[0].name]
    assert paths["csv"] == run / "forecast" / "forecast.csv" and paths["png"].stat().st_size > 1000
    got = pd.read_csv(paths["csv"], parse_dates=["date"])
    raw = pd.read_csv(ETTH1, parse_dates=["date"])
    # the 24 hours after the last row of ETTh1, every column in original units
    assert list(got.columns) == list(raw.columns)
    expected_dates = pd.date_range(raw["date"].iloc[-1] + pd.Timedelta(hours=1), periods=24, freq="h")
    assert (got["date"] == expected_dates).all()
    api = forecaster_from_checkpoint(run / "checkpoints" / "last.ckpt").forecast(
        ETTDataModule(name="ETTh1", seq_len=96, label_len=48, pred_len=24, features="M")
    )
    np.testing.assert_allclose(got.iloc[:, 1:].to_numpy(), api.iloc[:, 1:].to_numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not ETTH1.exists(), reason=f"real data not present at {ETTH1}")
def test_the_naive_baselines_the_quick_forecasting_grid_states():
    """The reference column's numbers: on the same z-scored test windows, repeating the last observed value gives
    MSE 1.222 and the training mean (0 after the z-score) 1.110 (computed here by direct indexing of the series)."""
    from favit_probsparse.data.ett import ETTDataModule

    dm = ETTDataModule(name="ETTh1", seq_len=96, label_len=48, pred_len=24, features="M")
    dm.setup("test")
    ds = dm.dataset("test")
    x = np.stack([ds[i][0][-1].numpy() for i in range(len(ds))]).astype(np.float64)  # last observed step
    y = np.stack([ds[i][1][-24:].numpy() for i in range(len(ds))]).astype(np.float64)  # the 24 future steps
    assert len(ds) == 2857
    assert round(float(((y - x[:, None, :]) ** 2).mean()), 3) == 1.222
    assert round(float((y**2).mean()), 3) == 1.110
    text = load_grid(reproduce._grid_file("quick_forecast")).description
    assert "1.222" in text and "1.110" in text
