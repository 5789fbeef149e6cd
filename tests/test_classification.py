"""Image classification end to end on CPU: learning, kill-and-resume, `test --ckpt`, DDP (gloo), config errors."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from _helpers import (
    TINY_FAVIT,
    TINY_FAVIT_KWARGS,
    checkpoint_callback,
    toy_data_args,
    vision_config,
    write_yaml,
)
from favit_probsparse.data.vision import DatasetError, ImageClassificationDataModule, write_toy_image_folder
from favit_probsparse.training.classification import ImageClassifier
from favit_probsparse.training.optim import param_groups_weight_decay, warmup_cosine_cooldown


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return write_toy_image_folder(
        tmp_path_factory.mktemp("toy") / "toy", num_classes=4, train_per_class=24, test_per_class=8, size=16
    )


def _data(root, **kw):
    return ImageClassificationDataModule(
        **toy_data_args(root, **{"train_crop": "pad_crop", "color_jitter": None, **kw})
    )


def _model(**kw):
    args = dict(
        TINY_FAVIT,
        lr=3e-3,
        base_batch_size=None,
        warmup_epochs=0.0,
        weight_decay=0.01,
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
        label_smoothing=0.0,
    )
    args.update(kw)
    return ImageClassifier(**args)


def _trainer(root_dir, max_epochs=2, **kw):
    args = dict(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        default_root_dir=str(root_dir),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=False,
    )
    args.update(kw)
    return Trainer(**args)


@pytest.mark.slow
def test_two_epochs_learn_above_chance(toy, tmp_path):
    seed_everything(0, workers=True)
    model, dm = _model(), _data(toy)
    trainer = _trainer(tmp_path, max_epochs=2, enable_checkpointing=False)
    trainer.fit(model, datamodule=dm)
    res = trainer.test(model, datamodule=dm, verbose=False)[0]
    # 4 classes: chance is 25%; the toy classes are separable by colour
    assert res["test/acc1"] >= 0.6, res
    assert res["test/acc5"] == pytest.approx(1.0)  # top-k with k = min(5, classes) = 4
    assert model.num_classes == 4  # taken from the datamodule


class _Crash(Callback):
    """Simulates a kill: raises at the start of epoch 1 (after epoch 0's checkpoint was written)."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


def _resume_setup():
    # every source of randomness on: ProbSparse fusion sampling, Mixup/CutMix, drop path, EMA, augmentation
    return dict(
        model=dict(
            model_kwargs=dict(TINY_FAVIT_KWARGS, fusion="probsparse"),
            drop_path_rate=0.1,
            mixup_alpha=0.8,
            cutmix_alpha=1.0,
            label_smoothing=0.1,
            ema_decay=0.9,
            warmup_epochs=0.5,
        ),
        data=dict(auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25),
    )


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted(toy, tmp_path):
    cfg = _resume_setup()

    def run(root, callbacks=(), ckpt_path=None):
        seed_everything(7, workers=True)
        model, dm = _model(**cfg["model"]), _data(toy, **cfg["data"])
        ckpt = ModelCheckpoint(dirpath=str(root / "ckpt"), save_last=True)
        trainer = _trainer(
            root, max_epochs=2, callbacks=[ckpt, *callbacks], limit_train_batches=4, limit_val_batches=2
        )
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
        return model, {k: float(v) for k, v in trainer.callback_metrics.items()}

    ref_model, ref = run(tmp_path / "a")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "b", callbacks=[_Crash()])
    last = tmp_path / "b" / "ckpt" / "last.ckpt"
    assert last.is_file()
    assert torch.load(last, weights_only=False)["epoch"] == 0
    torch.manual_seed(12345)  # a resumed process starts from an unrelated RNG state
    res_model, res = run(tmp_path / "b", ckpt_path=str(last))
    for key in ("val/acc1", "val/loss", "train/loss_epoch"):
        assert res[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), (key, res[key], ref[key])
    for (name, p), (_, q) in zip(ref_model.state_dict().items(), res_model.state_dict().items()):
        assert torch.allclose(p.float(), q.float(), atol=1e-6), name


@pytest.mark.slow
def test_cli_fit_then_test_ckpt(toy, tmp_path):
    """`favit-ps fit --config` then `favit-ps test --config --ckpt last.ckpt` reproduces the in-fit test."""
    from favit_probsparse.cli import run_lightning

    trainer = {
        "default_root_dir": str(tmp_path),
        "enable_progress_bar": False,
        "logger": False,
        "limit_train_batches": 3,
        "callbacks": [checkpoint_callback(tmp_path / "ckpt")],
    }
    model = {"model_kwargs": dict(TINY_FAVIT_KWARGS, fusion="probsparse"), "ema_decay": 0.5}
    path = write_yaml(tmp_path / "cfg.yaml", vision_config(toy, trainer, model))
    cli = run_lightning(["fit", "--config", str(path)])
    in_fit = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    cli2 = run_lightning(["test", "--config", str(path), "--ckpt", str(tmp_path / "ckpt" / "last.ckpt")])
    standalone = {k: float(v) for k, v in cli2.trainer.callback_metrics.items()}
    assert standalone["test/acc1"] == pytest.approx(in_fit["test/acc1"])
    assert standalone["test/loss"] == pytest.approx(in_fit["test/loss"], rel=1e-5)


