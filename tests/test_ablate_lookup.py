"""`favit-ps ablate`: a grid by name or shipped path from any folder, the data prepared once before the runs, and
a one-line stop on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from favit_probsparse.experiments import ablate

SRC = Path(__file__).resolve().parents[1] / "src"

# a datamodule whose prepare_data() appends its init args to a log file (and can block, for the signal test)
FAKE_DATA = """
import json, os, time

from lightning.pytorch import LightningDataModule, LightningModule


class Data(LightningDataModule):
    def __init__(self, root: str, size: int = 1, download: bool = False, sleep_s: float = 0.0):
        super().__init__()
        self.args = {"root": root, "size": size, "download": download}
        self.sleep_s = sleep_s

    def prepare_data(self):
        with open(os.environ["FAKE_DATA_LOG"], "a") as f:
            f.write(json.dumps(self.args) + "\\n")
        time.sleep(self.sleep_s)


class Model(LightningModule):  # only parsed (ablate checks every row's options before the first run)
    def __init__(self, x: int = 0):
        super().__init__()
"""


def _grid(tmp_path: Path, sleep_s: float = 0.0) -> Path:
    (tmp_path / "fakedata.py").write_text(FAKE_DATA)
    (tmp_path / "base.yaml").write_text(
        "model: {class_path: fakedata.Model}\n"
        f"data: {{class_path: fakedata.Data, init_args: {{root: r, sleep_s: {sleep_s}}}}}\n"
    )
    (tmp_path / "g.yaml").write_text(
        "name: g\nbase_config: base.yaml\nmetric: {name: test/acc1}\nseeds: [0, 1]\nrows:\n"
        "  - {name: a}\n"
        "  - {name: b, overrides: {model.init_args.x: 1}}\n"  # same data as a: prepared once
        "  - {name: c, overrides: {data.init_args.size: 2}}\n"
    )
    return tmp_path / "g.yaml"


def _log(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def fake_runs(tmp_path, monkeypatch):
    """No training: run_grid records what was prepared when it is called; the report is skipped."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("FAKE_DATA_LOG", str(tmp_path / "prepared.log"))
    seen = {}

    def run_grid(runs, **kw):
        seen.update(
            grid=runs.grid, seeds=runs.seeds, rows=runs.rows, prepared=_log(tmp_path / "prepared.log")
        )
        return []

    monkeypatch.setattr(ablate, "run_grid", run_grid)
    monkeypatch.setattr(ablate, "finish_grid", lambda *a, **k: (0, None, "", []))
    return seen


def test_the_data_of_the_runs_is_prepared_once_before_they_start(tmp_path, fake_runs):
    grid = _grid(tmp_path)
    assert ablate.main([str(grid), "--set", "data.init_args.root=elsewhere"]) == 0
    # rows a and b share one data section (prepared once for both seeds); c has its own; --set applies to all;
    # download is switched on for a datamodule that takes it
    assert fake_runs["prepared"] == [
        {"root": "elsewhere", "size": 1, "download": True},
        {"root": "elsewhere", "size": 2, "download": True},
    ]
    (tmp_path / "prepared.log").unlink()
    assert ablate.main([str(grid), "--rows", "c"]) == 0
    assert fake_runs["prepared"] == [{"root": "r", "size": 2, "download": True}]


@pytest.mark.parametrize("flag", ["--dry-run", "--report-only"])
def test_nothing_is_prepared_when_nothing_runs(tmp_path, fake_runs, flag, monkeypatch):
    monkeypatch.setattr(ablate, "prepare_grid_data", lambda *a, **k: pytest.fail("prepared data"))
    ablate.main([str(_grid(tmp_path)), flag])
    assert not (tmp_path / "prepared.log").exists()


def test_a_failing_download_is_one_line_naming_the_grid(tmp_path, fake_runs, monkeypatch):
    def broken(*a, **k):
        raise OSError("cifar-10-python.tar.gz: connection refused")

    monkeypatch.setattr(ablate, "prepare_grid_data", broken)
    with pytest.raises(SystemExit, match=r"preparing the data of .*g\.yaml failed: .*connection refused"):
        ablate.main([str(_grid(tmp_path))])
    assert "grid" not in fake_runs  # no run started


@pytest.mark.parametrize("name", ["quick", "configs/ablations/quick.yaml", "ablations/quick.yaml"])
def test_a_shipped_grid_is_found_from_any_folder(tmp_path, fake_runs, monkeypatch, name):
    from favit_probsparse import config

    monkeypatch.setattr(ablate, "prepare_grid_data", lambda *a, **k: 0)  # no CIFAR download here
    assert ablate.main([name, "--seeds", "5"]) == 0
    assert fake_runs["grid"].name == "quick" and fake_runs["seeds"] == [5]
    assert fake_runs["grid"].path.resolve() == (config.config_dir() / "ablations" / "quick.yaml").resolve()


def test_the_users_file_wins_and_an_unknown_grid_is_named(tmp_path, fake_runs):
    grid = _grid(tmp_path)
    (tmp_path / "quick").write_text(grid.read_text())  # a file of the user's called like a shipped grid
    assert ablate.main(["quick", "--dry-run"]) == 0
    assert fake_runs["grid"].name == "g"
    with pytest.raises(SystemExit, match=r"config ablations/nope\.yaml not found.*shipped grids: .*quick"):
        ablate.main(["nope"])


def test_sigterm_stops_with_one_line_and_a_nonzero_exit(tmp_path):
    """SIGTERM while the grid is busy (here: preparing its data, in the foreground) ends the command with one
    line on stderr and 128 + 15, not a KeyboardInterrupt traceback."""
    grid = _grid(tmp_path, sleep_s=60)
    log = tmp_path / "prepared.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(tmp_path)]), "FAKE_DATA_LOG": str(log)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "favit_probsparse.cli", "ablate", str(grid)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while not log.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines() == [
        "favit-ps ablate: stopped by SIGTERM; finished runs are kept, the same command resumes"
    ]


def test_ctrl_c_is_one_line_with_exit_130(tmp_path, fake_runs, monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ablate, "run_grid", interrupted)
    monkeypatch.setattr(ablate, "prepare_grid_data", lambda *a, **k: 0)
    assert ablate.main([str(_grid(tmp_path))]) == 130
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("stopped by SIGINT; finished runs are kept, the same command resumes")
    )


def test_fit_itr_finds_a_shipped_config_from_any_folder(tmp_path, monkeypatch):
    from favit_probsparse import config
    from favit_probsparse.experiments.repeat import itr_grid

    monkeypatch.chdir(tmp_path)
    grid = itr_grid("configs/forecast/informer_etth1_M_96_48_24.yaml")
    assert grid.base_config == config.config_dir() / "forecast" / "informer_etth1_M_96_48_24.yaml"
    assert grid.name == "informer_etth1_M_96_48_24"
    with pytest.raises(FileNotFoundError, match=r"config configs/forecast/nope\.yaml not found"):
        itr_grid("configs/forecast/nope.yaml")
