"""Lightning's CLI with this project's checkpoint rules and one-line errors.

* ``--ckpt FILE`` is read by :func:`~favit_probsparse.training.checkpoint.load_checkpoint` (weights only, named
  errors) before anything is built; its class must be the config's model class.
* Model options are never dropped silently: Lightning's CLI replaces the config's model options by the
  checkpoint's. Here, an option the config sets to another value than the checkpoint stops the run with the list
  of differences, unless ``--ckpt_override`` is given: then the config's values are used (``fit --ckpt_override``
  starts a new run from the checkpoint's weights: epoch 0, fresh optimizer and schedule). Options the config leaves unset (``null``)
  are taken from the checkpoint.
* ``validate``/``test``/``predict`` without ``--ckpt`` would evaluate untrained weights: refused unless
  ``--untrained`` says so.
* Lightning's own reads (``--ckpt last|best``, ``TestAfterFit``) go through
  :class:`~favit_probsparse.training.checkpoint.SafeCheckpointIO`.
* :func:`user_error_message` reduces a parse or build error (jsonargparse nests them several levels deep) to its
  cause, for the command line to print in one line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule

from favit_probsparse.training.checkpoint import (
    META_KEY,
    CheckpointError,
    SafeCheckpointIO,
    _norm,
    check_state_dict_fits,
    differences_message,
    hparam_differences,
    load_checkpoint,
)
from favit_probsparse.training.checkpoints import FreshRunCLI

__all__ = [
    "FORECAST_LINKS",
    "USER_ERRORS",
    "ProjectCLI",
    "lightning_cli",
    "project_cli",
    "user_error_message",
]

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

_LIGHTNING_CKPT_WORDS = ("last", "best", "hpc", "registry")
_EVAL_SUBCOMMANDS = ("validate", "test", "predict")


def _user_errors() -> tuple[type[BaseException], ...]:
    from jsonargparse import ArgumentError
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    return (
        ValueError,
        TypeError,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        PermissionError,  # an unwritable output folder: the message names it
        FloatingPointError,
        ArgumentError,
        MisconfigurationException,  # Lightning's checks of trainer options (e.g. a negative max_epochs)
    )


USER_ERRORS = _user_errors()


def _chain(exc: BaseException) -> list[BaseException]:
    out, seen = [exc], {id(exc)}
    while True:
        last = out[-1]
        nxt = last.__cause__ or (None if last.__suppress_context__ else last.__context__)
        if nxt is None or id(nxt) in seen:
            return out
        out.append(nxt)
        seen.add(id(nxt))


_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Given value",
    "Expected a <class 'NoneType'>",
    "- Expected a <class 'NoneType'>",
    "- Problem with given class_path",
    "Problem with given class_path",
)


def _summarize(message: str) -> str:
    """The cause line of a nested jsonargparse message, prefixed with the dotted option it is about."""
    keys, cause = [], None
    for raw in message.splitlines():
        line = raw.strip().lstrip("- ").strip()
        m = re.match(r'Parser key "([^"]+)":?\s*(.*)$', line)
        if m:
            keys.append(m.group(1))
            if m.group(2):
                cause = m.group(2)
                break
            continue
        if not line or any(line.startswith(n.lstrip("- ")) for n in _NOISE):
            continue
        cause = line
        break
    if cause is None:
        return " ".join(message.split())[:300]
    path = ".".join(k for k in keys if k)
    path = path.replace("model.", "model.init_args.", 1) if path.startswith("model.") else path
    return f"{path}: {cause}" if path else cause


def user_error_message(exc: BaseException) -> str:
    """One line: the innermost cause of a user error (bad option, bad file, bad checkpoint)."""
    from jsonargparse import ArgumentError

    # a parse error's own message names the option; otherwise the deepest error (raised by our code or a
    # library check while building the objects) states the problem best
    inner = exc if isinstance(exc, ArgumentError) else _chain(exc)[-1]
    msg = str(inner).strip()
    if "\n" in msg or "Parser key" in msg or "Union subtypes" in msg:
        msg = _summarize(msg)
    return " ".join(msg.split())


class ProjectCLI(FreshRunCLI):
    """LightningCLI (with the one-folder-per-run check of :class:`FreshRunCLI`) implementing the checkpoint rules
    of the module docstring."""

    #: (source, target) argument links applied at instantiation (the forecasting shapes)
    links: tuple[tuple[str, str], ...] = ()

    def add_arguments_to_parser(self, parser) -> None:
        from jsonargparse import ActionYesNo

        super().add_arguments_to_parser(parser)
        for source, target in self.links:
            parser.link_arguments(source, target, apply_on="instantiate")
        parser.add_argument(
            "--ckpt_override",
            action=ActionYesNo,
            default=False,
            help="with --ckpt: use the config's model options where they differ from the checkpoint's "
            "(fit: a new run from the checkpoint's weights)",
        )
        parser.add_argument(
            "--untrained",
            action=ActionYesNo,
            default=False,
            help="validate/test/predict without --ckpt: evaluate the untrained (randomly initialised) weights",
        )

    def parse_arguments(self, parser, args) -> None:
        # LightningCLI warns whenever ``args`` is given while sys.argv has arguments; favit-ps passes its own
        # argv on purpose, so parse without that check.
        from jsonargparse import Namespace

        self.config = (
            parser.parse_object(args) if isinstance(args, dict | Namespace) else parser.parse_args(args)
        )

    def _section(self):
        sub = self.config.get("subcommand")
        return (self.config[sub] if sub else self.config), sub

    def _parse_ckpt_path(self) -> None:
        """Replaces LightningCLI's: validate the file, compare options, never overwrite the config silently."""
        cfg, sub = self._section()
        self._ckpt_state: dict[str, Any] | None = None
        self._init_from_ckpt = False
        ckpt_path = cfg.get("ckpt_path")
        if not ckpt_path:
            if sub in _EVAL_SUBCOMMANDS and not cfg.get("untrained"):
                raise CheckpointError(
                    f"{sub} without --ckpt would evaluate untrained weights; give --ckpt PATH, or --untrained "
                    "to evaluate a randomly initialised model on purpose"
                )
            return
        if str(ckpt_path) in _LIGHTNING_CKPT_WORDS or str(ckpt_path).startswith("registry:"):
            return  # resolved by Lightning inside fit/test; checked by SafeCheckpointIO
        model_cfg = cfg.get("model")
        expected = model_cfg.get("class_path") if model_cfg is not None else None
        ckpt = load_checkpoint(ckpt_path, expected=expected)
        hparams = dict(ckpt.get("hyper_parameters") or {})
        if model_cfg is None or expected is None:
            return  # no model in the config: Lightning's way, the checkpoint's options
        init = model_cfg.get("init_args")
        given = _norm(dict(vars(init))) if init is not None else {}
        for _, target in self.links:
            # a linked option is the data's value, set at instantiation; the parsed one is only a default
            if target.startswith("model.init_args."):
                *parents, leaf = target[len("model.init_args.") :].split(".")
                node = given
                for key in parents:
                    node = node.get(key) if isinstance(node, dict) else None
                if isinstance(node, dict):
                    node[leaf] = None
        diffs, filled = hparam_differences(hparams, given)
        if diffs and not cfg.get("ckpt_override"):
            raise CheckpointError(differences_message(ckpt_path, diffs))
        parsed = dict(vars(init)) if init is not None else {}
        for key, value in filled.items():
            if key in parsed and parsed[key] is None and value is not None:
                cfg["model.init_args." + key] = value
        self._ckpt_state, self._ckpt_file = ckpt["state_dict"], str(ckpt_path)
        self._ckpt_columns = ((ckpt.get(META_KEY) or {}).get("data") or {}).get("columns")
        if sub == "fit" and cfg.get("ckpt_override"):
            # config options win: a new run initialised from the checkpoint's weights
            self._init_from_ckpt = True
            cfg["ckpt_path"] = None

    def instantiate_trainer(self, **kwargs: Any):
        cfg, _ = self._section()
        plugins = kwargs.pop("plugins", None) or self._get(self.config_init, "trainer", default={}).get(
            "plugins"
        )
        plugins = list(plugins) if isinstance(plugins, list | tuple) else ([plugins] if plugins else [])
        if not any(hasattr(p, "load_checkpoint") and hasattr(p, "save_checkpoint") for p in plugins):
            hparams = dict(self.model.hparams) if self.model is not None else None
            plugins.append(
                SafeCheckpointIO(
                    expected=type(self.model) if self.model is not None else None,
                    hparams=hparams,
                    allow_differences=bool(cfg.get("ckpt_override")),
                )
            )
        return super().instantiate_trainer(plugins=plugins, **kwargs)

    def after_instantiate_classes(self) -> None:
        state = getattr(self, "_ckpt_state", None)
        if state is None or self.model is None:
            return
        columns = getattr(self, "_ckpt_columns", None)
        dm = getattr(self, "datamodule", None)
        if columns and hasattr(dm, "use_columns"):
            # before the weights: other columns would show up as mismatched weight shapes
            dm.use_columns(list(columns))
        check_state_dict_fits(self._ckpt_file, state, self.model)
        if self._init_from_ckpt:
            self.model.load_state_dict(state, strict=True)
            self.model._weights_from_checkpoint = self._ckpt_file  # trained weights, even with no step here
        self._ckpt_state = None


