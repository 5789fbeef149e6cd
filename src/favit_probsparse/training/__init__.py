"""Lightning modules (classification, forecasting) and the one place the Lightning CLI is configured."""

from __future__ import annotations

from collections.abc import Sequence


def lightning_cli(args: Sequence[str], run: bool = True):
    """Lightning's CLI with this project's settings: any LightningModule / LightningDataModule named by
    ``class_path`` in the config, config files overwritten on re-runs, optimizers from the module itself.

    ``run=True``: ``args`` starts with a subcommand (fit/validate/test/predict) and it runs; ``run=False``:
    only parse and instantiate (``cli.trainer``, ``cli.model``, ``cli.datamodule``)."""
    from lightning.pytorch import LightningDataModule, LightningModule

    from favit_probsparse.training.checkpoints import FreshRunCLI  # refuses a fit over another run's ckpts

    return FreshRunCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=list(args),
        run=run,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )
