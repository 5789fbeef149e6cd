"""The ablation runner: grid validation, dotted overrides, a real 2-config grid end to end (table, chart, skip, FAILED)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from _helpers import vision_config, write_yaml
from favit_probsparse.config import apply_overrides
from favit_probsparse.data.vision import write_toy_image_folder
from favit_probsparse.experiments.ablate import main
from favit_probsparse.experiments.grid import load_grid
from favit_probsparse.experiments.report import write_report
from favit_probsparse.experiments.runner import RunResult


def _base_config(path: Path, data_dir: Path) -> Path:
    trainer = {
        "limit_train_batches": 2,
        "num_sanity_val_steps": 0,
        "enable_model_summary": False,
        "logger": False,
        "enable_checkpointing": False,
    }
    model = {"base_batch_size": None, "warmup_epochs": 0.0}
    return write_yaml(path, vision_config(data_dir, trainer, model))


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
    status = md.split("\n\n")[1]  # right under the title: what, when, on what, which command
    assert status.startswith("**Status.** Top-1") and status.endswith(
        " UTC on hw, with `favit-ps ablate g.yaml`."
    )
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
    assert md.split("\n\n")[1].startswith("**Status.** Parameters and GMACs per row")
    lines = {
        ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ") and "Row" not in ln
    }
    p_max = float(lines["max"].split("|")[2])
    p_conv = float(lines["conv1x1"].split("|")[2])
    assert p_conv > p_max > 0  # the pointwise-conv fusion has parameters, max pooling none
    # windows per branch at 16² with the 3×3 stride-2 stem, by hand: stage maps 8, 4, 2, 1; windows of span 7
    # tile the first ceil(8/7)² = 4 times and the others once; the dilated spans (49, 25, 13) cover each map once
    assert lines["max"].split("|")[5].strip() == "[[4, 1], [1, 1], [1, 1], [1]]"
    assert "ERROR" in lines["bad"] and "nope" in lines["bad"]
    assert not (tmp_path / "r").exists()  # nothing ran


# ------------------------------------------------------------------------------------------ one protocol
def _fake_record(grid_path: Path, runs: Path, row: str, seed: int, acc1: float) -> Path:
    """A finished run's record as the worker writes it, for the config the runner would run (no training)."""
    from favit_probsparse.config import apply_overrides
    from favit_probsparse.experiments.grid import config_hash, redirect_outputs
    from favit_probsparse.experiments.records import write_record
    from favit_probsparse.experiments.runner import _base_config, run_dir_of

    grid = load_grid(grid_path)
    r = next(x for x in grid.rows if x.name == row)
    run_dir = run_dir_of(grid, r, seed, runs)
    cfg = redirect_outputs(
        apply_overrides(_base_config(grid), {**grid.base_overrides, **r.overrides}), run_dir, seed
    )
    write_record(
        run_dir / "metrics.json",
        status="done",
        seed=seed,
        metrics={"test/acc1": acc1},
        config_hash=config_hash(cfg),
        command="test",
    )
    return run_dir / "metrics.json"


def test_mean_std_of_one_and_several_runs():
    from favit_probsparse.experiments.records import mean_std

    assert mean_std([0.5]) == (0.5, 0.0)  # one seed: no spread measured, reported as 0.0 beside n = 1
    mean, std = mean_std([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3)
    assert std == pytest.approx(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) ** 0.5 / 2**0.5)
    with pytest.raises(ValueError):
        mean_std([])


def test_result_files_are_replaced_atomically(tmp_path, monkeypatch):
    import os

    from favit_probsparse.utils import io as records

    path = records.write_json(tmp_path / "r.json", {"a": 1, "nan": float("nan")})
    assert json.loads(path.read_text()) == {"a": 1, "nan": None}  # NaN is not JSON: written as null

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        records.write_json(path, {"a": 2})
    assert json.loads(path.read_text())["a"] == 1  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # and no temporary file is left


def test_record_carries_provenance(tmp_path):
    from favit_probsparse.experiments.records import read_record, write_record
    from favit_probsparse.utils.provenance import cpu_model

    write_record(
        tmp_path / "m.json", status="done", seed=3, metrics={"x": 1.0}, config="c.yaml", command="cmd"
    )
    rec = read_record(tmp_path / "m.json")
    assert rec["seed"] == 3 and rec["metrics"] == {"x": 1.0} and rec["config"] == "c.yaml"
    assert rec["command"] == "cmd" and rec["hardware"]["cpu"] == cpu_model() and "T" in rec["date"]
    assert "git_commit" in rec


def _skip_row_check(monkeypatch):
    """The grids below have placeholder configs (``trainer: {}``) that the pre-run option check would refuse."""
    from favit_probsparse.experiments import ablate

    monkeypatch.setattr(ablate, "check_rows", lambda *a, **k: None)


