"""Setup shared by the vision tests: a tiny FaViT, the toy image folder's datamodule, a CLI config for both."""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

CLASSIFIER = "favit_probsparse.training.classification.ImageClassifier"
DATAMODULE = "favit_probsparse.data.vision.ImageClassificationDataModule"

# A tiny FaViT: B0 structure at 1/2 width, one block per stage, CIFAR stem with stride 2 (16x16 input -> maps 8/4/2/1)
TINY_FAVIT_KWARGS = dict(
    fusion="max", img_size=16, stem_stride=2, depths=[1, 1, 1, 1], embed_dims=[16, 32, 64, 128]
)
TINY_FAVIT = dict(model_name="favit_b0_cifar", model_kwargs=TINY_FAVIT_KWARGS)


def toy_data_args(data_dir: str | Path, **kw: Any) -> dict[str, Any]:
    """`ImageClassificationDataModule` arguments for a 16² image folder: no augmentation, no workers."""
    args = dict(
        dataset="imagefolder",
        data_dir=str(data_dir),
        img_size=16,
        batch_size=16,
        num_workers=0,
        auto_augment=None,
        re_prob=0.0,
    )
    args.update(kw)
    return args


def checkpoint_callback(dirpath: Path) -> dict[str, Any]:
    """A `ModelCheckpoint` that keeps `last.ckpt` in `dirpath`, as a config entry."""
    return {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"dirpath": str(dirpath), "save_last": True},
    }


def vision_config(
    data_dir: str | Path,
    trainer: dict[str, Any],
    model: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A `favit-ps fit` config: one CPU epoch of the tiny FaViT without Mixup/CutMix on the toy folder.

    `trainer`, `model` and `data` add to (or replace) the trainer's, the classifier's and the datamodule's
    arguments."""
    init = dict(copy.deepcopy(TINY_FAVIT), mixup_alpha=0.0, cutmix_alpha=0.0)
    init.update(model or {})
    return {
        "seed_everything": 0,
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, **trainer},
        "model": {"class_path": CLASSIFIER, "init_args": init},
        "data": {"class_path": DATAMODULE, "init_args": toy_data_args(data_dir, **(data or {}))},
    }


def write_yaml(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_python(script: str, *args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs `script` in a fresh Python process (`python -c script args...`), capturing its text output."""
    return subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def load_script(path: Path, name: str):
    """A stand-alone script of the repository (benchmarks/, docs/figures/) imported as a module, for its tests."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
