"""Configs: finding one, reading it, merging its ``base:`` chain, applying overrides and telling its task.

The one module for everything a ``favit-ps fit`` config or an ablation grid goes through before Lightning sees it:

- **Finding** (:func:`config_path`, :func:`grid_path`, :func:`resolve_config_args`): a user's own file (relative to
  the current folder) first, then the configs shipped with the package. A wheel carries the repository's
  ``configs/`` tree as ``favit_probsparse/configs`` (the build step in ``setup.py``), read through
  :mod:`importlib.resources`; a source checkout (an editable install, or ``PYTHONPATH=src``) reads ``configs/``
  where it lives in the repository.
- **Reading** (:func:`read_yaml`): a YAML syntax error is one line naming the file, line and column.
- **Merging** (:func:`load_config`, :func:`expand_config_args`): a config may start with ``base: OTHER.yaml``
  (relative to itself, or a list of them); the file overrides its bases, dicts merged key by key.
- **Overrides** (:func:`apply_overrides`, :func:`parse_set`): dotted keys (``model.init_args.lr``, list indices
  as numbers), as grids and ``--set`` give them.
- **Task** (:func:`config_task`): the ``TASK`` of the LightningModule class the config names
  (``model.class_path``), e.g. ``time-series-forecasting`` for the Forecaster and any subclass of it.
"""

from __future__ import annotations

import copy
import importlib.resources
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ConfigError",
    "apply_overrides",
    "config_dir",
    "config_path",
    "config_task",
    "expand_config_args",
    "grid_names",
    "grid_path",
    "load_config",
    "parse_set",
    "read_config",
    "read_yaml",
    "resolve_config_args",
]

_CHECKOUT = Path(__file__).resolve().parents[2]  # the repository root when running from a source checkout
_IS_CHECKOUT = (_CHECKOUT / "src" / "favit_probsparse" / "config.py").is_file()
_CONFIG_FLAGS = ("--config", "-c")  # Lightning's CLI options that take a config file
MAX_BASE_DEPTH = 8


class ConfigError(ValueError):
    """A config or grid file that cannot be read: bad YAML, not a mapping, a missing or looping ``base:``."""


# ------------------------------------------------------------------------------------------------ finding
def _packaged(rel: str) -> Path | None:
    t = importlib.resources.files("favit_probsparse").joinpath(*rel.split("/"))
    if not (t.is_dir() or t.is_file()):
        return None
    if not isinstance(t, Path):  # e.g. a zip import: the runs need real files
        raise RuntimeError(
            f"favit_probsparse/{rel} is not on the file system ({t}); install the package unzipped"
        )
    return t


def config_dir() -> Path:
    """The shipped ``configs`` tree: the package's copy, else the checkout's ``configs/``."""
    found = _packaged("configs")
    if found is not None:
        return found
    if _IS_CHECKOUT and (_CHECKOUT / "configs").is_dir():
        return _CHECKOUT / "configs"
    raise FileNotFoundError(
        "favit_probsparse has no configs: this install lacks favit_probsparse/configs (build it with "
        "`pip install .`, whose setup.py step copies them) and is not a source checkout"
    )


def config_path(name: str | os.PathLike) -> Path:
    """Resolve a config or grid: an existing file as given (a user's own, relative to the current folder) first,
    then the same name inside the shipped configs (a leading ``configs/`` is optional: ``configs/ablations/quick.yaml``
    and ``ablations/quick.yaml`` name the same file)."""
    p = Path(name)
    if p.is_file():
        return p
    parts = p.parts[1:] if p.parts[:1] == ("configs",) else p.parts
    root = config_dir()
    found = root.joinpath(*parts)
    if parts and not p.is_absolute() and found.is_file():
        return found
    raise FileNotFoundError(f"config {name} not found: neither a file under {Path.cwd()} nor one in {root}")


def grid_path(name: str | os.PathLike) -> Path:
    """Resolve a grid: an existing file as given first, then a shipped grid by file name
    (``configs/ablations/quick.yaml``, ``ablations/quick.yaml``) or by bare name (``quick``)."""
    p = Path(name)
    if p.is_file() or p.suffix:
        return config_path(p)
    return config_path(f"ablations/{p}.yaml")