def test_corrupt_record_is_named_not_a_json_traceback(tmp_path, capsys, monkeypatch):
    from favit_probsparse.experiments.records import CorruptRecordError, read_record

    _skip_row_check(monkeypatch)

    base = tmp_path / "base.yaml"
    base.write_text("trainer: {}\n")
    grid = _grid(tmp_path / "g.yaml", base, [{"name": "a"}])
    runs = tmp_path / "runs"
    bad = runs / "tiny-grid" / "a" / "seed0" / "metrics.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"metrics": {"test/acc1": 0.')  # a write cut short
    with pytest.raises(CorruptRecordError, match=r"metrics\.json"):
        read_record(bad)
    assert main([str(grid), "--runs-dir", str(runs), "--dry-run"]) == 0
    assert str(bad) in capsys.readouterr().out
    assert main([str(grid), "--runs-dir", str(runs), "--report-only", "--no-chart"]) == 1
    md = (runs / "tiny-grid" / "tiny-grid.md").read_text()
    assert "FAILED (seed 0)" in md and str(bad) in md


def test_malformed_grid_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "g.yaml"
    bad.write_text("name: x\nrows:\n  - {name: a\n  - name: b\n")  # unclosed flow mapping on line 3
    with pytest.raises(ValueError, match=r"g\.yaml:4:\d+: invalid YAML"):
        load_grid(bad)


def test_report_merges_seeds_and_stays_out_of_results(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    base = tmp_path / "base.yaml"
    base.write_text("trainer: {}\n")
    grid = _grid(tmp_path / "g.yaml", base, [{"name": "a"}])
    runs = Path("runs")
    _fake_record(grid, runs, "a", 0, 0.50)
    _fake_record(grid, runs, "a", 1, 0.70)
    # `--seeds 1` after seed 0: the report holds both seeds (it is built from every record on disk)
    assert main([str(grid), "--seeds", "1", "--report-only", "--no-chart"]) == 0
    raw = json.loads((runs / "tiny-grid" / "tiny-grid.json").read_text())
    assert raw["seeds"] == [0, 1]
    assert raw["summary"][0]["metrics"]["test/acc1"]["values"] == [50.0, 70.0]
    assert "60.00 ± 14.14" in capsys.readouterr().out  # printed, sample std of 50 and 70
    assert not (tmp_path / "results").exists()  # no --out: nothing under results/
    # a record of an older config is not merged
    grid_changed = _grid(tmp_path / "g.yaml", base, [{"name": "a", "overrides": {"trainer.max_epochs": 9}}])
    assert main([str(grid_changed), "--seeds", "1", "--report-only", "--no-chart"]) == 0
    raw = json.loads((runs / "tiny-grid" / "tiny-grid.json").read_text())
    assert raw["seeds"] == [1] and raw["runs"][0]["status"] == "not run"


def test_report_only_rows_leaves_other_rows_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = tmp_path / "base.yaml"
    base.write_text("trainer: {}\n")
    grid = _grid(tmp_path / "g.yaml", base, [{"name": "a"}, {"name": "b"}, {"name": "never"}])
    _fake_record(grid, Path("runs"), "a", 0, 0.50)
    _fake_record(grid, Path("runs"), "b", 0, 0.60)
    assert main([str(grid), "--report-only", "--rows", "a", "b", "--no-chart"]) == 0
    raw = json.loads((Path("runs") / "tiny-grid" / "tiny-grid.json").read_text())
    assert [e["row"] for e in raw["summary"]] == ["a", "b"]  # the never-run row is not listed as "not run"
    assert main([str(grid), "--report-only", "--no-chart"]) == 0  # without --rows: every row
    raw = json.loads((Path("runs") / "tiny-grid" / "tiny-grid.json").read_text())
    assert [e["row"] for e in raw["summary"]] == ["a", "b", "never"]


def test_itr_seeds_validation():
    from favit_probsparse.experiments.repeat import itr_seeds

    assert itr_seeds(3, None) == [0, 1, 2]
    assert itr_seeds(None, None) == [0]
    assert itr_seeds(2, [5, 7]) == [5, 7]
    for bad in (0, -2):
        with pytest.raises(ValueError, match="--itr must be a positive number of runs"):
            itr_seeds(bad, None)
    with pytest.raises(ValueError, match="--itr 3 but 2 --seeds"):
        itr_seeds(3, [0, 1])


def test_no_module_imports_the_cli():
    """The CLI sits on top: no module under src/ imports favit_probsparse.cli (an import cycle otherwise)."""
    import ast

    src = Path(__file__).resolve().parents[1] / "src" / "favit_probsparse"
    offenders = []
    for path in src.rglob("*.py"):
        if path == src / "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            if any(n == "favit_probsparse.cli" or n.startswith("favit_probsparse.cli.") for n in names):
                offenders.append(f"{path.relative_to(src)}:{node.lineno}")
    assert offenders == []
    assert len(list(src.rglob("*.py"))) > 20  # the scan saw the package


def test_second_fit_into_the_same_checkpoint_folder_is_refused(tmp_path):
    from favit_probsparse.training.project_cli import lightning_cli

    ckpts = tmp_path / "ckpts"
    cfg = {
        "trainer": {
            "max_steps": 1,
            "accelerator": "cpu",
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "limit_val_batches": 0,
            "default_root_dir": str(tmp_path),
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(ckpts), "save_last": True},
                }
            ],
        },
        "model": {"class_path": "lightning.pytorch.demos.boring_classes.BoringModel"},
        "data": {"class_path": "lightning.pytorch.demos.boring_classes.BoringDataModule"},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    lightning_cli(["fit", "--config", str(path)])
    first = (ckpts / "last.ckpt").read_bytes()
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        lightning_cli(["fit", "--config", str(path), "--trainer.max_steps", "2"])
    assert (ckpts / "last.ckpt").read_bytes() == first and not list(ckpts.glob("*-v*.ckpt"))
    lightning_cli(["fit", "--config", str(path), "--trainer.max_steps", "2", "--overwrite", "true"])
    names = sorted(p.name for p in ckpts.iterdir())
    assert "last.ckpt" in names and not any("-v" in n for n in names)  # no last-v1.ckpt beside it
    assert (ckpts / "last.ckpt").read_bytes() != first  # last.ckpt is the new run's
    # resuming continues in place
    lightning_cli(
        ["fit", "--config", str(path), "--trainer.max_steps", "3", "--ckpt_path", str(ckpts / "last.ckpt")]
    )


