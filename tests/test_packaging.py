"""An installed package works without the checkout: configs and grids ship inside it, the attention benchmark is
one of its modules."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from favit_probsparse import config

REPO = Path(__file__).resolve().parents[1]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_every_grid_reproduce_names_resolves_inside_the_configs(tmp_path, monkeypatch):
    """`favit-ps reproduce NAME` for every shipped grid: the grid and its base config are found in the shipped
    configs tree from a folder that holds nothing (so no lookup relative to the current folder can help)."""
    from favit_probsparse.experiments.grid import load_grid
    from favit_probsparse.experiments.reproduce import _grid_file

    monkeypatch.chdir(tmp_path)
    root = config.config_dir().resolve()
    names = config.grid_names()
    assert "quick" in names and "fusion_cifar10_subset" in names
    assert "ett_posenc_base" not in names  # a base config, not a grid
    for name in names:
        grid = load_grid(_grid_file(name))
        for f in (grid.path, grid.base_config):
            assert root in f.resolve().parents, f"{name}: {f} is not in the shipped configs {root}"


def test_reproduce_attention_runs_the_packaged_benchmark(monkeypatch):
    """`favit-ps reproduce attention` calls the package's benchmark (no script path, no checkout), at short
    lengths, and passes its exit status on."""
    import favit_probsparse.benchmarks.attention as bench
    from favit_probsparse.experiments import reproduce

    seen = []
    monkeypatch.setattr(bench, "main", lambda argv=None: seen.append(argv) or 3)
    assert reproduce.main(["attention"]) == 3
    assert seen == [["--lengths", "96", "336", "720", "--repeats", "10"]]


def test_the_checkout_script_is_the_packaged_benchmark():
    """`python benchmarks/attention.py` is a thin command line over the package's module (one implementation)."""
    r = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "attention.py"), "--help"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )  # fmt: skip
    assert r.returncode == 0 and "--lengths" in r.stdout and "roofline" in r.stdout, r.stderr[-2000:]
    assert "def " not in (REPO / "benchmarks" / "attention.py").read_text()


def test_every_config_the_readme_names_is_shipped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    named = sorted(set(re.findall(r"configs/[\w./-]+\.yaml", (REPO / "README.md").read_text())))
    assert named
    missing = []
    for name in named:
        try:
            config.config_path(name)
        except FileNotFoundError:
            missing.append(name)
    assert not missing, f"README names configs that are not shipped: {missing}"


def test_config_path_prefers_the_users_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = config.config_path("configs/ablations/quick.yaml")
    assert shipped == config.config_path("ablations/quick.yaml") and shipped.is_file()
    (tmp_path / "configs" / "ablations").mkdir(parents=True)
    (tmp_path / "configs" / "ablations" / "quick.yaml").write_text("mine: true\n")
    assert config.config_path("configs/ablations/quick.yaml") == Path("configs/ablations/quick.yaml")
    with pytest.raises(FileNotFoundError, match=r"config ablations/nope\.yaml not found"):
        config.config_path("ablations/nope.yaml")


def test_lightning_config_args_resolve_to_shipped_configs(tmp_path, monkeypatch):
    """`favit-ps fit --config configs/vision/X.yaml` from a folder without that file uses the shipped config;
    a file of the user's wins; other arguments and unknown names are left for Lightning to judge."""
    monkeypatch.chdir(tmp_path)
    name = "configs/vision/favit_tiny_cifar10subset.yaml"
    shipped = str(config.config_dir() / "vision" / "favit_tiny_cifar10subset.yaml")
    assert Path(shipped).is_file()
    argv = [
        "fit",
        "--config",
        name,
        "--trainer.max_epochs=1",
        "--config=vision/favit_tiny_cifar10subset.yaml",
    ]
    assert config.resolve_config_args(argv) == ["fit", "--config", shipped, "--trainer.max_epochs=1",
                                                   f"--config={shipped}"]  # fmt: skip
    assert config.resolve_config_args(["test", "-c", name, "--ckpt_path", "last"]) == [
        "test", "-c", shipped, "--ckpt_path", "last"
    ]  # fmt: skip
    unknown = ["fit", "--config", "configs/nope.yaml", "--model.config", name, "--config"]
    assert config.resolve_config_args(unknown) == unknown  # no such config; not a --config option; no value
    (tmp_path / "configs" / "vision").mkdir(parents=True)
    (tmp_path / name).write_text("mine: true\n")
    assert config.resolve_config_args(["fit", "--config", name]) == ["fit", "--config", name]


@pytest.mark.slow
def test_installed_wheel_works_without_the_checkout(tmp_path):
    """`pip install .` (not editable) into a folder, then the CLI and a config lookup from another folder with
    only that folder on PYTHONPATH: the package must not reach back into the repository."""
    pytest.importorskip("setuptools", minversion="77")  # the build backend, without network (no isolation)
    src = tmp_path / "checkout"  # a copy, so the build leaves nothing (build/, *.egg-info) in the repository
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("src", "configs"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    r = subprocess.run([*pip, "--target", str(site), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    shutil.rmtree(src)  # nothing of the checkout is left to fall back on
    env = {**os.environ, "PYTHONPATH": str(site), "FAVIT_DATA": str(tmp_path / "data")}
    r = subprocess.run(
        [sys.executable, "-m", "favit_probsparse.cli", "reproduce", "--help"],
        cwd=elsewhere, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0 and "quick" in r.stdout, r.stderr[-3000:]
    probe = (
        "import favit_probsparse, favit_probsparse.config as r\n"
        "from favit_probsparse.experiments.grid import load_grid\n"
        "g = load_grid(r.config_path('configs/ablations/quick.yaml'))\n"
        "print(favit_probsparse.__file__); print(g.path); print(g.base_config)\n"
        "import favit_probsparse.benchmarks.attention as b; print(b.__file__); print(r.config_dir())\n"
        "print(r.resolve_config_args(['fit', '--config', 'configs/vision/favit_tiny_cifar10subset.yaml'])[2])\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    pkg = site / "favit_probsparse"
    for line in r.stdout.split():
        assert Path(line).is_relative_to(pkg), f"{line} is not inside the installed package {pkg}"
    assert _tree(pkg / "configs") == _tree(REPO / "configs"), "the wheel must carry the whole configs tree"
    assert not (pkg / "_scripts").exists()  # the benchmark is a module now, not a copied script
    assert (pkg / "attention" / "kernel_table.json").read_bytes() == (
        REPO / "src" / "favit_probsparse" / "attention" / "kernel_table.json"
    ).read_bytes()  # the measured attention-kernel table ships (attention/dispatch.py reads it)
