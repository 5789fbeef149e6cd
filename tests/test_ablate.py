"""The ablation runner: grid validation, dotted overrides, a real 2-config grid end to end (table, chart, skip, FAILED)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from favit_probsparse.data.vision import write_toy_image_folder
from favit_probsparse.experiments.ablate import main
from favit_probsparse.experiments.grid import apply_overrides, load_grid
from favit_probsparse.experiments.report import write_report
from favit_probsparse.experiments.runner import RunResult

TINY_KWARGS = dict(
    fusion="max", img_size=16, stem_stride=2, depths=[1, 1, 1, 1], embed_dims=[16, 32, 64, 128]
)


def _base_config(path: Path, data_dir: Path) -> Path:
    cfg = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 1,
            "accelerator": "cpu",
            "devices": 1,
            "limit_train_batches": 2,
            "num_sanity_val_steps": 0,
            "enable_model_summary": False,
            "logger": False,
            "enable_checkpointing": False,
        },
        "model": {
            "class_path": "favit_probsparse.training.classification.ImageClassifier",
            "init_args": {
                "model_name": "favit_b0_cifar",
                "model_kwargs": TINY_KWARGS,
                "mixup_alpha": 0.0,
                "cutmix_alpha": 0.0,
                "base_batch_size": None,
                "warmup_epochs": 0.0,
            },
        },
        "data": {
            "class_path": "favit_probsparse.data.vision.ImageClassificationDataModule",
            "init_args": {
                "dataset": "imagefolder",
                "data_dir": str(data_dir),
                "img_size": 16,
                "batch_size": 16,
                "num_workers": 0,
                "auto_augment": None,
                "re_prob": 0.0,
            },
        },
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def _grid(path: Path, base: Path, rows: list[dict], **extra) -> Path:
    grid = {
        "name": "tiny-grid",
        "title": "Tiny grid",
        "base_config": str(base),
        "metric": {"name": "test/acc1", "mode": "max", "scale": 100, "label": "Top-1 (%)"},
        "extra_metrics": [{"name": "test/acc5", "scale": 100}],
        "seeds": [0],
        "rows": rows,
    }
    grid.update(extra)
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------ units
def test_apply_overrides_nested_lists_and_creation():
    cfg = {
        "model": {"init_args": {"model_kwargs": {"fusion": "max", "depths": [1, 2]}}},
        "trainer": {"callbacks": [{"init_args": {"monitor": "a"}}]},
    }
    out = apply_overrides(
        cfg,
        {
            "model.init_args.model_kwargs.fusion": "probsparse",
            "model.init_args.model_kwargs.fusion_kwargs.topk": 3,
            "trainer.callbacks.0.init_args.monitor": "val/acc1",
            "trainer.max_epochs": 2,
        },
    )
    assert out["model"]["init_args"]["model_kwargs"] == {
        "fusion": "probsparse",
        "depths": [1, 2],
        "fusion_kwargs": {"topk": 3},
    }
    assert out["trainer"]["callbacks"][0]["init_args"]["monitor"] == "val/acc1"
    assert out["trainer"]["max_epochs"] == 2
    assert cfg["model"]["init_args"]["model_kwargs"]["fusion"] == "max"  # input untouched
    with pytest.raises(KeyError, match="not a valid index"):
        apply_overrides(cfg, {"trainer.callbacks.3.init_args.monitor": "x"})
    with pytest.raises(KeyError, match="not a mapping or list"):
        apply_overrides(cfg, {"model.init_args.model_kwargs.fusion.x": 1})


def test_grid_validation(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("trainer: {}\n")
    ok = _grid(tmp_path / "g.yaml", base, [{"name": "a"}])
    assert load_grid(ok).rows[0].label == "a"
    with pytest.raises(ValueError, match="unknown keys"):
        load_grid(_grid(tmp_path / "g1.yaml", base, [{"name": "a"}], colour="red"))
    with pytest.raises(ValueError, match="duplicate row names"):
        load_grid(_grid(tmp_path / "g2.yaml", base, [{"name": "a"}, {"name": "a"}]))
    with pytest.raises(ValueError, match="folder-safe"):
        load_grid(_grid(tmp_path / "g3.yaml", base, [{"name": "a/b"}]))
    with pytest.raises(FileNotFoundError, match="base_config"):
        load_grid(_grid(tmp_path / "g4.yaml", tmp_path / "missing.yaml", [{"name": "a"}]))
    with pytest.raises(ValueError, match="metric mode"):
        load_grid(_grid(tmp_path / "g5.yaml", base, [{"name": "a"}], metric={"name": "x", "mode": "up"}))
    with pytest.raises(FileNotFoundError):
        load_grid(tmp_path / "nope.yaml")


def test_report_marks_best_failed_and_missing(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("trainer: {}\n")
    grid = load_grid(
        _grid(tmp_path / "g.yaml", base, [{"name": "a", "reference": 50.0}, {"name": "b"}, {"name": "c"}])
    )
    results = [
        RunResult("a", 0, "done", {"test/acc1": 0.5, "test/acc5": 0.9}, {"params_m": 1.0}, 10.0),
        RunResult("a", 1, "done", {"test/acc1": 0.6, "test/acc5": 0.9}, {"params_m": 1.0}, 12.0),
        RunResult("b", 0, "done", {"test/acc1": 0.4}, {}, 9.0),
        RunResult("b", 1, "failed", error="ValueError: boom"),
        RunResult("c", 0, "skipped (budget)"),
        RunResult("c", 1, "skipped (budget)"),
    ]
    md_path, table = write_report(
        grid, results, tmp_path / "res", "favit-ps ablate g.yaml", [0, 1], hardware="hw"
    )
    md = md_path.read_text()
    assert "**55.00 ± 7.07**" in table  # best row in bold, sample std
    assert "FAILED (seed 1)" in table and "ValueError: boom" in md
    assert "seed 0: skipped (budget)" in table
    assert "| 50.0 |" in table  # reference column
    assert "Seed-to-seed spread (median std over rows): 7.07; best minus second: 15.00" in md
    assert (tmp_path / "res" / "tiny-grid.png").stat().st_size > 1000
    raw = json.loads((tmp_path / "res" / "tiny-grid.json").read_text())
    assert raw["summary"][0]["metrics"]["test/acc1"]["n"] == 2


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_two_config_grid_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = write_toy_image_folder(tmp_path / "toy", num_classes=3, train_per_class=12, test_per_class=4)
    base = _base_config(tmp_path / "base.yaml", data)
    rows = [
        {"name": "max", "overrides": {"model.init_args.model_kwargs.fusion": "max"}, "reference": 60},
        {
            "name": "probsparse",
            "label": "ProbSparse",
            "overrides": {"model.init_args.model_kwargs.fusion": "probsparse"},
        },
    ]
    grid = _grid(tmp_path / "grid.yaml", base, rows)
    out, runs = tmp_path / "results", tmp_path / "runs"
    assert main([str(grid), "--seeds", "0", "--out", str(out), "--runs-dir", str(runs)]) == 0
    md = (out / "tiny-grid.md").read_text()
    assert "| max |" in md and "| ProbSparse |" in md and "Params (M)" in md and "GMACs" in md
    assert "Hardware:" in md and "Command: `favit-ps ablate" in md
    assert (out / "tiny-grid.png").stat().st_size > 1000
    done = runs / "tiny-grid" / "max" / "seed0" / "metrics.json"
    metrics = json.loads(done.read_text())
    assert 0.0 <= metrics["metrics"]["test/acc1"] <= 1.0 and metrics["stats"]["params_m"] > 0
    ran = yaml.safe_load((runs / "tiny-grid" / "probsparse" / "seed0" / "config.yaml").read_text())
    assert ran["model"]["init_args"]["model_kwargs"]["fusion"] == "probsparse" and ran["seed_everything"] == 0

    # re-running skips finished runs; a broken row is reported as FAILED and makes the command fail
    mtime = done.stat().st_mtime_ns
    rows.append({"name": "broken", "overrides": {"model.init_args.model_kwargs.fusion": "nope"}})
    _grid(tmp_path / "grid.yaml", base, rows)
    capsys.readouterr()
    assert main([str(grid), "--seeds", "0", "--out", str(out), "--runs-dir", str(runs)]) == 1
    printed = capsys.readouterr().out
    assert "max seed 0 ..." not in printed and "broken seed 0 ..." in printed
    assert done.stat().st_mtime_ns == mtime
    md = (out / "tiny-grid.md").read_text()
    assert "FAILED (seed 0)" in md and "nope" in md
    assert (runs / "tiny-grid" / "broken" / "seed0" / "failed.json").is_file()


def test_stats_only_builds_every_row_without_training(tmp_path, capsys):
    data = write_toy_image_folder(tmp_path / "toy", num_classes=3, train_per_class=2, test_per_class=1)
    base = _base_config(tmp_path / "base.yaml", data)
    rows = [
        {"name": "max", "overrides": {"model.init_args.model_kwargs.fusion": "max"}},
        {"name": "conv1x1", "overrides": {"model.init_args.model_kwargs.fusion": "conv1x1"}},
        {"name": "bad", "overrides": {"model.init_args.model_kwargs.fusion": "nope"}},
    ]
    grid = _grid(tmp_path / "grid.yaml", base, rows)
    assert (
        main([str(grid), "--stats-only", "--out", str(tmp_path / "res"), "--runs-dir", str(tmp_path / "r")])
        == 1
    )
    md = (tmp_path / "res" / "tiny-grid-model-stats.md").read_text()
    lines = {
        ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ") and "Row" not in ln
    }
    p_max = float(lines["max"].split("|")[2])
    p_conv = float(lines["conv1x1"].split("|")[2])
    assert p_conv > p_max > 0  # the pointwise-conv fusion has parameters, max pooling none
    assert "ERROR" in lines["bad"] and "nope" in lines["bad"]
    assert not (tmp_path / "r").exists()  # nothing ran
