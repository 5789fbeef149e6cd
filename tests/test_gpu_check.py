"""``benchmarks/gpu_check.py --dry-run``: argument parsing, the output folder and the summary skeleton (CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _helpers import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    return load_script(SCRIPT, "gpu_check")


def test_dry_run_writes_the_plan(gpu_check, tmp_path, capsys):
    out = tmp_path / "nested" / "gpu"
    assert (
        gpu_check.main(["--out", str(out), "--dry-run", "--favit-args=--favit favit_b0", "--skip", "favit"])
        == 0
    )
    steps = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in steps] == ["env", "cuda-tests", "attention", "kernels", "favit", "informer"]
    status = {s["name"]: s["status"] for s in steps}
    assert status["favit"] == "skipped (--skip)"
    assert (
        status["cuda-tests"]
        == status["attention"]
        == status["kernels"]
        == "arguments checked; not run (dry run)"
    )
    informer = status["informer"]
    assert informer == "arguments checked; not run (dry run)" or (
        informer.startswith("skipped (no ") and informer.endswith("; arguments checked")
    )
    cmd = {s["name"]: s["cmd"] for s in steps}
    assert "-m cuda" in cmd["cuda-tests"]
    assert "--device cuda --batch 32" in cmd["attention"]
    assert cmd["favit"].endswith("--favit favit_b0")
    assert "--trainer.precision bf16-mixed" in cmd["informer"] and "dropout_impl bits" in cmd["informer"]
    table = (out / "summary.md").read_text()
    assert table.count("\n| ") == 7  # header + six steps
    assert "Dry run: arguments parsed, nothing was executed." in table
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


def test_every_step_parses_on_this_machine(gpu_check, tmp_path):
    """The committed plan, every step included, parses: a stale option in any step fails here, in CI, on a CPU."""
    out = tmp_path / "plan"
    rc = gpu_check.main(["--out", str(out), "--dry-run"])
    steps = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in steps if "bad arguments" in s["status"]] == []
    assert rc == 0
    assert all("arguments checked" in s["status"] for s in steps)


@pytest.mark.parametrize(
    ("step", "stale", "message"),
    [
        # the Informer step before the forecaster redesign moved dropout_impl into the network
        (
            "informer",
            ("--model.init_args.network.init_args.dropout_impl", "--model.init_args.dropout_impl"),
            "model: Option 'dropout_impl' is not accepted",
        ),
        (
            "favit",
            ("--device cuda", "--device cuda --no-such-flag"),
            "unrecognized arguments: --no-such-flag",
        ),
        ("attention", ("--batch 32", "--batch many"), "argument --batch: invalid int value: 'many'"),
    ],
)
def test_a_stale_option_is_named(gpu_check, tmp_path, step, stale, message):
    steps = gpu_check.plan(
        gpu_check.argparse.Namespace(official_file=None, favit_args="", attention_batch=32, skip=[]), tmp_path
    )
    (s,) = [s for s in steps if s["name"] == step]
    key = "cli" if "cli" in s["check"] else "args"
    assert stale[0] in s["check"][key]
    assert gpu_check.check_step(s) is None
    s["check"][key] = s["check"][key].replace(*stale)
    problem = gpu_check.check_step(s)
    assert problem is not None and message in problem


def test_a_script_without_a_parser_is_reported(gpu_check):
    problem = gpu_check.check_step({"check": {"script": "benchmarks/gpu_check.py", "args": ""}})
    assert problem is not None and "has no build_parser()" in problem
