"""Lightning modules (classification, forecasting) and the one place the Lightning CLI is configured."""

from __future__ import annotations

from collections.abc import Sequence


def lightning_cli(args: Sequence[str], run: bool = True):
    """Lightning's CLI with this project's settings: any LightningModule / LightningDataModule named by
    ``class_path`` in the config, config files overwritten on re-runs, optimizers from the module itself, and the
    checkpoint rules of :mod:`favit_probsparse.training.project_cli` (safe loading, no option dropped silently).

    ``run=True``: ``args`` starts with a subcommand (fit/validate/test/predict) and it runs; ``run=False``:
    only parse and instantiate (``cli.trainer``, ``cli.model``, ``cli.datamodule``)."""
    from favit_probsparse.training.project_cli import project_cli

    return project_cli(args, run=run)
