"""The one place checkpoints are read: ``torch.load(weights_only=True)`` and a named error for every failure.

:func:`load_checkpoint` turns each way a file can be unusable into one line of :class:`CheckpointError` that names
the file: missing, empty, not a PyTorch checkpoint (random bytes, a truncated archive), an object outside the
allow-list (a pickle that would run code), written for another task or model, or by an incompatible version.

The training modules of this package write a ``"favit_probsparse"`` entry into every checkpoint
(:class:`CheckpointMetadata`): format number, package version, task, module class, the data facts an export needs
(class names, column names, scaler statistics) and provenance (command, seed, hardware, date, last metrics).

Lightning's own checkpoint reads (``--ckpt_path last|best|FILE``, ``TestAfterFit``) go through
:class:`SafeCheckpointIO`, which the project CLI installs, so they share the same checks.
"""

from __future__ import annotations

import datetime as _dt
import os
import pathlib
import pickle
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from favit_probsparse.utils.provenance import cpu_model

__all__ = [
    "CHECKPOINT_FORMAT",
    "META_KEY",
    "CheckpointError",
    "CheckpointMetadata",
    "SafeCheckpointIO",
    "check_state_dict_fits",
    "class_path",
    "hparam_differences",
    "load_checkpoint",
    "rebuild_module",
]

#: bumped when the layout of the ``favit_probsparse`` entry or of the modules' state dicts changes incompatibly
CHECKPOINT_FORMAT = 1
META_KEY = "favit_probsparse"
#: non-tensor classes a checkpoint may hold (hyper-parameters given as paths from Python)
SAFE_GLOBALS = [pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath]


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, unsafe, or belongs to another task/model/version."""


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _plain(value: Any) -> Any:
    """JSON-like copy (dict/list/str/number/bool/None) of hyper-parameters and metrics, safe for weights_only."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


