"""Forecasting training/evaluation: one LightningModule around any forecasting network (multi-seed ``--itr`` runs:
:mod:`favit_probsparse.experiments.repeat`), and the writer of forecasts past the end of the data.

Official Informer2020 training protocol (``docs/informer.md`` §1.6): Adam(lr 1e-4, no weight decay, no clipping),
MSE loss on ``batch_y[:, -pred_len:, f_dim:]`` (``f_dim = -1`` for MS), ``lradj type1`` (epochs 1-2 at lr0, then
halved after every epoch), early stopping on the validation MSE (patience 3), 6 epochs, the best checkpoint is
reloaded before testing. Metrics: MAE, MSE, RMSE, MAPE, MSPE over all test windows, steps and channels, on the
z-scored data (``test_mse``, ...) and in the data's original units (``test_mse_original``, ...).

Differences from the official loop, all deliberate and documented:

* Validation/test use every window (the datamodule's ``*_drop_last`` options mimic the official loaders) and
  the loss is the exact mean over windows, not a mean of batch means.
* Reproducibility: the global RNG (dropout, ProbSparse key sampling) is reseeded from ``(seed, epoch)`` at the
  start of every training epoch and the train shuffle depends only on ``(seed, epoch)``; so a run resumed from an
  epoch-end checkpoint equals an uninterrupted one. Validation and test run under a forked RNG seeded with
  ``eval_seed``, so the (stochastic) ProbSparse evaluation is a deterministic function of the weights and does
  not disturb the training stream. The official code sets no seed at all.
* No per-step host synchronisation: metrics are accumulated on the device and read once per epoch.

Multi-seed runs (the official ``--itr N``): ``favit-ps fit --config configs/forecast/X.yaml --itr 5`` (see
:mod:`favit_probsparse.experiments.repeat`).
"""

from __future__ import annotations

import inspect
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from torch import nn

from favit_probsparse.models.informer import decoder_input
from favit_probsparse.models.naive import NAIVE, naive_forecasts, season_length
from favit_probsparse.training.checkpoint import META_KEY, CheckpointMetadata, class_path, rebuild_module
from favit_probsparse.training.checkpoints import check_trained
from favit_probsparse.training.forecasts import (
    ForecastWriter,
    forecast_past_end,
    plot_forecast,
    write_forecast,
)

__all__ = [
    "METRICS",
    "ForecastWriter",
    "Forecaster",
    "NonFiniteLossError",
    "TestAfterFit",
    "build_network",
    "forecaster_from_checkpoint",
    "lr_lambda",
    "plot_forecast",
    "write_forecast",
]

METRICS = ("mae", "mse", "rmse", "mape", "mspe")


def lr_lambda(lradj: str):
    """Multiplier of lr0 for 0-based epoch ``e`` (official ``adjust_learning_rate``, applied after each epoch)."""
    if lradj == "type1":
        return lambda e: 0.5 ** max(0, e - 1)
    if lradj == "type2":
        table = {
            2: 5e-5,
            4: 1e-5,
            6: 5e-6,
            8: 1e-6,
            10: 5e-7,
            15: 1e-7,
            20: 5e-8,
        }  # absolute lrs from lr0=1e-4

        def f(e: int) -> float:
            done = e  # epochs completed before epoch e (0-based)
            keys = [k for k in table if k <= done]
            return table[max(keys)] / 1e-4 if keys else 1.0

        return f
    if lradj == "type3":  # PatchTST's default: lr0 for epochs 1-4, then x0.9 after every epoch
        return lambda e: 0.9 ** max(0, e - 3)
    if lradj == "constant":
        return lambda e: 1.0
    raise ValueError(f"unknown lradj {lradj!r}; choose type1, type2, type3 or constant")


