"""Paired differences to a baseline row (t interval, paired t-test) and learning curves from CSV logs."""

from __future__ import annotations

import json
import math

import pytest
from scipy import stats

from favit_probsparse.experiments.grid import load_grid
from favit_probsparse.experiments.paired import learning_curves, paired_differences, t_interval
from favit_probsparse.experiments.report import write_report
from favit_probsparse.experiments.runner import RunResult


def _grid_file(tmp_path, **keys):
    """A grid file over an empty base config (its name, metric and rows given by the test)."""
    base = tmp_path / "base.yaml"
    base.write_text("trainer: {}\n")
    g = tmp_path / "g.yaml"
    g.write_text(json.dumps({"base_config": str(base), **keys}))
    return g


def test_t_interval_by_hand():
    # diffs 1..5: mean 3, sd sqrt(2.5), se sqrt(0.5); t_{0.975, 4} = 2.776445 (printed tables); t = 4.2426
    mean, low, high, p = t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    se = math.sqrt(2.5 / 5)
    assert mean == 3.0
    assert low == pytest.approx(3 - 2.776445 * se, abs=1e-5)
    assert high == pytest.approx(3 + 2.776445 * se, abs=1e-5)
    assert p == pytest.approx(0.013236, abs=1e-5)
    # edge cases: one value has no interval; constant differences have no spread
    assert math.isnan(t_interval([2.0])[1])
    m, lo, hi, p = t_interval([0.5, 0.5, 0.5])
    assert (m, lo, hi) == (0.5, 0.5, 0.5) and math.isnan(p)
    same = paired_differences({"max": {0: 1.0, 1: 2.0}, "a": {0: 1.1, 1: 2.1}}, "max")[0]
    assert same["verdict"] == "equal differences: no test"  # not "better": two equal gaps are no evidence


def test_paired_differences_match_a_paired_t_test():
    base = {0: 50.0, 1: 52.0, 2: 49.0, 3: 51.0, 4: 50.5}
    better = {s: v + d for (s, v), d in zip(base.items(), [1.0, 1.5, 0.8, 1.2, 0.9])}
    noisy = {0: 50.5, 1: 51.0, 2: 49.6, 3: 50.2, 5: 60.0}  # seed 5 has no partner: left out
    pairs = {e["row"]: e for e in paired_differences({"max": base, "a": better, "b": noisy}, "max")}
    a, b = pairs["a"], pairs["b"]
    ref = stats.ttest_rel([better[s] for s in range(5)], [base[s] for s in range(5)])
    assert a["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert a["mean"] == pytest.approx(1.08) and a["verdict"] == "better" and a["wins"] == 5
    assert b["seeds"] == [0, 1, 2, 3] and b["n"] == 4
    assert b["diffs"] == pytest.approx([0.5, -1.0, 0.6, -0.8])
    assert b["verdict"] == "not distinguishable" and (b["wins"], b["losses"]) == (2, 2)
    # lower is better: the same differences are losses
    low = {e["row"]: e for e in paired_differences({"max": base, "a": better}, "max", mode="min")}
    assert low["a"]["verdict"] == "worse" and low["a"]["wins"] == 0
    with pytest.raises(ValueError, match="baseline row 'zzz'"):
        paired_differences({"max": base}, "zzz")


def _csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ["epoch", "step", "train/loss_epoch", "val/acc1"]
    lines = [",".join(header)] + [
        ",".join("" if r.get(h) is None else str(r[h]) for h in header) for r in rows
    ]
    path.write_text("\n".join(lines) + "\n")


def test_learning_curves_read_lightning_csv(tmp_path):
    run = tmp_path / "run"
    # Lightning writes one row per logging step; a metric missing from a row is an empty cell
    _csv(
        run / "csv" / "version_0" / "metrics.csv",
        [
            {"epoch": 0, "step": 10, "val/acc1": 0.3},
            {"epoch": 0, "step": 10, "train/loss_epoch": 2.0},
            {"epoch": 1, "step": 20, "val/acc1": 0.4},
        ],
    )
    _csv(run / "csv" / "version_1" / "metrics.csv", [{"epoch": 1, "step": 20, "val/acc1": 0.45}])  # resumed
    assert learning_curves(run, "val/acc1") == {0: 0.3, 1: 0.45}
    assert learning_curves(run, "train/loss_epoch") == {0: 2.0}
    assert learning_curves(run, "nope") == {}


def test_report_has_paired_table_and_curves(tmp_path):
    grid = load_grid(
        _grid_file(
            tmp_path,
            name="g",
            metric={"name": "test/acc1", "scale": 100, "label": "Top-1 (%)"},
            baseline="max",
            curves=[{"name": "val/acc1", "scale": 100, "label": "Val top-1 (%)", "digits": 1}],
            rows=[{"name": "max"}, {"name": "ps", "label": "ProbSparse"}],
        )
    )
    runs = tmp_path / "runs"
    results = []
    for row, accs in {"max": [0.50, 0.52, 0.49], "ps": [0.51, 0.54, 0.50]}.items():
        for seed, acc in enumerate(accs):
            results.append(RunResult(row, seed, "done", {"test/acc1": acc}, {}, 1.0))
            _csv(
                runs / row / f"seed{seed}" / "csv" / "version_0" / "metrics.csv",
                [{"epoch": 0, "step": 1, "val/acc1": acc - 0.1}, {"epoch": 1, "step": 2, "val/acc1": acc}],
            )
    md_path, _ = write_report(grid, results, tmp_path / "out", "cmd", [0, 1, 2], hardware="hw", runs_dir=runs)
    md = md_path.read_text()
    # ps − max per seed: +1, +2, +1 points: mean 1.33, sd 0.577, t_{0.975,2} = 4.303 -> [-0.10, +2.77]
    assert "| ProbSparse | 3 (0, 1, 2) | +1.33 | [-0.10, +2.77] |" in md
    assert "not distinguishable" in md and "No row is distinguishable from max" in md
    assert "| max | 40.3 | 50.3 | +10.0 |" in md  # per-epoch means: (40 + 42 + 39) / 3, then +10
    assert (tmp_path / "out" / "g-curves.png").stat().st_size > 1000
    raw = json.loads((tmp_path / "out" / "g.json").read_text())
    assert raw["paired"][0]["row"] == "ps" and raw["curves"]["val/acc1"]["ps"]["1"]["n"] == 3


def test_grid_baseline_must_be_a_row(tmp_path):
    g = _grid_file(tmp_path, metric="m", baseline="x", rows=[{"name": "a"}])
    with pytest.raises(ValueError, match="baseline 'x' is not a row name"):
        load_grid(g)


def test_row_seeds_limit_a_row_to_its_own_seeds(tmp_path):
    from favit_probsparse.experiments.runner import GridRuns, run_grid

    g = _grid_file(tmp_path, metric="m", rows=[{"name": "main"}, {"name": "side", "seeds": [0, 1]}])
    grid = load_grid(g)
    assert grid.rows[1].seeds == [0, 1] and grid.rows[0].seeds is None
    planned = run_grid(GridRuns(grid, [0, 1, 2], tmp_path / "runs"), dry_run=True, quiet=True)
    assert sorted((r.row, r.seed) for r in planned) == [
        ("main", 0), ("main", 1), ("main", 2), ("side", 0), ("side", 1)
    ]  # fmt: skip
    g.write_text(g.read_text().replace("[0, 1]", '"x"'))
    with pytest.raises(ValueError, match="row 'side' seeds must be integers"):
        load_grid(g)
