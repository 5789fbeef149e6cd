"""Trained models out of the project: ``favit-ps export`` and the loaders of exported folders.

``favit-ps export --ckpt K --out DIR`` writes

* ``model.safetensors``: the network's weights (the EMA weights when the run kept them and evaluated with them);
* ``config.json``:
  - image classifiers: timm's pretrained-config layout (``architecture``, ``num_classes``, ``label_names``,
    ``model_args``, ``pretrained_cfg`` with input size, mean/std, interpolation, crop), written by timm's own
    ``save_config_for_hf``, so ``timm.create_model("local-dir:DIR", pretrained=True)`` rebuilds it (after
    ``import favit_probsparse.models``, which registers FaViT with timm);
  - forecasters: what the training module's ``export_config()`` returns: the network's ``class_path`` and
    ``init_args``, the window lengths, the column names, frequency and scaler statistics;
  - both: ``weights_sha256`` and ``weights_bytes``, so a modified or truncated weights file is named as such;
* ``README.md``: a model card (task, data and its license, protocol, metrics with the seed, command, hardware,
  date), from the checkpoint's provenance entry.

Each file is written to a temporary name and renamed (atomic). Forecasters load with :func:`from_pretrained`
(``favit-ps predict --model DIR --input CSV`` forecasts the steps after the CSV's last row).
The training module provides the export through two hooks, ``export_network()`` and ``export_config()``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from favit_probsparse.imports import import_class
from favit_probsparse.training.checkpoint import META_KEY, CheckpointError, rebuild_module
from favit_probsparse.utils.io import atomic_write

__all__ = [
    "EXPORT_FORMAT",
    "ExportError",
    "ExportedForecaster",
    "export_checkpoint",
    "from_pretrained",
    "load_export_weights",
    "main",
    "predict_main",
]

EXPORT_FORMAT = 1
WEIGHTS = "model.safetensors"
#: data licenses the model card states (the export inherits the data's terms)
DATA_LICENSES = {
    "ETT": "CC BY-ND 4.0 (github.com/zhouhaoyi/ETDataset LICENSE)",
    "cifar10": "no license stated by the authors (Krizhevsky, 2009, www.cs.toronto.edu/~kriz/cifar.html)",
    "cifar100": "no license stated by the authors (Krizhevsky, 2009, www.cs.toronto.edu/~kriz/cifar.html)",
    "fashion_mnist": "MIT (github.com/zalandoresearch/fashion-mnist)",
}


#: the ``architecture`` of a forecaster export: what timm's ``local-dir:`` loader shows when asked to load it
_NOT_TIMM = "favit-probsparse-forecaster (not a timm model: load it with favit_probsparse.training.export.from_pretrained)"


class ExportError(ValueError):
    """An exported model folder is missing a file, or a file is damaged or was modified."""


# ------------------------------------------------------------------------------------------------ writing
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _data_license(data: dict) -> str:
    name = str(data.get("name") or data.get("dataset") or "")
    where = str(data.get("data_dir") or data.get("path") or "").lower()
    if name.startswith("ETT") or where.startswith("ett"):
        return DATA_LICENSES["ETT"]
    for key in ("cifar100", "cifar10", "fashion_mnist"):
        if key in name or key in where.replace("-", "_"):
            return DATA_LICENSES[key]
    return "unknown: state the license of the training data before sharing"


def model_card(task: str, config: dict, meta: dict, ckpt_path: Path, hparams: dict | None = None) -> str:
    """A README.md model card from the checkpoint's provenance (every number with its seed, command, hardware)."""
    prov = meta.get("provenance", {})
    data = meta.get("data", {})
    hw = prov.get("hardware", {})
    metrics = prov.get("metrics", {})
    name = config.get("network", {}).get("class_path") or config.get("architecture", "?")
    lines = [
        "---",
        f"pipeline_tag: {task}",
        f"library_name: {'timm' if task == 'image-classification' else 'favit-probsparse'}",
        "license: other",
        "tags: [favit-probsparse]",
        "---",
        f"# {name} ({task})",
        "",
        f"Exported by `favit-ps export` from `{ckpt_path.name}` (favit-probsparse {meta.get('package_version')}).",
        "",
        "## Data",
        f"- dataset: {data.get('name') or data.get('dataset') or '?'} "
        f"({data.get('data_dir') or data.get('path') or 'default location'})",
        f"- license of the data: {_data_license(data)}",
    ]
    if task == "image-classification":
        lines += [
            f"- classes ({len(data.get('classes', []))}): {', '.join(map(str, data.get('classes', [])[:20]))}",
            f"- input: {data.get('img_size')}x{data.get('img_size')}, mean {data.get('mean')}, std {data.get('std')}",
        ]
    else:
        lines += [
            f"- columns: {data.get('columns')}; target {data.get('target')}; frequency {data.get('freq')}",
            f"- windows: {config.get('windows')}; features {config.get('features')}",
        ]
    lines += [
        "",
        "## Training (protocol and provenance)",
        f"- command: `{prov.get('command', '?')}`",
        "- module options (protocol): "
        + ", ".join(f"`{k}={v}`" for k, v in (hparams or {}).items() if not str(k).startswith("_")),
        f"- seed: {prov.get('seed')}; stopped after epoch {prov.get('epoch')} (step {prov.get('global_step')})",
        f"- hardware: {hw.get('cpu')}; GPU {hw.get('cuda') or 'none'}; {hw.get('threads')} CPU threads; "
        f"torch {prov.get('torch')}",
        f"- checkpoint written: {prov.get('date_utc')} UTC",
        "",
        "## Metrics at the checkpoint (last logged values, seed above)",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v:.6g} |" for k, v in sorted(metrics.items()) if isinstance(v, int | float)],
        "",
        "Test metrics are not part of a checkpoint; run `favit-ps test --config CONFIG --ckpt CHECKPOINT`.",
        "",
        "## Use",
    ]
    if task == "image-classification":
        lines += [
            "```python",
            "import timm, favit_probsparse.models  # registers FaViT with timm",
            'model = timm.create_model("local-dir:PATH/TO/THIS/FOLDER", pretrained=True).eval()',
            "```",
        ]
    else:
        lines += [
            "```python",
            "from favit_probsparse.training.export import from_pretrained",
            'model = from_pretrained("PATH/TO/THIS/FOLDER")',
            "```",
            "or `favit-ps predict --model PATH/TO/THIS/FOLDER --input recent.csv --out forecast.csv`.",
        ]
    return "\n".join(lines) + "\n"