class _MetricSums:
    """Device-side sums for MAE/MSE/MAPE/MSPE (no host sync until :meth:`compute`)."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(5, dtype=torch.float64, device=device)  # sae, sse, sape, sspe, count

    def update(self, pred: torch.Tensor, true: torch.Tensor) -> None:
        err = (pred - true).double()
        rel = err / true.double()
        self.sums += torch.stack(
            [
                err.abs().sum(),
                err.square().sum(),
                rel.abs().sum(),
                rel.square().sum(),
                torch.tensor(float(err.numel()), dtype=torch.float64, device=err.device),
            ]
        )

    def compute(self) -> dict[str, float]:
        sae, sse, sape, sspe, n = self.sums.tolist()
        n = max(n, 1.0)
        return {
            "mae": sae / n,
            "mse": sse / n,
            "rmse": math.sqrt(sse / n),
            "mape": sape / n,
            "mspe": sspe / n,
        }


def _time_feature_width(network: nn.Module) -> int | None:
    """Time features per step the network's first temporal embedding expects (None: unknown / not used)."""
    width = getattr(network, "time_feature_width", None)
    if width is not None:
        return int(width)
    from favit_probsparse.models.informer import TemporalEmbedding, TimeFeatureEmbedding

    for m in network.modules():
        if isinstance(m, TimeFeatureEmbedding):
            return m.embed.in_features
        if isinstance(m, TemporalEmbedding):
            return 5 if m.minute_embed is not None else 4
    return None


def build_network(spec: dict) -> nn.Module:
    """Instantiate ``{"class_path": "pkg.mod.Class", "init_args": {...}}`` (plain keyword arguments)."""
    from favit_probsparse.imports import import_class

    cls = import_class(spec.get("class_path"), what="network class_path")
    return cls(**(spec.get("init_args") or {}))


