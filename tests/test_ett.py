"""ETT data protocol on the real ETTh1/ETTm1 files: borders, window counts, train-only scaler, time features,
loaders and the clear errors. Expected values are computed by hand here (csv module + arithmetic), not by pandas."""

from __future__ import annotations

import csv
import inspect
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from jsonargparse import ArgumentError, ArgumentParser

from favit_probsparse.data.ett import (
    EpochSeededRandomSampler,
    ETTDataModule,
    ett_path,
    time_feature_dim,
    time_features,
)
from favit_probsparse.data.timeseries import TimeSeriesDataModule
from favit_probsparse.testing.ett_official import ETTDataset, ett_borders

ETTH1 = ett_path("ETTh1")
ETTM1 = ett_path("ETTm1")
needs_etth1 = pytest.mark.skipif(not ETTH1.exists(), reason=f"real data not present at {ETTH1}")
needs_ettm1 = pytest.mark.skipif(not ETTM1.exists(), reason=f"real data not present at {ETTM1}")


def _raw_rows(path: Path, n: int) -> list[list[float]]:
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        assert header == ["date", "HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
        rows = []
        for i, row in enumerate(reader):
            if i >= n:
                break
            rows.append([float(v) for v in row[1:]])
    return rows


def test_borders_by_hand():
    # 12/4/4 months of 30 days; hourly: 30*24 = 720 rows per month
    assert ett_borders("ETTh1", 96) == {"train": (0, 8640), "val": (8544, 11520), "test": (11424, 14400)}
    assert ett_borders("ETTh2", 48)["test"] == (11520 - 48, 14400)
    # 15-minute: x4
    assert ett_borders("ETTm1", 96) == {"train": (0, 34560), "val": (34464, 46080), "test": (45984, 57600)}


@needs_etth1
@pytest.mark.parametrize(
    ("seq_len", "label_len", "pred_len", "n_train", "n_val", "n_test"),
    [
        (96, 48, 24, 8640 - 96 - 24 + 1, 2881 - 24, 2881 - 24),  # official default run: 8521 / 2857 / 2857
        (48, 48, 24, 8569, 2857, 2857),
        (64, 48, 24, 8553, 2857, 2857),
        (96, 48, 720, 7825, 2161, 2161),
    ],
)
def test_window_counts_etth1(seq_len, label_len, pred_len, n_train, n_val, n_test):
    counts = [len(ETTDataset("ETTh1", s, seq_len, label_len, pred_len)) for s in ("train", "val", "test")]
    assert counts == [n_train, n_val, n_test]
    assert counts[0] == 8521 or (seq_len, pred_len) != (96, 24)


@needs_ettm1
def test_window_counts_ettm1():
    assert len(ETTDataset("ETTm1", "test", 96, 48, 96)) == 11425
    assert len(ETTDataset("ETTm1", "train", 64, 48, 96)) == 34560 - 64 - 96 + 1


@needs_etth1
def test_scaler_is_fit_on_train_rows_only():
    rows = _raw_rows(ETTH1, 8640)
    n = len(rows)
    assert n == 8640
    mean = [sum(r[j] for r in rows) / n for j in range(7)]
    std = [math.sqrt(sum((r[j] - mean[j]) ** 2 for r in rows) / n) for j in range(7)]  # population (ddof 0)
    ds = ETTDataset("ETTh1", "test", 96, 48, 24)
    np.testing.assert_allclose(ds.scaler.mean, mean, rtol=1e-10)
    np.testing.assert_allclose(ds.scaler.std, std, rtol=1e-10)
    # a few hand-checked numbers (OT: oil temperature)
    assert abs(mean[6] - 17.1282617) < 1e-6 and abs(std[6] - 9.17649102) < 1e-6
    # statistics over the whole series would differ (the Dec-2020 leak)
    all_rows = _raw_rows(ETTH1, 20000)
    assert abs(sum(r[6] for r in all_rows) / len(all_rows) - mean[6]) > 0.5


@needs_etth1
def test_values_and_window_contents():
    rows = _raw_rows(ETTH1, 14400)
    ds = ETTDataset("ETTh1", "val", 96, 48, 24)
    mean, std = ds.scaler.mean, ds.scaler.std
    # val split starts at row 8640 - 96 = 8544
    expected_first = [(rows[8544][j] - mean[j]) / std[j] for j in range(7)]
    np.testing.assert_allclose(ds.data[0].numpy(), expected_first, rtol=1e-5, atol=1e-6)
    i = 17
    seq_x, seq_y, x_mark, y_mark = ds[i]
    assert (
        seq_x.shape == (96, 7)
        and seq_y.shape == (72, 7)
        and x_mark.shape == (96, 4)
        and y_mark.shape == (72, 4)
    )
    torch.testing.assert_close(seq_x, ds.data[i : i + 96])
    torch.testing.assert_close(
        seq_y, ds.data[i + 96 - 48 : i + 96 + 24]
    )  # start token = last 48 encoder steps
    torch.testing.assert_close(seq_y[:48], seq_x[-48:])
    # last window ends exactly at the test... val border
    last = ds[len(ds) - 1][1]
    np.testing.assert_allclose(
        last[-1].numpy(), [(rows[11519][j] - mean[j]) / std[j] for j in range(7)], rtol=1e-5
    )
    with pytest.raises(IndexError):
        ds[len(ds)]
    # inverse transform brings the raw values back
    np.testing.assert_allclose(ds.inverse_transform(ds.data[:1].double().numpy())[0], rows[8544], rtol=1e-6)


@needs_etth1
def test_features_s_and_ms():
    s = ETTDataset("ETTh1", "train", 96, 48, 24, features="S")
    assert s.n_channels == 1 and s.columns == ["OT"]
    assert abs(s.scaler.mean[0] - 17.1282617) < 1e-6
    ms = ETTDataset("ETTh1", "train", 96, 48, 24, features="MS")
    assert ms.n_channels == 7 and ms.columns[-1] == "OT"
    ms_hufl = ETTDataset("ETTh1", "train", 96, 48, 24, features="MS", target="HUFL")
    assert ms_hufl.columns[-1] == "HUFL"  # target moved last (the loss/metrics use the last channel)
    # inverse transform of a target-only array uses the target's statistics
    out = s.scaler.inverse_transform(np.zeros((3, 1)))
    np.testing.assert_allclose(out, np.full((3, 1), s.scaler.mean[0]))


def test_time_features_by_hand():
    dates = pd.to_datetime(["2016-07-01 00:00:00", "2016-07-01 13:45:00", "2017-12-31 23:00:00"])
    h = time_features(dates, "h")
    # 2016-07-01 is a Friday (weekday 4); day of year 183 in a leap year
    np.testing.assert_allclose(h[0], [0 / 23 - 0.5, 4 / 6 - 0.5, 0 / 30 - 0.5, 182 / 365 - 0.5], rtol=1e-6)
    np.testing.assert_allclose(h[2], [23 / 23 - 0.5, 6 / 6 - 0.5, 30 / 30 - 0.5, 364 / 365 - 0.5], rtol=1e-6)
    t = time_features(dates, "t")
    assert t.shape == (3, 5)
    np.testing.assert_allclose(t[1, 0], 45 / 59 - 0.5, rtol=1e-6)
    np.testing.assert_allclose(t[1, 1:], time_features(dates, "h")[1], rtol=1e-6)
    cal = time_features(dates, "t", timeenc=0)
    np.testing.assert_array_equal(cal[1], [7, 1, 4, 13, 3])  # month, day, weekday, hour, minute // 15
    assert time_feature_dim("h") == 4 and time_feature_dim("t") == 5 and time_feature_dim("h", 0) == 4


@needs_ettm1
def test_frequency_defaults_and_official_freq_h_on_minute_data():
    native = ETTDataset("ETTm1", "test", 96, 48, 24)
    assert native.freq == "t" and native.n_time_features == 5
    mimic = ETTDataset("ETTm1", "test", 96, 48, 24, freq="h")  # the official scripts' --freq h
    assert mimic.n_time_features == 4
    torch.testing.assert_close(native.stamp[:, 1:], mimic.stamp)


@needs_etth1
def test_loaders_keep_every_test_window_and_mimic_drop_last():
    dm = ETTDataModule("ETTh1", seq_len=96, label_len=48, pred_len=24, batch_size=32)
    dm.setup("fit")
    assert sum(b[0].shape[0] for b in dm.test_dataloader()) == 2857
    assert sum(b[0].shape[0] for b in dm.val_dataloader()) == 2857
    assert len(dm.train_dataloader()) == 8521 // 32  # train: shuffle + drop_last (official)
    official = ETTDataModule(
        "ETTh1", seq_len=96, label_len=48, pred_len=24, batch_size=32, test_drop_last=True
    )
    assert sum(b[0].shape[0] for b in official.test_dataloader()) == 2857 // 32 * 32 == 2848
    assert (dm.enc_in, dm.c_out) == (7, 7)
    assert (ETTDataModule("ETTh1", features="MS").enc_in, ETTDataModule("ETTh1", features="MS").c_out) == (
        7,
        1,
    )


def test_config_options_are_the_presets_and_the_base_options_it_does_not_fix():
    """jsonargparse reads the base options through ``**kwargs`` (it falls back to every base option, the fixed ones
    included, when it cannot follow them): a config sets and type-checks them, and not the ones the preset fixes."""

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(ETTDataModule, "data")
    options = {a.dest.split(".", 1)[1] for a in parser._actions if a.dest.startswith("data.")}
    fixed = {"date_column", "columns", "time_features", "split", "train_ratio", "test_ratio"}
    assert options == {"name", "target", "freq", "root", "download"} | (
        set(inspect.signature(TimeSeriesDataModule).parameters) - fixed
    )
    cfg = parser.parse_args(["--data.seq_len", "48", "--data.features", "S"])
    assert (cfg.data.seq_len, cfg.data.features, cfg.data.pred_len) == (48, "S", 24)
    for bad in (["--data.seq_lenn", "48"], ["--data.seq_len", "x"], ["--data.split", "ratio"]):
        with pytest.raises(ArgumentError, match=bad[0].split(".")[1]):
            parser.parse_args(bad)


def test_epoch_seeded_sampler_depends_only_on_seed_and_epoch():
    a, b = EpochSeededRandomSampler(50, seed=3), EpochSeededRandomSampler(50, seed=3)
    first = list(a)
    assert sorted(first) == list(range(50))
    b.set_epoch(1)
    second = list(b)
    assert first != second
    a.set_epoch(1)
    assert list(a) == second


# ------------------------------------------------------------------------------------------------- clear errors
def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ETTh1\.csv.*download=True"):
        ETTDataset("ETTh1", root=tmp_path)


@needs_etth1
def test_missing_target_column():
    with pytest.raises(ValueError, match=r"target column 'oil' not in ETTh1\.csv"):
        ETTDataset("ETTh1", target="oil")


def _synthetic_csv(tmp_path: Path, rows: int = 14400, nan_at: tuple[int, str] | None = None) -> Path:
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        rng.normal(size=(rows, 7)), columns=["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
    )
    df.insert(0, "date", pd.date_range("2016-07-01", periods=rows, freq="h").strftime("%Y-%m-%d %H:%M:%S"))
    if nan_at is not None:
        df.loc[nan_at[0], nan_at[1]] = np.nan
    path = tmp_path / "ETTh1.csv"
    df.to_csv(path, index=False)
    return path


def test_nan_in_data(tmp_path):
    path = _synthetic_csv(tmp_path, nan_at=(1234, "MULL"))
    with pytest.raises(ValueError, match=r"NaN/inf in column 'MULL' at row 1234"):
        ETTDataset("ETTh1", path=path)
    # a synthetic file without NaN loads (the checks are about content, not about the real file)
    assert len(ETTDataset("ETTh1", path=_synthetic_csv(tmp_path))) == 8521


def test_too_few_rows(tmp_path):
    with pytest.raises(ValueError, match="needs at least 14400"):
        ETTDataset("ETTh1", path=_synthetic_csv(tmp_path, rows=10000))


@needs_etth1
@pytest.mark.parametrize(("seq_len", "pred_len", "split"), [(8000, 700, "train"), (96, 2881, "val")])
def test_window_longer_than_a_split(seq_len, pred_len, split):
    with pytest.raises(ValueError, match=f"longer than the {split} split"):
        ETTDataset("ETTh1", "test", seq_len, 48, pred_len)


@needs_etth1
@pytest.mark.parametrize("freq", ["x", "15min", ""])
def test_unknown_frequency(freq):
    with pytest.raises(ValueError, match="unknown frequency"):
        ETTDataset("ETTh1", freq=freq)
    with pytest.raises(ValueError, match="unknown frequency"):
        ETTDataModule("ETTh1", freq=freq)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(name="ETTh3"), "unknown ETT dataset"),
        (dict(split="dev"), "unknown split"),
        (dict(features="MM"), "unknown features"),
        (dict(label_len=200), "label_len"),
        (dict(pred_len=0), "pred_len"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ETTDataset(**kwargs)


# ---------------------------------------------------------------------------------------- download (offline)
# The real download needs the network; these tests exercise the same code path against a file:// mirror laid out
# like the upstream repository, so the fetch, checksum and atomic-rename logic are checked without it.
def _mirror(tmp_path: Path, name: str, payload: bytes) -> str:
    from favit_probsparse.data import ett as ett_mod

    commit_dir = tmp_path / "mirror" / ett_mod.UPSTREAM_COMMIT / "ETT-small"
    commit_dir.mkdir(parents=True)
    (commit_dir / f"{name}.csv").write_bytes(payload)
    return (tmp_path / "mirror").as_uri() + "/{commit}/ETT-small/{name}.csv"


@needs_etth1
def test_download_from_mirror_verifies_checksum(tmp_path, monkeypatch):
    from favit_probsparse.data import ett as ett_mod

    url = _mirror(tmp_path, "ETTh1", ETTH1.read_bytes())
    monkeypatch.setattr(ett_mod, "UPSTREAM_URL", url)
    root = tmp_path / "data"
    ds = ETTDataset("ETTh1", root=root, download=True, seq_len=96, label_len=48, pred_len=24)
    got = ett_path("ETTh1", root)
    assert got.read_bytes() == ETTH1.read_bytes()
    assert not got.with_suffix(".csv.part").exists()
    assert len(ds) == 8640 - 96 - 24 + 1  # the downloaded file feeds the normal protocol


def test_download_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch):
    from favit_probsparse.data import ett as ett_mod

    monkeypatch.setattr(
        ett_mod, "UPSTREAM_URL", _mirror(tmp_path, "ETTh2", b"date,OT\n2016-07-01 00:00:00,1.0\n")
    )
    root = tmp_path / "data"
    with pytest.raises(RuntimeError, match=r"checksum mismatch .*ETTh2\.csv"):
        ett_mod.download_ett("ETTh2", root)
    assert not any(root.rglob("*.csv*")), "a corrupt download must not be left behind"


def test_download_unreachable_names_url(tmp_path, monkeypatch):
    from favit_probsparse.data import ett as ett_mod

    monkeypatch.setattr(ett_mod, "UPSTREAM_URL", (tmp_path / "nowhere").as_uri() + "/{commit}/{name}.csv")
    with pytest.raises(RuntimeError, match=r"could not download .*nowhere.*ETTm2\.csv"):
        ett_mod.download_ett("ETTm2", tmp_path / "data")