def _timm_config(net: nn.Module, data: dict, path: Path) -> dict:
    from timm.models._hub import save_config_for_hf

    size = int(data.get("img_size") or net.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
    data_config = {"input_size": (3, size, size)}
    for key in ("mean", "std", "interpolation", "crop_pct"):
        if data.get(key) is not None:
            data_config[key] = tuple(data[key]) if isinstance(data[key], list) else data[key]
    model_config: dict[str, Any] = {
        "pretrained_cfg": {"license": "see README.md (trained weights; data license)"}
    }
    if data.get("classes"):
        model_config["label_names"] = list(data["classes"])
    save_config_for_hf(net, str(path), model_config=model_config, data_config=data_config)
    return json.loads(path.read_text())


def export_checkpoint(
    ckpt_path: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` for a checkpoint (see module docstring);
    a folder that already holds an export is refused unless ``overwrite``."""
    from safetensors.torch import save_file

    ckpt_path, out = Path(ckpt_path), Path(out_dir)
    held = [n for n in (WEIGHTS, "config.json") if (out / n).exists()]
    if held and not overwrite:
        raise FileExistsError(
            f"{out} already holds an exported model ({', '.join(held)}); choose another --out, or give "
            "--overwrite to replace it"
        )
    module, ckpt = rebuild_module(ckpt_path)
    meta = ckpt[META_KEY]
    if not callable(getattr(module, "export_config", None)):
        raise CheckpointError(
            f"checkpoint {ckpt_path}: {meta['module']} has no export_config(); cannot export it"
        )
    cfg = module.export_config()
    net = module.export_network().cpu().float().eval()
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    atomic_write(out / WEIGHTS, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    if cfg["task"] == "image-classification":
        config: dict[str, Any] = {}
        atomic_write(out / "config.json", lambda p: config.update(_timm_config(net, cfg.get("data", {}), p)))
    else:
        # timm's ``local-dir:`` loader reads ``architecture`` first: name this as no timm model (timm then stops
        # with "Unknown model (...)" quoting it) instead of failing with KeyError: 'architecture'
        config = {"architecture": _NOT_TIMM, **cfg}
    config.update(
        export_format=EXPORT_FORMAT,
        task=cfg["task"],
        exported_by=f"favit-probsparse {meta.get('package_version')}",
        weights_sha256=_sha256(out / WEIGHTS),
        weights_bytes=(out / WEIGHTS).stat().st_size,
    )
    text = json.dumps(config, indent=2)
    atomic_write(out / "config.json", lambda p: p.write_text(text))
    card = model_card(cfg["task"], config, meta, ckpt_path, ckpt.get("hyper_parameters"))
    atomic_write(out / "README.md", lambda p: p.write_text(card))
    return out


# ------------------------------------------------------------------------------------------------ loading
def read_export_config(folder: str | os.PathLike) -> dict:
    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise ExportError(f"{folder}: no config.json (not an exported model folder; see `favit-ps export`)")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ExportError(f"{path}: expected a JSON object")
    if cfg.get("export_format", EXPORT_FORMAT) != EXPORT_FORMAT:
        raise ExportError(
            f"{path}: export format {cfg.get('export_format')} (written by {cfg.get('exported_by')}) is not "
            f"format {EXPORT_FORMAT} that this version reads"
        )
    return cfg


def load_export_weights(folder: str | os.PathLike, config: dict | None = None) -> dict[str, torch.Tensor]:
    """``model.safetensors`` of an export, checked against the size and sha256 recorded in ``config.json``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    config = read_export_config(folder) if config is None else config
    path = folder / WEIGHTS
    if not path.is_file():
        raise ExportError(f"{path}: missing (an export holds {WEIGHTS}, config.json and README.md)")
    size, want = path.stat().st_size, config.get("weights_bytes")
    if want is not None and size < want:
        raise ExportError(f"{path}: truncated ({size} of {want} bytes)")
    if config.get("weights_sha256") and _sha256(path) != config["weights_sha256"]:
        raise ExportError(f"{path}: modified since export (sha256 differs from the one in config.json)")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ExportError(f"{path}: not a readable safetensors file ({e})") from None


def _import_network(class_path: str) -> type[nn.Module]:
    # only this package's networks (and torch's) are imported from a config file
    return import_class(
        class_path, allowed=("favit_probsparse.", "torch.nn."), error=ExportError, what="network class"
    )


class ExportedForecaster(nn.Module):
    """A forecasting network rebuilt from an export, with the data facts it was trained on.

    ``forward(batch_x, batch_y, batch_x_mark, batch_y_mark)`` takes the training module's windows (scaled) and
    returns ``[B, pred_len, c_out]``; :meth:`forecast` takes a data frame in original units and samples with a
    fixed seed (``eval_seed``), so it is deterministic.
    """

    def __init__(self, network: nn.Module, config: dict):
        super().__init__()
        self.network, self.config = network, config
        w = config["windows"]
        self.seq_len, self.label_len, self.pred_len = (
            int(w["seq_len"]),
            int(w["label_len"]),
            int(w["pred_len"]),
        )
        self.dec_fill = int(config.get("decoder_fill", 0))
        self.data = dict(config.get("data", {}))
        self.eval_seed = int(config.get("eval_seed", 2021))

    def forward(self, batch_x, batch_y, batch_x_mark, batch_y_mark) -> torch.Tensor:
        from favit_probsparse.models.informer import decoder_input

        dec = decoder_input(batch_y, self.label_len, self.pred_len, dec_fill=self.dec_fill)
        return self.network(batch_x, batch_x_mark, dec, batch_y_mark)

    def datamodule(self, data, source: str | None = None):
        """The data module over ``data`` (a DataFrame or a CSV/Parquet path) that ``fit`` would build: the
        trained columns read by name, the date and value checks, the training frequency and the training
        scaler."""
        import pandas as pd

        from favit_probsparse.data.timeseries import TimeSeriesDataModule

        cols = self.data.get("columns")
        if not cols:
            raise ExportError("the export has no column names (exported from a run without a datamodule)")
        scaler = self.data.get("scaler")
        kwargs = dict(
            date_column=self.data.get("date_column", "date"),
            columns=list(cols),
            target=self.data.get("target") or cols[-1],
            features=self.config.get("features", "M"),
            seq_len=self.seq_len,
            label_len=self.label_len,
            pred_len=self.pred_len,
            freq=self.data.get("data_freq"),
            time_features=self.data.get("freq", "h"),
            embed=self.data.get("embed", "timeF"),
            scale=bool(scaler),
        )
        if isinstance(data, pd.DataFrame):
            dm = TimeSeriesDataModule.from_frame(data, **kwargs)
            dm.path = source  # named in errors (a frame has no line numbers)
        else:
            dm = TimeSeriesDataModule(str(data), **kwargs)
        if scaler:
            dm.use_scaler(scaler["mean"], scaler["std"])
        return dm

    @torch.no_grad()
    def forecast(self, data, source: str | None = None) -> Any:
        """Forecast the ``pred_len`` steps after the last row of ``data`` (a DataFrame or a CSV/Parquet path with
        the date column and the trained columns, original units; checked as ``fit`` checks its data); returns a
        data frame of the forecast target columns, original units."""
        dm = self.datamodule(data, source)
        x, y, x_mark, y_mark = (t[None].float() for t in dm.dataset("predict")[0])
        # ProbSparse samples keys at inference too: a fixed seed (the training module's eval_seed) makes the
        # forecast a function of the weights and the input
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.eval_seed)
            out = self(x, y, x_mark, y_mark)[0].double().numpy()
        return dm.forecast_frame(dm.inverse_transform(out))


def from_pretrained(folder: str | os.PathLike) -> ExportedForecaster:
    """Rebuild an exported forecaster: the network from ``config.json``'s ``class_path``/``init_args``, the
    weights from ``model.safetensors`` (size and sha256 checked), in eval mode."""
    folder = Path(folder)
    cfg = read_export_config(folder)
    if cfg.get("task") != "time-series-forecasting":
        hint = (
            ' (load it with timm.create_model("local-dir:...", pretrained=True))'
            if "architecture" in cfg
            else ""
        )
        raise ExportError(f"{folder}: holds a {cfg.get('task', 'unknown')} model, not a forecaster{hint}")
    net_cfg = cfg.get("network") or {}
    if "class_path" not in net_cfg:
        raise ExportError(f"{folder}/config.json: no network.class_path")
    net = _import_network(net_cfg["class_path"])(**net_cfg.get("init_args", {}))
    state = load_export_weights(folder, cfg)
    missing, unexpected = set(net.state_dict()) - set(state), set(state) - set(net.state_dict())
    if missing or unexpected:
        raise ExportError(
            f"{folder}/{WEIGHTS}: does not fit {net_cfg['class_path']} (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )
    net.load_state_dict(state, strict=True)
    return ExportedForecaster(net, cfg).eval()


def load_timm_export(folder: str | os.PathLike) -> nn.Module:
    """An exported image classifier through timm's own loader, after checking the weights file."""
    import timm

    import favit_probsparse.models  # noqa: F401  (registers FaViT with timm)

    load_export_weights(folder)
    return timm.create_model(f"local-dir:{Path(folder)}", pretrained=True).eval()


# ------------------------------------------------------------------------------------------------ commands
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="favit-ps export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="a checkpoint written by favit-ps fit")
    parser.add_argument(
        "--out", required=True, help="folder to write model.safetensors, config.json, README.md"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the export a folder already holds (default: refuse)"
    )
    args = parser.parse_args(argv)
    out = export_checkpoint(args.ckpt, args.out, overwrite=args.overwrite)
    print(f"wrote {out}/{WEIGHTS}, {out}/config.json, {out}/README.md")
    return 0


def predict_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="favit-ps predict --model DIR", description="forecast the steps after the last row of a CSV"
    )
    parser.add_argument("--model", required=True, help="a folder written by favit-ps export")
    parser.add_argument("--input", required=True, help="CSV with a date column and the trained columns")
    parser.add_argument("--out", default=None, help="write the forecast CSV here (default: print it)")
    args = parser.parse_args(argv)
    model = from_pretrained(args.model)
    path = Path(args.input)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    forecast = model.forecast(path)
    if args.out:
        atomic_write(Path(args.out), lambda p: forecast.to_csv(p, index=False))
        print(f"wrote {args.out} ({len(forecast)} steps)")
    else:
        print(forecast.to_csv(index=False), end="")
    return 0
