"""The naive forecasts against loops written out step by step, and the season each data frequency gets."""

from __future__ import annotations

import pytest
import torch

from favit_probsparse.models.naive import (
    NAIVE,
    last_value_forecast,
    naive_forecasts,
    season_length,
    seasonal_naive_forecast,
)


@pytest.mark.parametrize("season,pred_len", [(1, 5), (4, 3), (4, 10), (8, 8), (24, 7)])
def test_seasonal_naive_repeats_the_value_one_season_earlier(season, pred_len):
    x = torch.randn(3, 24, 2, dtype=torch.float64)
    got = seasonal_naive_forecast(x, pred_len, season)
    expect = torch.empty(3, pred_len, 2, dtype=torch.float64)
    series = list(x.unbind(1))  # the history, extended by the forecast as it is made
    for h in range(pred_len):
        series.append(series[len(series) - season])  # y[t + h] = y[t + h - season]
        expect[:, h] = series[-1]
    torch.testing.assert_close(got, expect, rtol=0, atol=0)


def test_last_value_repeats_the_last_step_and_bad_seasons_are_refused():
    x = torch.randn(2, 7, 3)
    got = last_value_forecast(x, 4)
    for h in range(4):
        torch.testing.assert_close(got[:, h], x[:, -1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="season 8"):
        seasonal_naive_forecast(x, 4, 8)  # longer than the 7-step history
    with pytest.raises(ValueError, match="season 0"):
        seasonal_naive_forecast(x, 4, 0)


@pytest.mark.parametrize(
    "freq,season",
    [
        ("h", 24),  # ETTh: steps per day
        ("H", 24),  # the old alias
        ("15min", 96),  # ETTm
        ("t", 1440),  # Informer's minutely code
        ("2h", 12),
        ("5h", None),  # a day is not a whole number of steps
        ("D", 7),
        ("B", 5),
        ("W", 52),
        ("W-SUN", 52),
        ("MS", 12),
        ("QS", 4),
        ("YS", None),
        (None, None),
        ("nonsense", None),
    ],
)
def test_season_length_per_frequency(freq, season):
    assert season_length(freq) == season


def test_naive_forecasts_gives_the_seasonal_one_only_when_the_season_fits_the_history():
    x = torch.randn(2, 24, 3)
    both = naive_forecasts(x, 5, 24)
    assert set(both) == set(NAIVE)
    torch.testing.assert_close(both["seasonal_naive"], x[:, :5], rtol=0, atol=0)  # one day back, 24 steps
    torch.testing.assert_close(both["last_value"], x[:, -1:].expand(-1, 5, -1), rtol=0, atol=0)
    assert set(naive_forecasts(x, 5, 25)) == {"last_value"}  # a season longer than the history
    assert set(naive_forecasts(x, 5, None)) == {"last_value"}  # no season
