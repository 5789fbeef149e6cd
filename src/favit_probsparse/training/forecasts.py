"""Forecasts a person reads: the forecast past the end of the data, the last held-out test window beside the naive
forecast, and the CSV/PNG files that show both (written by ``favit-ps predict`` through :class:`ForecastWriter`).

Kept apart from :class:`~favit_probsparse.training.forecast.Forecaster` (the training/evaluation loop): everything
here only calls a trained forecaster's ``predict_step`` on windows a data module provides.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from favit_probsparse.data.timeseries import DataError
from favit_probsparse.models.naive import NAIVE, naive_forecasts, season_length
from favit_probsparse.utils.io import atomic_write, save_figure

__all__ = ["ForecastWriter", "forecast_past_end", "held_out_window", "plot_forecast", "write_forecast"]


def _predict_original(module, batch) -> np.ndarray:
    """The forecaster's prediction for one batch of windows, in original units (``[B, pred_len, C]``), under the
    evaluation RNG (ProbSparse samples keys: the same forecast on every call)."""
    batch = [t.to(module.device) for t in batch]
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(module.hparams.eval_seed))
            out = module.predict_step(batch, 0)
    finally:
        module.train(was_training)
    return out["original" if "original" in out else "scaled"].double().cpu().numpy()


def forecast_past_end(module, data, **data_kwargs) -> pd.DataFrame:
    """Body of :meth:`Forecaster.forecast` (see there): the ``pred_len`` steps after the end of ``data``."""
    from favit_probsparse.data.timeseries import TimeSeriesDataModule

    hp = module.hparams
    if isinstance(data, pd.DataFrame):
        if not hasattr(module.model, "seq_len") and "seq_len" not in data_kwargs:
            raise ValueError("give seq_len=: the network has no seq_len attribute")
        kw = {
            "seq_len": int(getattr(module.model, "seq_len", 0)),
            "label_len": hp.label_len,
            "pred_len": hp.pred_len,
            "features": hp.features,
            **data_kwargs,
        }
        trained = (module.data_info or {}).get("columns")
        if trained and "columns" not in kw and "target" not in kw:
            # the trained columns by name (other columns of the frame are left out)
            kw.update(columns=list(trained), target=trained[-1])
        dm = TimeSeriesDataModule.from_frame(data, **kw)
    else:
        dm = data
    dm.setup("predict")
    module._use_training_columns(dm, (module.data_info or {}).get("columns"))
    module.check_data(dm)
    module._use_training_scaler(dm)
    batch = next(iter(dm.predict_dataloader()))
    return dm.forecast_frame(_predict_original(module, batch)[-1])


def held_out_window(module, dm) -> pd.DataFrame:
    """The last test window of ``dm`` in original units: one row per step of its history and horizon, with the date,
    ``<col>`` (observed), ``<col>_forecast`` (the model, horizon rows only) and ``<col>_<naive>`` (the seasonal
    naive forecast, or the last value when the data has no season that fits the history)."""
    test = dm.dataset("test")
    x, y, x_mark, y_mark = (t.unsqueeze(0) for t in test[len(test) - 1])
    pred = _predict_original(module, [x, y, x_mark, y_mark])[0]  # [pred_len, C]
    b2 = dm.borders["test"][1]
    cols = dm.target_columns
    start = b2 - dm.pred_len - dm.seq_len
    observed = np.asarray(dm.raw[start:b2, -len(cols) :], dtype=np.float64)  # the target columns are last
    history = torch.from_numpy(observed[None, : dm.seq_len])
    naive = naive_forecasts(history, dm.pred_len, season_length(getattr(dm, "data_freq", None)))
    naive_name = next(n for n in NAIVE if n in naive)  # the best that applies
    out = pd.DataFrame({dm.date_column: dm.dates[start:b2]})
    blank = np.full((dm.seq_len, len(cols)), np.nan)
    for j, c in enumerate(cols):
        out[c] = observed[:, j]
        out[f"{c}_forecast"] = np.concatenate([blank[:, j], pred[:, j]])
        out[f"{c}_{naive_name}"] = np.concatenate([blank[:, j], naive[naive_name][0, :, j].numpy()])
    return out


class ForecastWriter(BasePredictionWriter):
    """Writes ``favit-ps predict``'s forecast past the end of the data: ``forecast.csv`` (future timestamps at the
    data's frequency, every predicted column in original units), ``last_test_window.csv`` (the last held-out test
    window: history, truth, the model's and the naive forecast; when the data has a test split) and
    ``forecast.png`` (both, one row of panels per predicted column). All written atomically.

    Args:
        output_dir: folder (None: ``<trainer.default_root_dir>/forecast``).
        history: how many past steps the plot shows before the forecast (None: ``max(seq_len, 4 * pred_len)``).
    """

    def __init__(self, output_dir: str | None = None, history: int | None = None):
        super().__init__(write_interval="epoch")
        self.output_dir, self.history = output_dir, history
        self.written: dict[str, Path] = {}

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "forecast_frame"):
            raise ValueError("ForecastWriter needs a datamodule with forecast_frame() (TimeSeriesDataModule)")
        if not predictions:
            return
        pred = predictions[-1]["original" if "original" in predictions[-1] else "scaled"][-1]
        frame = dm.forecast_frame(pred.detach().cpu().double().numpy())
        out = Path(self.output_dir) if self.output_dir else Path(trainer.default_root_dir) / "forecast"
        held_out = held_out_window(pl_module, dm) if _has_test_window(dm) else None
        self.written = write_forecast(
            frame, out, history=dm.history_frame(self._history(dm)), held_out=held_out
        )

    def _history(self, dm) -> int:
        return self.history if self.history is not None else max(dm.seq_len, 4 * dm.pred_len)


def _has_test_window(dm) -> bool:
    """Whether ``dm`` has a test split with at least one window (the data module's own check decides)."""
    if not (hasattr(dm, "borders") and hasattr(dm, "raw")):
        return False
    try:
        dm.dataset("test")
    except DataError:  # a series too short for a test window: the forecast past the end is still written
        return False
    return True


def write_forecast(
    forecast: pd.DataFrame,
    out_dir: str | Path,
    history: pd.DataFrame | None = None,
    held_out: pd.DataFrame | None = None,
) -> dict:
    """``forecast.csv`` (+ ``last_test_window.csv`` with ``held_out``, + ``forecast.png`` with ``history``) in
    ``out_dir``, atomically; returns their paths by kind (``csv``, ``held_out``, ``png``)."""
    out_dir = Path(out_dir)
    written = {"csv": atomic_write(out_dir / "forecast.csv", lambda p: forecast.to_csv(p, index=False))}
    if held_out is not None:
        written["held_out"] = atomic_write(
            out_dir / "last_test_window.csv", lambda p: held_out.to_csv(p, index=False)
        )
    if history is not None:
        written["png"] = plot_forecast(forecast, history, out_dir / "forecast.png", held_out=held_out)
    return written


def _plot_held_out(ax, held_out: pd.DataFrame, c: str) -> None:
    date = held_out[held_out.columns[0]]
    ax.plot(date, held_out[c], color="0.3", lw=1, label="observed")
    start = int(held_out[f"{c}_forecast"].first_valid_index()) - 1  # last observed step before the horizon
    naive = next(f"{c}_{n}" for n in NAIVE if f"{c}_{n}" in held_out)
    for name, label, style, color in (
        (f"{c}_forecast", "model", "-", "tab:red"),
        (naive, naive[len(c) + 1 :].replace("_", " "), "--", "tab:blue"),
    ):
        line = held_out[name].copy()
        line.iloc[start] = held_out[c].iloc[start]  # joined to the last observed value
        ax.plot(date, line, ls=style, lw=1.3, color=color, label=label)
    ax.axvline(date.iloc[start], color="0.6", lw=0.8, ls=":")


def plot_forecast(
    forecast: pd.DataFrame, history: pd.DataFrame, path: str | Path, held_out: pd.DataFrame | None = None
) -> Path:
    """One row of panels per predicted column: the last held-out test window (when given: history, truth, the
    model's and the naive forecast), then the recent history and the forecast past the end of the data, the
    forecast line joined to the last observed value (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    date = forecast.columns[0]
    cols = list(forecast.columns[1:])
    ncols = 2 if held_out is not None else 1
    fig, axes = plt.subplots(len(cols), ncols, figsize=(7 * ncols, 2.4 * len(cols)), squeeze=False)
    for i, c in enumerate(cols):
        ax = axes[i, -1]
        if c in history.columns:
            ax.plot(history[history.columns[0]], history[c], color="0.3", lw=1, label="history")
            last = history[[history.columns[0], c]].iloc[-1:].set_axis([date, c], axis=1)
            joined = pd.concat([last, forecast[[date, c]]])  # the line starts at the last observed value
        else:
            joined = forecast[[date, c]]
        ax.plot(joined[date], joined[c], color="tab:red", lw=1.5, label="forecast")
        ax.set_ylabel(c)
        ax.grid(alpha=0.3)
        if held_out is not None:
            _plot_held_out(axes[i, 0], held_out, c)
            axes[i, 0].set_ylabel(c)
            axes[i, 0].grid(alpha=0.3)
    axes[0, -1].set_title("forecast past the end of the data", fontsize=9)
    axes[0, -1].legend(loc="upper left", fontsize=7)
    if held_out is not None:
        axes[0, 0].set_title("last held-out test window", fontsize=9)
        axes[0, 0].legend(loc="upper left", fontsize=7)
    fig.autofmt_xdate()
    fig.tight_layout()
    path = save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path
