"""Any CSV/Parquet time series: ETT split equal to the ETT dataset, TSL ratio split against borders by hand, scaler
on the train slice, constant-column guard, clear errors for bad files, frequency inference, future timestamps,
float64 round trip, forecasting past the end (CLI and Python API), a NaN loss stops the run."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from favit_probsparse.data.ett import ETTDataModule, ett_path
from favit_probsparse.data.timeseries import DataError, TimeSeriesDataModule, time_features
from favit_probsparse.testing.ett_official import ETTDataset

needs_etth1 = pytest.mark.skipif(not ett_path("ETTh1").exists(), reason="real ETTh1.csv not present")


def _frame(n=200, freq="h", cols=("a", "b", "OT"), start="2021-03-01", seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.normal(size=(n, len(cols))) * [1, 10, 100][: len(cols)], columns=list(cols))
    df.insert(0, "date", pd.date_range(start, periods=n, freq=freq).strftime("%Y-%m-%d %H:%M:%S"))
    return df


def _csv(tmp_path, df, name="series.csv"):
    p = tmp_path / name
    df.to_csv(p, index=False)
    return str(p)


# ------------------------------------------------------------------------------------------------ splits
@needs_etth1
@pytest.mark.parametrize("features", ["M", "MS", "S"])
def test_ett_split_equals_the_ett_dataset_on_real_etth1(features):
    path = str(ett_path("ETTh1"))
    generic = TimeSeriesDataModule(
        path, features=features, target="OT", seq_len=96, label_len=48, pred_len=24, split="ett"
    )
    preset = ETTDataModule("ETTh1", seq_len=96, label_len=48, pred_len=24, features=features)
    for split in ("train", "val", "test"):
        ref = ETTDataset("ETTh1", split, 96, 48, 24, features=features, path=path)
        for dm in (generic, preset):
            ds = dm.dataset(split)
            assert len(ds) == len(ref)
            torch.testing.assert_close(ds.data, ref.data, rtol=0, atol=0)
            torch.testing.assert_close(ds.stamp, ref.stamp, rtol=0, atol=0)
            for i in (0, len(ref) // 2, len(ref) - 1):
                for a, b in zip(ds[i], ref[i], strict=True):
                    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (generic.enc_in, generic.c_out, generic.freq) == (preset.enc_in, preset.c_out, "h")


def test_ratio_split_borders_and_train_only_scaler_by_hand(tmp_path):
    n, seq, lab, pred = 1000, 96, 48, 24
    df = _frame(n)
    dm = TimeSeriesDataModule(_csv(tmp_path, df), seq_len=seq, label_len=lab, pred_len=pred, split="ratio")
    dm.setup()
    # Time-Series-Library Dataset_Custom: 700 train, 200 test, 100 val; val/test start seq_len rows early
    assert dm.borders == {"train": (0, 700), "val": (700 - 96, 800), "test": (1000 - 200 - 96, 1000)}
    assert [len(dm.dataset(s)) for s in ("train", "val", "test")] == [
        700 - 96 - 24 + 1,
        196 - 120 + 1,
        296 - 120 + 1,
    ]
    vals = df[["a", "b", "OT"]].to_numpy(np.float64)
    mean, std = vals[:700].mean(0), vals[:700].std(0)  # population std of the train rows only
    x, y, xm, ym = dm.dataset("val")[0]
    np.testing.assert_allclose(x.numpy(), ((vals[604:700] - mean) / std).astype(np.float32), rtol=0, atol=0)
    np.testing.assert_allclose(
        y.numpy(), ((vals[700 - 48 : 724] - mean) / std).astype(np.float32), rtol=0, atol=0
    )
    assert xm.shape == (96, 4) and ym.shape == (72, 4)  # hourly timeF: hour, weekday, day, day of year


def test_features_target_and_column_subset(tmp_path):
    path = _csv(tmp_path, _frame(300, cols=("a", "OT", "c")))
    ms = TimeSeriesDataModule(path, features="MS", target="OT", seq_len=24, label_len=12, pred_len=12)
    assert ms.columns == ["a", "c", "OT"] and (ms.enc_in, ms.dec_in, ms.c_out) == (3, 3, 1)
    sub = TimeSeriesDataModule(path, columns=["c", "a"], features="M", seq_len=24, label_len=12, pred_len=12)
    assert sub.columns == ["c", "a"] and sub.c_out == 2 and sub.target_columns == ["c", "a"]
    s = TimeSeriesDataModule(path, features="S", target="a", seq_len=24, label_len=12, pred_len=12)
    assert s.columns == ["a"] and (s.enc_in, s.c_out) == (1, 1)


def test_constant_column_is_scaled_with_std_one_and_named(tmp_path):
    df = _frame(300)
    df["flat"] = 5.0
    dm = TimeSeriesDataModule(_csv(tmp_path, df), seq_len=24, label_len=12, pred_len=12)
    with pytest.warns(UserWarning, match=r"\['flat'\] are constant"):
        dm.setup()
    j = dm.columns.index("flat")
    assert dm.scaler.std[j] == 1.0 and np.all(dm.scaled[:, j] == 0.0)
    assert np.isfinite(dm.scaled).all()


def test_inverse_transform_round_trips_in_float64(tmp_path):
    df = _frame(400, seed=3)
    df["OT"] = df["OT"] * 1e3 + 12345.678
    dm = TimeSeriesDataModule(_csv(tmp_path, df), seq_len=24, label_len=12, pred_len=12)
    dm.setup()
    raw = df[["a", "b", "OT"]].to_numpy(np.float64)
    np.testing.assert_allclose(dm.inverse_transform(dm.scaled), raw, rtol=1e-13, atol=1e-9)
    # the target alone (S/MS forecasts carry only the last columns)
    np.testing.assert_allclose(dm.inverse_transform(dm.scaled[:, -1:]), raw[:, -1:], rtol=1e-13, atol=1e-9)
    t = torch.as_tensor(dm.scaled, dtype=torch.float64)
    np.testing.assert_allclose(dm.inverse_transform(t).numpy(), raw, rtol=1e-13, atol=1e-9)


def test_parquet_equals_csv(tmp_path):
    df = _frame(300)
    pq = tmp_path / "s.parquet"
    df.to_parquet(pq)
    a = TimeSeriesDataModule(_csv(tmp_path, df), seq_len=24, label_len=12, pred_len=12)
    b = TimeSeriesDataModule(str(pq), seq_len=24, label_len=12, pred_len=12)
    torch.testing.assert_close(a.dataset("test").data, b.dataset("test").data, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ frequency
@pytest.mark.parametrize(
    ("freq", "code", "last", "future"),
    [
        (
            "h",
            "h",
            "2021-03-09 07:00:00",
            ["2021-03-09 08:00:00", "2021-03-09 09:00:00", "2021-03-09 10:00:00"],
        ),
        (
            "15min",
            "t",
            "2021-03-03 01:45:00",
            ["2021-03-03 02:00:00", "2021-03-03 02:15:00", "2021-03-03 02:30:00"],
        ),
        ("D", "d", "2021-09-16 00:00:00", ["2021-09-17", "2021-09-18", "2021-09-19"]),
    ],
)
def test_frequency_is_inferred_and_future_timestamps_follow_it(tmp_path, freq, code, last, future):
    df = _frame(200, freq=freq)
    dm = TimeSeriesDataModule(_csv(tmp_path, df), seq_len=24, label_len=12, pred_len=3)
    dm.setup("predict")
    assert df["date"].iloc[-1] == last and dm.freq == code
    assert list(dm.future_dates()) == [pd.Timestamp(t) for t in future]
    frame = dm.forecast_frame(np.zeros((3, 3)))
    assert list(frame.columns) == ["date", "a", "b", "OT"] and list(frame["date"]) == list(dm.future_dates())
    # the predict window ends at the last row; its decoder marks are those of the label rows + the future steps
    x, y, xm, ym = dm.dataset("predict")[0]
    assert x.shape == (24, 3) and y.shape == (15, 3) and ym.shape[0] == 15
    np.testing.assert_array_equal(ym[-3:].numpy(), time_features(pd.DatetimeIndex(future), code))
    np.testing.assert_array_equal(xm[-1].numpy(), time_features(pd.DatetimeIndex([last]), code)[0])


def test_irregular_timestamps_use_the_most_common_spacing_with_a_warning(tmp_path):
    df = _frame(300).drop(index=[100, 101]).reset_index(drop=True)  # a two-hour gap
    dm = TimeSeriesDataModule(_csv(tmp_path, df), seq_len=24, label_len=12, pred_len=12)
    with pytest.warns(UserWarning, match=r"1 of 297 steps differ .*freq='h'"):
        dm.setup()


# ------------------------------------------------------------------------------------------------ bad input
def _bad(tmp_path, mutate, **kw):
    df = _frame(300).astype({"b": object})
    mutate(df)
    path = _csv(tmp_path, df, "bad.csv")
    dm = TimeSeriesDataModule(path, **{**dict(seq_len=24, label_len=12, pred_len=12), **kw})
    dm.setup()


def _set(col, row, value):
    def f(df):
        df.loc[row, col] = value

    return f


@pytest.mark.parametrize(
    ("mutate", "kw", "match"),
    [
        (_set("b", 57, "12,5x"), {}, r"bad\.csv: column 'b', row 57 \(line 59\): non-numeric value '12,5x'"),
        (_set("date", 80, "yesterday"), {}, r"bad\.csv: column 'date', row 80 \(line 82\): cannot parse 'yesterday'"),
        (_set("a", 9, np.nan), {}, r"bad\.csv: column 'a', row 9 \(line 11\).*missing or infinite value \(nan\)"),
        (_set("OT", 33, np.inf), {}, r"bad\.csv: column 'OT', row 33 \(line 35\).*missing or infinite value \(inf\)"),
        (lambda df: df.loc.__setitem__((120, "date"), df.loc[119, "date"]), {},
         r"bad\.csv: column 'date', row 120 \(line 122\): duplicate timestamp"),
        (lambda df: df.loc.__setitem__((120, "date"), df.loc[10, "date"]), {},
         r"bad\.csv: column 'date', row 120 \(line 122\): timestamps not increasing"),
        (lambda df: None, {"target": "temp"}, r"bad\.csv: target column 'temp' is not in the file"),
        (lambda df: None, {"columns": ["a", "zz"]}, r"bad\.csv: no column 'zz'"),
        (lambda df: None, {"date_column": "time"}, r"bad\.csv: no date column 'time'"),
        # 300 rows: 210 train / 30 val / 60 test; val = rows [210 - 24, 240): 54 rows < 24 + 40
        (lambda df: None, {"seq_len": 24, "label_len": 12, "pred_len": 40},
         r"bad\.csv: the val split has 54 rows \(row 186 \(line 188\) to row 239 \(line 241\)\) but seq_len \+ "
         r"pred_len = 24 \+ 40 = 64"),
    ],
    ids=["non-numeric", "bad-date", "nan", "inf", "duplicate", "unsorted", "no-target", "no-column", "no-date",
         "too-short"],
)  # fmt: skip
def test_bad_input_is_a_clear_error(tmp_path, mutate, kw, match):
    with pytest.raises(DataError, match=match):
        _bad(tmp_path, mutate, **kw)


# ------------------------------------------------------------------------------------------------ forecasting
class _LinearMap(nn.Module):
    """seq_len -> pred_len linear map per channel (+ bias); ignores marks and decoder input."""

    def __init__(self, seq_len: int, pred_len: int, label_len: int = 0, c_out: int = 1):
        super().__init__()
        self.seq_len, self.pred_len, self.label_len, self.c_out = seq_len, pred_len, label_len, c_out
        self.proj = nn.Linear(seq_len, pred_len)

    def forward(self, x_enc, x_mark_enc, x_dec, x_mark_dec):
        return self.proj(x_enc.transpose(1, 2)).transpose(1, 2)


def test_fit_on_a_linear_series_continues_it_in_original_units(tmp_path):
    """y = 250 + 0.75 t (hourly). A linear map fitted with Adam forecasts the 4 steps past the end within
    0.05 original units (1/15 of one step's rise), though they lie outside the train slice's range."""
    from lightning.pytorch import Trainer

    from favit_probsparse.training.forecast import Forecaster

    torch.manual_seed(0)
    n, seq, pred = 400, 8, 4
    df = pd.DataFrame(
        {"date": pd.date_range("2022-01-01", periods=n, freq="h"), "y": 250 + 0.75 * np.arange(n)}
    )
    dm = TimeSeriesDataModule.from_frame(
        df, features="S", target="y", seq_len=seq, label_len=0, pred_len=pred, batch_size=16
    )
    model = Forecaster(_LinearMap(seq, pred), features="S", learning_rate=3e-2, lradj="constant")
    Trainer(max_epochs=15, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0).fit(model, datamodule=dm)  # fmt: skip
    out = model.forecast(df, features="S", target="y")
    want = 250 + 0.75 * np.arange(n, n + pred)
    assert list(out["date"]) == list(pd.date_range("2022-01-17 16:00", periods=pred, freq="h"))
    np.testing.assert_allclose(out["y"].to_numpy(), want, atol=0.05)


def test_another_file_is_forecast_with_the_training_scaler(tmp_path):
    """A trained model forecasting another file of the same layout keeps its training data's scaler. The other file
    here is the last 120 rows of the training series, whose own train slice has a different mean and std: the
    forecast of its (identical) last window must equal the training series' forecast, from the Python API and
    through a checkpoint with ``trainer.predict``; the reference is a float64 map by hand."""
    from lightning.pytorch import Trainer

    from favit_probsparse.training.forecast import Forecaster

    torch.manual_seed(0)
    n, seq, pred = 400, 8, 4
    t = np.arange(n)
    full = pd.DataFrame({"date": pd.date_range("2022-01-01", periods=n, freq="h"), "y": 50 + 0.2 * t})
    tail = full.iloc[-120:].reset_index(drop=True)
    kw = dict(features="S", target="y", seq_len=seq, label_len=0, pred_len=pred, batch_size=16)
    dm = TimeSeriesDataModule.from_frame(full, **kw)
    model = Forecaster(_LinearMap(seq, pred), features="S", learning_rate=1e-2, lradj="constant")
    trainer = Trainer(max_epochs=2, logger=False, default_root_dir=tmp_path, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)  # fmt: skip
    trainer.fit(model, datamodule=dm)
    mean, std = dm.scaler.mean[-1], dm.scaler.std[-1]
    own = TimeSeriesDataModule.from_frame(tail, **kw)
    own.setup("predict")
    assert abs(own.scaler.mean[-1] - mean) > 10  # the tail's own scaler really differs

    w = model.model.proj.weight.detach().double().numpy()
    b = model.model.proj.bias.detach().double().numpy()
    last = (full["y"].to_numpy()[-seq:] - mean) / std
    want = (w @ last + b) * std + mean  # the map by hand, in original units
    np.testing.assert_allclose(model.forecast(full, **kw)["y"].to_numpy(), want, rtol=1e-5)
    np.testing.assert_allclose(model.forecast(tail, **kw)["y"].to_numpy(), want, rtol=1e-5)

    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    fresh = Forecaster(_LinearMap(seq, pred), features="S")
    other = TimeSeriesDataModule.from_frame(tail, **kw)
    out = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False).predict(
        fresh, datamodule=other, ckpt_path=str(ckpt), weights_only=True
    )
    np.testing.assert_allclose(out[0]["original"][0, :, -1].numpy(), want, rtol=1e-5)


def test_training_loss_nan_stops_the_run_with_a_named_error(tmp_path, capsys):
    """Values of 1e25 with scaling off overflow the float32 MSE: the CLI stops with one line and exit code 1."""
    from favit_probsparse.cli import main

    df = _frame(300)
    df[["a", "b", "OT"]] = 1e25
    path = _csv(tmp_path, df)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"""
trainer: {{max_epochs: 1, logger: false, enable_checkpointing: false, enable_progress_bar: false,
          enable_model_summary: false, log_every_n_steps: 1, num_sanity_val_steps: 0, limit_val_batches: 0,
          default_root_dir: {tmp_path}}}
model:
  class_path: favit_probsparse.training.forecast.Forecaster
  init_args:
    network:
      class_path: favit_probsparse.models.informer.Informer
      init_args: {{d_model: 8, n_heads: 2, d_ff: 8}}
data:
  class_path: favit_probsparse.data.timeseries.TimeSeriesDataModule
  init_args: {{path: {path}, seq_len: 24, label_len: 12, pred_len: 12, scale: false}}
"""
    )
    assert main(["fit", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "NonFiniteLossError: training loss became inf" in err or "became nan" in err, err[-2000:]


def test_seattle_temps_fit_predict_cli_writes_csv_and_png(tmp_path, monkeypatch):
    """The README example on real data (vega_datasets' hourly Seattle temperatures, one DST gap), shortened."""
    vega = pytest.importorskip("vega_datasets")
    from pathlib import Path

    from favit_probsparse.cli import main

    root = Path(__file__).resolve().parents[1]
    csv = tmp_path / "seattle_temps.csv"
    vega.data.seattle_temps().to_csv(csv, index=False)
    monkeypatch.chdir(tmp_path)
    cfg = str(root / "configs" / "forecast" / "seattle_temps_small.yaml")
    short = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2",
             "--trainer.limit_test_batches", "2", "--trainer.enable_progress_bar", "false"]  # fmt: skip
    with pytest.warns(UserWarning, match="irregular timestamps"):
        assert main(["fit", "--config", cfg, *short]) == 0
    ckpt = tmp_path / "runs/forecast/seattle_temps_small/checkpoints/last.ckpt"
    assert ckpt.exists()
    # reload without the config's model section: the network is rebuilt from the checkpoint's hyperparameters
    from favit_probsparse.training.forecast import Forecaster

    m = Forecaster.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    assert (m.network.enc_in, m.network.c_out, m.network.seq_len, m.network.d_model) == (1, 1, 96, 32)
    assert (
        main(["predict", "--config", cfg, "--ckpt", str(ckpt), "--trainer.enable_progress_bar", "false"]) == 0
    )
    out = tmp_path / "runs/forecast/seattle_temps_small/forecast"
    fc = pd.read_csv(out / "forecast.csv", parse_dates=["date"])
    assert list(fc.columns) == ["date", "temp"] and len(fc) == 24
    assert fc["date"].iloc[0] == pd.Timestamp("2011-01-01 00:00") and fc["date"].iloc[-1] == pd.Timestamp(
        "2011-01-01 23:00"
    )
    assert fc["temp"].between(-10, 110).all()  # Fahrenheit, original units (scaled values would be near 0)
    assert (out / "forecast.png").stat().st_size > 5_000
    # the same forecast through the Python API: a DataFrame in, a DataFrame out
    api = m.forecast(pd.read_csv(csv), target="temp", features="S")
    np.testing.assert_allclose(api["temp"].to_numpy(), fc["temp"].to_numpy(), rtol=1e-5)
    assert math.isfinite(float(api["temp"].mean()))
