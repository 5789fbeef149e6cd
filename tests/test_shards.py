"""webdataset shards: folder -> shards -> the same (image bytes, label) pairs, disjoint samples across 2 gloo
ranks x 2 workers, training steps from shards (one process, and Lightning DDP with 2 CPU processes)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from _helpers import vision_config, write_yaml
from favit_probsparse.data.shards import read_info, shard_assignment, shard_loader, write_shards
from favit_probsparse.data.vision import DatasetError, ImageClassificationDataModule, write_toy_image_folder
from favit_probsparse.paths import resolve_data_path

pytest.importorskip("webdataset")


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return write_toy_image_folder(
        tmp_path_factory.mktemp("toy") / "toy", num_classes=4, train_per_class=24, test_per_class=6, size=16
    )


def _folder_pairs(root: Path, split: str) -> set[tuple[str, str]]:
    """(sha256 of the file bytes, class name) of every image of an ImageFolder split."""
    return {
        (hashlib.sha256(f.read_bytes()).hexdigest(), f.parent.name)
        for f in (root / split).glob("*/*")
        if f.is_file()
    }


def _shard_pairs(shards: Path, split: str) -> list[tuple[str, str]]:
    """The same pairs read back from the tar files with the standard library (not through our reader)."""
    info = json.loads((shards / "_info.json").read_text())
    pairs = []
    for name in info["splits"][split]["shards"]:
        with tarfile.open(shards / name) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for member, data in members.items():
            key, ext = member.split(".", 1)
            if ext != "cls":
                label = int(members[f"{key}.cls"])
                pairs.append((hashlib.sha256(data).hexdigest(), info["classes"][label]))
    return pairs


def test_folder_to_shards_and_back(toy, tmp_path):
    shards = tmp_path / "shards"
    write_shards(toy, shards, maxcount=10)
    for split, n in (("train", 96), ("test", 24)):
        pairs = _shard_pairs(shards, split)
        assert len(pairs) == n  # every image once
        assert set(pairs) == _folder_pairs(toy, split)
    info = read_info(shards, "train")
    assert info.counts == [10] * 9 + [6] and len(info.shards) == 10
    # our reader decodes each sample to the pixels of its file, with its label
    loader = shard_loader(info, None, train=False, batch_size=1, num_workers=0)
    decoded = [(img.tobytes(), label) for img, label in loader.dataset]
    assert len(decoded) == 96
    files = {
        (Image.open(f).convert("RGB").tobytes(), info.classes.index(f.parent.name))
        for f in (toy / "train").glob("*/*.png")
    }
    assert set(decoded) == files


@pytest.mark.skipif(
    not resolve_data_path("cifar10-subset", "cifar10-subset").is_dir(), reason="CIFAR-10 subset not present"
)
def test_cifar_subset_to_shards(tmp_path):
    root = resolve_data_path("cifar10-subset", "cifar10-subset")
    shards = tmp_path / "shards"
    write_shards(root, shards, maxcount=500)
    pairs = _shard_pairs(shards, "test")
    assert len(pairs) == len(set(pairs)) == 1017
    assert set(pairs) == _folder_pairs(root, "test")
    assert sum(read_info(shards, "train").counts) == 5438


def test_assignment_is_disjoint_and_changes_with_epoch():
    for n_shards, n_workers in ((10, 4), (1282, 80), (7, 7)):
        for epoch in (0, 1):
            parts = shard_assignment(n_shards, n_workers, seed=3, epoch=epoch, train=True)
            flat = [s for p in parts for s in p]
            assert len(flat) == len(set(flat)) == n_shards // n_workers * n_workers
            assert len({len(p) for p in parts}) == 1  # every worker the same number of shards
        evaluation = shard_assignment(n_shards, n_workers, seed=3, epoch=0, train=False)
        assert sorted(s for p in evaluation for s in p) == list(range(n_shards))
    assert shard_assignment(10, 4, 3, 0, True) != shard_assignment(10, 4, 3, 1, True)


def test_too_few_shards_and_missing_info_are_clear_errors(toy, tmp_path):
    write_shards(toy, tmp_path / "s", maxcount=60)  # 2 training shards
    with pytest.raises(DatasetError, match="2 train shards for 2 rank"):
        shard_loader(read_info(tmp_path / "s", "train"), None, True, 4, num_workers=2, world_size=2)
    with pytest.raises(DatasetError, match=r"no _info\.json"):
        read_info(tmp_path, "train")


_RANK_SCRIPT = """
import hashlib, json, sys
import torch, torch.distributed as dist
from torchvision.transforms import PILToTensor
from favit_probsparse.data.shards import read_info, shard_loader

