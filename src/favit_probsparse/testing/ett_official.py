"""A re-statement of the official Informer2020 ETT datasets (``Dataset_ETT_hour`` / ``Dataset_ETT_minute``): the
tests' reference for :class:`favit_probsparse.data.ett.ETTDataModule`, not part of the data API.

It computes the borders, windows, scaler and time features the way the official loader does (the protocol is in
:mod:`favit_probsparse.data.ett` and ``docs/informer.md`` §2), independently of
:class:`~favit_probsparse.data.timeseries.TimeSeriesDataModule`, so the tests can compare the two.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from favit_probsparse.data.ett import FEATURES, SPLITS, _load_csv, _native_freq, ett_path
from favit_probsparse.data.timeseries import StandardScaler, _check_freq, time_features

__all__ = ["ETTDataset", "ett_borders"]


def ett_borders(name: str, seq_len: int) -> dict[str, tuple[int, int]]:
    """Row ranges ``[start, end)`` of each split (12/4/4 months of 30 days; val/test include ``seq_len`` history)."""
    per_hour = 4 if _native_freq(name) == "t" else 1
    month = 30 * 24 * per_hour
    b1 = [0, 12 * month - seq_len, 16 * month - seq_len]
    b2 = [12 * month, 16 * month, 20 * month]
    return {s: (b1[i], b2[i]) for i, s in enumerate(SPLITS)}


class ETTDataset(Dataset):
    """One split of an ETT series as ``(seq_x, seq_y, seq_x_mark, seq_y_mark)`` float32 tensor windows.

    ``seq_x`` [seq_len, C_in], ``seq_y`` [label_len + pred_len, C_in] (the model target is its last ``pred_len``
    rows and, for ``MS``, its last column), marks [*, d_time].
    """

    def __init__(
        self,
        name: str = "ETTh1",
        split: str = "train",
        seq_len: int = 96,
        label_len: int = 48,
        pred_len: int = 24,
        features: str = "M",
        target: str = "OT",
        scale: bool = True,
        timeenc: int = 1,
        freq: str | None = None,
        root: str | os.PathLike | None = None,
        path: str | os.PathLike | None = None,
        download: bool = False,
        frame: pd.DataFrame | None = None,
    ):
        native = _native_freq(name)
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
        if features not in FEATURES:
            raise ValueError(f"unknown features {features!r}; choose one of {list(FEATURES)}")
        for k, v in (("seq_len", seq_len), ("pred_len", pred_len)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{k} must be a positive int, got {v!r}")
        if not isinstance(label_len, int) or not 0 <= label_len <= seq_len:
            raise ValueError(f"label_len must be an int in [0, seq_len={seq_len}], got {label_len!r}")
        self.freq = _check_freq(freq if freq is not None else native, timeenc)
        self.name, self.split, self.features, self.target = name, split, features, target
        self.seq_len, self.label_len, self.pred_len = seq_len, label_len, pred_len
        self.timeenc = timeenc

        self.path = Path(path) if path is not None else ett_path(name, root)
        df = frame if frame is not None else _load_csv(self.path, name, download)
        cols = [c for c in df.columns if c != "date"]
        if target not in cols:
            raise ValueError(f"target column {target!r} not in {self.path.name} (columns: {cols})")
        cols = [c for c in cols if c != target] + [target]  # target last (ETT: already the official order)
        self.columns = cols if features in ("M", "MS") else [target]

        borders = ett_borders(name, seq_len)
        need = borders["test"][1]
        if len(df) < need:
            raise ValueError(f"{self.path.name} has {len(df)} rows; the ETT protocol needs at least {need}")
        for s, (b1, b2) in borders.items():
            if b2 - b1 - seq_len - pred_len + 1 < 1:
                raise ValueError(
                    f"seq_len + pred_len = {seq_len} + {pred_len} = {seq_len + pred_len} is longer than the {s} "
                    f"split of {name} ({b2 - b1} rows including {(s != 'train' and seq_len) or 0} of history): "
                    "no window fits"
                )
        values = df[self.columns].to_numpy(dtype=np.float64)
        used = values[: borders["test"][1]]
        if not np.isfinite(used).all():
            bad = np.argwhere(~np.isfinite(used))[0]
            raise ValueError(
                f"{self.path.name}: NaN/inf in column {self.columns[bad[1]]!r} at row {bad[0]} (date "
                f"{df['date'].iloc[bad[0]]}); the ETT protocol expects complete data"
            )
        b1, b2 = borders[split]
        self.border = (b1, b2)
        self.scaler = StandardScaler.fit(values[: borders["train"][1]])
        if scale:
            values = self.scaler.transform(values)
        self.scale = scale
        self.data = torch.from_numpy(values[b1:b2].astype(np.float32))
        stamps = time_features(df["date"].iloc[b1:b2], self.freq, timeenc)
        self.stamp = torch.from_numpy(stamps)
        self.dates = pd.DatetimeIndex(pd.to_datetime(df["date"].iloc[b1:b2]))

    @property
    def n_channels(self) -> int:
        return self.data.shape[1]

    @property
    def n_time_features(self) -> int:
        return self.stamp.shape[1]

    def __len__(self) -> int:
        return len(self.data) - self.seq_len - self.pred_len + 1

    def __getitem__(self, index: int):
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        s_end = index + self.seq_len
        r_begin = s_end - self.label_len
        r_end = s_end + self.pred_len
        return (
            self.data[index:s_end],
            self.data[r_begin:r_end],
            self.stamp[index:s_end],
            self.stamp[r_begin:r_end],
        )

    def inverse_transform(self, data):
        return self.scaler.inverse_transform(data)
