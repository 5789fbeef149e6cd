"""Any time series in a CSV or Parquet file as forecasting windows (Informer / Time-Series-Library protocol).

* The file has a date column (``date_column``) and numeric columns; ``columns`` picks a subset (default: all but the
  date). ``features``: ``M`` (all columns in and out), ``S`` (the target only), ``MS`` (all in, the target out);
  the target moves to the last position (TSL ``Dataset_Custom`` column order). Channel counts follow from the data.
* ``freq``: the sampling frequency as a pandas alias (``"h"``, ``"15min"``, ``"D"``); None infers it from the
  timestamps (``pandas.infer_freq``, or the most common spacing with a warning when there are gaps). The time
  features (``embed="timeF"``: GluonTS-style features in [-0.5, 0.5]) follow from it; ``time_features`` overrides
  their frequency code (``"h"`` on 15-minute data mimics the official ETTm scripts).
* Splits: ``"ratio"`` is TSL's custom split: ``n_train = int(0.7 n)``, ``n_test = int(0.2 n)``, validation the
  rest; val/test start ``seq_len`` rows early (look-back overlap). ``"ett"`` is the official ETT split: 12/4/4
  months of 30 days at the data's frequency, rows after the test border unused.
* z-score with population statistics fitted on the **train slice only**; a constant column gets std 1 with a
  warning naming it (scikit-learn's guard), instead of training to NaN.
* Bad input raises :class:`DataError` naming the file, the column and the row.
* ``predict``: the loader yields the last window of the series, whose decoder marks are the ``pred_len``
  timestamps after the last one; :meth:`TimeSeriesDataModule.forecast_frame` turns a forecast into a DataFrame
  with those timestamps and the predicted columns in original units.
"""

from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = [
    "SPLITS",
    "DataError",
    "EpochSeededRandomSampler",
    "StandardScaler",
    "TimeSeriesDataModule",
    "WindowDataset",
    "ett_split_borders",
    "infer_frequency",
    "ratio_split_borders",
    "read_table",
    "time_feature_code",
    "time_feature_dim",
    "time_features",
]

SPLITS = ("train", "val", "test")

# Number of time features per frequency for timeenc=1 (Informer's TimeFeatureEmbedding freq_map).
_TIMEF_DIMS = {"h": 4, "t": 5, "s": 6, "m": 1, "w": 2, "d": 3, "b": 3}
# Calendar fields for timeenc=0 (Informer's utils/timefeatures.py freq_map).
_CALENDAR_FIELDS = {
    "m": ["month"],
    "w": ["month"],
    "d": ["month", "day", "weekday"],
    "b": ["month", "day", "weekday"],
    "h": ["month", "day", "weekday", "hour"],
    "t": ["month", "day", "weekday", "hour", "minute"],
}


