"""Video models through the user's commands: `favit-ps fit`, `test --ckpt`, `export`, and the export loaded by
timm's ``local-dir:`` hub in a fresh process, on a tiny moving Fashion-MNIST tree built from synthetic images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from _helpers import CLASSIFIER, checkpoint_callback, run_python, write_yaml
from favit_probsparse import cli
from favit_probsparse.data.moving_fmnist import build_moving_fmnist
from favit_probsparse.training.checkpoint import rebuild_module

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch of a tiny FaSA video model on 32 motion clips; returns (config, last.ckpt)."""
    tmp = tmp_path_factory.mktemp("video")
    g = np.random.default_rng(0)
    imgs = g.integers(1, 256, (120, 28, 28), dtype=np.uint8)
    labels = np.arange(120) % 10
    root = build_moving_fmnist(
        tmp / "mf", imgs[:100], labels[:100], imgs[100:], labels[100:], sizes=(32, 8, 8)
    )
    ckdir = tmp / "ck"
    cfg = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 1,
            "accelerator": "cpu",
            "devices": 1,
            "enable_progress_bar": False,
            "logger": False,
            "default_root_dir": str(tmp / "run"),  # the CLI saves config.yaml there
            "callbacks": [checkpoint_callback(ckdir)],
        },
        "model": {
            "class_path": CLASSIFIER,
            "init_args": {
                "model_name": "favit_video_tiny",
                "model_kwargs": {
                    "attention": "fasa",
                    "fusion": "probsparse",
                    "num_frames": 4,
                    "img_size": 32,
                },
                "mixup_alpha": 0.0,
                "cutmix_alpha": 0.0,
            },
        },
        "data": {
            "class_path": "favit_probsparse.data.video.VideoClipDataModule",
            "init_args": {
                "data_dir": str(root / "motion"),
                "num_frames": 4,
                "img_size": 32,
                "batch_size": 8,
                "num_workers": 0,
                "hflip": 0.0,
                "train_crop": "center",
            },
        },
    }
    path = write_yaml(tmp / "cfg.yaml", cfg)
    assert cli.main(["fit", "--config", str(path)]) == 0
    return path, ckdir / "last.ckpt"


_TIMM_LOAD = """
import sys, torch, timm
import favit_probsparse.models  # registers the video FaViT with timm
model = timm.create_model("local-dir:" + sys.argv[1], pretrained=True).eval()
with torch.no_grad():
    torch.save(model(torch.load(sys.argv[2], weights_only=True)), sys.argv[3])
"""


@pytest.mark.slow
def test_fit_test_export_and_timm_load(trained, tmp_path, capsys):
    cfg, ckpt = trained
    assert ckpt.exists()
    assert cli.main(["test", "--config", str(cfg), "--ckpt", str(ckpt)]) == 0
    assert "test/acc1" in capsys.readouterr().out
    assert cli.main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "exp")]) == 0
    meta = json.loads((tmp_path / "exp" / "config.json").read_text())
    assert meta["architecture"] == "favit_video_tiny" and meta["num_classes"] == 8
    module, _ = rebuild_module(ckpt)
    module.eval()
    x = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    out = run_python(_TIMM_LOAD, tmp_path / "exp", tmp_path / "x.pt", tmp_path / "y.pt", env=ENV)
    assert out.returncode == 0, out.stderr[-2000:]
    from favit_probsparse.attention.fusion import reset_sampling

    reset_sampling(module.model)  # the fresh process starts every ProbSparse stream from its seed too
    with torch.no_grad():
        ref = module.model(x)
    torch.testing.assert_close(torch.load(tmp_path / "y.pt", weights_only=True), ref)


def test_stats_only_reports_clip_gmacs_per_row(trained, tmp_path):
    """``ablate --stats-only`` on a video grid: GMACs of one clip per attention. The single-frame model is the 2-D
    FaViT on each of the 4 frames, so its count is 4 times the 2-D model's (up to the head, counted once)."""
    import timm

    from favit_probsparse.experiments.grid import load_grid
    from favit_probsparse.experiments.stats import model_stats_table
    from favit_probsparse.training.classification import measure_gmacs

    cfg, _ = trained
    grid = tmp_path / "grid.yaml"
    rows = [
        {"name": a, "overrides": {"model.init_args.model_kwargs.attention": a}} for a in ("fasa", "frame")
    ]
    write_yaml(grid, {"name": "g", "base_config": str(cfg), "metric": {"name": "test/acc1"}, "rows": rows})
    stats = {e["row"]: e for e in model_stats_table(load_grid(grid))}
    assert all("error" not in e for e in stats.values()), stats
    tiny = dict(embed_dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), mlp_ratios=(4, 4, 4, 4))
    image = measure_gmacs(
        timm.create_model("favit_b0", img_size=32, fusion="probsparse", num_classes=8, **tiny), 32
    )
    assert stats["frame"]["gmacs"] == pytest.approx(4 * image, rel=1e-3)
    assert stats["fasa"]["gmacs"] > 0


def test_video_fusion_maps_mark_exactly_the_kept_tokens():
    """The tokens the picture marks are the ones whose candidate vectors the ProbSparse keys copy (matched by
    value, independently of the autograd read weights), on every branch of every stage."""
    from favit_probsparse.analysis.video_fusion import analyze_video, describe_video
    from favit_probsparse.models.favit_video import VideoFaViT

    torch.manual_seed(0)
    m = VideoFaViT(
        num_frames=4, img_size=32, fusion="probsparse", num_classes=3, embed_dims=(16, 32, 64, 128)
    )
    summaries = analyze_video(m, torch.randn(2, 3, 4, 32, 32))
    assert len(summaries) == 4 + 3  # two window branches in stages 1-3, one in stage 4
    for s in summaries:
        r = s["record"]
        pix = r.pixel_index()  # [P, L] token of each candidate
        cand = r.cand.detach()[0, 0].reshape(-1, r.cand.shape[-1])  # [P·L, c], p-major as the fusion flattens
        keys = r.keys.detach()[0, 0]
        copied = {int(pix.reshape(-1)[j]) for k in keys for j in torch.nonzero((cand == k).all(-1)).flatten()}
        marked = set(torch.nonzero(s["weight_map"][0, 0].reshape(-1) > 0).flatten().tolist())
        assert marked == copied and 0 < len(marked) <= r.num_keys
    d = describe_video(summaries)[0]
    assert d["grid"] == [4, 8, 8] and d["num_keys"] == 4 * 7 * 7 and len(d["kept_tokens_clip0"]) == 1


@pytest.mark.slow
def test_analyze_fusion_draws_a_video_checkpoint(trained, tmp_path, capsys):
    _, ckpt = trained
    out = tmp_path / "maps"
    assert cli.main(["analyze", "fusion", "--ckpt", str(ckpt), "--images", "1", "--out", str(out)]) == 0
    assert (out / "stage1_branch0.png").stat().st_size > 0
    rep = json.loads((out / "fusion_maps.json").read_text())
    assert rep["fusion"] == "probsparse" and len(rep["branches"]) == 7
    assert all(len(t) == 3 for t in rep["branches"][0]["kept_tokens_clip0"][0])  # [t, y, x]
