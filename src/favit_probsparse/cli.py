"""``favit-ps``: one command over YAML configs.

* ``favit-ps fit|validate|test|predict --config cfg.yaml [--overrides]`` is Lightning's CLI: the config names a
  LightningModule (``model.class_path``) and a LightningDataModule (``data.class_path``) from this package.
  ``--ckpt PATH`` and ``--resume PATH`` are short forms of ``--ckpt_path PATH`` (``favit-ps test --ckpt ...``;
  ``favit-ps fit --config C --resume last`` resumes a run from its last checkpoint).
* ``favit-ps fit --config cfg.yaml --itr N [--seeds ...]`` runs N seeded fit+test repeats of a forecasting config
  and prints mean ± std (the official Informer ``--itr``).
* ``favit-ps ablate GRID.yaml --seeds 0 1`` runs a grid of configs and writes ``results/<name>.md`` and a chart.
* ``favit-ps analyze cross-terms --ckpt ...`` decomposes attention logits of a trained model; ``favit-ps analyze
  fusion --ckpt ...`` draws what each cross-window fusion of trained FaViTs keeps.
* ``favit-ps export --ckpt K --out DIR`` writes a trained model as ``model.safetensors`` + ``config.json`` +
  ``README.md`` (timm's layout for FaViT; ``favit-ps predict --model DIR`` for forecasters).
* ``favit-ps reproduce quick`` is the README's main job.

User errors (a bad option, file, or checkpoint) print one line, ``favit-ps CMD: error: <cause>``, and exit 2
(``FAVIT_DEBUG=1`` shows the traceback instead); errors of the data or a diverged run exit 1.

The subcommand modules are imported lazily so ``favit-ps --help`` stays fast.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
# name -> "module:function"; each function takes argv (list[str]) and returns an exit code or None.
EXTRA_SUBCOMMANDS = {
    "ablate": (
        "favit_probsparse.experiments.ablate:main",
        "run a grid of configs over seeds, write a result table",
    ),
    "analyze": (
        "favit_probsparse.analysis.cli:main",
        "analyses of trained models (cross-terms, fusion maps, pos-embedding decay)",
    ),
    "export": (
        "favit_probsparse.training.export:main",
        "write a checkpoint as model.safetensors + config.json + README.md model card",
    ),
    "reproduce": (
        "favit_probsparse.experiments.reproduce:main",
        "one-command reproductions (`quick` = README main job)",
    ),
}

USAGE = """usage: favit-ps {fit,validate,test,predict,ablate,analyze,export,reproduce} ...

  fit/validate/test/predict   Lightning CLI over a YAML config (see `favit-ps fit --help`)
  fit --config X --itr N      N seeded repeats (forecasting), mean ± std
  predict --model DIR ...     forecasts of an exported forecaster (favit-ps predict --model DIR --help)
""" + "".join(f"  {name:<27} {text}\n" for name, (_, text) in EXTRA_SUBCOMMANDS.items())


def _user_errors() -> tuple[type[BaseException], ...]:
    # the errors a user can fix (their data file, their settings, a diverged run); others keep their traceback
    from favit_probsparse.data.timeseries import DataError
    from favit_probsparse.training.forecast import NonFiniteLossError

    return (DataError, NonFiniteLossError, FileNotFoundError)


_CKPT_ALIASES = ("--ckpt", "--resume")  # short forms of Lightning's --ckpt_path (a path, "last" or "best")


def _rewrite_ckpt(argv: list[str]) -> list[str]:
    out = []
    for a in argv:
        name, eq, value = a.partition("=")
        out.append(("--ckpt_path" + eq + value) if name in _CKPT_ALIASES else a)
    return out


def run_lightning(argv: Sequence[str]):
    """Run Lightning's CLI on ``argv`` (a subcommand first) and return the LightningCLI object."""
    from favit_probsparse.resources import resolve_config_args
    from favit_probsparse.training import lightning_cli

    # a --config that is not in the current folder may name a config shipped with the package
    return lightning_cli(_rewrite_ckpt(resolve_config_args(list(argv))))


def check_lightning(argv: Sequence[str]):
    """Parse a fit/validate/test/predict command line exactly as :func:`run_lightning` would, without building
    or running anything (a stale or misspelt option raises); returns the parsed config."""
    from favit_probsparse.resources import resolve_config_args
    from favit_probsparse.training import lightning_cli

    return lightning_cli(_rewrite_ckpt(resolve_config_args(list(argv))), parse_only=True).config


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    cmd = argv[0]
    if os.environ.get("FAVIT_DEBUG"):
        return _dispatch(cmd, argv[1:])
    from favit_probsparse.training.project_cli import USER_ERRORS, user_error_message

    try:
        return _dispatch(cmd, argv[1:])
    except USER_ERRORS as e:
        print(f"favit-ps {cmd}: error: {user_error_message(e)}", file=sys.stderr)
        return 2


def _exported_model_dir(args: list[str]) -> bool:
    """``predict --model DIR`` names an exported folder (Lightning's ``--model`` names a class or config)."""
    for i, a in enumerate(args):
        value = (
            a.partition("=")[2]
            if a.startswith("--model=")
            else (args[i + 1] if a == "--model" and i + 1 < len(args) else None)
        )
        if value is not None and os.path.isdir(value):
            return True
    return False


def _dispatch(cmd: str, rest: list[str]) -> int:
    if cmd == "predict" and _exported_model_dir(rest):
        from favit_probsparse.training.export import predict_main

        return int(predict_main(rest) or 0)
    if cmd == "fit" and any(a == "--itr" or a.startswith("--itr=") for a in rest):
        # the official Informer `--itr N`: N seeded fit+test runs, reported as mean ± std
        from favit_probsparse.experiments.repeat import main as itr_main

        return int(itr_main(rest) or 0)
    if cmd in LIGHTNING_SUBCOMMANDS:
        try:
            run_lightning([cmd, *rest])
        except (
            _user_errors()
        ) as err:  # bad data / diverged training: one line, non-zero exit (FAVIT_DEBUG=1: trace)
            if os.environ.get("FAVIT_DEBUG"):
                raise
            print(f"favit-ps {cmd}: error: {type(err).__name__}: {err}", file=sys.stderr)
            return 1
        return 0
    if cmd in EXTRA_SUBCOMMANDS:
        mod_name, fn_name = EXTRA_SUBCOMMANDS[cmd][0].split(":")
        fn = getattr(importlib.import_module(mod_name), fn_name)
        rc = fn(rest)
        return int(rc or 0)
    print(f"favit-ps: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
