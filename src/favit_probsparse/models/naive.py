"""Naive forecasts: the baselines a trained forecaster must beat before anyone should trust it.

* last value: every future step repeats the last observed one;
* seasonal naive: every future step repeats the value one season earlier (``x[t + h - s]``, taking the last
  season again when the horizon is longer than it).

Both work on ``[B, seq_len, C]`` windows, so they are scored on exactly the windows the network is scored on.
"""

from __future__ import annotations

import pandas as pd
import torch

__all__ = ["NAIVE", "last_value_forecast", "naive_forecasts", "season_length", "seasonal_naive_forecast"]

NAIVE = ("seasonal_naive", "last_value")  # the naive forecasts a model is scored against, best first

# periods of the calendar cycle a frequency code lives in (pandas offset names, upper-cased)
_OLD_ALIASES = {"H": "h", "T": "min", "t": "min", "S": "s"}  # Informer's codes / pandas < 2.2
_COARSE_SEASONS = {"D": 7, "B": 5, "W": 52, "7D": 52, "M": 12, "MS": 12, "ME": 12, "Q": 4, "QS": 4, "QE": 4}


def season_length(freq: str | None) -> int | None:
    """Steps per season for a pandas frequency: sub-daily data -> steps per day (``h`` 24, ``15min`` 96), daily
    -> 7, business-daily -> 5, weekly -> 52, monthly -> 12, quarterly -> 4; None when there is no natural
    season (yearly, irregular or unknown)."""
    if not freq:
        return None
    code = _OLD_ALIASES.get(str(freq), str(freq))
    try:
        step = pd.Timedelta(pd.tseries.frequencies.to_offset(code))
    except (ValueError, TypeError):  # calendar offsets (month, quarter...) have no fixed length
        step = None
    if step is not None and pd.Timedelta(0) < step < pd.Timedelta("1D"):
        per_day = pd.Timedelta("1D") / step
        return int(per_day) if per_day == int(per_day) else None
    key = str(freq).upper().lstrip("1").split("-")[0]  # W-SUN -> W
    if step is not None and step == pd.Timedelta("1D"):
        key = "D"
    return _COARSE_SEASONS.get(key)


def last_value_forecast(x: torch.Tensor, pred_len: int) -> torch.Tensor:
    """``[B, L, C]`` history -> ``[B, pred_len, C]``: the last step repeated."""
    return x[:, -1:].expand(-1, pred_len, -1)


def seasonal_naive_forecast(x: torch.Tensor, pred_len: int, season: int) -> torch.Tensor:
    """``[B, L, C]`` history -> ``[B, pred_len, C]``: step ``h`` (0-based) is ``x[L - season + h % season]``."""
    if not 1 <= season <= x.shape[1]:
        raise ValueError(f"season {season} needs 1 <= season <= the history length {x.shape[1]}")
    idx = x.shape[1] - season + torch.arange(pred_len, device=x.device) % season
    return x[:, idx]


def naive_forecasts(x: torch.Tensor, pred_len: int, season: int | None) -> dict[str, torch.Tensor]:
    """Every naive forecast that applies to ``[B, L, C]`` histories, by :data:`NAIVE` name: the last value always,
    the seasonal naive forecast when the data has a season that fits in the history (``season <= L``)."""
    out = {"last_value": last_value_forecast(x, pred_len)}
    if season is not None and season <= x.shape[1]:
        out["seasonal_naive"] = seasonal_naive_forecast(x, pred_len, season)
    return out