@dataclass
class StandardScaler:
    """z-score with population statistics (ddof 0), like the official numpy scaler and sklearn's."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, data: np.ndarray) -> StandardScaler:
        data = np.asarray(data, dtype=np.float64)
        return cls(mean=data.mean(0), std=data.std(0))

    def transform(self, data: np.ndarray) -> np.ndarray:
        return (data - self.mean) / self.std

    def inverse_transform(self, data):
        """Inverse transform for numpy arrays or tensors whose last dim is all channels or only the last ones
        (e.g. the target of ``S``/``MS``: the last ``C`` columns' statistics are used)."""
        c = data.shape[-1]
        mean, std = self.mean[-c:], self.std[-c:]
        if isinstance(data, torch.Tensor):
            return data * torch.as_tensor(std, dtype=data.dtype, device=data.device) + torch.as_tensor(
                mean, dtype=data.dtype, device=data.device
            )
        return data * std + mean


def time_feature_dim(freq: str, timeenc: int = 1) -> int:
    """Width of the time-feature vector for ``freq`` (checks the frequency)."""
    freq = _check_freq(freq, timeenc)
    return _TIMEF_DIMS[freq] if timeenc == 1 else len(_CALENDAR_FIELDS[freq])


def _check_freq(freq: str, timeenc: int) -> str:
    if not isinstance(freq, str) or not freq:
        raise ValueError(f"unknown frequency {freq!r}")
    if timeenc not in (0, 1):
        raise ValueError(f"timeenc must be 0 (calendar fields) or 1 (timeF), got {timeenc!r}")
    f = freq[
        -1:
    ].lower()  # official: args.freq = freq[-1:] ('15min' -> 'n' is rejected below, 't' is accepted)
    table = _TIMEF_DIMS if timeenc == 1 else _CALENDAR_FIELDS
    if f not in table:
        raise ValueError(
            f"unknown frequency {freq!r}; choose one of {sorted(table)} (h = hourly, t = minutely, e.g. 15-min ETTm)"
        )
    return f


def time_features(dates: pd.DatetimeIndex | pd.Series, freq: str = "h", timeenc: int = 1) -> np.ndarray:
    """Time features ``[N, d]`` exactly as Informer's ``utils/timefeatures.py`` (GluonTS-derived, Apache-2.0)."""
    f = _check_freq(freq, timeenc)
    dates = pd.DatetimeIndex(pd.to_datetime(dates))
    if timeenc == 0:
        fields = {
            "month": dates.month,
            "day": dates.day,
            "weekday": dates.weekday,
            "hour": dates.hour,
            "minute": dates.minute // 15,
        }
        cols = _CALENDAR_FIELDS[f]
        return np.stack([np.asarray(fields[c]) for c in cols], axis=1).astype(np.float32)
    second = dates.second / 59.0 - 0.5
    minute = dates.minute / 59.0 - 0.5
    hour = dates.hour / 23.0 - 0.5
    dow = dates.day_of_week / 6.0 - 0.5
    dom = (dates.day - 1) / 30.0 - 0.5
    doy = (dates.day_of_year - 1) / 365.0 - 0.5
    moy = (dates.month - 1) / 11.0 - 0.5
    woy = (np.asarray(dates.isocalendar().week, dtype=np.float64) - 1) / 52.0 - 0.5
    feats = {
        "m": [moy],
        "w": [dom, woy],
        "d": [dow, dom, doy],
        "b": [dow, dom, doy],
        "h": [hour, dow, dom, doy],
        "t": [minute, hour, dow, dom, doy],
        "s": [second, minute, hour, dow, dom, doy],
    }[f]
    return np.stack([np.asarray(x, dtype=np.float64) for x in feats], axis=1).astype(np.float32)


class EpochSeededRandomSampler(Sampler[int]):
    """Random permutation that depends only on ``(seed, epoch)``: Lightning calls :meth:`set_epoch` before each
    epoch, so a run resumed from an epoch-end checkpoint sees the same order as an uninterrupted one."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch = n, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.seed * 100_003 + self.epoch)
        yield from torch.randperm(self.n, generator=g).tolist()


class DataError(ValueError):
    """The data file cannot be used as it is (the message names the file, column and row)."""


# ----------------------------------------------------------------------------------------------------------------
# borders and frequencies
# ----------------------------------------------------------------------------------------------------------------
def ratio_split_borders(
    n: int, seq_len: int, train: float = 0.7, test: float = 0.2
) -> dict[str, tuple[int, int]]:
    """TSL ``Dataset_Custom``: ``[start, end)`` of each split; val/test include ``seq_len`` rows of history."""
    n_train, n_test = int(n * train), int(n * test)
    n_val = n - n_train - n_test
    b1 = [0, n_train - seq_len, n - n_test - seq_len]
    b2 = [n_train, n_train + n_val, n]
    return {s: (b1[i], b2[i]) for i, s in enumerate(SPLITS)}


def ett_split_borders(steps_per_hour: int, seq_len: int) -> dict[str, tuple[int, int]]:
    """The official ETT borders (12/4/4 months of 30 days) for data with ``steps_per_hour`` rows per hour."""
    month = 30 * 24 * steps_per_hour
    b1 = [0, 12 * month - seq_len, 16 * month - seq_len]
    b2 = [12 * month, 16 * month, 20 * month]
    return {s: (b1[i], b2[i]) for i, s in enumerate(SPLITS)}


def infer_frequency(dates: pd.DatetimeIndex, source: str = "data", notes: list[str] | None = None) -> str:
    """``pandas.infer_freq``; with gaps, the most common spacing (a warning with the number of other steps,
    appended to ``notes`` instead when given)."""
    if len(dates) < 3:
        raise DataError(f"{source}: {len(dates)} timestamps are too few to infer the frequency; give freq=")
    freq = pd.infer_freq(dates)
    if freq is not None:
        return pd.tseries.frequencies.to_offset(freq).freqstr
    steps = pd.Series(dates[1:] - dates[:-1])
    mode = steps.mode().iloc[0]
    other = int((steps != mode).sum())
    freq = pd.tseries.frequencies.to_offset(mode).freqstr
    msg = (
        f"{source}: irregular timestamps ({other} of {len(steps)} steps differ from the most common spacing "
        f"{mode}); using freq={freq!r} (give freq= to set it)"
    )
    if notes is None:
        warnings.warn(msg, stacklevel=2)
    else:
        notes.append(msg)
    return freq


def time_feature_code(freq: str) -> str:
    """Informer's time-feature frequency code for a pandas frequency (``"15min"`` -> ``"t"``, ``"h"`` -> ``"h"``)."""
    off = pd.tseries.frequencies.to_offset(freq)
    table = (
        (pd.offsets.Minute, "t"),
        (pd.offsets.Hour, "h"),
        ((pd.offsets.Second, pd.offsets.Milli, pd.offsets.Micro, pd.offsets.Nano), "s"),
        (pd.offsets.Day, "d"),
        ((pd.offsets.BusinessDay, pd.offsets.CustomBusinessDay), "b"),
        (pd.offsets.Week, "w"),
    )
    for types, code in table:
        if isinstance(off, types):
            return code
    return "m"  # month, quarter, year: the coarsest features Informer has


# ----------------------------------------------------------------------------------------------------------------
# dataset
# ----------------------------------------------------------------------------------------------------------------
class WindowDataset(Dataset):
    """``(seq_x, seq_y, seq_x_mark, seq_y_mark)`` windows with stride 1 over ``data`` [N, C] / ``stamp`` [N, d]
    (the official ``__getitem__``: encoder ``[i, i + seq_len)``, decoder ``[i + seq_len - label_len,
    i + seq_len + pred_len)``)."""

    def __init__(self, data: torch.Tensor, stamp: torch.Tensor, seq_len: int, label_len: int, pred_len: int):
        self.data, self.stamp = data, stamp
        self.seq_len, self.label_len, self.pred_len = seq_len, label_len, pred_len

    def __len__(self) -> int:
        return max(len(self.data) - self.seq_len - self.pred_len + 1, 0)

    def __getitem__(self, index: int):
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        s_end = index + self.seq_len
        r_begin, r_end = s_end - self.label_len, s_end + self.pred_len
        return (
            self.data[index:s_end],
            self.data[r_begin:r_end],
            self.stamp[index:s_end],
            self.stamp[r_begin:r_end],
        )


class _LastWindow(Dataset):
    """The one window that ends at the last row; its decoder part is the label rows + ``pred_len`` unknown steps."""

    def __init__(self, x, y, x_mark, y_mark):
        self.items = (x, y, x_mark, y_mark)

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int):
        if index not in (0, -1):
            raise IndexError(index)
        return self.items


