"""favit_probsparse.config: the task a config names (by class, through `base:` chains), merging, overrides, and
one-line YAML errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from favit_probsparse.config import (
    ConfigError,
    apply_overrides,
    config_task,
    expand_config_args,
    load_config,
    read_yaml,
)
from favit_probsparse.training.classification import ImageClassifier
from favit_probsparse.training.forecast import Forecaster

ROOT = Path(__file__).resolve().parents[1]
FORECAST_CFG = ROOT / "configs" / "forecast" / "informer_etth1_M_96_48_24.yaml"
VISION_CFG = ROOT / "configs" / "vision" / "favit_tiny_cifar10subset.yaml"


class MyForecaster(Forecaster):
    """A user's subclass, in a module whose path says nothing of forecasting."""


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_the_task_is_the_named_class_s_task_through_base_chains():
    # the forecasting config names its module only in a base file; expansion keeps that visible
    assert config_task(expand_config_args(["fit", "--config", str(FORECAST_CFG)])) == Forecaster.TASK
    assert config_task(["fit", "--config", str(VISION_CFG)]) == ImageClassifier.TASK
    assert Forecaster.TASK != ImageClassifier.TASK


def test_the_task_follows_the_class_not_the_file_text(tmp_path):
    # a subclass elsewhere is still a forecaster; a vision config whose comment names the Forecaster is not one
    sub = _write(tmp_path / "sub.yaml", f"model:\n  class_path: {__name__}.MyForecaster\n")
    assert config_task(["fit", "--config", str(sub)]) == Forecaster.TASK
    text = VISION_CFG.read_text()
    vis = _write(tmp_path / "vis.yaml", "# like favit_probsparse.training.forecast.Forecaster, but\n" + text)
    assert config_task(["fit", "--config", str(vis)]) == ImageClassifier.TASK


def test_the_command_line_class_wins_and_unknown_classes_have_no_task(tmp_path):
    fc = "favit_probsparse.training.forecast.Forecaster"
    assert config_task(["fit", "--config", str(VISION_CFG), "--model.class_path", fc]) == Forecaster.TASK
    assert config_task(["fit", "--config", str(VISION_CFG), f"--model={fc}"]) == Forecaster.TASK
    assert config_task(["fit", "--model.class_path", "favit_probsparse.nope.Nope"]) is None
    assert config_task(["fit", "--trainer.max_epochs", "1"]) is None


def test_load_config_merges_the_base_chain_key_by_key(tmp_path):
    _write(tmp_path / "a.yaml", "trainer: {max_epochs: 3, precision: 32-true}\nmodel: {init_args: {lr: 1}}\n")
    _write(tmp_path / "b.yaml", "base: a.yaml\ntrainer: {max_epochs: 5}\n")
    c = _write(tmp_path / "c.yaml", "base: [b.yaml]\nmodel: {init_args: {wd: 2}}\n")
    assert load_config(c) == {
        "trainer": {"max_epochs": 5, "precision": "32-true"},
        "model": {"init_args": {"lr": 1, "wd": 2}},
    }
    loop = _write(tmp_path / "loop.yaml", "base: loop.yaml\n")
    with pytest.raises(ConfigError, match="nested 'base:'"):
        load_config(loop)


def test_overrides_walk_mappings_and_lists_and_leave_the_original():
    cfg = {"trainer": {"callbacks": [{"init_args": {"monitor": "a"}}]}}
    out = apply_overrides(cfg, {"trainer.callbacks.0.init_args.monitor": "b", "model.x": 1})
    assert out == {"trainer": {"callbacks": [{"init_args": {"monitor": "b"}}]}, "model": {"x": 1}}
    assert cfg["trainer"]["callbacks"][0]["init_args"]["monitor"] == "a"


def test_a_yaml_syntax_error_names_file_line_and_column(tmp_path):
    bad = _write(tmp_path / "bad.yaml", "trainer:\n  max_epochs: 1\n  precision: [32\n")
    with pytest.raises(ConfigError) as err:
        read_yaml(bad)
    msg = str(err.value)
    assert msg.startswith(f"{bad}:") and "\n" not in msg
    line = int(msg.split(":")[1])
    assert line >= 3  # the unclosed bracket opens on line 3; PyYAML reports where it noticed


def test_favit_ps_fit_with_broken_yaml_prints_one_line(tmp_path):
    bad = _write(tmp_path / "bad.yaml", "model:\n  class_path: x\n   init_args: {}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "favit_probsparse.cli", "fit", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{bad}:3:" in lines[0] and "invalid YAML" in lines[0], proc.stderr
