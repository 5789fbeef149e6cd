"""Image classification as a LightningModule: any timm model (FaViT included), the DeiT/FaViT training recipe.

``ImageClassifier(model_name="favit_b0", model_kwargs={"fusion": "probsparse"}, ...)`` builds the network with
``timm.create_model(model_name, num_classes=..., **model_kwargs)`` after importing
:mod:`favit_probsparse.models` (which registers the FaViT variants with timm); the model is injected by name, not
hard-coded. ``num_classes=None`` takes the class count from the datamodule (``datamodule.num_classes``).

Recipe (all switchable in the config):

* AdamW, no weight decay on norms, biases and the model's ``no_weight_decay()`` names;
  ``lr = lr_base * global_batch / base_batch_size`` (512 as in DeiT/FaViT; ``base_batch_size: null`` uses ``lr``
  as given, as the report's log 002 did);
* per-step cosine schedule with linear warm-up and the report's cool-down (``warmup_epochs``, ``cooldown_epochs``,
  ``min_lr``, ``warmup_lr``);
* label smoothing, Mixup/CutMix (timm ``Mixup``; off when both alphas are 0), EMA of weights (timm ``ModelEmaV3``;
  evaluation uses the EMA weights when ``ema_eval``), drop path (``drop_path_rate`` is passed to the model);
* gradient clipping and precision (``32-true``, ``bf16-mixed``, ``16-mixed``) are Trainer options
  (``trainer.gradient_clip_val``, ``trainer.precision``);
* metrics: ``train/loss``, ``val/loss``, ``val/acc1``, ``val/acc5``, ``test/acc1``, ``test/acc5`` (torchmetrics, in
  [0, 1]) and ``train/images_per_s`` / ``test/images_per_s``.

Reproducibility and resuming: at each training-epoch start the Python, NumPy and torch generators are reseeded
from (seed, epoch, rank), so data order, augmentation, Mixup and drop path depend only on the seed and the epoch.
A run killed after epoch k and resumed from its checkpoint (``favit-ps fit --config C --ckpt_path last``) ends
with the same weights and metrics as an uninterrupted run (``tests/test_classification.py`` checks it).

Multi-GPU / multi-node: Lightning DDP (``--trainer.strategy ddp --trainer.devices 4 --trainer.num_nodes 2``);
under torchrun or SLURM, Lightning reads the launcher's environment (``torchrun --nproc_per_node 4 -m
favit_probsparse.cli fit --config ...`` with ``--trainer.devices 4``; ``srun favit-ps fit ...`` with
``--trainer.devices`` = tasks per node and ``--trainer.num_nodes`` = nodes). The global batch (for the lr
scaling rule) is ``batch_size * world_size * accumulate_grad_batches``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import time
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import nn

from favit_probsparse.training.checkpoint import CheckpointMetadata
from favit_probsparse.training.optim import (
    fused_adamw_supported,
    param_groups_weight_decay,
    scaled_lr,
    warmup_cosine_cooldown,
)

__all__ = ["ImageClassifier", "build_timm_model", "count_params", "measure_gmacs", "sample_shape"]


def build_timm_model(model_name: str, num_classes: int, model_kwargs: dict | None = None) -> nn.Module:
    """``timm.create_model`` after registering this package's models; clear error for unknown names/kwargs."""
    import timm

    with contextlib.suppress(ImportError):
        import favit_probsparse.models  # noqa: F401  (registers FaViT variants with timm)
    kwargs = dict(model_kwargs or {})
    if not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name.split('_')[0]}*")[:12]
        raise ValueError(f"unknown model {model_name!r} (not registered with timm); similar names: {close}")
    try:
        return timm.create_model(model_name, pretrained=False, num_classes=num_classes, **kwargs)
    except TypeError as e:
        raise ValueError(
            f"model {model_name!r} does not accept the model_kwargs {sorted(kwargs)}: {e}"
        ) from e


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def sample_shape(img_size: int, num_frames: int | None = None, in_chans: int = 3) -> tuple[int, ...]:
    """One input sample: an image ``(C, H, W)``, or a clip ``(C, T, H, W)`` when ``num_frames`` is given."""
    return (in_chans, *((num_frames,) if num_frames else ()), img_size, img_size)