@pytest.mark.slow
def test_ddp_two_cpu_processes(toy, tmp_path):
    """Lightning DDP with 2 CPU processes (gloo) runs an epoch end to end through the CLI."""
    trainer = {
        "devices": 2,
        "strategy": "ddp",
        "default_root_dir": str(tmp_path),
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "logger": {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(tmp_path), "name": "csv"},
        },
    }
    path = write_yaml(
        tmp_path / "ddp.yaml", vision_config(toy, trainer, {"ema_decay": 0.9}, {"batch_size": 8})
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "favit_probsparse.cli", "fit", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=170,
        env=env,
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "GLOBAL_RANK: 1" in out or "global_rank=1" in out or "Rank 1" in out or "MEMBER: 2/2" in out, out[
        -2000:
    ]
    metrics = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text()
    assert "val/acc1" in metrics.splitlines()[0]
    # each process saw half of the 96 training images: 6 steps of 8 per epoch
    assert "epoch" in metrics


# ------------------------------------------------------------------------------------------ config errors
def test_unknown_fusion_is_a_clear_error():
    with pytest.raises(ValueError, match=r"(?i)fusion.*nope|nope.*fusion"):
        ImageClassifier(model_name="favit_b0_cifar", model_kwargs={"fusion": "nope"}, num_classes=10)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'favit_b9'"):
        ImageClassifier(model_name="favit_b9", num_classes=10)


def test_missing_dataset_path(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        ImageClassificationDataModule(dataset="imagefolder", data_dir=str(tmp_path / "missing"))


def test_image_size_the_model_cannot_take(toy, tmp_path):
    # the ImageNet-stem FaViT needs at least 32x32 inputs; the toy data is 16x16
    model = ImageClassifier(
        model_name="favit_b0", model_kwargs={"fusion": "max"}, mixup_alpha=0.0, cutmix_alpha=0.0
    )
    trainer = _trainer(tmp_path, max_epochs=1)
    with pytest.raises(ValueError, match=r"cannot take 16x16 images"):
        trainer.fit(model, datamodule=_data(toy))


def test_num_classes_mismatch(toy, tmp_path):
    model = _model(num_classes=10)
    with pytest.raises(ValueError, match="num_classes=10 but the dataset has 4"):
        _trainer(tmp_path, max_epochs=1).fit(model, datamodule=_data(toy))


# ------------------------------------------------------------------------------------------ optimizer pieces
def test_no_weight_decay_on_norms_and_biases():
    m = _model(num_classes=4).model
    decay, no_decay = param_groups_weight_decay(m, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"])
    assert all(p.ndim <= 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(
        [p for p in m.parameters() if p.requires_grad]
    )


def test_schedule_warmup_cosine_cooldown():
    f = warmup_cosine_cooldown(
        100, warmup_steps=10, cooldown_steps=10, min_ratio=0.01, warmup_start_ratio=0.0
    )
    assert f(0) == 0.0 and f(5) == pytest.approx(0.5) and f(10) == pytest.approx(1.0)
    assert f(50) == pytest.approx(0.01 + 0.99 * 0.5)
    assert f(90) == pytest.approx(0.01) and f(99) == pytest.approx(0.01)
    vals = [f(s) for s in range(10, 91)]
    assert all(a >= b for a, b in itertools.pairwise(vals))


def _adamw_reference(p0, grads, lr, betas, eps, wd):
    """Decoupled-weight-decay Adam (Loshchilov & Hutter) in float64, written out step by step."""
    p, m, v = (
        p0.double().clone(),
        torch.zeros_like(p0, dtype=torch.float64),
        torch.zeros_like(p0, dtype=torch.float64),
    )
    for t, g in enumerate(grads, start=1):
        g = g.double()
        p = p * (1 - lr * wd)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        p = p - lr * m_hat / (v_hat.sqrt() + eps)
    return p


def test_cpu_training_uses_the_fused_adamw_and_it_matches_the_adamw_update(toy, tmp_path):
    model = _model(lr=1e-3, base_batch_size=None)
    trainer = _trainer(tmp_path, max_epochs=1, max_steps=1, enable_checkpointing=False)
    trainer.fit(model, datamodule=_data(toy, batch_size=16))
    opt = trainer.optimizers[0]
    assert opt.defaults.get("fused") is True
    # the fused kernel against the update rule: three steps on fixed gradients, one decayed and one plain group
    torch.manual_seed(0)
    w, b = torch.randn(5, 7), torch.randn(7)
    gw, gb = [torch.randn(5, 7) for _ in range(3)], [torch.randn(7) for _ in range(3)]
    pw, pb = torch.nn.Parameter(w.clone()), torch.nn.Parameter(b.clone())
    fused = torch.optim.AdamW(
        [{"params": [pw], "weight_decay": 0.05}, {"params": [pb], "weight_decay": 0.0}],
        lr=1e-2,
        betas=(0.9, 0.999),
        eps=1e-8,
        fused=True,
    )
    for g1, g2 in zip(gw, gb):
        pw.grad, pb.grad = g1.clone(), g2.clone()
        fused.step()
    tol = {"rtol": 1e-6, "atol": 1e-6}  # float32 parameters against the float64 rule
    torch.testing.assert_close(
        pw.detach().double(), _adamw_reference(w, gw, 1e-2, (0.9, 0.999), 1e-8, 0.05), **tol
    )
    torch.testing.assert_close(
        pb.detach().double(), _adamw_reference(b, gb, 1e-2, (0.9, 0.999), 1e-8, 0.0), **tol
    )


def test_ddp_leaves_each_rank_its_own_sampled_fusion_stream(tmp_path):
    """The sampled fusions' stream state is a buffer; DDP would broadcast rank 0's over every rank's own stream."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    model = _model(num_classes=4, model_kwargs=dict(TINY_FAVIT_KWARGS, fusion="probsparse"))
    rng = [b for n, b in model.named_buffers() if n.endswith("._rng")]
    assert len(rng) == 7  # one per window branch: 2 + 2 + 2 + 1
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        synced = {id(b) for b in DistributedDataParallel(model).modules_buffers}
    finally:
        dist.destroy_process_group()
    assert not any(id(b) in synced for b in rng)


def test_lr_scaling_with_global_batch(toy, tmp_path):
    model = _model(lr=1e-3, base_batch_size=512)
    trainer = _trainer(tmp_path, max_epochs=1, max_steps=1, enable_checkpointing=False)
    trainer.fit(model, datamodule=_data(toy, batch_size=16))
    opt = trainer.optimizers[0]
    assert opt.param_groups[0]["initial_lr"] == pytest.approx(1e-3 * 16 / 512)


# ------------------------------------------------------------------------------------------ shipped configs
REPO = Path(__file__).resolve().parents[1]
VISION_CONFIGS = sorted((REPO / "configs" / "vision").glob("*.yaml"))


@pytest.mark.parametrize("path", VISION_CONFIGS, ids=lambda p: p.stem)
def test_shipped_vision_configs_parse_and_build(path, capsys):
    """Every configs/vision/*.yaml passes Lightning's CLI validation and builds a model that takes its images."""
    from favit_probsparse.cli import run_lightning

    with pytest.raises(SystemExit) as e:
        run_lightning(["fit", "--config", str(path), "--print_config"])
    assert e.value.code in (0, None)
    capsys.readouterr()
    cfg = yaml.safe_load(path.read_text())
    data = dict(cfg["data"]["init_args"], download=False)
    if data["dataset"] in ("imagefolder", "shards"):
        from favit_probsparse.paths import resolve_data_path

        if not resolve_data_path(data["data_dir"], data["data_dir"]).is_dir():
            pytest.skip(f"dataset folder {data['data_dir']} not available here")
    dm = ImageClassificationDataModule(**data)
    model = ImageClassifier(**cfg["model"]["init_args"], num_classes=dm.num_classes)
    model._check_input_size(dm.img_size)


def test_shipped_vision_grids_resolve():
    """The vision ablation grids load and every row's overrides apply to their base config."""
    from favit_probsparse.config import apply_overrides
    from favit_probsparse.experiments.grid import load_grid

    grids = [
        p for p in sorted((REPO / "configs" / "ablations").glob("*.yaml")) if not p.name.startswith("ett")
    ]
    assert grids
    for g in grids:
        grid = load_grid(g)
        base = yaml.safe_load(grid.base_config.read_text())
        if not str(base.get("model", {}).get("class_path", "")).endswith("ImageClassifier"):
            continue
        for row in grid.rows:
            cfg = apply_overrides(base, {**grid.base_overrides, **row.overrides})
            kwargs = cfg["model"]["init_args"]["model_kwargs"]
            assert "fusion" in kwargs, (g.name, row.name)


def test_bf16_mixed_precision_on_cpu(toy, tmp_path):
    seed_everything(0)
    model = _model(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    trainer = _trainer(
        tmp_path,
        max_epochs=1,
        precision="bf16-mixed",
        limit_train_batches=2,
        limit_val_batches=1,
        enable_checkpointing=False,
        gradient_clip_val=1.0,
    )
    trainer.fit(model, datamodule=_data(toy))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert 0.0 <= float(trainer.callback_metrics["val/acc1"]) <= 1.0
