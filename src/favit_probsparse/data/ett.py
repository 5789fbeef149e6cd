"""ETT (Electricity Transformer Temperature) datasets under the exact Informer / TSL protocol.

Protocol (``docs/informer.md`` §2; Informer2020 ``data/data_loader.py`` ``Dataset_ETT_hour`` / ``Dataset_ETT_minute``):

* Borders, with a month of 30 days: hourly train ``[0, 8640)``, val ``[8640 - seq_len, 11520)``, test
  ``[11520 - seq_len, 14400)`` (12/4/4 months; val/test carry ``seq_len`` steps of history); 15-minute data ×4.
  Rows after the test border are never used.
* Windows with stride 1: ``len = len(split) - seq_len - pred_len + 1``. Window ``i`` gives the encoder input
  ``[i, i + seq_len)`` and the decoder target ``[i + seq_len - label_len, i + seq_len + pred_len)``.
* z-score with population statistics (ddof 0) fitted on the **train slice only**, applied to the whole series.
* Features: ``M`` (all 7 columns in and out), ``S`` (target only), ``MS`` (all in, target out). The target column
  is moved to the last position (ETT's ``OT`` already is last, so this is the official column order).
* Time features: ``timeenc=1`` (``embed=timeF``) gives GluonTS-style features scaled to [-0.5, 0.5]
  (``h`` -> 4 dims, ``t`` -> 5 dims, ...); ``timeenc=0`` (``embed=fixed|learned``) gives integer calendar fields
  ``[month, day, weekday, hour(, minute // 15)]``. The stamps are those of the split slice.
  The frequency defaults to the data's own (``h`` for ETTh, ``t`` for ETTm); pass ``freq="h"`` on ETTm to mimic
  the official scripts, which omit ``--freq t``.
* Loaders: train shuffled with ``drop_last=True`` (official); val/test in order and **keeping every window**
  (``drop_last=False``). ``test_drop_last=True`` (and ``val_drop_last`` / ``val_shuffle``) mimic the official
  loaders for side-by-side comparisons with published numbers.

Data files are looked up under :func:`favit_probsparse.paths.data_root` ``/ETT/<name>.csv``; with
``download=True`` a missing file is fetched from the upstream ETDataset repository (pinned commit, checked
against its SHA-256). The data is CC BY-ND 4.0: keep the files unmodified and cite the Informer paper.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

import pandas as pd

from favit_probsparse.data.timeseries import (
    EpochSeededRandomSampler,
    StandardScaler,
    TimeSeriesDataModule,
    _check_freq,
    time_feature_dim,
    time_features,
)
from favit_probsparse.paths import data_root
from favit_probsparse.utils.io import atomic_write

__all__ = [
    "ETT_NAMES",
    "ETTDataModule",
    "EpochSeededRandomSampler",
    "StandardScaler",
    "download_ett",
    "ett_path",
    "time_feature_dim",
    "time_features",
]

# name -> native frequency
ETT_NAMES: dict[str, str] = {"ETTh1": "h", "ETTh2": "h", "ETTm1": "t", "ETTm2": "t"}
UPSTREAM_COMMIT = "1d16c8f4f943005d613b5bc962e9eeb06058cf07"
UPSTREAM_URL = "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/{commit}/ETT-small/{name}.csv"
SHA256 = {
    "ETTh1": "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066",
    "ETTh2": "a3dc2c597b9218c7ce1cd55eb77b283fd459a1d09d753063f944967dd6b9218b",
    "ETTm1": "6ce1759b1a18e3328421d5d75fadcb316c449fcd7cec32820c8dafda71986c9e",
    "ETTm2": "db973ca252c6410a30d0469b13d696cf919648d0f3fd588c60f03fdbdbadd1fd",
}
SPLITS = ("train", "val", "test")
FEATURES = ("M", "S", "MS")


# ----------------------------------------------------------------------------------------------------------------
# borders, scaler, time features
# ----------------------------------------------------------------------------------------------------------------
def _native_freq(name: str) -> str:
    try:
        return ETT_NAMES[name]
    except KeyError:
        raise ValueError(f"unknown ETT dataset {name!r}; choose one of {sorted(ETT_NAMES)}") from None


# ----------------------------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------------------------
def ett_path(name: str, root: str | os.PathLike | None = None) -> Path:
    """Where ``<name>.csv`` is expected: ``root/<name>.csv`` if given, else ``data_root()/ETT/<name>.csv``."""
    _native_freq(name)
    base = Path(root).expanduser() if root is not None else data_root() / "ETT"
    return base / f"{name}.csv"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_ett(name: str, root: str | os.PathLike | None = None, *, verify: bool = True) -> Path:
    """Download ``<name>.csv`` from zhouhaoyi/ETDataset (pinned commit) into ``root`` (CC BY-ND 4.0, unmodified)."""
    path = ett_path(name, root)
    if path.exists():
        return path
    url = UPSTREAM_URL.format(commit=UPSTREAM_COMMIT, name=name)

    def fetch(tmp: Path) -> None:  # a failed or corrupt download raises, and atomic_write removes it
        try:
            with urllib.request.urlopen(url, timeout=120) as resp, open(tmp, "wb") as out:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
        except OSError as err:
            raise RuntimeError(f"could not download {url}: {err}") from err
        if verify and _sha256(tmp) != SHA256[name]:
            raise RuntimeError(f"checksum mismatch for {url}; expected sha256 {SHA256[name]}")

    return atomic_write(path, fetch)


def _load_csv(path: Path, name: str, download: bool) -> pd.DataFrame:
    if not path.exists():
        if download:
            download_ett(name, path.parent)
        else:
            raise FileNotFoundError(
                f"ETT file not found: {path}. Put {name}.csv there (from github.com/zhouhaoyi/ETDataset, "
                f"ETT-small/), set FAVIT_DATA to a folder containing ETT/{name}.csv, or pass download=True."
            )
    df = pd.read_csv(path)
    if "date" not in df.columns:
        raise ValueError(f"{path}: no 'date' column (columns: {list(df.columns)})")
    return df


# ----------------------------------------------------------------------------------------------------------------
# datamodule: the ETT preset of TimeSeriesDataModule
# ----------------------------------------------------------------------------------------------------------------
_PANDAS_FREQ = {"h": "h", "t": "15min"}  # the files' row spacing


class ETTDataModule(TimeSeriesDataModule):
    """ETT under the official protocol: the preset of :class:`TimeSeriesDataModule` with ``split="ett"``, the
    ``date`` column, all seven columns, and the file found (or downloaded) by name (see the module docstring).

    Args:
        name: ETTh1 | ETTh2 | ETTm1 | ETTm2.
        target: the predicted column of ``S``/``MS``.
        freq: time-feature frequency code (:class:`TimeSeriesDataModule`'s ``time_features``); ``None`` = the
            data's own (``h``/``t``). ``"h"`` on ETTm mimics the official scripts (the rows stay 15 minutes apart).
        root: the folder of the CSV (default ``data_root()/ETT``); ``path`` names the file itself.
        download: fetch a missing file from the pinned upstream commit (checked against its SHA-256).
        **kwargs: the other options of :class:`TimeSeriesDataModule` (``seq_len``, ``features``, ``embed``,
            ``batch_size``, ``path``, ...); jsonargparse reads them from its signature, so configs set and
            type-check them as ``data.init_args.<option>``.
    """

    def __init__(
        self,
        name: str = "ETTh1",
        *,
        target: str = "OT",
        freq: str | None = None,
        root: str | None = None,
        download: bool = True,
        **kwargs,
    ):
        native = _native_freq(name)
        super().__init__(
            date_column="date",
            columns=None,
            target=target,
            freq=_PANDAS_FREQ[native],  # the rows' spacing
            time_features=freq if freq is not None else native,
            split="ett",
            train_ratio=0.7,  # unused by the ETT split; given here so that a config cannot set them
            test_ratio=0.2,
            **kwargs,
        )
        # checked here, not when the file is read: favit-ps links the code into the network before loading data
        self.time_freq = self._opts["time_features"] = _check_freq(self._opts["time_features"], self.timeenc)
        self.name, self.root, self.download = name, root, download

    def prepare_data(self) -> None:
        if self.download and self.path is None:
            download_ett(self.name, self.root)

    @property
    def source(self) -> str:
        return str(self._file()) if self._frame is None else "DataFrame"

    def _file(self) -> Path:
        return Path(self.path) if self.path is not None else ett_path(self.name, self.root)

    def read_frame(self) -> pd.DataFrame:
        if self._frame is not None:
            return self._frame
        return _load_csv(self._file(), self.name, self.download)

    def _row(self, i: int) -> str:
        return f"row {i} (line {i + 2})"

    # known without reading the file (favit-ps links them before any data is loaded)
    @property
    def enc_in(self) -> int:
        return 7 if self.features in ("M", "MS") else 1

    @property
    def c_out(self) -> int:
        return 7 if self.features == "M" else 1

    @property
    def freq(self) -> str:
        return self.time_freq
