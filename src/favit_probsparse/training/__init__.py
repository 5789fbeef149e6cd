"""Lightning modules (classification, forecasting) and the one place the Lightning CLI is configured."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["FORECAST_LINKS", "expand_config_args", "lightning_cli"]

# Shapes a forecasting data module states once (attribute on the data) -> where the CLI links them.
# Links into the network reach every network class; a class that lacks one of these arguments never sees it
# (jsonargparse drops it at instantiation and Forecaster keeps only accepted keys in its saved hyperparameters).
FORECAST_LINKS: tuple[tuple[str, str], ...] = (
    *(
        (f"data.{k}", f"model.init_args.network.init_args.{k}")
        for k in ("enc_in", "dec_in", "c_out", "seq_len", "label_len", "pred_len", "freq", "embed")
    ),
    *((f"data.{k}", f"model.init_args.{k}") for k in ("features", "label_len", "pred_len")),
)


def _is_file(arg: str) -> bool:
    return "\n" not in arg and len(arg) < 4096 and Path(arg).is_file()


def _forecasting(args: Sequence[str]) -> bool:
    """Whether the configs name the forecasting module (the links apply only to it; vision configs do not have
    these arguments)."""
    text = " ".join(args)
    for i, a in enumerate(args):
        if a in ("--config", "-c") and i + 1 < len(args) and _is_file(args[i + 1]):
            text += " " + Path(args[i + 1]).read_text()
    return "training.forecast.Forecaster" in text


def expand_config_args(args: Sequence[str]) -> list[str]:
    """``--config FILE`` where FILE starts with ``base: OTHER.yaml`` (path relative to FILE, or a list of them)
    becomes ``--config OTHER.yaml --config <FILE without base>``: jsonargparse's own merging of several config
    files, so a per-setting file holds only what differs from its preset."""
    import yaml

    out: list[str] = []
    it = iter(range(len(args)))
    args = list(args)
    for i in it:
        a = args[i]
        if a in ("--config", "-c") and i + 1 < len(args):
            out += _expand_one(Path(args[i + 1]), yaml)
            next(it)
        elif a.startswith("--config="):
            out += _expand_one(Path(a.split("=", 1)[1]), yaml)
        else:
            out.append(a)
    return out


def _expand_one(path: Path, yaml, depth: int = 0) -> list[str]:
    if depth > 8:
        raise ValueError(f"{path}: more than 8 nested 'base:' configs (a loop?)")
    if not _is_file(str(path)):
        return ["--config", str(path)]
    cfg = yaml.safe_load(path.read_text()) or {}
    if not isinstance(cfg, dict) or "base" not in cfg:
        return ["--config", str(path)]
    bases = cfg.pop("base")
    out: list[str] = []
    for b in [bases] if isinstance(bases, str) else list(bases):
        bp = (path.parent / b).resolve()
        if not bp.is_file():
            raise FileNotFoundError(f"{path}: base config {b} not found ({bp})")
        out += _expand_one(bp, yaml, depth + 1)
    if cfg:
        out += ["--config", yaml.safe_dump(cfg, sort_keys=False)]
    return out


def load_config(path: str | Path) -> dict:
    """A config file with its ``base:`` chain merged (dicts merged key by key, anything else replaced; the same
    result as jsonargparse's merging for configs that keep their ``class_path`` and only change ``init_args``)."""
    import yaml

    path = Path(path)
    cfg = yaml.safe_load(path.read_text()) or {}
    bases = cfg.pop("base", None)
    if bases is None:
        return cfg
    merged: dict = {}
    for b in [bases] if isinstance(bases, str) else list(bases):
        merged = _merge(merged, load_config(path.parent / b))
    return _merge(merged, cfg)


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def lightning_cli(args: Sequence[str], run: bool = True, parse_only: bool = False):
    """Lightning's CLI with this project's settings: any LightningModule / LightningDataModule named by
    ``class_path`` in the config, config files overwritten on re-runs, optimizers from the module itself, config
    files with a ``base:`` key expanded (:func:`expand_config_args`), for forecasting the data module's shapes
    linked into the forecaster and its network (:data:`FORECAST_LINKS`), and the checkpoint rules of
    :mod:`favit_probsparse.training.project_cli` (safe loading, no option dropped silently).

    ``run=True``: ``args`` starts with a subcommand (fit/validate/test/predict) and it runs; ``run=False``:
    only parse and instantiate (``cli.trainer``, ``cli.model``, ``cli.datamodule``). ``parse_only=True`` (with
    ``run=True``, a subcommand first): only parse, so a stale option or a bad config value raises here, on any
    machine and without data, while nothing is built or trained (``cli.config`` holds the options)."""
    from favit_probsparse.training.project_cli import project_cli

    args = expand_config_args(args)
    links = FORECAST_LINKS if _forecasting(args) else ()
    return project_cli(args, run=run, links=links, parse_only=parse_only)
