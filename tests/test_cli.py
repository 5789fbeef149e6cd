"""The thin CLI and the data-root setting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from favit_probsparse import cli, paths


def test_help_lists_every_subcommand(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("fit", "test", "ablate", "analyze", "prepare", "reproduce"):
        assert name in out


def test_unknown_command_is_a_clear_error(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_ckpt_alias_is_rewritten():
    assert cli._rewrite_ckpt(["test", "--ckpt", "a.ckpt", "--config", "c.yaml"]) == [
        "test",
        "--ckpt_path",
        "a.ckpt",
        "--config",
        "c.yaml",
    ]
    assert cli._rewrite_ckpt(["fit", "--ckpt=last.ckpt"]) == ["fit", "--ckpt_path=last.ckpt"]
    assert cli._rewrite_ckpt(["fit", "--resume", "last"]) == ["fit", "--ckpt_path", "last"]
    assert cli._rewrite_ckpt(["fit", "--resume=x.ckpt", "--ckpt_pathological=1"]) == [
        "fit",
        "--ckpt_path=x.ckpt",
        "--ckpt_pathological=1",
    ]


def test_console_script_runs():
    exe = Path(sys.executable).with_name("favit-ps")
    if not exe.exists():
        pytest.skip("console script not installed in this environment")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "favit-ps" in out.stdout


def test_data_root_env_var_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("FAVIT_DATA", str(tmp_path))
    assert paths.data_root() == tmp_path
    assert paths.resolve_data_path("ETT/ETTh1.csv", "x") == tmp_path / "ETT" / "ETTh1.csv"
    assert paths.resolve_data_path(None, "cifar10") == tmp_path / "cifar10"


def test_data_root_fallbacks(monkeypatch, tmp_path):
    monkeypatch.delenv("FAVIT_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert paths.data_root() == tmp_path / "cache" / "favit-probsparse" / "data"  # no ../shared/data here
    (tmp_path / "work").mkdir()
    (tmp_path / "shared" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    assert paths.data_root() == (tmp_path / "shared" / "data").resolve()


def test_fit_with_itr_dispatches_to_the_multi_seed_runner(monkeypatch):
    seen = {}
    monkeypatch.setattr(
        "favit_probsparse.experiments.repeat.main", lambda argv: seen.setdefault("argv", argv) and 0
    )
    assert cli.main(["fit", "--config", "c.yaml", "--itr", "3"]) == 0
    assert seen["argv"] == ["--config", "c.yaml", "--itr", "3"]


def test_reproduce_runs_the_named_grid_with_a_relative_path(monkeypatch):
    from favit_probsparse.experiments import ablate, reproduce

    repo = Path(reproduce.__file__).resolve().parents[3]
    monkeypatch.chdir(repo)
    seen = {}
    monkeypatch.setattr(ablate, "main", lambda argv: seen.setdefault("argv", argv) and 0)
    monkeypatch.setattr(
        reproduce, "prepare_grid_data", lambda grid: 0
    )  # no download (tests/test_vision_download.py)
    monkeypatch.setattr(reproduce, "forecast_after", lambda grid, seeds: {})  # tests/test_reproduce_quick.py
    assert reproduce.main(["quick", "--seeds", "3"]) == 0
    assert seen["argv"] == ["configs/ablations/quick.yaml", "--seeds", "3"]
    with pytest.raises(SystemExit, match="no grid"):
        reproduce.main(["no-such-grid"])
