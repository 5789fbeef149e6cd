"""The one build step pyproject.toml cannot express: ship files that live outside ``src/`` inside the package.

* ``configs/`` (every config and grid) -> ``favit_probsparse/configs/``.

(The attention benchmark that ``favit-ps reproduce attention`` runs is a module of the package,
``favit_probsparse.benchmarks.attention``; it needs no copy.)

``favit_probsparse.config`` finds it there through ``importlib.resources``, so an installed package works
without the checkout. An editable install skips the copy and reads it from the checkout instead.
Everything else is declared in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# source (relative to the repository root) -> destination (relative to the package)
SHIPPED = {"configs": "configs"}


class BuildPyWithResources(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        pkg = Path(self.build_lib) / "favit_probsparse"
        for src, dst in SHIPPED.items():
            s, d = HERE / src, pkg / dst
            if not s.exists():
                raise FileNotFoundError(f"setup.py: {s} is missing; it is shipped as favit_probsparse/{dst}")
            if d.exists():
                shutil.rmtree(d) if d.is_dir() else d.unlink()
            d.parent.mkdir(parents=True, exist_ok=True)
            if s.is_dir():
                shutil.copytree(s, d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(s, d)


setup(cmdclass={"build_py": BuildPyWithResources})
