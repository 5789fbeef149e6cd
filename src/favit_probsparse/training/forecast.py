"""Forecasting training/evaluation: a LightningModule for Informer on ETT (multi-seed ``--itr`` runs:
:mod:`favit_probsparse.experiments.repeat`).

Official Informer2020 training protocol (``docs/informer.md`` §1.6): Adam(lr 1e-4, no weight decay, no clipping),
MSE loss on ``batch_y[:, -pred_len:, f_dim:]`` (``f_dim = -1`` for MS), ``lradj type1`` (epochs 1-2 at lr0, then
halved after every epoch), early stopping on the validation MSE (patience 3), 6 epochs, the best checkpoint is
reloaded before testing. Metrics: MAE, MSE, RMSE, MAPE, MSPE over all test windows, steps and channels, on the
z-scored data (``metrics_scale="original"`` or ``"both"`` adds metrics after the inverse transform).

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
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from favit_probsparse.models.informer import Informer, decoder_input
from favit_probsparse.training.checkpoint import CheckpointMetadata, class_path

__all__ = ["METRICS", "InformerForecaster", "TestAfterFit", "lr_lambda"]

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
    if lradj == "constant":
        return lambda e: 1.0
    raise ValueError(f"unknown lradj {lradj!r}; choose type1, type2 or constant")


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


class InformerForecaster(CheckpointMetadata, LightningModule):
    """Informer + the official training protocol. Model arguments are those of
    :class:`favit_probsparse.models.informer.Informer`; they must agree with the datamodule (checked in setup).

    Args (training):
        features: M | S | MS (the loss/metrics use the last channel for MS).
        learning_rate, lradj: Adam lr and schedule (type1 = official default).
        padding: 0 = zeros (official default) or 1 = ones for the decoder's unknown steps.
        metrics_scale: "scaled" (published protocol), "original" (after inverse transform) or "both".
        seed: per-epoch reseeding of dropout/ProbSparse sampling (None: the global seed at construction, i.e.
            ``seed_everything``); eval_seed: RNG for validation/test.
        save_predictions: folder to write test ``pred.pt``/``true.pt`` (scaled) after testing.
    """

    TASK = "time-series-forecasting"

    def __init__(
        self,
        enc_in: int = 7,
        dec_in: int = 7,
        c_out: int = 7,
        seq_len: int = 96,
        label_len: int = 48,
        pred_len: int = 24,
        preset: str = "official-head",
        attention: str = "prob",
        factor: float | None = None,
        d_model: int = 512,
        n_heads: int = 8,
        e_layers: int = 2,
        d_layers: int = 1,
        d_ff: int = 2048,
        dropout: float | None = None,
        embed: str = "timeF",
        freq: str = "h",
        activation: str = "gelu",
        distil: bool = True,
        mix: bool | str | None = None,
        cross_attention: str | None = None,
        distil_padding: int | None = None,
        embed_bias: bool | None = None,
        pos_encoding: str = "sinusoidal",
        prob_impl: str = "fast",
        prob_measure: str = "official",
        masked_lazy: str = "cumsum",
        causal_sampling: bool = False,
        fixed_eval_sample: bool = False,
        dropout_impl: str = "torch",
        features: str = "M",
        learning_rate: float = 1e-4,
        lradj: str = "type1",
        padding: int = 0,
        metrics_scale: str = "scaled",
        seed: int | None = None,
        eval_seed: int = 2021,
        save_predictions: str | None = None,
    ):
        super().__init__()
        if features not in ("M", "S", "MS"):
            raise ValueError(f"unknown features {features!r}; choose M, S or MS")
        if metrics_scale not in ("scaled", "original", "both"):
            raise ValueError(f"unknown metrics_scale {metrics_scale!r}; choose scaled, original or both")
        lr_lambda(lradj)  # validate
        self.save_hyperparameters()
        self.model = Informer(
            enc_in,
            dec_in,
            c_out,
            seq_len,
            label_len,
            pred_len,
            preset=preset,
            attention=attention,
            factor=factor,
            d_model=d_model,
            n_heads=n_heads,
            e_layers=e_layers,
            d_layers=d_layers,
            d_ff=d_ff,
            dropout=dropout,
            embed=embed,
            freq=freq,
            activation=activation,
            distil=distil,
            mix=mix,
            cross_attention=cross_attention,
            distil_padding=distil_padding,
            embed_bias=embed_bias,
            pos_encoding=pos_encoding,
            prob_impl=prob_impl,
            prob_measure=prob_measure,
            masked_lazy=masked_lazy,
            causal_sampling=causal_sampling,
            fixed_eval_sample=fixed_eval_sample,
            dropout_impl=dropout_impl,
        )
        # None: follow the global seed (``seed_everything`` / LightningCLI's ``seed_everything`` runs before this)
        self.seed = int(seed) if seed is not None else torch.initial_seed() % 2**31
        self.f_dim = -1 if features == "MS" else 0
        self._sums: dict[str, _MetricSums] = {}
        self._train_loss_sum: torch.Tensor | None = None
        self._rng_ctx = None
        self._preds: list[torch.Tensor] = []
        self._trues: list[torch.Tensor] = []
        self.test_results: dict[str, float] = {}
        self.train_epoch_seconds: list[float] = []  # wall time of each training epoch, validation excluded
        self._epoch_t0: float | None = None
        self.data_info: dict = {}  # column names, frequency, scaler statistics: saved in checkpoints, exported
        self.register_buffer("_mean", torch.zeros(c_out), persistent=False)
        self.register_buffer("_std", torch.ones(c_out), persistent=False)

    # ------------------------------------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            return
        self.check_data(dm)
        if hasattr(dm, "scaler"):
            sc, c = dm.scaler, self.hparams.c_out
            self._mean = torch.as_tensor(sc.mean[-c:], dtype=torch.float32, device=self.device)
            self._std = torch.as_tensor(sc.std[-c:], dtype=torch.float32, device=self.device)
        self._record_data_info(dm)

    def _record_data_info(self, dm) -> None:
        info: dict = {"name": getattr(dm, "name", None), "freq": getattr(dm, "freq", None)}
        ds = dm.dataset("train") if callable(getattr(dm, "dataset", None)) else None
        if ds is not None:
            info.update(
                columns=list(ds.columns),
                target=ds.target,
                timeenc=int(ds.timeenc),
                path=ds.path.name,
                scaler={"mean": ds.scaler.mean.tolist(), "std": ds.scaler.std.tolist()} if ds.scale else None,
            )
        self.data_info = {k: v for k, v in info.items() if v is not None}

    # ------------------------------------------------------------------------------------------------ export
    def export_network(self) -> torch.nn.Module:
        return self.model

    def export_config(self) -> dict:
        """Network class_path + init_args, windows, decoder padding and the data facts (columns, frequency,
        scaler): what :func:`favit_probsparse.training.export.from_pretrained` needs to rebuild and run it."""
        hp = dict(self.hparams)
        names = [n for n in inspect.signature(type(self.model).__init__).parameters if n != "self"]
        return {
            "task": self.TASK,
            "network": {
                "class_path": class_path(type(self.model)),
                "init_args": {k: hp[k] for k in names if k in hp},
            },
            "windows": {k: hp[k] for k in ("seq_len", "label_len", "pred_len")},
            "features": hp["features"],
            "decoder_padding": hp["padding"],
            "eval_seed": hp["eval_seed"],
            "data": dict(self.data_info),
        }

    def check_data(self, dm) -> None:
        """Raise a clear ValueError when the datamodule's windows/channels/time features do not fit the model."""
        hp = self.hparams
        for key in ("seq_len", "label_len", "pred_len", "features"):
            if hasattr(dm, key) and getattr(dm, key) != hp[key]:
                raise ValueError(
                    f"model {key}={hp[key]!r} but data {key}={getattr(dm, key)!r}; make them agree"
                )
        if hasattr(dm, "enc_in") and (dm.enc_in, dm.enc_in, dm.c_out) != (hp.enc_in, hp.dec_in, hp.c_out):
            raise ValueError(
                f"model enc_in/dec_in/c_out = {hp.enc_in}/{hp.dec_in}/{hp.c_out} but {hp.features} data has "
                f"{dm.enc_in}/{dm.enc_in}/{dm.c_out}"
            )
        if hasattr(dm, "freq") and dm.freq != hp.freq:
            raise ValueError(f"model freq={hp.freq!r} but data freq={dm.freq!r}")
        if hasattr(dm, "timeenc") and dm.timeenc != (1 if hp.embed == "timeF" else 0):
            raise ValueError(f"model embed={hp.embed!r} does not match data embed={dm.hparams.embed!r}")

    # ------------------------------------------------------------------------------------------------ forward
    def forward(self, batch_x, batch_y, batch_x_mark, batch_y_mark):
        hp = self.hparams
        dec_inp = decoder_input(batch_y, hp.label_len, hp.pred_len, hp.padding)
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
        return loss

    def on_train_epoch_end(self) -> None:
        self._stop_epoch_timer()  # no-op when validation already stopped it
        if self.train_epoch_seconds:
            self.log("train_epoch_s", self.train_epoch_seconds[-1])
        if self._train_loss_sum is not None:
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
        if self.hparams.metrics_scale in ("original", "both"):
            c = pred.shape[-1]
            mean, std = self._mean[-c:], self._std[-c:]
            self._sums[name + "_orig"].update(pred * std + mean, true * std + mean)

    def _eval_end(self, name: str) -> dict[str, float]:
        self._join_rng()
        res = {}
        if self.hparams.metrics_scale in ("scaled", "both"):
            res.update(self._sums[name].compute())
        if self.hparams.metrics_scale in ("original", "both"):
            orig = self._sums[name + "_orig"].compute()
            res.update(
                {f"{k}_orig": v for k, v in orig.items()} if self.hparams.metrics_scale == "both" else orig
            )
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
        self._preds, self._trues = [], []

    def test_step(self, batch, batch_idx):
        pred, true = self._step(batch)
        self._eval_update("test", pred, true)
        if self.hparams.save_predictions:
            self._preds.append(pred.detach().cpu())
            self._trues.append(true.detach().cpu())

    def on_test_epoch_end(self) -> None:
        res = self._eval_end("test")
        self.test_results = dict(res)
        for k, v in res.items():
            self.log(f"test_{k}", v)
        if self.hparams.save_predictions and self._preds:
            out = Path(self.hparams.save_predictions)
            out.mkdir(parents=True, exist_ok=True)
            torch.save(torch.cat(self._preds), out / "pred.pt")
            torch.save(torch.cat(self._trues), out / "true.pt")

    def predict_step(self, batch, batch_idx):
        pred, _ = self._step(batch)
        return pred

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
        ckpt = self.ckpt_path
        if ckpt == "best" and not (
            trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path
        ):
            ckpt = None
        trainer.test(pl_module, datamodule=trainer.datamodule, ckpt_path=ckpt, verbose=True)