class _ParseOnlyCLI(ProjectCLI):
    """Parses (every option checked against the classes' signatures, checkpoint rules applied) and stops: no
    class is built, nothing runs."""

    def _set_seed(self) -> None:  # leaves the global RNGs alone
        pass

    def instantiate_classes(self) -> None:
        pass

    def after_instantiate_classes(self) -> None:
        pass

    def _add_configure_optimizers_method_to_model(self, subcommand) -> None:
        pass

    def _run_subcommand(self, subcommand) -> None:
        pass


def project_cli(
    args: Sequence[str], run: bool = True, links: Sequence[tuple[str, str]] = (), parse_only: bool = False
) -> ProjectCLI:
    """``parse_only``: parse ``args`` (a subcommand first) and return without building or running anything;
    ``cli.config`` holds the parsed options."""
    base = _ParseOnlyCLI if parse_only else ProjectCLI
    cls = type("ProjectCLI", (base,), {"links": tuple(links)}) if links else base
    return cls(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=list(args),
        run=run,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        # errors are raised (and printed in one line by favit-ps), not printed with the full usage and exited
        parser_kwargs={
            "exit_on_error": False,
            **{s: {"exit_on_error": False} for s in ("fit", *_EVAL_SUBCOMMANDS)},
        },
    )


def lightning_cli(args: Sequence[str], run: bool = True, parse_only: bool = False) -> ProjectCLI:
    """Lightning's CLI with this project's settings: any LightningModule / LightningDataModule named by
    ``class_path`` in the config, config files overwritten on re-runs, optimizers from the module itself, config
    files with a ``base:`` key expanded (:func:`favit_probsparse.config.expand_config_args`), for a forecasting
    module (its class's ``TASK``, :func:`favit_probsparse.config.config_task`) the data module's shapes linked
    into the forecaster and its network (:data:`FORECAST_LINKS`), and the checkpoint rules above.

    ``run=True``: ``args`` starts with a subcommand (fit/validate/test/predict) and it runs; ``run=False``:
    only parse and instantiate (``cli.trainer``, ``cli.model``, ``cli.datamodule``). ``parse_only=True`` (with
    ``run=True``, a subcommand first): only parse, so a stale option or a bad config value raises here, on any
    machine and without data, while nothing is built or trained (``cli.config`` holds the options)."""
    from favit_probsparse.config import config_task, expand_config_args
    from favit_probsparse.training.forecast import Forecaster

    args = expand_config_args(args)
    links = FORECAST_LINKS if config_task(args) == Forecaster.TASK else ()
    return project_cli(args, run=run, links=links, parse_only=parse_only)


def check_args(argv: Sequence[str]):
    """Parse a fit/validate/test/predict command line (a subcommand first) as ``favit-ps`` would, without building
    or running anything, so a stale or misspelt option raises here; returns the parsed config."""
    from favit_probsparse.config import resolve_config_args

    return lightning_cli(resolve_config_args(list(argv)), parse_only=True).config
