"""The grid file: rows of dotted overrides over one Lightning config (schema, validation, overrides).

Grid file (YAML)::

    name: fusion-ablation-cifar10       # runs/<name>/ and the report's file names (default: file stem)
    title: Cross-window fusion on CIFAR-10 (subset)      # optional heading
    description: |                      # optional text printed under the heading (markdown)
      ...
    base_config: configs/vision/favit_cifar_b0_cifar10subset.yaml   # a `favit-ps fit` config; relative paths are
                                        # tried against the current folder, then the grid file's folder
    base_overrides:                     # dotted keys into the config's YAML, applied to every row
      trainer.max_epochs: 5
    metric:                             # the number the table reports (a key of trainer.callback_metrics)
      name: test/acc1
      mode: max                         # max: higher is better; min: lower is better (test/mse)
      scale: 100                        # display factor (accuracy in [0, 1] shown as %)
      label: Top-1 (%)
      digits: 2
    extra_metrics:                      # optional further columns (mean ± std over seeds)
      - {name: test/acc5, label: Top-5 (%), scale: 100}
    seeds: [0, 1]                       # default seeds (`--seeds` overrides)
    test: true                          # run `test` after `fit` (false: report the fit's last logged metrics)
    test_ckpt: last                     # test the final weights (last) or the best checkpoint (best)
    timeout_s: 3600                     # optional per-run wall limit
    reference_label: report Table 1     # optional: name of the reference column
    reference_note: ...                 # optional: how the reference relates to our numbers
    baseline: max                       # optional: a row name; the report adds each row's paired difference
                                        # to it over common seeds (mean, 95 % t interval, paired t-test)
    curves:                             # optional: per-epoch metrics read from each run's CSV log, drawn as
      - {name: val/acc1, scale: 100, label: Val top-1 (%)}   # <name>-curves.png with a per-epoch table
    launcher: {partition: gpu, gpus_per_run: 1, time_min: 2880}   # optional: SLURM options of
                                        # `--launcher slurm` (favit_probsparse.experiments.launch)
    env: {OMP_NUM_THREADS: "1"}         # optional environment defaults for the runs (the caller's env wins)
    rows:
      - name: max                       # folder-safe id (runs/<grid>/<row>/seed<k>/)
        label: Max pooling              # optional display name
        overrides:                      # dotted keys, merged over base_config + base_overrides
          model.init_args.model_kwargs.fusion: max
        reference: 68.9                 # optional paper/report number shown beside ours (any text or number)
        seeds: [0, 1, 2]                # optional: this row runs only these of the requested seeds

Dotted keys address the YAML tree of the config (``model.init_args.model_kwargs.fusion``); an integer segment
indexes a list (``trainer.callbacks.0.init_args.monitor``); missing dict levels are created; the value is any
YAML value.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from favit_probsparse.config import read_yaml

__all__ = [
    "GRID_KEYS",
    "Grid",
    "Metric",
    "Row",
    "config_hash",
    "load_grid",
    "redirect_outputs",
]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class Row:
    name: str
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)
    reference: Any = None
    seeds: list[int] | None = None  # this row runs only these of the requested seeds (None: all)


@dataclass
class Metric:
    name: str
    mode: str = "max"
    scale: float = 1.0
    label: str | None = None
    digits: int = 2

    @classmethod
    def parse(cls, spec: Any, where: str) -> Metric:
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, dict) or "name" not in spec:
            raise ValueError(f"{where}: a metric is a name or a mapping with 'name', got {spec!r}")
        unknown = set(spec) - {"name", "mode", "scale", "label", "digits"}
        if unknown:
            raise ValueError(f"{where}: unknown metric keys {sorted(unknown)}")
        m = cls(**spec)
        if m.mode not in ("max", "min"):
            raise ValueError(f"{where}: metric mode must be 'max' or 'min', got {m.mode!r}")
        return m

    @property
    def title(self) -> str:
        return self.label or self.name


@dataclass
class Grid:
    """A grid of runs: ``rows`` (overrides) × seeds over ``base_config``.

    ``cli_args`` are extra LightningCLI arguments (``--trainer.max_epochs 1``) given to every run after the
    config, as ``favit-ps fit --config C --itr N [args]`` passes them.
    """

    name: str
    path: Path | None
    base_config: Path
    rows: list[Row]
    metric: Metric
    extra_metrics: list[Metric] = field(default_factory=list)
    base_overrides: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    title: str | None = None
    description: str | None = None
    test: bool | str = True  # True, False, or "if-missing" (test unless fit already logged the metric)
    test_ckpt: str = "last"
    timeout_s: float | None = None
    reference_label: str = "reference"
    reference_note: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    cli_args: list[str] = field(default_factory=list)
    baseline: str | None = None
    curves: list[Metric] = field(default_factory=list)
    launcher: dict[str, Any] = field(default_factory=dict)  # cluster options (experiments.launch)


GRID_KEYS = {
    "name",
    "title",
    "description",
    "base_config",
    "base_overrides",
    "metric",
    "extra_metrics",
    "seeds",
    "test",
    "test_ckpt",
    "timeout_s",
    "reference_label",
    "reference_note",
    "env",
    "rows",
    "baseline",
    "curves",
    "launcher",
}


def _find_base_config(path: Path, given: str) -> Path:
    """The grid's ``base_config``: as given (absolute, or relative to the current folder), else beside the grid."""
    base = Path(given)
    candidates = [base] if base.is_absolute() else [base, path.parent / base]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise FileNotFoundError(
            f"{path}: base_config {given} not found (tried {', '.join(str(c) for c in candidates)})"
        )
    return found


