"""Lightning modules (classification, forecasting), checkpoints, export, and the project's Lightning CLI.

Configs are read, merged and told apart by :mod:`favit_probsparse.config`; the CLI itself is
:func:`favit_probsparse.training.project_cli.lightning_cli` (also reachable here, imported on first use so that
importing a training submodule does not load the CLI machinery).
"""

from __future__ import annotations

from typing import Any

__all__ = ["lightning_cli"]


def __getattr__(name: str) -> Any:
    if name == "lightning_cli":
        from favit_probsparse.training.project_cli import lightning_cli

        return lightning_cli
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
