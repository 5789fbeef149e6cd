"""DLinear (Zeng et al., AAAI 2023, "Are Transformers Effective for Time Series Forecasting?").

As the official LTSF-Linear ``models/DLinear.py``:

* :class:`SeriesDecomposition`: trend = moving average over time (kernel 25, stride 1) of the series padded at both
  ends by repeating its first and last step ``(kernel - 1) // 2`` times; seasonal = series - trend.
* One linear map over time, ``seq_len -> pred_len``, for each part (:class:`TemporalLinear`), shared by all
  channels or one per channel (``individual``); the forecast is their sum. Weights start at ``1 / seq_len``
  (the official init: each map starts as the window mean), biases at ``nn.Linear``'s default.

The network has the forecasting interface of :class:`~favit_probsparse.models.informer.Informer`
(``forward(x_enc, x_mark_enc, x_dec, x_mark_dec) -> [B, pred_len, c_out]``) so one forecaster trains either; it
reads only ``x_enc``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from favit_probsparse.models._checks import check_int, check_x_enc, set_forecast_shapes

__all__ = ["DLinear", "MovingAverage", "SeriesDecomposition", "TemporalLinear"]


class MovingAverage(nn.Module):
    """Moving average over time of ``[B, L, C]`` with edge-replicated padding: output ``[B, L, C]``.

    Step t averages ``x[t - p .. t + p]`` (``p = (kernel_size - 1) // 2``) where steps before 0 read ``x[0]`` and
    steps after L-1 read ``x[L-1]``. ``kernel_size`` must be odd so that the output keeps the input length.
    """

    def __init__(self, kernel_size: int = 25):
        super().__init__()
        check_int("kernel_size", kernel_size, 1)
        if kernel_size % 2 == 0:
            raise ValueError(
                f"kernel_size must be odd (the output keeps the input length), got {kernel_size}"
            )
        self.kernel_size = kernel_size

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"

    def forward(self, x: Tensor) -> Tensor:
        pad = (self.kernel_size - 1) // 2
        # F.pad "replicate" = the official cat of x[:, :1] and x[:, -1:] repeated pad times
        x = F.pad(x.transpose(1, 2), (pad, pad), mode="replicate")  # [B, C, L + 2 pad]
        return F.avg_pool1d(x, self.kernel_size, stride=1).transpose(1, 2)


class SeriesDecomposition(nn.Module):
    """``x -> (seasonal, trend)`` with ``trend = MovingAverage(x)`` and ``seasonal = x - trend``."""

    def __init__(self, kernel_size: int = 25):
        super().__init__()
        self.moving_avg = MovingAverage(kernel_size)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        trend = self.moving_avg(x)
        return x - trend, trend


class TemporalLinear(nn.Module):
    """Linear map over time ``[B, seq_len, C] -> [B, pred_len, C]``, shared by the C channels or one per channel.

    Args:
        seq_len: input steps.
        pred_len: output steps.
        channels: number of channels C (needed only when ``individual``).
        individual: one ``[pred_len, seq_len]`` weight and ``[pred_len]`` bias per channel instead of one shared.
    """

    def __init__(self, seq_len: int, pred_len: int, channels: int = 1, individual: bool = False):
        super().__init__()
        self.individual = individual
        shape = (channels, pred_len) if individual else (pred_len,)
        # official init: weight 1/seq_len (the window mean), bias as nn.Linear (U(-1/sqrt(seq_len), +))
        self.weight = nn.Parameter(torch.full((*shape, seq_len), 1.0 / seq_len))
        bound = 1.0 / math.sqrt(seq_len)
        self.bias = nn.Parameter(torch.empty(shape).uniform_(-bound, bound))

    def extra_repr(self) -> str:
        *_, pred_len, seq_len = self.weight.shape
        return f"seq_len={seq_len}, pred_len={pred_len}, individual={self.individual}"

    def forward(self, x: Tensor) -> Tensor:
        if self.individual:
            return torch.einsum("bsc,cps->bpc", x, self.weight) + self.bias.t()
        return F.linear(x.transpose(1, 2), self.weight, self.bias).transpose(1, 2)  # over time, per channel


class DLinear(nn.Module):
    """DLinear forecaster. ``forward(x_enc, x_mark_enc=None, x_dec=None, x_mark_dec=None) -> [B, pred_len, c_out]``.

    Every channel of ``x_enc`` is forecast; the output is the last ``c_out`` of them. With features ``M`` or ``S``
    that is all of them (``c_out == enc_in``); with ``MS`` (``c_out = 1``) it is the target, which the data puts
    in the last column (the official convention, and TSL's ``f_dim = -1`` for DLinear).

    Args:
        enc_in: channels of the input window.
        dec_in: channels of the decoder input; DLinear does not read it, but a value must equal ``enc_in`` (the
            shapes come from one data module for every network). ``None``: not checked.
        c_out: channels forecast, the last ``c_out`` of the input (``None``: ``enc_in``).
        seq_len: look-back window length.
        label_len: start-token length of encoder-decoder networks; not used (checked to be an integer >= 0).
        pred_len: horizon.
        individual: one pair of linear maps per channel (official ``--individual``) instead of shared ones.
        kernel_size: moving-average kernel of the decomposition (odd; official 25).
        embed / freq: time-feature encoding and frequency of the data (as Informer's); accepted so that one
            forecasting config can link them into any network, not used (DLinear reads no time features).
    """

    def __init__(
        self,
        enc_in: int = 7,
        dec_in: int | None = None,
        c_out: int | None = None,
        seq_len: int = 96,
        label_len: int = 48,
        pred_len: int = 96,
        individual: bool = False,
        kernel_size: int = 25,
        embed: str | None = None,
        freq: str | None = None,
    ):
        super().__init__()
        set_forecast_shapes(self, enc_in, dec_in, c_out, seq_len, label_len, pred_len)
        self.decomposition = SeriesDecomposition(kernel_size)
        self.seasonal = TemporalLinear(seq_len, pred_len, enc_in, individual)
        self.trend = TemporalLinear(seq_len, pred_len, enc_in, individual)

    def forward(
        self,
        x_enc: Tensor,
        x_mark_enc: Tensor | None = None,
        x_dec: Tensor | None = None,
        x_mark_dec: Tensor | None = None,
    ) -> Tensor:
        check_x_enc(self, x_enc)
        seasonal, trend = self.decomposition(x_enc)
        out = self.seasonal(seasonal) + self.trend(trend)
        return out[..., -self.c_out :]