def grid_names() -> list[str]:
    """Names of the shipped ablation grids (``configs/ablations/<name>.yaml`` with ``rows``; bases are not grids)."""
    names = []
    for p in sorted((config_dir() / "ablations").glob("*.yaml")):
        raw = read_yaml(p)
        if isinstance(raw, dict) and "rows" in raw:
            names.append(p.stem)
    return names


def _shipped_or_given(value: str) -> str:
    if Path(value).exists():
        return value
    try:
        return str(config_path(value))
    except FileNotFoundError:  # not a shipped config either: Lightning's own error names it
        return value


def resolve_config_args(argv: Sequence[str]) -> list[str]:
    """``argv`` with every ``--config X`` / ``--config=X`` / ``-c X`` whose ``X`` does not exist relative to the
    current folder but names a shipped config (``configs/vision/favit_tiny_cifar10subset.yaml`` after a wheel
    install, run from any folder) pointing at the shipped file; everything else unchanged."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg in _CONFIG_FLAGS and i + 1 < len(out):
            out[i + 1] = _shipped_or_given(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + _shipped_or_given(arg.removeprefix("--config="))
    return out


# ------------------------------------------------------------------------------------------------ reading
def _yaml_error(where: str, e: yaml.YAMLError) -> ConfigError:
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        if mark is not None:
            where = f"{where}:{mark.line + 1}:{mark.column + 1}"
        return ConfigError(f"{where}: invalid YAML: {e.problem or e.context}")
    return ConfigError(f"{where}: invalid YAML: {' '.join(str(e).split())}")


def read_yaml(path: str | os.PathLike) -> Any:
    """``yaml.safe_load`` of a file; a syntax error is a one-line :class:`ConfigError` naming file, line, column."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise _yaml_error(str(path), e) from None


def _read_mapping(path: Path) -> dict:
    raw = read_yaml(path)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config file is a YAML mapping, not a {type(raw).__name__}")
    return raw


def _bases(path: Path, cfg: dict) -> list[Path]:
    """The files ``cfg``'s ``base:`` names (popped from ``cfg``), resolved against ``path``'s folder."""
    bases = cfg.pop("base", None)
    if bases is None:
        return []
    out = []
    for b in [bases] if isinstance(bases, str) else list(bases):
        bp = (path.parent / str(b)).resolve()
        if not bp.is_file():
            raise FileNotFoundError(f"{path}: base config {b} not found ({bp})")
        out.append(bp)
    return out


# ------------------------------------------------------------------------------------------------ merging
def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | os.PathLike, _depth: int = 0) -> dict:
    """A config file with its ``base:`` chain merged (dicts merged key by key, anything else replaced; the same
    result as jsonargparse's merging for configs that keep their ``class_path`` and only change ``init_args``)."""
    if _depth > MAX_BASE_DEPTH:
        raise ConfigError(f"{path}: more than {MAX_BASE_DEPTH} nested 'base:' configs (a loop?)")
    path = Path(path)
    cfg = _read_mapping(path)
    merged: dict = {}
    for bp in _bases(path, cfg):
        merged = _merge(merged, load_config(bp, _depth + 1))
    return _merge(merged, cfg)


def read_config(path: str | os.PathLike) -> dict:
    """A run config (a ``favit-ps fit`` YAML) with its ``base:`` chain merged, so that the grid's overrides and
    the per-run ``config.yaml`` see the whole config (the chain's relative paths mean nothing in a run folder)."""
    return load_config(path)


def _is_file(arg: str) -> bool:
    return "\n" not in arg and len(arg) < 4096 and Path(arg).is_file()


def _expand_one(path: Path, depth: int = 0) -> list[str]:
    if depth > MAX_BASE_DEPTH:
        raise ConfigError(f"{path}: more than {MAX_BASE_DEPTH} nested 'base:' configs (a loop?)")
    if not _is_file(str(path)):
        return ["--config", str(path)]
    cfg = _read_mapping(path)  # every config file is read here, so its YAML errors are one line
    if "base" not in cfg:
        return ["--config", str(path)]
    out: list[str] = []
    for bp in _bases(path, cfg):
        out += _expand_one(bp, depth + 1)
    if cfg:
        out += ["--config", yaml.safe_dump(cfg, sort_keys=False)]
    return out


