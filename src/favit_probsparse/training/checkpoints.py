"""One checkpoint folder per run: a second ``fit`` into the same folder is refused instead of writing
``last-v1.ckpt`` beside the previous run's ``last.ckpt`` (which ``--ckpt .../last.ckpt`` would then still load).

``fit --ckpt PATH`` (resuming) is allowed; ``fit --overwrite true`` deletes the previous run's checkpoints first.
Configs whose ``ModelCheckpoint`` has no ``dirpath`` save under the logger's versioned folder, which is fresh on
every run; the check matters for fixed ``dirpath`` (the vision configs) and for runs without a logger
(``<default_root_dir>/checkpoints``).

The same CLI also: refuses ``fit --ckpt last`` when there is no ``last.ckpt`` (Lightning would train from
scratch); holds a lock on the folders a fit shares with other fits (fixed checkpoint folders, the root folder
without a logger), so a second fit into them at the same time is refused; fails a fit that ran no optimizer step
(:func:`check_trained`: its weights are not a result); and turns Lightning's SIGTERM exit (a ``SystemExit``
without a code, so exit 0) into :class:`RunInterrupted` (exit 143, naming the last checkpoint).
"""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

__all__ = [
    "LOCK_NAME",
    "FolderLockedError",
    "FreshRunCLI",
    "RunInterrupted",
    "UntrainedRunError",
    "check_trained",
    "fit_folders",
    "lock_folder",
    "refuse_missing_last",
    "refuse_stale_checkpoints",
    "stale_checkpoints",
]


class FolderLockedError(FileExistsError):
    """Another process is writing into the folder (it holds the folder's lock)."""


LOCK_NAME = ".favit-ps.lock"


def lock_folder(folder: str | os.PathLike, what: str = "run", name: str = LOCK_NAME) -> int | None:
    """Hold ``folder``'s lock (an ``flock`` on ``folder/<name>``) until the returned descriptor is closed
    or the process ends, even by a kill; a folder another process holds raises :class:`FolderLockedError`
    naming its pid. Returns None where ``fcntl`` does not exist (Windows): no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise FolderLockedError(
            f"{folder}: another {what} is writing into this folder (pid {holder}); wait for it to end, or "
            "choose another folder"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def fit_folders(trainer) -> list[Path]:
    """The folders a fit writes into that another fit could share: fixed checkpoint folders, and the root folder
    when there is no logger (``config.yaml``, ``checkpoints/``); a logger's version folder is new per run."""
    out = {Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)}
    if not trainer.loggers:
        out.add(Path(trainer.default_root_dir))
    return sorted(out)


class UntrainedRunError(ValueError):
    """A ``fit`` that ran no training step: its weights are the initial ones, not a result."""


class RunInterrupted(Exception):
    """``fit`` stopped by a signal (SIGTERM); ``exit_code`` is 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


def check_trained(trainer) -> None:
    """Raise :class:`UntrainedRunError` when ``trainer`` finished a fit without one optimizer step (weights
    loaded from a checkpoint by ``fit --ckpt_override`` are trained weights, even then)."""
    if trainer.global_step > 0 or getattr(trainer.lightning_module, "_weights_from_checkpoint", None):
        return
    raise UntrainedRunError(
        f"the run trained no step (max_epochs={trainer.max_epochs}, max_steps={trainer.max_steps}, "
        f"{trainer.num_training_batches} training batches per epoch): its weights are untrained, so nothing is "
        "tested or recorded; give it epochs and batches to train"
    )


def last_checkpoint_note(trainer) -> str:
    """Where the run's newest ``last.ckpt`` is (or that there is none yet), for a message."""
    for cb in trainer.checkpoint_callbacks:
        last = getattr(cb, "last_model_path", "")
        if last and Path(last).is_file():
            return f"the last checkpoint is {last} (resume with --ckpt {last})"
    return "no checkpoint was written yet"


def stale_checkpoints(trainer) -> list[Path]:
    """``*.ckpt`` files already in the folders this trainer's checkpoint callbacks will write to."""
    found: list[Path] = []
    for cb in trainer.checkpoint_callbacks:
        dirpath = getattr(cb, "dirpath", None)
        if dirpath is None and not trainer.loggers:  # Lightning's default when there is no logger
            dirpath = Path(trainer.default_root_dir) / "checkpoints"
        if dirpath is not None and Path(dirpath).is_dir():
            found += sorted(Path(dirpath).glob("*.ckpt"))
    return found


