"""``benchmarks/gpu_check.py --dry-run``: argument parsing, the output folder and the summary skeleton (CPU)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dry_run_writes_the_plan(gpu_check, tmp_path, capsys):
    out = tmp_path / "nested" / "gpu"
    assert (
        gpu_check.main(["--out", str(out), "--dry-run", "--favit-args=--favit favit_b0", "--skip", "favit"])
        == 0
    )
    steps = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in steps] == ["env", "cuda-tests", "attention", "favit", "informer"]
    status = {s["name"]: s["status"] for s in steps}
    assert status["favit"] == "skipped (--skip)"
    assert status["cuda-tests"] == status["attention"] == "not run (dry run)"
    assert status["informer"] == "not run (dry run)" or status["informer"].startswith("skipped (no ")
    cmd = {s["name"]: s["cmd"] for s in steps}
    assert "-m cuda" in cmd["cuda-tests"]
    assert "--device cuda --batch 32" in cmd["attention"]
    assert cmd["favit"].endswith("--favit favit_b0")
    assert "--trainer.precision bf16-mixed" in cmd["informer"] and "dropout_impl bits" in cmd["informer"]
    table = (out / "summary.md").read_text()
    assert table.count("\n| ") == 6  # header + five steps
    assert "Dry run: nothing was executed." in table
    assert sorted(p.name for p in out.iterdir()) == ["summary.json", "summary.md"]  # nothing else ran


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--out"),
        (["--out", "X", "--official-file", "/no/such/favit.py"], "no such file"),
        (["--out", "X", "--attention-batch", "0"], "--attention-batch must be >= 1"),
        (["--out", "X", "--skip", "everything"], "invalid choice"),
        (["--out", "X", "--favit-args='unclosed"], "--favit-args"),
    ],
)
def test_bad_arguments_are_named(gpu_check, args, message, capsys):
    with pytest.raises(SystemExit) as e:
        gpu_check.main([*args, "--dry-run"])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