def measure_gmacs(
    model: nn.Module, img_size: int, in_chans: int = 3, num_frames: int | None = None
) -> float | None:
    """Multiply-accumulates (GMACs, what vision papers call "FLOPs") for one image (or clip of ``num_frames``),
    by torch's FLOP counter.

    Counts matmuls, convolutions and attention kernels; element-wise ops are not counted (as in fvcore).
    Returns ``None`` when counting fails.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        x = torch.zeros(1, *sample_shape(img_size, num_frames, in_chans), device=p.device, dtype=p.dtype)
        counter = FlopCounterMode(display=False)
        with counter:
            model(x)
        return counter.get_total_flops() / 2 / 1e9
    except Exception:
        return None
    finally:
        model.train(was_training)


def _datamodule_attr(trainer, name: str, default=None):
    dm = getattr(trainer, "datamodule", None) if trainer is not None else None
    return getattr(dm, name, default) if dm is not None else default


class ImageClassifier(CheckpointMetadata, LightningModule):
    """Image classifier over a timm model (see the module docstring for the recipe).

    Args:
        model_name: timm model name (``favit_b0``, ``favit_b1``, their CIFAR variants, or any timm model).
        model_kwargs: extra keyword arguments for the model factory (``fusion``, window/point switches, ...).
        num_classes: classes; ``None`` takes ``datamodule.num_classes``.
        drop_path_rate: stochastic depth passed to the model (``None``: the model's default).
        lr: base learning rate (scaled by ``global_batch / base_batch_size``).
        base_batch_size: reference batch of the scaling rule; ``None`` disables scaling.
        weight_decay, betas, eps: AdamW.
        warmup_epochs, cooldown_epochs: linear warm-up and constant-``min_lr`` cool-down (may be fractional).
        min_lr, warmup_lr: the schedule's floor and warm-up start.
        label_smoothing: label smoothing (also inside Mixup's soft targets).
        mixup_alpha, cutmix_alpha, mixup_prob, mixup_switch_prob: timm Mixup/CutMix (off when both alphas are 0).
        mixup_off_epoch: turn Mixup/CutMix off from this epoch on (0: never).
        ema_decay: EMA decay of the weights (``None``: no EMA).
        ema_eval: evaluate (val/test) with the EMA weights when EMA is on.
        reseed_each_epoch: reseed the generators at each epoch start (resumable, seed-determined runs).
        check_input_size: try a forward at setup with the datamodule's ``img_size`` (clear error if unusable).
    """

    TASK = "image-classification"
    # what `favit-ps ablate --stats-only` shows beside params and GMACs: model_stats() keys -> column titles
    STATS_COLUMNS: ClassVar[dict[str, str]] = {
        "img_size": "img size",
        "windows": "windows per branch, stages 1-4",
    }
    STATS_NOTE: ClassVar[str] = (
        "A sample is one image. Windows per branch: how many windows each FaSA window branch (dilation 1, then "
        "the dilated one) fuses at each stage; a fusion has something to fuse only where this is above 1."
    )

    def __init__(
        self,
        model_name: str = "favit_b0",
        model_kwargs: dict[str, Any] | None = None,
        num_classes: int | None = None,
        drop_path_rate: float | None = None,
        lr: float = 1e-3,
        base_batch_size: int | None = 512,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        warmup_epochs: float = 5.0,
        cooldown_epochs: float = 0.0,
        min_lr: float = 1e-5,
        warmup_lr: float = 1e-6,
        label_smoothing: float = 0.1,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        mixup_off_epoch: int = 0,
        ema_decay: float | None = None,
        ema_eval: bool = True,
        reseed_each_epoch: bool = True,
        check_input_size: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.model: nn.Module | None = None
        self.ema: nn.Module | None = None
        self.mixup_fn = None
        self._own_rng: list = []
        self._epoch_t0 = self._epoch_t1 = None
        self._epoch_images = 0
        self._eval_nonfinite = torch.zeros((), dtype=torch.long)  # NaN/inf eval losses this epoch
        self.data_info: dict[
            str, Any
        ] = {}  # class names, input size, mean/std: saved in checkpoints, exported
        if num_classes is not None:
            self._build(int(num_classes))

    # ------------------------------------------------------------------ construction
    def _build(self, num_classes: int) -> None:
        from torchmetrics.classification import MulticlassAccuracy

        h = self.hparams
        kwargs = dict(h.model_kwargs or {})
        if h.drop_path_rate is not None:
            kwargs["drop_path_rate"] = h.drop_path_rate
        self.model = build_timm_model(h.model_name, num_classes, kwargs)
        self.num_classes = num_classes
        self.hparams.num_classes = num_classes  # recorded in checkpoints so load_from_checkpoint rebuilds it
        k5 = min(5, num_classes)
        for split in ("val", "test"):
            setattr(self, f"{split}_acc1", MulticlassAccuracy(num_classes, top_k=1, average="micro"))
            setattr(self, f"{split}_acc5", MulticlassAccuracy(num_classes, top_k=k5, average="micro"))
        if h.mixup_alpha > 0 or h.cutmix_alpha > 0:
            from timm.data import Mixup

            self.mixup_fn = Mixup(
                mixup_alpha=h.mixup_alpha,
                cutmix_alpha=h.cutmix_alpha,
                prob=h.mixup_prob,
                switch_prob=h.mixup_switch_prob,
                label_smoothing=h.label_smoothing,
                num_classes=num_classes,
            )
        if h.ema_decay:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=h.ema_decay)
            self.ema.requires_grad_(
                False
            )  # updated by copying, never by the optimizer (and invisible to DDP)
        # modules with their own random stream (sampled fusions): construction seeds, restored for evaluation
        self._own_rng = [
            (m, int(getattr(m, "seed", 0)))
            for m in self.modules()
            if callable(getattr(m, "reset_generator", None))
        ]
        # their stream state is a buffer; each rank seeds its own stream, so DDP must not broadcast rank 0's over it
        self._ddp_params_and_buffers_to_ignore = [n for n, _ in self.named_buffers() if n.endswith("._rng")]

    def setup(self, stage: str) -> None:
        dm_classes = _datamodule_attr(self.trainer, "num_classes")
        if self.model is None:
            if dm_classes is None:
                raise ValueError("num_classes is not set and the datamodule does not provide num_classes")
            self._build(int(dm_classes))
        elif dm_classes is not None and int(dm_classes) != self.num_classes:
            raise ValueError(
                f"the model has num_classes={self.num_classes} but the dataset has {dm_classes} "
                "classes; set model.init_args.num_classes to match (or leave it null)"
            )
        img_size = _datamodule_attr(self.trainer, "img_size")
        if (
            self.mixup_fn is not None
            and self.hparams.cutmix_alpha > 0
            and _datamodule_attr(self.trainer, "num_frames")
        ):
            raise ValueError(
                "CutMix cuts boxes out of images, not clips: set model.init_args.cutmix_alpha to 0"
            )
        self._record_data_info()
        if self.hparams.check_input_size and img_size:
            self._check_input_size(int(img_size))

    def _record_data_info(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None:
            return
        h = getattr(dm, "hparams", {})
        info = {
            "dataset": getattr(dm, "dataset", None),
            "data_dir": str(h.get("data_dir")) if h.get("data_dir") is not None else None,
            "classes": list(getattr(dm, "classes", None) or []),
            "img_size": getattr(dm, "img_size", None),
            "num_frames": getattr(dm, "num_frames", None),
            "mean": list(getattr(dm, "mean", ()) or ()),
            "std": list(getattr(dm, "std", ()) or ()),
            "interpolation": h.get("interpolation"),
            "crop_pct": h.get("eval_crop_pct"),
        }
        if info["crop_pct"] is None and info["img_size"] and h.get("train_crop"):
            from favit_probsparse.data.vision import default_eval_crop_pct

            info["crop_pct"] = default_eval_crop_pct(
                int(info["img_size"]), getattr(dm, "native_size", None), h.get("train_crop")
            )
        self.data_info = {k: v for k, v in info.items() if v not in (None, [], "")}

    # ------------------------------------------------------------------ export (favit-ps export)
    def export_network(self) -> nn.Module:
        """The network an export holds: the EMA weights when the run kept them (what evaluation used)."""
        return self._eval_model()

    def export_config(self) -> dict[str, Any]:
        """What :func:`favit_probsparse.training.export.export_checkpoint` writes besides the weights."""
        return {"task": self.TASK, "model_name": self.hparams.model_name, "data": dict(self.data_info)}

    def _check_input_size(self, img_size: int) -> None:
        model = self.model
        trainer = self.trainer if self._trainer is not None else None
        frames = _datamodule_attr(trainer, "num_frames")
        shape = sample_shape(img_size, frames)
        what = f"clips of {frames}×{img_size}x{img_size}" if frames else f"{img_size}x{img_size} images"
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                p = next(model.parameters())
                out = model(torch.zeros(1, *shape, device=p.device, dtype=p.dtype))
        except Exception as e:
            raise ValueError(
                f"model {self.hparams.model_name!r} cannot take {what} ({type(e).__name__}: {e}); choose a "
                "data.img_size the model supports"
            ) from e
        finally:
            model.train(was)
        if out.shape[-1] != self.num_classes:
            raise ValueError(f"model output has {out.shape[-1]} classes, expected {self.num_classes}")

    # ------------------------------------------------------------------ forward / steps
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _eval_model(self) -> nn.Module:
        if self.ema is not None and self.hparams.ema_eval:
            return self.ema.module
        return self.model

    def on_train_epoch_start(self) -> None:
        if self.hparams.reseed_each_epoch:
            base = int(os.environ.get("PL_GLOBAL_SEED", "0"))
            s = (base * 1_000_003 + self.current_epoch * 9_973 + self.global_rank * 7_919) % (2**32)
            random.seed(s)
            np.random.seed(s)
            torch.manual_seed(s)
            for i, (m, _) in enumerate(self._own_rng):
                m.reset_generator((s + 104_729 * (i + 1)) % (2**31))
        self._epoch_t0 = time.perf_counter()
        self._epoch_images = 0

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        h = self.hparams
        use_mix = (
            self.mixup_fn is not None
            and x.shape[0] % 2 == 0
            and (h.mixup_off_epoch <= 0 or self.current_epoch < h.mixup_off_epoch)
        )
        if use_mix:
            x, y_soft = self.mixup_fn(x, y)
            logits = self.model(x)
            loss = torch.sum(-y_soft * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        else:
            logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=h.label_smoothing)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss.item()} at epoch {self.current_epoch} step {batch_idx}; "
                "lower the lr or use precision 32-true / bf16-mixed"
            )
        self._epoch_images += x.shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=x.shape[0])
        self.log("lr", self.optimizers().param_groups[0]["lr"], prog_bar=False, on_step=True, on_epoch=False)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)
        self._epoch_t1 = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        # images/s over the training batches only (from the epoch start to the last batch, validation excluded)
        if self._epoch_t0 is not None and self._epoch_images:
            dt = self._epoch_t1 - self._epoch_t0
            self.log("train/images_per_s", self._epoch_images * self.trainer.world_size / dt, sync_dist=False)

    def _eval_step(self, batch, split: str) -> None:
        x, y = batch
        logits = self._eval_model()(x)
        loss = F.cross_entropy(logits.float(), y)
        # counted on the device (no per-step sync), checked at the epoch's end (_check_eval_loss)
        self._eval_nonfinite = self._eval_nonfinite + (~torch.isfinite(loss)).sum()
        acc1, acc5 = getattr(self, f"{split}_acc1"), getattr(self, f"{split}_acc5")
        acc1.update(logits, y)
        acc5.update(logits, y)
        self.log(f"{split}/loss", loss, prog_bar=False, on_epoch=True, sync_dist=True, batch_size=x.shape[0])
        self.log(f"{split}/acc1", acc1, prog_bar=True, on_epoch=True, batch_size=x.shape[0])
        self.log(f"{split}/acc5", acc5, prog_bar=False, on_epoch=True, batch_size=x.shape[0])

    def _reset_eval_rng(self) -> None:
        # evaluation samples like a freshly built model, so in-fit and stand-alone `test` agree
        for m, seed in self._own_rng:
            m.reset_generator(seed)

    def on_validation_epoch_start(self) -> None:
        self._reset_eval_rng()
        self._eval_nonfinite = torch.zeros((), dtype=torch.long, device=self.device)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._check_eval_loss("validation")

    def _check_eval_loss(self, split: str) -> None:
        """A NaN/inf evaluation loss stops the run (the training loss can stay finite while the weights
        diverge, e.g. a huge learning rate during warm-up)."""
        bad = int(self._eval_nonfinite)
        if bad:
            raise FloatingPointError(
                f"{split} loss is NaN or inf on {bad} batch(es) at epoch {self.current_epoch}: the weights diverged; "
                "lower the lr or use precision 32-true / bf16-mixed"
            )

    def on_test_epoch_start(self) -> None:
        self._reset_eval_rng()
        self._eval_nonfinite = torch.zeros((), dtype=torch.long, device=self.device)
        self._test_t0, self._test_images = time.perf_counter(), 0

    def test_step(self, batch, batch_idx: int) -> None:
        self._test_images += batch[0].shape[0]
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._check_eval_loss("test")
        dt = time.perf_counter() - self._test_t0
        if self._test_images and dt > 0:
            self.log("test/images_per_s", self._test_images * self.trainer.world_size / dt)

    def predict_step(self, batch, batch_idx: int):
        x = batch[0] if isinstance(batch, list | tuple) else batch
        return self._eval_model()(x).softmax(-1)

    # ------------------------------------------------------------------ optimization
    def global_batch_size(self) -> int:
        bs = _datamodule_attr(self.trainer, "batch_size", 1) or 1
        return int(bs) * max(1, self.trainer.world_size) * max(1, self.trainer.accumulate_grad_batches)

    def configure_optimizers(self):
        h = self.hparams
        lr = scaled_lr(h.lr, self.global_batch_size(), h.base_batch_size)
        groups = param_groups_weight_decay(self.model, h.weight_decay)
        opt_kwargs: dict[str, Any] = {"lr": lr, "betas": tuple(h.betas), "eps": h.eps}
        # one kernel for all parameters (on a CPU ~3x faster than the foreach path); Lightning refuses gradient
        # clipping under mixed precision for an optimizer that unscales gradients itself, as the fused one does
        mixed = str(self.trainer.precision).endswith("-mixed")
        if fused_adamw_supported(self.model) and not (mixed and self.trainer.gradient_clip_val):
            opt_kwargs["fused"] = True
        opt = torch.optim.AdamW(groups, **opt_kwargs)
        total = int(self.trainer.estimated_stepping_batches)
        max_epochs = (
            self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else None
        )
        steps_per_epoch = total / max_epochs if max_epochs else total
        fn = warmup_cosine_cooldown(
            total,
            warmup_steps=math.ceil(h.warmup_epochs * steps_per_epoch),
            cooldown_steps=int(h.cooldown_epochs * steps_per_epoch),
            min_ratio=min(1.0, h.min_lr / lr) if lr > 0 else 0.0,
            warmup_start_ratio=min(1.0, h.warmup_lr / lr) if lr > 0 else 0.0,
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    # ------------------------------------------------------------------ reporting
    @classmethod
    def model_stats_inputs(cls, init_args: dict, datamodule) -> tuple[dict, dict]:
        """What :meth:`model_stats` needs from the data, without a trainer (``favit-ps ablate --stats-only``):
        the class count when ``num_classes`` is unset, and the datamodule's image size."""
        init = dict(init_args)
        if init.get("num_classes") is None:
            init["num_classes"] = int(datamodule.num_classes)
        img_size = getattr(datamodule, "img_size", None)
        frames = getattr(datamodule, "num_frames", None)
        kw = {"img_size": int(img_size)} if img_size else {}
        return init, kw | ({"num_frames": int(frames)} if frames else {})

    def model_stats(
        self, img_size: int | None = None, num_frames: int | None = None
    ) -> dict[str, float | None]:
        """Parameters (M) and GMACs of the (non-EMA) model for one image, or one clip of ``num_frames`` (default:
        the datamodule's img_size and num_frames)."""
        trainer = self.trainer if self._trainer is not None else None
        img_size = img_size or _datamodule_attr(trainer, "img_size")
        num_frames = num_frames or _datamodule_attr(trainer, "num_frames")
        m = copy.deepcopy(self.model).float().cpu()
        out: dict[str, float | None] = {"params_m": count_params(m) / 1e6}
        if img_size:
            out["gmacs"] = measure_gmacs(m, int(img_size), num_frames=num_frames)
            out["img_size"] = int(img_size)
            if callable(getattr(m, "windows_per_branch", None)):  # FaViT: what the cross-window fusions fuse
                out["windows"] = m.windows_per_branch(int(img_size))
        return out