shards, rank, pg, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method="file://" + pg, rank=rank, world_size=2)
info = read_info(shards, "train")
result = {}
for epoch in (0, 1):
    dl = shard_loader(info, PILToTensor(), True, 4, 2, seed=0, rank=rank, world_size=2, epoch_fn=lambda: epoch)
    keys, steps = [], 0
    for x, _ in dl:
        steps += 1
        keys += [hashlib.sha1(img.permute(1, 2, 0).numpy().tobytes()).hexdigest() for img in x]
    both = [None, None]
    dist.all_gather_object(both, keys)
    result[epoch] = {"keys": both, "steps": steps, "len": len(dl)}
dist.destroy_process_group()
json.dump(result, open(out, "w"))
"""


@pytest.mark.slow
def test_two_gloo_ranks_two_workers_read_disjoint_samples(toy, tmp_path):
    shards = tmp_path / "shards"
    write_shards(toy, shards, maxcount=7)  # 14 training shards for 2 ranks x 2 workers
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _RANK_SCRIPT,
                str(shards),
                str(r),
                str(tmp_path / "pg"),
                str(tmp_path / f"{r}"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in (0, 1)
    ]
    try:
        outs = [p.communicate(timeout=400)[0] for p in procs]
    finally:  # a rank that failed leaves the other waiting in all_gather: never leave them behind
        for p in procs:
            p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    res = [json.loads((tmp_path / f"{r}").read_text()) for r in (0, 1)]
    toy_images = {
        hashlib.sha1(Image.open(f).convert("RGB").tobytes()).hexdigest()
        for f in (toy / "train").glob("*/*.png")
    }
    epochs = []
    for epoch in ("0", "1"):
        k0, k1 = res[0][epoch]["keys"]
        assert k0 == res[1][epoch]["keys"][0]  # the gathered lists agree
        assert len(k0) == len(set(k0)) and len(k1) == len(set(k1))  # nothing twice within a rank
        assert not set(k0) & set(k1)  # nothing on both ranks
        assert set(k0) | set(k1) <= toy_images
        # both ranks the same number of steps (DDP), as many as the loader announced
        assert res[0][epoch]["steps"] == res[1][epoch]["steps"] == res[0][epoch]["len"] > 0
        assert len(k0) == len(k1) == 4 * res[0][epoch]["steps"]
        epochs.append(k0)
    assert epochs[0] != epochs[1]  # a new shard order every epoch


def _shard_dm(shards: Path, **kw) -> ImageClassificationDataModule:
    args = dict(dataset="shards", data_dir=str(shards), img_size=16, batch_size=8, num_workers=0)
    args.update(auto_augment=None, re_prob=0.0, train_crop="pad_crop", color_jitter=None, **kw)
    return ImageClassificationDataModule(**args)


def test_datamodule_trains_a_few_steps_from_shards(toy, tmp_path):
    from lightning.pytorch import Trainer, seed_everything

    from _helpers import TINY_FAVIT
    from favit_probsparse.training.classification import ImageClassifier

    shards = tmp_path / "shards"
    write_shards(toy, shards, maxcount=16)
    dm = _shard_dm(shards)
    assert dm.num_classes == 4
    seed_everything(0)
    model = ImageClassifier(**TINY_FAVIT, lr=3e-3, mixup_alpha=0.0, cutmix_alpha=0.0, base_batch_size=None)
    trainer = Trainer(
        max_epochs=1,
        limit_train_batches=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 3
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert 0.0 <= metrics["val/acc1"] <= 1.0 and math.isfinite(metrics["train/loss_epoch"])
    assert len(dm.train_dataloader()) == 96 // 8  # one process, no worker: every shard, whole batches


def test_prepare_shards_command(toy, tmp_path, capsys):
    from favit_probsparse.cli import main

    assert (
        main(["prepare-shards", "--folder", str(toy), "--out", str(tmp_path / "s"), "--maxcount", "50"]) == 0
    )
    assert "train: 96 images in 2 shards" in capsys.readouterr().out
    assert main(["prepare-shards", "--folder", str(tmp_path / "nothing"), "--out", str(tmp_path / "t")]) == 2
    assert "expected train/ and val/" in capsys.readouterr().err


@pytest.mark.slow
def test_lightning_ddp_two_cpu_processes_from_shards(toy, tmp_path):
    """`favit-ps fit` with 2 CPU processes (gloo) on shards: each rank 6 steps of 8 of its own 48 images."""
    shards = tmp_path / "shards"
    write_shards(toy, shards, maxcount=8)  # 12 training shards
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
        "log_every_n_steps": 1,
    }
    data = {"dataset": "shards", "batch_size": 8, "train_crop": "pad_crop"}
    path = write_yaml(tmp_path / "ddp.yaml", vision_config(shards, trainer, None, data))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "favit_probsparse.cli", "fit", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    steps = {
        r.split(",")[header.index("step")] for r in rows[1:] if r.split(",")[header.index("train/loss_step")]
    }
    assert len(steps) == 6, rows  # 96 images / 2 ranks / batch 8
    assert any(r.split(",")[header.index("val/acc1")] for r in rows[1:])