def expand_config_args(args: Sequence[str]) -> list[str]:
    """``--config FILE`` where FILE starts with ``base: OTHER.yaml`` (path relative to FILE, or a list of them)
    becomes ``--config OTHER.yaml --config <FILE without base>``: jsonargparse's own merging of several config
    files, so a per-setting file holds only what differs from its preset."""
    args = list(args)
    out: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a in _CONFIG_FLAGS and i + 1 < len(args):
            out += _expand_one(Path(args[i + 1]))
            i += 2
            continue
        out += _expand_one(Path(a.split("=", 1)[1])) if a.startswith("--config=") else [a]
        i += 1
    return out


# ------------------------------------------------------------------------------------------------ overrides
def apply_overrides(cfg: dict, overrides: dict[str, Any]) -> dict:
    """Return a copy of ``cfg`` with dotted-key ``overrides`` applied: ``a.b.c`` walks (and creates) mappings, a
    number walks into a list (``trainer.callbacks.0.init_args.monitor``); the value replaces what was there."""
    cfg = copy.deepcopy(cfg)
    for key, value in overrides.items():
        parts = str(key).split(".")
        node: Any = cfg
        for j, part in enumerate(parts):
            last = j == len(parts) - 1
            if isinstance(node, list):
                try:
                    idx = int(part)
                    node[idx]  # bounds check
                except (ValueError, IndexError):
                    raise KeyError(
                        f"override {key!r}: {part!r} is not a valid index of a list of {len(node)}"
                    ) from None
                if last:
                    node[idx] = copy.deepcopy(value)
                else:
                    node = node[idx]
            elif isinstance(node, dict):
                if last:
                    node[part] = copy.deepcopy(value)
                else:
                    if node.get(part) is None:
                        node[part] = {}
                    node = node[part]
            else:
                raise KeyError(
                    f"override {key!r}: {'.'.join(parts[:j])!r} is a {type(node).__name__}, "
                    "not a mapping or list"
                )
    return cfg


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``["a.b=1", "c=[1, 2]"]`` -> ``{"a.b": 1, "c": [1, 2]}`` (values are YAML)."""
    out = {}
    for it in items or []:
        if "=" not in it:
            raise ValueError(f"--set expects key=value, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError as e:
            raise _yaml_error(f"--set {it}", e) from None
    return out


# ------------------------------------------------------------------------------------------------ task
def _model_class_path(args: Sequence[str]) -> str | None:
    """The ``model.class_path`` that ``args`` (Lightning CLI arguments, ``base:`` already expanded) end up with:
    the configs in order, then ``--model.class_path X`` / ``--model X`` given on the command line."""
    found: str | None = None
    args = list(args)
    for i, a in enumerate(args):
        flag, eq, value = a.partition("=")
        if not eq:
            value = args[i + 1] if i + 1 < len(args) else ""
        if flag in _CONFIG_FLAGS:
            cfg = _read_mapping(Path(value)) if _is_file(value) else _yaml_mapping(value)
            model = cfg.get("model")
            if isinstance(model, dict) and model.get("class_path"):
                found = str(model["class_path"])
            elif isinstance(model, str):
                found = model
        elif flag in ("--model.class_path", "--model") and value and "\n" not in value and "{" not in value:
            found = value
    return found


def _yaml_mapping(text: str) -> dict:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}  # not YAML we can read: Lightning's parser reports it
    return raw if isinstance(raw, dict) else {}


def config_task(args: Sequence[str]) -> str | None:
    """The task of the LightningModule ``args`` configure: its class's ``TASK`` (``time-series-forecasting``,
    ``image-classification``), or None when no importable class with a ``TASK`` is named."""
    from favit_probsparse.imports import import_class

    class_path = _model_class_path(args)
    if not class_path or "." not in class_path:
        return None
    try:
        cls = import_class(class_path, what="model.class_path")
    except (ValueError, ImportError, AttributeError):
        return None  # Lightning's own parser names a class that does not exist
    return getattr(cls, "TASK", None) or None