class CheckpointMetadata:
    """Mixin for LightningModules: writes the ``favit_probsparse`` checkpoint entry and restores ``data_info``.

    Subclasses set ``TASK`` and fill ``self.data_info`` (plain values) in ``setup`` from the datamodule."""

    TASK: str = ""
    data_info: dict

    def checkpoint_metadata(self) -> dict[str, Any]:
        from favit_probsparse import __version__

        trainer = getattr(self, "_trainer", None)
        metrics = {}
        if trainer is not None:
            metrics = {k: _plain(v) for k, v in trainer.callback_metrics.items()}
        cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        return {
            "format": CHECKPOINT_FORMAT,
            "package_version": __version__,
            "task": self.TASK,
            "module": class_path(type(self)),
            "data": _plain(getattr(self, "data_info", {}) or {}),
            "provenance": {
                "command": " ".join(
                    ["favit-ps" if a.endswith(("cli.py", "favit-ps")) else a for a in sys.argv]
                ),
                "seed": _plain(os.environ.get("PL_GLOBAL_SEED")),
                "epoch": int(getattr(self, "current_epoch", 0)),
                "global_step": int(getattr(self, "global_step", 0)),
                "metrics": metrics,
                "hardware": {"cpu": cpu_model(), "cuda": cuda, "threads": torch.get_num_threads()},
                "torch": str(torch.__version__),
                "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
            },
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[META_KEY] = self.checkpoint_metadata()

    @classmethod
    def load_from_checkpoint(
        cls, checkpoint_path, map_location=None, hparams_file=None, strict=None, **kwargs
    ):
        """Lightning's loader, weights only, after :func:`load_checkpoint`'s checks: an empty, damaged or
        foreign file is a one-line :class:`CheckpointError` naming it, not torch's hint to unpickle it."""
        if isinstance(checkpoint_path, str | os.PathLike):
            load_checkpoint(checkpoint_path, expected=cls)
        kwargs["weights_only"] = True
        return super().load_from_checkpoint(  # type: ignore[misc]
            checkpoint_path, map_location=map_location, hparams_file=hparams_file, strict=strict, **kwargs
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get(META_KEY) or {}
        if meta.get("data") and not getattr(self, "data_info", None):
            self.data_info = dict(meta["data"])


# ---------------------------------------------------------------------------------------------------- loading
def _read(path: Path, map_location) -> Any:
    """``torch.load(weights_only=True)`` with every failure as one CheckpointError line."""
    if not path.exists():
        raise CheckpointError(f"checkpoint {path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path}: is a folder, not a checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(
            f"checkpoint {path}: the file is empty (0 bytes); was the run killed while saving?"
        )
    is_zip = zipfile.is_zipfile(path)
    with path.open("rb") as f:
        head = f.read(4)
    if not is_zip:
        what = "a truncated or damaged zip archive" if head.startswith(b"PK") else "not a PyTorch checkpoint"
        raise CheckpointError(f"checkpoint {path}: {what} ({size} bytes that torch.load cannot read)")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message suggests weights_only=False; never do that for a file we did not write
        first = str(e).strip().splitlines()
        detail = next(
            (ln for ln in first if "GLOBAL" in ln or "Unsupported" in ln), first[0] if first else ""
        )
        raise CheckpointError(
            f"checkpoint {path}: holds objects outside the weights-only allow-list, so loading it could run "
            f"code; refusing ({detail.strip()[:200]})"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
        msg = " ".join(str(e).split())[:200]
        raise CheckpointError(
            f"checkpoint {path}: corrupt or truncated ({type(e).__name__}: {msg})"
        ) from None


def _ours(expected: type | str) -> bool:
    """Whether a module class writes the ``favit_probsparse`` entry (all of this package's modules do)."""
    if isinstance(expected, str):
        return expected.startswith("favit_probsparse.")
    return issubclass(expected, CheckpointMetadata)


def load_checkpoint(
    path: str | os.PathLike,
    expected: type | str | None = None,
    task: str | None = None,
    map_location: Any = "cpu",
) -> dict[str, Any]:
    """Read a Lightning checkpoint written by this package, safely (``weights_only=True``).

    Args:
        path: the ``.ckpt`` file.
        expected: the LightningModule class (or its ``module.Class`` path) the checkpoint must belong to; a
            checkpoint of a parent class is accepted (a subclass adds options, it does not change weights). For
            a module class from outside this package, a checkpoint without the ``favit_probsparse`` entry is
            accepted (loaded weights-only; only its saved ``_class_path`` is compared).
        task: the task the checkpoint must be for (``image-classification``, ``time-series-forecasting``).
        map_location: as in ``torch.load``.

    Raises:
        CheckpointError: one line naming the file and what is wrong with it.
    """
    path = Path(path)
    ckpt = _read(path, map_location)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        kind = type(ckpt).__name__
        keys = f" with keys {sorted(map(str, ckpt))[:6]}" if isinstance(ckpt, dict) else ""
        raise CheckpointError(
            f"checkpoint {path}: not a Lightning checkpoint (a {kind}{keys}, no 'state_dict'); "
            "a bare state dict or an exported model folder is loaded differently (see docs/export.md)"
        )
    meta = ckpt.get(META_KEY)
    if not isinstance(meta, dict) and expected is not None and task is None and not _ours(expected):
        # a LightningModule from elsewhere (the CLI takes any): loaded safely; its class is all we can check
        saved = (ckpt.get("hyper_parameters") or {}).get("_class_path")
        want = expected if isinstance(expected, str) else class_path(expected)
        if saved and saved != want:
            raise CheckpointError(
                f"checkpoint {path}: wrong model: it holds a {saved} but the config's model is a {want}"
            )
        return ckpt
    if not isinstance(meta, dict) or "format" not in meta:
        raise CheckpointError(
            f"checkpoint {path}: written by an incompatible version (no '{META_KEY}' format entry: not written "
            "by favit-probsparse >= 0.1.0 training modules)"
        )
    from favit_probsparse import __version__

    if meta["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path}: written by an incompatible version (favit-probsparse "
            f"{meta.get('package_version', '?')}, checkpoint format {meta['format']}; this is {__version__}, "
            f"format {CHECKPOINT_FORMAT})"
        )
    if task is not None and meta.get("task") != task:
        raise CheckpointError(
            f"checkpoint {path}: wrong task: it holds a model for {meta.get('task') or 'an unknown task'} "
            f"({meta.get('module')}) but a model for {task} is needed"
        )
    if expected is not None:
        want = expected if isinstance(expected, str) else class_path(expected)
        accepted = {want} if isinstance(expected, str) else {class_path(c) for c in expected.__mro__}
        if meta.get("module") not in accepted:
            raise CheckpointError(
                f"checkpoint {path}: wrong model: it holds a {meta.get('module')} ({meta.get('task')}) but the "
                f"config's model is a {want}"
            )
    return ckpt


def _norm(v: Any) -> Any:
    if isinstance(v, Mapping) or (hasattr(v, "__dict__") and type(v).__name__ == "Namespace"):
        items = v.items() if isinstance(v, Mapping) else vars(v).items()
        return {str(k): _norm(x) for k, x in items}
    if isinstance(v, list | tuple):
        return [_norm(x) for x in v]
    return v


def hparam_differences(
    ckpt_hparams: Mapping[str, Any], config_hparams: Mapping[str, Any], prefix: str = ""
) -> tuple[list[tuple[str, Any, Any]], dict[str, Any]]:
    """Compare a checkpoint's hyper-parameters with a config's model arguments (nested dicts key by key).

    ``None`` in the config means "not set" (the checkpoint's value is taken); keys starting with ``_`` (Lightning's
    ``_class_path``) are ignored. Returns ``(differences, filled)``: ``(dotted name, checkpoint value, config
    value)`` for every option the config sets to another value, and the config's arguments with the unset ones
    taken from the checkpoint."""
    diffs, filled = [], dict(config_hparams)
    for key, kv in ckpt_hparams.items():
        if str(key).startswith("_"):
            continue
        cv = config_hparams.get(key)
        if cv is None:
            if key in config_hparams or kv is not None:
                filled[key] = kv
            continue
        kv, cv = _norm(kv), _norm(cv)
        if isinstance(kv, dict) and isinstance(cv, dict):
            sub, _ = hparam_differences(kv, cv, prefix=f"{prefix}{key}.")
            extra = [(f"{prefix}{key}.{k}", None, v) for k, v in cv.items() if k not in kv and v is not None]
            diffs += sub + extra
        elif kv != cv:
            diffs.append((f"{prefix}{key}", kv, cv))
    return diffs, filled


def check_state_dict_fits(path: str | os.PathLike, state_dict: Mapping[str, Any], module) -> None:
    """Raise a CheckpointError naming missing/unexpected/mis-shaped weights before Lightning's strict load."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and hasattr(state_dict[k], "shape") and state_dict[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        for name, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape (checkpoint vs model)", shapes),
        ):
            if items:
                parts.append(f"{len(items)} {name}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}")
        raise CheckpointError(
            f"checkpoint {path}: its weights do not fit the configured model ({'; '.join(parts)})"
        )


def rebuild_module(path: str | os.PathLike, task: str | None = None, expected: type | None = None):
    """The LightningModule a checkpoint was written by, with its weights, in eval mode.

    Only classes of this package are imported (the class path is read from the checkpoint)."""
    from favit_probsparse.imports import import_class

    ckpt = load_checkpoint(path, expected=expected, task=task)
    name = ckpt[META_KEY]["module"]
    cls = import_class(
        name,
        allowed=("favit_probsparse.",),
        error=CheckpointError,
        what=f"checkpoint {path}: module",
        missing_hint="no longer exists: the checkpoint was written by an incompatible version",
    )
    if expected is not None and not issubclass(cls, expected):
        cls = expected  # a parent-class checkpoint loaded into the requested subclass
    hp = {k: v for k, v in (ckpt.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    try:
        # modules whose constructor takes objects (a network) rebuild them from the saved class_path/init_args
        build = getattr(cls, "from_checkpoint_hparams", None)
        module = build(hp) if build is not None else cls(**hp)
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {path}: cannot rebuild {name} from its hyper-parameters ({e})"
        ) from e
    check_state_dict_fits(path, ckpt["state_dict"], module)
    module.load_state_dict(ckpt["state_dict"], strict=True)
    module.on_load_checkpoint(ckpt)
    module.eval()
    return module, ckpt


# ---------------------------------------------------------------------------------------------------- Lightning
def _checkpoint_io_base():
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    return TorchCheckpointIO


class SafeCheckpointIO(_checkpoint_io_base()):
    """Lightning CheckpointIO whose reads go through :func:`load_checkpoint` (saving is Lightning's own).

    Args:
        expected: the LightningModule class every loaded checkpoint must belong to.
        hparams: the model's hyper-parameters; a checkpoint trained with other values is refused unless
            ``allow_differences`` (checked again here because ``last``/``best`` resolve only inside Lightning).
    """

    def __init__(
        self,
        expected: type | None = None,
        hparams: Mapping[str, Any] | None = None,
        allow_differences: bool = False,
    ):
        super().__init__()
        self.expected, self.hparams, self.allow_differences = expected, hparams, allow_differences

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        ckpt = load_checkpoint(path, expected=self.expected, map_location=map_location or "cpu")
        if self.hparams is not None and not self.allow_differences:
            diffs, _ = hparam_differences(ckpt.get("hyper_parameters") or {}, dict(self.hparams))
            if diffs:
                raise CheckpointError(differences_message(path, diffs))
        return ckpt


def differences_message(path, diffs: list[tuple[str, Any, Any]]) -> str:
    listed = "; ".join(f"{k}: {kv!r} in the checkpoint, {cv!r} in the config" for k, kv, cv in diffs)
    return (
        f"checkpoint {path}: model options differ from the config's ({listed}). Remove them to use the "
        "checkpoint's values, or add --ckpt_override to use the config's (fit then starts a new run from the "
        "checkpoint's weights)"
    )
