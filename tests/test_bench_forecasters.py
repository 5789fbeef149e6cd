"""``benchmarks/forecasters.py --quick``: every network in every precision gets its row (no timing is checked)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _helpers import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "forecasters.py"


@pytest.fixture(scope="module")
def forecasters():
    return load_script(SCRIPT, "bench_forecasters")


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_quick_run_has_every_row(forecasters, tmp_path, keep_threads, capsys):
    out = tmp_path / "nested" / "forecasters.md"
    assert forecasters.main(["--quick", "--bf16", "--markdown", str(out)]) == 0
    text = out.read_text()
    assert text == capsys.readouterr().out
    rows = [
        line.split("|")[1:3] for line in text.splitlines() if line.startswith("| ") and "ms/step" not in line
    ]
    expected = [
        "fasa-probsparse",
        "fasa-max",
        "fasa-official",
        "patchtst-style",
        "dlinear",
        "informer",
    ]
    assert [(net.strip(), prec.strip()) for net, prec in rows] == [
        (net, prec) for net in expected for prec in ("fp32", "bf16")
    ]
    ref = next(line for line in text.splitlines() if line.startswith("| patchtst-style | fp32 |"))
    assert ref.endswith("| 1.00× | 1.00× |")  # the reference row's time over itself
    assert "**Status.**" in text and "Load average" in text and "batch 2" in text  # the provenance header


def test_forced_kernel_and_one_row(forecasters, keep_threads, capsys):
    assert forecasters.main(["--quick", "--rows", "fasa-max", "--kernel", "sdpa"]) == 0
    text = capsys.readouterr().out
    assert "| fasa-max | fp32 |" in text and "FaSA attention kernel: sdpa" in text
    assert "| fasa-max | fp32 | 73.7 |" in text  # the grid's FaSA ETTh width (d_model 32, 3 layers)
    assert text.count("| fasa-max |") == 1
    assert "| – | – |" in text  # no PatchTST-style row to compare with