@pytest.mark.slow
def test_itr_is_a_one_row_grid_through_the_same_runner(tmp_path, monkeypatch, capsys):
    from favit_probsparse.experiments import repeat
    from favit_probsparse.experiments.records import read_record

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    data = write_toy_image_folder(tmp_path / "toy", num_classes=3, train_per_class=4, test_per_class=2)
    base = _base_config(tmp_path / "base.yaml", data)
    argv = ["--config", str(base), "--itr", "2", "--metric", "test/loss", "--mode", "min"]
    assert repeat.main([*argv, "--trainer.limit_train_batches", "1"]) == 0
    recs = [read_record(Path("runs/base/itr") / f"seed{s}" / "metrics.json") for s in (0, 1)]
    assert [r["seed"] for r in recs] == [0, 1]
    assert all(r["cli_args"] == ["--trainer.limit_train_batches", "1"] for r in recs)
    assert all(r["command"].startswith("favit-ps fit --config") and r["hardware"]["cpu"] for r in recs)
    vals = [r["metrics"]["test/loss"] for r in recs]
    assert vals[0] != vals[1]  # two seeds, two trainings
    raw = json.loads(Path("runs/base/base.json").read_text())
    s = raw["summary"][0]["metrics"]["test/loss"]
    assert s["n"] == 2 and s["mean"] == pytest.approx(sum(vals) / 2)
    assert s["std"] == pytest.approx(abs(vals[0] - vals[1]) / 2**0.5)  # sample std of two values
    assert f"test/loss: {s['mean']:.4f} ± {s['std']:.4f} over 2 seed(s)" in capsys.readouterr().out
    assert not Path("results").exists()


def test_budget_cut_runs_are_reported_as_skipped(tmp_path, monkeypatch):
    _skip_row_check(monkeypatch)
    monkeypatch.chdir(tmp_path)
    base = tmp_path / "base.yaml"
    base.write_text("trainer: {}\n")
    grid = _grid(tmp_path / "g.yaml", base, [{"name": "a"}, {"name": "b"}])
    _fake_record(grid, Path("runs"), "a", 0, 0.5)
    # a budget of ~0: the finished run is reused, the other one is not launched
    assert main([str(grid), "--budget-min", "1e-9", "--no-chart"]) == 0
    md = Path("runs/tiny-grid/tiny-grid.md").read_text()
    assert "| a | 50.00 | 1 |" in md and "(seed 0: skipped (budget))" in md
    assert not Path("runs/tiny-grid/b/seed0/log.txt").exists()


def test_a_run_without_a_finite_metric_is_failed_not_finished(tmp_path, monkeypatch):
    """Never a finished run with NaN: a worker that exits 0 with a NaN metric is recorded as FAILED."""
    from favit_probsparse.experiments import runner
    from favit_probsparse.experiments.records import write_record

    class FakeWorker:  # stands in for the subprocess: writes a record whose metric is NaN, exits 0
        def __init__(self, cmd, **kw):
            run_dir = Path(cmd[-1])
            spec = json.loads((run_dir / "run.json").read_text())
            metrics = {"test/acc1": float("nan"), "test/loss": 1.0}
            write_record(run_dir / "metrics.json", status="done", seed=spec["seed"], metrics=metrics,
                         config_hash=spec["config_hash"])  # fmt: skip

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(runner.subprocess, "Popen", FakeWorker)
    _skip_row_check(monkeypatch)
    monkeypatch.chdir(tmp_path)
    base = tmp_path / "base.yaml"
    base.write_text("trainer: {}\n")
    grid = _grid(tmp_path / "g.yaml", base, [{"name": "a"}])
    assert main([str(grid), "--no-chart"]) == 1
    run_dir = Path("runs/tiny-grid/a/seed0")
    assert not (run_dir / "metrics.json").exists()
    err = json.loads((run_dir / "failed.json").read_text())["error"]
    assert "test/acc1 is missing or not finite" in err and "test/loss" in err
    assert "FAILED (seed 0)" in Path("runs/tiny-grid/tiny-grid.md").read_text()