def _parse_row(path: Path, i: int, r: Any) -> Row:
    """Row ``i`` of the grid at ``path``, validated (errors name the file and the row)."""
    if not isinstance(r, dict) or "name" not in r:
        raise ValueError(f"{path}: row {i} needs a 'name'")
    bad = set(r) - {"name", "label", "overrides", "reference", "seeds"}
    if bad:
        raise ValueError(f"{path}: row {r['name']!r} has unknown keys {sorted(bad)}")
    name = str(r["name"])
    if not NAME_RE.match(name):
        raise ValueError(f"{path}: row name {name!r} must be folder-safe (letters, digits, _ . + -)")
    ov = r.get("overrides") or {}
    if not isinstance(ov, dict):
        raise ValueError(f"{path}: row {name!r} overrides must be a mapping of dotted keys")
    row_seeds = r.get("seeds")
    if row_seeds is not None:
        try:
            row_seeds = [int(x) for x in (row_seeds if isinstance(row_seeds, list) else [row_seeds])]
        except (TypeError, ValueError):
            raise ValueError(f"{path}: row {name!r} seeds must be integers, got {r['seeds']!r}") from None
    return Row(
        name=name,
        label=str(r.get("label", name)),
        overrides=ov,
        reference=r.get("reference"),
        seeds=row_seeds,
    )


def load_grid(path: str | os.PathLike) -> Grid:
    """Read and validate a grid YAML file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grid file {path} not found")
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a grid file is a YAML mapping")
    unknown = set(raw) - GRID_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)} (known: {sorted(GRID_KEYS)})")
    for key in ("base_config", "metric", "rows"):
        if key not in raw:
            raise ValueError(f"{path}: missing required key {key!r}")
    found = _find_base_config(path, raw["base_config"])
    if not isinstance(raw["rows"], list) or not raw["rows"]:
        raise ValueError(f"{path}: 'rows' must be a non-empty list")
    rows = [_parse_row(path, i, r) for i, r in enumerate(raw["rows"])]
    names = [r.name for r in rows]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{path}: duplicate row names {dup}")
    name = str(raw.get("name") or path.stem)
    if not NAME_RE.match(name):
        raise ValueError(f"{path}: grid name {name!r} must be folder-safe")
    test_ckpt = str(raw.get("test_ckpt", "last"))
    if test_ckpt not in ("last", "best"):
        raise ValueError(f"{path}: test_ckpt must be 'last' or 'best'")
    baseline = raw.get("baseline")
    if baseline is not None and str(baseline) not in names:
        raise ValueError(f"{path}: baseline {baseline!r} is not a row name (rows: {names})")
    seeds = raw.get("seeds", [0])
    try:
        seeds = [int(s) for s in (seeds if isinstance(seeds, list) else [seeds])]
    except (TypeError, ValueError):
        raise ValueError(f"{path}: seeds must be integers, got {raw.get('seeds')!r}") from None
    return Grid(
        name=name,
        path=path,
        base_config=found,
        rows=rows,
        metric=Metric.parse(raw["metric"], f"{path}: metric"),
        extra_metrics=[Metric.parse(m, f"{path}: extra_metrics") for m in raw.get("extra_metrics") or []],
        base_overrides=dict(raw.get("base_overrides") or {}),
        seeds=seeds,
        title=raw.get("title"),
        description=raw.get("description"),
        test=bool(raw.get("test", True)),
        test_ckpt=test_ckpt,
        timeout_s=raw.get("timeout_s"),
        reference_label=str(raw.get("reference_label", "reference")),
        reference_note=raw.get("reference_note"),
        env={str(k): str(v) for k, v in (raw.get("env") or {}).items()},
        baseline=None if baseline is None else str(baseline),
        curves=[Metric.parse(m, f"{path}: curves") for m in raw.get("curves") or []],
        launcher=_mapping(raw.get("launcher"), f"{path}: launcher"),
    )


def _mapping(value: Any, where: str) -> dict:
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"{where} must be a mapping, got {value!r}")
    return dict(value or {})


def redirect_outputs(cfg: dict, run_dir: Path, seed: int) -> dict:
    """Point the run's seed, ``default_root_dir``, loggers and checkpoints at ``run_dir`` (one folder per run)."""
    cfg = copy.deepcopy(cfg)
    cfg["seed_everything"] = int(seed)
    trainer = cfg.setdefault("trainer", {}) or {}
    cfg["trainer"] = trainer
    trainer["default_root_dir"] = str(run_dir)
    loggers = trainer.get("logger")
    for lg in loggers if isinstance(loggers, list) else [loggers]:
        if isinstance(lg, dict):
            lg.setdefault("init_args", {})["save_dir"] = str(run_dir)
    for cb in trainer.get("callbacks") or []:
        if isinstance(cb, dict) and str(cb.get("class_path", "")).endswith("ModelCheckpoint"):
            cb.setdefault("init_args", {})["dirpath"] = str(run_dir / "checkpoints")
    return cfg


def config_hash(cfg: dict, cli_args: list[str] | None = None) -> str:
    """Content hash of a run's config (and extra CLI arguments): an unchanged hash means the run can be skipped."""
    payload = cfg if not cli_args else {"config": cfg, "cli_args": list(cli_args)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