def refuse_stale_checkpoints(trainer, ckpt_path, overwrite: bool = False) -> None:
    """Before a fresh ``fit``: raise if another run's checkpoints are where this one will write its own
    (``overwrite``: delete them instead). A resumed fit (``ckpt_path`` given) continues in place."""
    if ckpt_path is not None or trainer.global_rank != 0:
        return
    stale = stale_checkpoints(trainer)
    if not stale:
        return
    if overwrite:
        for p in stale:
            p.unlink(missing_ok=True)
        return
    stale.sort(key=lambda p: (not p.name.startswith("last"), p.name))  # last.ckpt first: the one to resume
    folder = stale[0].parent
    raise FileExistsError(
        f"{folder} already holds checkpoints of an earlier run ({', '.join(p.name for p in stale[:3])}"
        f"{', ...' if len(stale) > 3 else ''}); resume it with --ckpt {folder / stale[0].name}, start over "
        "with --overwrite true (deletes them), or set another trainer.default_root_dir / checkpoint dirpath"
    )


def refuse_missing_last(trainer, ckpt_path) -> None:
    """``fit --ckpt last`` with no ``last*.ckpt`` where this run writes: Lightning would warn and train from
    scratch; refuse instead."""
    if str(ckpt_path) != "last" or trainer.global_rank != 0:
        return
    dirs = set()
    for cb in trainer.checkpoint_callbacks:
        dirpath = getattr(cb, "dirpath", None)
        if dirpath is None and trainer.loggers:  # Lightning's <save_dir>/<name>/<version>/checkpoints
            log = trainer.loggers[0]
            version = log.version if isinstance(log.version, str) else f"version_{log.version}"
            dirpath = Path(log.save_dir or trainer.default_root_dir, str(log.name), version, "checkpoints")
        elif dirpath is None:
            dirpath = Path(trainer.default_root_dir) / "checkpoints"
        dirs.add(Path(dirpath))
    if not any(p.name.startswith("last") for d in dirs if d.is_dir() for p in d.glob("*.ckpt")):
        where = ", ".join(sorted(map(str, dirs))) or "the run's folder (it has no ModelCheckpoint)"
        raise FileNotFoundError(
            f"--ckpt last: no last.ckpt in {where}; give the checkpoint's path, or leave --ckpt out to train "
            "from scratch"
        )


class FreshRunCLI(LightningCLI):
    """LightningCLI with ``--overwrite`` and the one-folder-per-run check before ``fit``."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--overwrite",
            type=bool,
            default=False,
            help="fit: delete the checkpoints an earlier run left in the checkpoint folder (default: refuse)",
        )

    def before_fit(self) -> None:
        cfg = self.config.get(str(self.subcommand), self.config)
        refuse_missing_last(self.trainer, cfg.get("ckpt_path"))
        refuse_stale_checkpoints(self.trainer, cfg.get("ckpt_path"), bool(cfg.get("overwrite", False)))
        if self.trainer.global_rank == 0:
            # two fits into one folder would mix their checkpoints and config.yaml: the second is refused
            for d in fit_folders(self.trainer):
                self._locks.append(lock_folder(d, "fit"))

    def after_fit(self) -> None:
        if not self.trainer.interrupted:
            check_trained(self.trainer)

    def _run_subcommand(self, subcommand: str) -> None:
        # Lightning turns SIGTERM into SIGTERMException, a SystemExit without a code: the process would exit 0
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        self._locks: list[int | None] = []
        try:
            super()._run_subcommand(subcommand)
        except SIGTERMException:
            import signal

            note = f"; {last_checkpoint_note(self.trainer)}" if subcommand == "fit" else ""
            raise RunInterrupted(f"stopped by SIGTERM{note}", signal.SIGTERM) from None
        except RuntimeError as e:
            if "Early stopping conditioned on metric" not in str(e):
                raise
            cause = str(e).split(". ")[0]
            raise ValueError(
                f"{cause}: no validation ran before EarlyStopping checked it (max_steps, limit_val_batches or "
                "check_val_every_n_epoch leave no validation); let the run validate, or remove EarlyStopping"
            ) from None
        finally:
            for fd in self._locks:
                if fd is not None:
                    os.close(fd)