def forecaster_from_checkpoint(path: str | Path, map_location: str = "cpu") -> Forecaster:
    """A :class:`Forecaster` with a checkpoint's weights, in eval mode, read by
    :func:`favit_probsparse.training.checkpoint.load_checkpoint` (weights only; a checkpoint of another task, a
    damaged file or an incompatible version is a one-line named error)."""
    module, _ = rebuild_module(path, task=Forecaster.TASK, expected=Forecaster)
    return module


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf (raised so the run stops with a non-zero exit instead of NaN metrics)."""


def _class_path(obj) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _accepted(cls) -> set[str] | None:
    """Names ``cls.__init__`` accepts (None: it takes ``**kwargs``, so anything)."""
    params = inspect.signature(cls).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


class Forecaster(CheckpointMetadata, LightningModule):
    """The official Informer training protocol around any forecasting network.

    The network is an object (in a config: ``network: {class_path: ..., init_args: ...}``) whose
    ``forward(x_enc, x_mark_enc, x_dec, x_mark_dec)`` returns ``[B, pred_len, c_out]``; networks that do not use
    the time marks or the decoder input just ignore them. Under ``favit-ps`` the data module states the shapes
    (``enc_in``, ``dec_in``, ``c_out``, ``seq_len``, ``label_len``, ``pred_len``, the time-feature ``freq`` and
    ``embed``) and :func:`favit_probsparse.training.lightning_cli` links them into the network and the
    forecaster, so no config writes them twice.

    Args:
        network: the forecasting network (e.g. :class:`favit_probsparse.models.informer.Informer`).
        features: M | S | MS (the loss/metrics use the last channel for MS); linked from the data.
        label_len, pred_len: decoder start-token length and horizon; linked from the data (None: the network's
            attributes of the same name).
        learning_rate, lradj: Adam lr and schedule (type1 = official default).
        dec_fill: the official `--padding` flag: 0 = zeros (default) or 1 = ones for the decoder's unknown steps.
        seed: per-epoch reseeding of dropout/ProbSparse sampling (None: the global seed at construction, i.e.
            ``seed_everything``); eval_seed: RNG for validation/test.
        save_predictions: folder to write test ``pred.pt``/``true.pt`` (scaled) after testing.

    Metrics are logged on the z-scored data (``test_mse``, ..., the published protocol) and in the data's
    original units (``test_mse_original``, ...).

    Checkpoints: under ``favit-ps`` the network's ``class_path``/``init_args`` (linked shapes included) are saved
    in the hyperparameters, so ``Forecaster.load_from_checkpoint(path)`` rebuilds it. A forecaster built in
    Python records only the network's class; reload it with ``load_from_checkpoint(path, network=...)``.
    """

    TASK = "time-series-forecasting"

    def __init__(
        self,
        network: nn.Module,
        features: str = "M",
        label_len: int | None = None,
        pred_len: int | None = None,
        learning_rate: float = 1e-4,
        lradj: str = "type1",
        dec_fill: int = 0,
        seed: int | None = None,
        eval_seed: int = 2021,
        save_predictions: str | None = None,
    ):
        super().__init__()
        if features not in ("M", "S", "MS"):
            raise ValueError(f"unknown features {features!r}; choose M, S or MS")
        if not isinstance(network, nn.Module):
            raise TypeError(f"network must be a torch.nn.Module, got {type(network).__name__}")
        lr_lambda(lradj)  # validate
        from_cli = _given_hyperparameters.get() is not None
        self.save_hyperparameters(ignore=None if from_cli else ["network"])
        net_hp = self.hparams.get("network")
        if isinstance(net_hp, dict) and isinstance(net_hp.get("init_args"), dict):
            # linked shapes reach every network; keep only what this network's class accepts, so the saved
            # class_path/init_args rebuild it (``load_from_checkpoint``, ``favit-ps predict --ckpt``)
            names = _accepted(type(network))
            if names is not None:
                net_hp["init_args"] = {k: v for k, v in net_hp["init_args"].items() if k in names}
        elif not isinstance(net_hp, dict):
            self.hparams["network"] = {"class_path": _class_path(network)}
        for key in ("label_len", "pred_len"):
            if self.hparams[key] is None:
                if not hasattr(network, key):
                    raise ValueError(f"{key} not given and {type(network).__name__} has no {key} attribute")
                self.hparams[key] = int(getattr(network, key))
        self.model = network
        # None: follow the global seed (``seed_everything`` / LightningCLI's ``seed_everything`` runs before this)
        self.seed = int(seed) if seed is not None else torch.initial_seed() % 2**31
        self.f_dim = -1 if features == "MS" else 0
        self._sums: dict[str, _MetricSums] = {}
        self._train_loss_sum: torch.Tensor | None = None
        self._rng_ctx = None
        self._preds: list[torch.Tensor] = []
        self._trues: list[torch.Tensor] = []
        self.test_results: dict[str, float] = {}
        self._season: int | None = None  # steps per season (seasonal-naive baseline), set in setup
        self.train_epoch_seconds: list[float] = []  # wall time of each training epoch, validation excluded
        self._epoch_t0: float | None = None
        self.data_info: dict = {}  # columns, frequencies, scaler statistics: saved in checkpoints, exported
        # the data's scaler for the predicted channels (set in setup from the datamodule)
        self.register_buffer("_mean", torch.zeros(0), persistent=False)
        self.register_buffer("_std", torch.ones(0), persistent=False)

    @property
    def network(self) -> nn.Module:
        return self.model

    @classmethod
    def from_checkpoint_hparams(cls, hparams: dict) -> Forecaster:
        """Rebuild from a checkpoint's hyper-parameters: the network from its saved ``class_path``/``init_args``
        (used by :func:`favit_probsparse.training.checkpoint.rebuild_module`)."""
        hp = {k: v for k, v in hparams.items() if not k.startswith("_")}
        own = set(inspect.signature(cls).parameters) - {"network"}
        spec = hp.get("network")
        if not (isinstance(spec, dict) and "init_args" in spec):
            raise ValueError(
                f"the checkpoint names the network class {(spec or {}).get('class_path')} but not its arguments "
                "(a forecaster built in Python); use Forecaster.load_from_checkpoint(path, network=...)"
            )
        return cls.from_config(spec, **{k: v for k, v in hp.items() if k in own})

    @classmethod
    def from_config(cls, network: dict, **kwargs) -> Forecaster:
        """Build the network from ``{"class_path": ..., "init_args": {...}}`` and record that in the
        hyperparameters, so the checkpoints of a forecaster made in Python reload like the CLI's."""
        net = build_network(network)
        module = cls(net, **kwargs)
        module.hparams["network"] = {
            "class_path": network["class_path"],
            "init_args": dict(network.get("init_args") or {}),
        }
        return module

    def forecast(self, data, **data_kwargs) -> pd.DataFrame:
        """Forecast the ``pred_len`` steps after the end of ``data`` (a DataFrame, or a
        :class:`~favit_probsparse.data.timeseries.TimeSeriesDataModule`): a DataFrame with the future timestamps
        and the predicted columns in original units.

        A DataFrame goes through ``TimeSeriesDataModule.from_frame(data, **data_kwargs)`` with this forecaster's
        ``features``/``label_len``/``pred_len`` and the network's ``seq_len``; give the other data options
        (``date_column``, ``target``, ``columns``, ``freq``, ``split``...) as at training time. The scaler is the
        training data's (from the fit or the checkpoint), so another file of the same layout is forecast in the
        units the model learned; a forecaster that never saw data uses the frame's own train-slice scaler."""
        return forecast_past_end(self, data, **data_kwargs)

    def flat_hparams(self) -> dict:
        """The network's ``init_args`` and the forecaster's own hyperparameters in one dict."""
        hp = {k: v for k, v in self.hparams.items() if k != "network" and not k.startswith("_")}
        return {**(self.hparams.get("network") or {}).get("init_args", {}), **hp}

    # ------------------------------------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            return
        self.check_data(dm)
        if hasattr(dm, "scaler"):
            self.set_scaler(dm.scaler.mean, dm.scaler.std)
        self._record_data_info(dm)
        self._season = season_length(getattr(dm, "data_freq", None))

    @staticmethod
    def _use_training_columns(dm, columns) -> bool:
        """Read ``dm``'s columns by name in the trained order (a data module that can); True if it could."""
        if not columns or not hasattr(dm, "use_columns"):
            return False
        dm.use_columns(list(columns))
        return True

    def _use_training_scaler(self, dm) -> None:
        """Scale ``dm`` with the training data's statistics when they are known (else keep its own)."""
        known = (self.data_info or {}).get("scaler")
        if known and hasattr(dm, "use_scaler"):
            dm.use_scaler(known["mean"], known["std"])
        if hasattr(dm, "scaler"):
            self.set_scaler(dm.scaler.mean, dm.scaler.std)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        # Lightning restores a checkpoint after setup(), which recorded the data at hand: evaluating or
        # forecasting other data must still use the training data's scaler, saved in the checkpoint
        data = (checkpoint.get(META_KEY) or {}).get("data") or {}
        trainer = self._trainer
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        # the data at hand may list the trained columns in another order: read them by name
        if dm is not None and self._use_training_columns(dm, data.get("columns")):
            self._record_data_info(dm)
            if hasattr(dm, "scaler"):
                self.set_scaler(dm.scaler.mean, dm.scaler.std)
        trained = data.get("scaler")
        if not trained:
            return
        self.data_info = {**(self.data_info or {}), "scaler": trained}
        if dm is not None and not trainer.training:
            self._use_training_scaler(dm)

    def _record_data_info(self, dm) -> None:
        """The data facts an export needs (saved in checkpoints through :class:`CheckpointMetadata`)."""
        info: dict = {}
        for key in ("date_column", "columns", "target", "features", "freq", "data_freq", "timeenc", "embed"):
            try:
                value = getattr(dm, key, None)
            except (ValueError, OSError):  # a property that needs the data
                value = None
            if value is not None:
                info[key] = list(value) if isinstance(value, list | tuple) else value
        if getattr(dm, "_opts", {}).get("scale", True) and getattr(dm, "scaler", None) is not None:
            info["scaler"] = {
                "mean": np.asarray(dm.scaler.mean).tolist(),
                "std": np.asarray(dm.scaler.std).tolist(),
            }
        name = getattr(dm, "name", None) or getattr(dm, "source", None)
        if name is not None:
            info["name"] = Path(str(name)).name if "/" in str(name) else str(name)
        self.data_info = info

    # ------------------------------------------------------------------------------------------------ export
    def export_network(self) -> nn.Module:
        return self.model

    def export_config(self) -> dict:
        """Network class_path + init_args, windows, decoder padding and the data facts (columns, frequency,
        scaler): what :func:`favit_probsparse.training.export.from_pretrained` needs to rebuild and run it."""
        hp = self.hparams
        spec = dict(hp.get("network") or {})
        if "init_args" not in spec:
            raise ValueError(
                "the forecaster's network arguments are unknown (built in Python without from_config); "
                "build it with Forecaster.from_config to export it"
            )
        seq_len = spec["init_args"].get("seq_len", getattr(self.model, "seq_len", None))
        return {
            "task": self.TASK,
            "network": {
                "class_path": spec.get("class_path", class_path(type(self.model))),
                "init_args": spec["init_args"],
            },
            "windows": {"seq_len": seq_len, "label_len": hp.label_len, "pred_len": hp.pred_len},
            "features": hp.features,
            "decoder_fill": hp.dec_fill,
            "eval_seed": hp.eval_seed,
            "data": dict(self.data_info),
        }

    def set_scaler(self, mean, std) -> None:
        """The z-score statistics of the predicted channels (the last ``c_out`` of the data's)."""
        c = self._out_channels()
        mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
        c = c or len(mean)
        self._mean = torch.as_tensor(mean[-c:], dtype=torch.float64, device=self.device)
        self._std = torch.as_tensor(std[-c:], dtype=torch.float64, device=self.device)

    def _out_channels(self) -> int | None:
        c = getattr(self.model, "c_out", None)
        return int(c) if c is not None else None

    def check_data(self, dm) -> None:
        """Raise a clear ValueError when the datamodule's windows/channels do not fit the forecaster/network."""
        hp = self.hparams
        for key in ("label_len", "pred_len", "features"):
            if hasattr(dm, key) and getattr(dm, key) != hp[key]:
                raise ValueError(
                    f"model {key}={hp[key]!r} but data {key}={getattr(dm, key)!r}; make them agree"
                )
        for key in ("seq_len", "label_len", "pred_len", "enc_in", "dec_in", "c_out"):
            if hasattr(dm, key) and hasattr(self.model, key) and getattr(dm, key) != getattr(self.model, key):
                raise ValueError(
                    f"network {key}={getattr(self.model, key)!r} but {hp.features} data has "
                    f"{key}={getattr(dm, key)!r}; make them agree"
                )
        for key in ("freq", "embed"):  # networks that keep their time-feature settings
            if hasattr(dm, key) and hasattr(self.model, key) and getattr(dm, key) != getattr(self.model, key):
                raise ValueError(
                    f"network {key}={getattr(self.model, key)!r} but data {key}={getattr(dm, key)!r}"
                )
        marks = getattr(dm, "n_time_features", None)
        width = _time_feature_width(self.model)
        if marks is not None and width is not None and marks != width:
            raise ValueError(
                f"the network expects {width} time features per step but the data gives {marks} "
                f"(data freq={getattr(dm, 'freq', None)!r}, embed={getattr(dm, 'embed', None)!r}); "
                "give the network the data's freq/embed"
            )

    # ------------------------------------------------------------------------------------------------ forward
    def forward(self, batch_x, batch_y, batch_x_mark, batch_y_mark):
        hp = self.hparams
        seq_len = getattr(self.model, "seq_len", None)
        if seq_len is not None and batch_x.shape[1] != seq_len:  # a shape, no host sync
            raise ValueError(
                f"the network reads seq_len={seq_len} input steps but the batch has {batch_x.shape[1]}; give the "
                "data the network's seq_len"
            )
        dec_inp = decoder_input(batch_y, hp.label_len, hp.pred_len, dec_fill=hp.dec_fill)
        return self.model(batch_x, batch_x_mark, dec_inp, batch_y_mark)

    def _step(self, batch):
        batch_x, batch_y, batch_x_mark, batch_y_mark = batch
        out = self(batch_x.float(), batch_y.float(), batch_x_mark.float(), batch_y_mark.float())
        pred = out[..., self.f_dim :].float()  # bf16-mixed: metrics and loss in float32
        true = batch_y[:, -self.hparams.pred_len :, self.f_dim :].float()
        return pred, true

    # ------------------------------------------------------------------------------------------------ RNG
    def _fork_rng(self, seed: int) -> None:
        devices = [self.device] if self.device.type == "cuda" else []
        self._rng_ctx = torch.random.fork_rng(devices=devices)
        self._rng_ctx.__enter__()
        torch.manual_seed(seed)

    def _join_rng(self) -> None:
        if self._rng_ctx is not None:
            self._rng_ctx.__exit__(None, None, None)
            self._rng_ctx = None

    # ------------------------------------------------------------------------------------------------ train
    def on_train_epoch_start(self) -> None:
        torch.manual_seed((self.seed * 1_000_003 + 7919 * (self.current_epoch + 1)) % 2**63)
        self._train_loss_sum = torch.zeros(2, dtype=torch.float64, device=self.device)
        # the lr this epoch trains with (Lightning steps epoch schedulers after the last batch, before the
        # on_train_epoch_end hook, so reading it there would give the next epoch's lr)
        self._epoch_lr = self.optimizers().param_groups[0]["lr"] if self._trainer is not None else None
        self._epoch_t0 = time.perf_counter()

    def _stop_epoch_timer(self) -> None:
        # once per epoch (never per step): the only host sync the timing adds
        if self._epoch_t0 is not None:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.train_epoch_seconds.append(time.perf_counter() - self._epoch_t0)
            self._epoch_t0 = None

    def training_step(self, batch, batch_idx):
        pred, true = self._step(batch)
        loss = torch.nn.functional.mse_loss(pred, true)
        if self._train_loss_sum is not None:
            self._train_loss_sum += torch.stack(
                [loss.detach().double(), loss.new_ones((), dtype=torch.float64)]
            )
            # a NaN/inf loss poisons the running sum; read it every log_every_n_steps only (one host sync)
            every = getattr(self._trainer, "log_every_n_steps", 50) if self._trainer is not None else 50
            if (batch_idx + 1) % max(int(every), 1) == 0:
                self._check_finite_loss()
        return loss

    def _check_finite_loss(self) -> None:
        s = self._train_loss_sum
        if s is not None and not bool(torch.isfinite(s[0])):
            raise NonFiniteLossError(
                f"training loss became {float(s[0])} in epoch {self.current_epoch} (by step {int(s[1])} of the "
                "epoch); lower the learning rate, check the data for extreme values, or use float32 precision"
            )

    def on_train_epoch_end(self) -> None:
        self._stop_epoch_timer()  # no-op when validation already stopped it
        if self.train_epoch_seconds:
            self.log("train_epoch_s", self.train_epoch_seconds[-1])
        if self._train_loss_sum is not None:
            self._check_finite_loss()
            s = self._train_loss_sum
            self.log("train_loss", (s[0] / s[1].clamp_min(1)).float(), prog_bar=True)
            if getattr(self, "_epoch_lr", None) is not None:
                self.log("lr", self._epoch_lr)

    # ------------------------------------------------------------------------------------------------ eval
    def _eval_start(self, name: str) -> None:
        self._fork_rng(int(self.hparams.eval_seed))
        self._sums[name] = _MetricSums(self.device)
        self._sums[name + "_orig"] = _MetricSums(self.device)

    def _eval_update(self, name: str, pred: torch.Tensor, true: torch.Tensor) -> None:
        self._sums[name].update(pred, true)
        if len(self._mean):  # float64: original units can exceed float32's range (3e38)
            self._sums[name + "_orig"].update(
                self.inverse_transform(pred.double()), self.inverse_transform(true.double())
            )

    def inverse_transform(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled values of the predicted channels (last dim: the last ``C`` of them) -> original units."""
        c = x.shape[-1]
        return x * self._std[-c:].to(x.dtype) + self._mean[-c:].to(x.dtype)

    def _eval_end(self, name: str) -> dict[str, float]:
        """Metrics on the z-scored data (published protocol) and, when the scaler is known, in original units
        (``<metric>_original``)."""
        self._join_rng()
        res = dict(self._sums[name].compute())
        if not math.isfinite(res["mse"]):
            raise NonFiniteLossError(
                f"{name} loss (MSE) is {res['mse']} at epoch {self.current_epoch}: the weights diverged or the "
                "data holds extreme values; lower the learning rate or check the data"
            )
        if len(self._mean):
            orig = self._sums[name + "_orig"].compute()
            bad = sorted(k for k, v in orig.items() if not math.isfinite(v))
            if bad:
                warnings.warn(
                    f"{name} metrics in original units {bad} are not finite: the data's values are too large to "
                    "square in float64 (the z-scored metrics are fine); rescale the data to compare in its units",
                    stacklevel=2,
                )
            res.update({f"{k}_original": v for k, v in orig.items()})
        return res

    def on_validation_epoch_start(self) -> None:
        if not self.trainer.sanity_checking:
            self._stop_epoch_timer()  # Lightning validates inside the epoch, before on_train_epoch_end
        self._eval_start("val")

    def validation_step(self, batch, batch_idx):
        pred, true = self._step(batch)
        self._eval_update("val", pred, true)

    def on_validation_epoch_end(self) -> None:
        scaled = self._sums["val"].compute()
        res = self._eval_end("val")
        self.log("val_loss", scaled["mse"], prog_bar=True)
        self.log("val_mae", scaled["mae"])
        for k, v in res.items():
            if k not in ("mse", "mae"):
                self.log(f"val_{k}", v)

    def on_test_epoch_start(self) -> None:
        self._eval_start("test")
        for name in NAIVE:
            self._sums[f"test_{name}"] = _MetricSums(self.device)
        self._preds, self._trues = [], []

    def _naive_forecasts(self, batch_x: torch.Tensor, true: torch.Tensor) -> dict[str, torch.Tensor]:
        """The naive forecasts of the same windows (scaled, the predicted channels): the bar a model must clear."""
        x = batch_x[..., -true.shape[-1] :].float()  # the predicted channels are the last ones
        return naive_forecasts(x, true.shape[1], self._season)

    def test_step(self, batch, batch_idx):
        pred, true = self._step(batch)
        self._eval_update("test", pred, true)
        for name, naive in self._naive_forecasts(batch[0], true).items():
            self._sums[f"test_{name}"].update(naive, true)
        if self.hparams.save_predictions:
            self._preds.append(pred.detach().cpu())
            self._trues.append(true.detach().cpu())

    def on_test_epoch_end(self) -> None:
        res = self._eval_end("test")
        for name in NAIVE:  # test_mse_last_value, test_mae_seasonal_naive, ... (z-scored, like test_mse)
            sums = self._sums[f"test_{name}"]
            if sums.sums[-1] > 0:
                naive = sums.compute()
                res.update({f"mse_{name}": naive["mse"], f"mae_{name}": naive["mae"]})
        self.test_results = dict(res)
        for k, v in res.items():
            self.log(f"test_{k}", v)
        if self.hparams.save_predictions and self._preds:
            out = Path(self.hparams.save_predictions)
            out.mkdir(parents=True, exist_ok=True)
            torch.save(torch.cat(self._preds), out / "pred.pt")
            torch.save(torch.cat(self._trues), out / "true.pt")

    def on_predict_epoch_start(self) -> None:
        self._fork_rng(int(self.hparams.eval_seed))

    def on_predict_epoch_end(self) -> None:
        self._join_rng()

    def predict_step(self, batch, batch_idx):
        """Forecast for each window: ``{"scaled": [B, pred_len, C], "original": ...}`` (original units when the
        scaler is known). With :class:`favit_probsparse.data.timeseries.TimeSeriesDataModule` the predict loader
        yields the last window of the series, so this is the forecast past the end of the data."""
        pred, _ = self._step(batch)
        out = {"scaled": pred}
        if len(self._mean):
            out["original"] = self.inverse_transform(pred.double())
        return out

    # ------------------------------------------------------------------------------------------------ optim
    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(self.hparams.lradj))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


class TestAfterFit(Callback):
    """Run the test loop on the best checkpoint (official: best model reloaded before test) right after fit."""

    def __init__(self, ckpt_path: str = "best", enabled: bool = True):
        self.ckpt_path = ckpt_path
        self.enabled = enabled

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.enabled or trainer.interrupted or trainer.fast_dev_run:
            return
        check_trained(trainer)  # testing the initial weights would report them as a result
        ckpt = self.ckpt_path
        if ckpt == "best" and not (
            trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path
        ):
            ckpt = None
        trainer.test(pl_module, datamodule=trainer.datamodule, ckpt_path=ckpt, verbose=True)