# ----------------------------------------------------------------------------------------------------------------
# datamodule
# ----------------------------------------------------------------------------------------------------------------
class TimeSeriesDataModule(LightningDataModule):
    """Forecasting windows over one CSV/Parquet time series (see the module docstring).

    Args:
        path: CSV (``.csv``, ``.csv.gz``, ...) or Parquet (``.parquet``/``.pq``) file.
        date_column: name of the timestamp column.
        columns: the numeric columns to use (None: every column but the date).
        features: ``M`` | ``S`` | ``MS``; target: the predicted column of ``S``/``MS`` (None: the last column).
        seq_len / label_len / pred_len: look-back, decoder start tokens, horizon.
        freq: pandas frequency alias of the rows (None: inferred); time_features: the time-feature code
            (None: from ``freq``); embed: ``timeF`` (features in [-0.5, 0.5]) or ``fixed``/``learned`` (calendar
            fields; hourly or minutely data only).
        split: ``ratio`` (TSL 70/10/20, ``train_ratio``/``test_ratio``) or ``ett`` (official ETT borders).
        scale: z-score with the train slice's statistics.
        batch_size / eval_batch_size / num_workers / pin_memory: loaders; val/test keep every window unless
            ``val_drop_last``/``test_drop_last`` (official loaders drop the last partial test batch).
        seed: the train shuffle depends only on (seed, epoch) (resume-exact); None = the global seed.
    """

    def __init__(
        self,
        path: str | None = None,
        date_column: str = "date",
        columns: list[str] | None = None,
        features: str = "M",
        target: str | None = None,
        seq_len: int = 96,
        label_len: int = 48,
        pred_len: int = 24,
        freq: str | None = None,
        time_features: str | None = None,
        embed: str = "timeF",
        split: str = "ratio",
        train_ratio: float = 0.7,
        test_ratio: float = 0.2,
        scale: bool = True,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = True,
        val_shuffle: bool = False,
        val_drop_last: bool = False,
        test_drop_last: bool = False,
        seed: int | None = None,
    ):
        super().__init__()
        if features not in ("M", "S", "MS"):
            raise ValueError(f"unknown features {features!r}; choose M, S or MS")
        if embed not in ("timeF", "fixed", "learned"):
            raise ValueError(f"unknown embed {embed!r}; choose timeF, fixed or learned")
        if split not in ("ratio", "ett"):
            raise ValueError(f"unknown split {split!r}; choose ratio or ett")
        for k, v in (("seq_len", seq_len), ("pred_len", pred_len)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{k} must be a positive int, got {v!r}")
        if not isinstance(label_len, int) or not 0 <= label_len <= seq_len:
            raise ValueError(f"label_len must be an int in [0, seq_len={seq_len}], got {label_len!r}")
        if not (0 < train_ratio < 1 and 0 < test_ratio < 1 and train_ratio + test_ratio < 1):
            raise ValueError(
                f"train_ratio={train_ratio}, test_ratio={test_ratio}: need both in (0, 1), sum < 1"
            )
        self.save_hyperparameters()
        # the options _load reads (not self.hparams: presets such as ETTDataModule have their own arguments)
        self._opts = dict(
            columns=columns, target=target, freq=freq, time_features=time_features, split=split,
            train_ratio=train_ratio, test_ratio=test_ratio, scale=scale,
        )  # fmt: skip
        self.path, self.date_column, self.features = path, date_column, features
        self.seq_len, self.label_len, self.pred_len = seq_len, label_len, pred_len
        self.embed = embed
        self.timeenc = 1 if embed == "timeF" else 0
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.val_shuffle, self.val_drop_last, self.test_drop_last = val_shuffle, val_drop_last, test_drop_last
        self.seed = int(seed) if seed is not None else torch.initial_seed() % 2**31
        self._frame: pd.DataFrame | None = None
        self._loaded = False
        # warnings about the data, shown by setup() (the CLI may read the shapes where warnings are not shown)
        self._notes: list[str] = []
        self.datasets: dict[str, Dataset] = {}

    # ------------------------------------------------------------------------------------------------ input
    @classmethod
    def from_frame(cls, frame: pd.DataFrame, **kwargs) -> TimeSeriesDataModule:
        """The same module over an in-memory DataFrame (the Python API: a DataFrame in)."""
        dm = cls(**kwargs)
        dm._frame = frame
        return dm

    @property
    def source(self) -> str:
        return str(self.path) if self._frame is None or self.path else "DataFrame"

    def read_frame(self) -> pd.DataFrame:
        """The raw table (override for presets that fetch their file)."""
        if self._frame is not None:
            return self._frame
        if self.path is None:
            raise ValueError("TimeSeriesDataModule needs path= (a CSV or Parquet file) or from_frame(df)")
        p = Path(self.path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"data file not found: {p}")
        return read_table(p)

    def _row(self, i: int) -> str:
        """How a user finds data row ``i`` (0-based): in a CSV, line i + 2 (after the header)."""
        if self._frame is None and self.path and Path(self.path).suffix.lower() not in (".parquet", ".pq"):
            return f"row {i} (line {i + 2})"
        return f"row {i}"

    def _load(self) -> None:
        if self._loaded:
            return
        df, src = self.read_frame(), self.source
        hp = argparse.Namespace(**self._opts)
        if self.date_column not in df.columns:
            raise DataError(f"{src}: no date column {self.date_column!r} (columns: {list(df.columns)})")
        self._select_columns(list(df.columns), src, hp.columns, hp.target)
        dates = self._parse_dates(df[self.date_column], src)
        steps = np.diff(dates.asi8)
        if (steps <= 0).any():
            i = int(np.flatnonzero(steps <= 0)[0]) + 1
            what = "duplicate timestamp" if steps[i - 1] == 0 else "timestamps not increasing"
            raise DataError(
                f"{src}: column {self.date_column!r}, {self._row(i)}: {what} ({dates[i]} after {dates[i - 1]}); "
                "sort the rows and remove duplicates"
            )
        values = self._numeric_values(df, dates, src)
        self._set_frequencies(dates, src, hp.freq, hp.time_features)
        self.borders = self._split_borders(len(df), src, hp)
        self.dates = dates
        self.raw = values
        self.scaler = fit_scaler(values[: self.borders["train"][1]], self._columns, src, self._notes)
        self.scaled = self.scaler.transform(values) if hp.scale else values
        self.time_stamps = time_features(dates, self.time_freq, self.timeenc)
        self._loaded = True

    def _select_columns(self, names: list, src: str, columns: list[str] | None, target: str | None) -> None:
        """The used columns in model order, the target last (``_columns``, ``_target``)."""
        cols = list(columns) if columns is not None else [c for c in names if c != self.date_column]
        for c in cols:
            if c not in names:
                raise DataError(f"{src}: no column {c!r} (columns: {names})")
        if not cols:
            raise DataError(f"{src}: no data columns besides {self.date_column!r}")
        target = target if target is not None else cols[-1]
        if target not in cols:
            where = "the selected columns" if columns is not None else "the file"
            raise DataError(f"{src}: target column {target!r} is not in {where} (columns: {cols})")
        self._target = target
        cols = [c for c in cols if c != target] + [target]
        self._columns = cols if self.features in ("M", "MS") else [target]

    def _numeric_values(self, df: pd.DataFrame, dates: pd.DatetimeIndex, src: str) -> np.ndarray:
        """The used columns as float64 ``[rows, columns]``; non-numeric, missing, infinite and beyond-float32
        values are named errors."""
        values = np.empty((len(df), len(self._columns)), dtype=np.float64)
        for j, c in enumerate(self._columns):
            col = df[c]
            num = pd.to_numeric(col, errors="coerce") if not pd.api.types.is_numeric_dtype(col) else col
            bad = num.isna().to_numpy() & col.notna().to_numpy()
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise DataError(f"{src}: column {c!r}, {self._row(i)}: non-numeric value {col.iloc[i]!r}")
            v = num.to_numpy(dtype=np.float64)
            if not np.isfinite(v).all():
                i = int(np.flatnonzero(~np.isfinite(v))[0])
                raise DataError(
                    f"{src}: column {c!r}, {self._row(i)} ({dates[i]}): missing or infinite value ({v[i]}); "
                    "fill or drop it first"
                )
            big = np.abs(v) > np.finfo(np.float32).max
            if big.any():  # the windows are float32: it would become inf there
                i = int(np.flatnonzero(big)[0])
                raise DataError(
                    f"{src}: column {c!r}, {self._row(i)} ({dates[i]}): value {v[i]:g} is beyond float32's range "
                    "(3.4e38) that the model computes in; rescale the column"
                )
            values[:, j] = v
        return values

    def _set_frequencies(
        self, dates: pd.DatetimeIndex, src: str, freq: str | None, time_features: str | None
    ) -> None:
        """The rows' frequency (``data_freq``, given or inferred) and the time-feature code (``time_freq``)."""
        if freq is not None:
            _check_given_freq(freq, dates, src, self._notes)
        self.data_freq = freq if freq is not None else infer_frequency(dates, src, self._notes)
        self.time_freq = time_features if time_features is not None else time_feature_code(self.data_freq)
        time_feature_dim(self.time_freq, self.timeenc)  # checks the code
        if self.timeenc == 0 and self.time_freq not in ("h", "t"):
            raise ValueError(
                f"embed={self.embed!r} needs hourly or minutely time features, not {self.time_freq!r}"
            )

    def _split_borders(self, n: int, src: str, hp: argparse.Namespace) -> dict[str, tuple[int, int]]:
        if hp.split == "ratio":
            return ratio_split_borders(n, self.seq_len, hp.train_ratio, hp.test_ratio)
        per_hour = pd.Timedelta("1h") / pd.Timedelta(pd.tseries.frequencies.to_offset(self.data_freq))
        if per_hour < 1 or per_hour != int(per_hour):
            raise DataError(
                f"{src}: split='ett' needs hourly or sub-hourly data, got freq {self.data_freq!r}"
            )
        borders = ett_split_borders(int(per_hour), self.seq_len)
        if n < borders["test"][1]:
            raise DataError(f"{src}: {n} rows; the ETT split needs at least {borders['test'][1]}")
        return borders

    def _parse_dates(self, raw: pd.Series, src: str) -> pd.DatetimeIndex:
        """The date column as naive timestamps; a row that is not a date, numbers (epoch seconds would be read as
        nanoseconds: dates in 1970) and changing UTC offsets (a DST change) are named errors."""
        where = f"{src}: column {self.date_column!r}"
        if len(raw) == 0:
            raise DataError(f"{src}: no rows (only a header)")
        if pd.api.types.is_numeric_dtype(raw) or pd.api.types.is_bool_dtype(raw):
            raise DataError(
                f"{where} holds numbers ({raw.iloc[0]} in {self._row(0)}), not dates; write dates as text "
                "(2021-03-01 00:00:00), e.g. epoch seconds with pandas.to_datetime(column, unit='s')"
            )
        if isinstance(raw.dtype, pd.DatetimeTZDtype):  # Parquet with a time zone: local wall-clock times
            return pd.DatetimeIndex(raw.dt.tz_localize(None))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Could not infer format": a bad row is reported below
                dates = pd.to_datetime(raw, errors="coerce")
        except (ValueError, TypeError, OverflowError) as e:  # e.g. mixed UTC offsets
            dates = None
            cause = " ".join(str(e).split())
        if dates is not None and isinstance(dates.dtype, pd.DatetimeTZDtype):
            dates = dates.dt.tz_localize(None)
        if dates is None or not pd.api.types.is_datetime64_dtype(dates):
            i, cause = self._first_bad_date(raw, cause if dates is None else "mixed types")
            raise DataError(f"{where}, {self._row(i)}: {cause}")
        if dates.isna().any():
            i = int(np.flatnonzero(dates.isna().to_numpy())[0])
            raise DataError(f"{where}, {self._row(i)}: cannot parse {raw.iloc[i]!r} as a date")
        return pd.DatetimeIndex(dates)

    def _first_bad_date(self, raw: pd.Series, cause: str) -> tuple[int, str]:
        """The row where parsing one value fails or its UTC offset differs from the first row's."""
        first = None
        for i, v in enumerate(raw):
            try:
                t = pd.Timestamp(v)
            except (ValueError, TypeError, OverflowError):
                return i, f"cannot parse {v!r} as a date"
            if i == 0:
                first = t.utcoffset()
            elif t.utcoffset() != first:
                return i, (
                    f"UTC offset changes from {first} to {t.utcoffset()} ({v!r}; a daylight-saving change?); "
                    "write the dates in one offset, e.g. UTC"
                )
        return 0, f"cannot parse the dates ({cause})"

    def _check_split(self, split: str) -> None:
        b1, b2 = self.borders[split]
        need = self.seq_len + self.pred_len
        if b1 < 0 or b2 - b1 < need:
            raise DataError(
                f"{self.source}: the {split} split has {b2 - max(b1, 0)} rows ({self._row(max(b1, 0))} to "
                f"{self._row(b2 - 1)}) but seq_len + pred_len = {self.seq_len} + {self.pred_len} = {need} are "
                f"needed for one window ({len(self.dates)} rows in all); use a longer series or shorter windows"
            )

    # ------------------------------------------------------------------------------------------------ shapes
    @property
    def enc_in(self) -> int:
        self._load()
        return len(self._columns)

    @property
    def dec_in(self) -> int:
        return self.enc_in

    @property
    def c_out(self) -> int:
        self._load()
        return len(self._columns) if self.features == "M" else 1

    @property
    def freq(self) -> str:
        """The time-feature frequency code the network's temporal embedding needs (linked into it)."""
        self._load()
        return self.time_freq

    @property
    def n_time_features(self) -> int:
        return time_feature_dim(self.freq, self.timeenc)

    @property
    def columns(self) -> list[str]:
        """The used columns in model order (the target last)."""
        self._load()
        return list(self._columns)

    @property
    def target(self) -> str:
        self._load()
        return self._target

    @property
    def target_columns(self) -> list[str]:
        self._load()
        return list(self._columns) if self.features == "M" else [self._target]

    # ------------------------------------------------------------------------------------------------ splits
    def dataset(self, split: str) -> Dataset:
        if split not in self.datasets:
            self._load()
            if split == "predict":
                self.datasets[split] = self._last_window()
            else:
                if split not in SPLITS:
                    raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)} or predict")
                self._check_split(split)
                b1, b2 = self.borders[split]
                data = torch.from_numpy(self.scaled[b1:b2].astype(np.float32))
                stamp = torch.from_numpy(self.time_stamps[b1:b2])
                self.datasets[split] = WindowDataset(data, stamp, self.seq_len, self.label_len, self.pred_len)
        return self.datasets[split]

    def setup(self, stage: str | None = None) -> None:
        self._load()
        for msg in self._notes:
            warnings.warn(msg, stacklevel=2)
        self._notes = []
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
        for s in splits.get(stage, (*SPLITS, "predict")):
            self.dataset(s)

    def future_dates(self) -> pd.DatetimeIndex:
        """The ``pred_len`` timestamps after the last one, at the data's frequency."""
        self._load()
        return pd.date_range(self.dates[-1], periods=self.pred_len + 1, freq=self.data_freq)[1:]

    def _last_window(self) -> Dataset:
        if len(self.dates) < self.seq_len:
            raise DataError(f"{self.source}: {len(self.dates)} rows, fewer than seq_len={self.seq_len}")
        x = torch.from_numpy(self.scaled[-self.seq_len :].astype(np.float32))
        label = x[len(x) - self.label_len :]
        y = torch.cat([label, torch.zeros(self.pred_len, x.shape[1])])  # unknown steps: the model pads them
        past = self.dates[-self.seq_len :]
        dec_dates = past[len(past) - self.label_len :].append(self.future_dates())
        x_mark = torch.from_numpy(time_features(past, self.time_freq, self.timeenc))
        y_mark = torch.from_numpy(time_features(dec_dates, self.time_freq, self.timeenc))
        return _LastWindow(x, y, x_mark, y_mark)

    def use_columns(self, columns: list[str]) -> None:
        """Read the data columns by name in a trained model's order (``columns``, the target last); the same
        names in another order are reordered, other names are a :class:`DataError` naming both lists."""
        self._load()
        columns = [str(c) for c in columns]
        if self._columns == columns:
            return
        if sorted(self._columns) != sorted(columns):
            raise DataError(
                f"{self.source}: the model was trained on columns {columns} but this data has {self._columns}; "
                "give the data those columns (data.columns selects them by name)"
            )
        self._opts = {**self._opts, "columns": columns, "target": columns[-1]}
        self._loaded, self.datasets = False, {}
        self._load()

    def use_scaler(self, mean, std) -> None:
        """Scale with given statistics (a trained model's, fitted on its training data) instead of the ones fitted
        on this data's train slice: a model forecasting another file of the same layout must see its inputs, and
        give its outputs, in the units it was trained in."""
        self._load()
        mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
        if mean.shape != np.shape(self.scaler.mean) or std.shape != mean.shape:
            raise DataError(
                f"{self.source}: the model's scaler has {mean.size} channels, this data {np.size(self.scaler.mean)} "
                f"({self._columns}); give the columns the model was trained on"
            )
        self.scaler = StandardScaler(mean=mean, std=std)
        if self._opts["scale"]:
            self.scaled = self.scaler.transform(self.raw)
        self.datasets = {}  # rebuilt from the newly scaled values on the next loader request

    # ------------------------------------------------------------------------------------------------ frames
    def inverse_transform(self, values):
        """Scaled -> original units (last dim: all columns, or the last ``C`` ones, e.g. the target)."""
        self._load()
        return self.scaler.inverse_transform(values) if self._opts["scale"] else values

    def forecast_frame(self, pred_original: np.ndarray) -> pd.DataFrame:
        """A forecast ``[pred_len, C]`` in original units as a DataFrame: date column + predicted columns."""
        pred = np.asarray(pred_original, dtype=np.float64)
        cols = self.target_columns
        if pred.shape != (self.pred_len, len(cols)):
            raise ValueError(f"forecast has shape {pred.shape}, expected {(self.pred_len, len(cols))}")
        out = pd.DataFrame(pred, columns=cols)
        out.insert(0, self.date_column, self.future_dates())
        return out

    def history_frame(self, n: int) -> pd.DataFrame:
        """The last ``n`` rows of the used columns in original units, with their dates."""
        self._load()
        out = pd.DataFrame(self.raw[-n:], columns=self._columns)
        out.insert(0, self.date_column, self.dates[-n:])
        return out

    # ------------------------------------------------------------------------------------------------ loaders
    def _loader(self, split: str, shuffle: bool, drop_last: bool, batch_size: int) -> DataLoader:
        ds = self.dataset(split)
        sampler = EpochSeededRandomSampler(len(ds), self.seed) if shuffle else None
        # a loader-owned generator: iterators draw their base seed from it, not from the global RNG that the
        # training module reseeds per epoch (dropout / ProbSparse sampling stay resume-exact)
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            ds,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            drop_last=drop_last,
            generator=generator,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        n = len(self.dataset("train"))
        if self.batch_size > n:  # the partial batch is dropped: no training step at all
            raise DataError(
                f"{self.source}: batch_size={self.batch_size} is larger than the {n} training windows; "
                f"lower batch_size to at most {n}"
            )
        return self._loader("train", True, True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.val_shuffle, self.val_drop_last, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.test_drop_last, self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", False, False, 1)


def _check_given_freq(freq: str, dates: pd.DatetimeIndex, source: str, notes: list[str]) -> None:
    """Warn (through ``notes``) when a given fixed ``freq`` is not the timestamps' most common spacing."""
    if len(dates) < 2:
        return
    try:
        step = pd.Timedelta(pd.tseries.frequencies.to_offset(freq))
    except (ValueError, TypeError):  # month, business day, ...: no fixed length to compare
        return
    spacing = pd.Series(dates[1:] - dates[:-1]).mode().iloc[0]
    if spacing != step:
        notes.append(
            f"{source}: freq={freq!r} ({step}) but the timestamps are {spacing} apart; the time features and "
            "the forecast dates follow freq (leave freq out to infer it)"
        )


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV or Parquet file as a DataFrame; what pandas cannot read is a :class:`DataError` naming the file."""
    p = Path(path)
    with open(p, "rb") as f:
        head = f.read(4)
    parquet = p.suffix.lower() in (".parquet", ".pq")
    if head == b"PAR1" and not parquet:
        raise DataError(f"{p}: a Parquet file with a {p.suffix or 'missing'} suffix; name it .parquet")
    if not head:
        raise DataError(f"{p}: empty file (no header, no rows)")
    try:
        return pd.read_parquet(p) if parquet else pd.read_csv(p)
    except (ValueError, UnicodeDecodeError, OSError, pd.errors.ParserError) as e:
        what = "Parquet" if parquet else "CSV"
        cause = " ".join(str(e).split())[:200]
        raise DataError(f"{p}: not a readable {what} file ({type(e).__name__}: {cause})") from None


def fit_scaler(
    train: np.ndarray, columns: list[str], source: str = "data", notes: list[str] | None = None
) -> StandardScaler:
    """z-score statistics of the train slice; a constant column gets std 1 (scikit-learn's guard) and a warning
    (appended to ``notes`` instead when given)."""
    sc = StandardScaler.fit(train)
    const = sc.std == 0
    if const.any():
        names = [columns[i] for i in np.flatnonzero(const)]
        msg = f"{source}: column(s) {names} are constant on the train split; scaling them with std 1"
        if notes is None:
            warnings.warn(msg, stacklevel=2)
        else:
            notes.append(msg)
        sc.std = np.where(const, 1.0, sc.std)
    return sc
