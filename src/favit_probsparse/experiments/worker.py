"""One run of a grid, inside its own process: ``python -m favit_probsparse.experiments.worker RUN_DIR``.

Reads ``RUN_DIR/run.json`` (written by the runner), fits ``RUN_DIR/config.yaml`` through the project's
LightningCLI, tests it (``test_ckpt``: the final weights or the best checkpoint), and writes the result record
``RUN_DIR/metrics.json`` (:func:`favit_probsparse.experiments.records.write_record`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from favit_probsparse.experiments.records import DONE, write_record
from favit_probsparse.training.checkpoints import check_trained

__all__ = ["WORKER_ERROR", "main", "run_worker"]

#: the prefix of the worker's last log line when it fails: the one-line cause the runner records
WORKER_ERROR = "favit-ps worker: error: "
#: environment variable with the runner's pid: the worker stops itself when its runner is gone
PARENT_PID = "FAVIT_PS_RUNNER_PID"


def _follow_parent(pid: int, every_s: float = 1.0) -> None:
    """A daemon thread that sends this process SIGTERM once ``pid`` is no longer its parent (the runner was
    killed, even by SIGKILL): Lightning then stops the run as on any SIGTERM."""
    import os
    import signal
    import threading

    def watch() -> None:
        while os.getppid() == pid:
            time.sleep(every_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="follow-runner", daemon=True).start()


def _scalars(metrics: dict) -> dict[str, float]:
    import torch

    return {k: float(v) for k, v in metrics.items() if torch.is_tensor(v) and v.numel() == 1}


def model_stats_of(lm) -> dict[str, Any]:
    """The module's own ``model_stats()`` (params, GMACs, ...) when it has one, else its parameter count."""
    if callable(getattr(lm, "model_stats", None)):
        try:
            return dict(lm.model_stats())
        except Exception as e:  # statistics are a nicety, never a failure
            return {"stats_error": f"{type(e).__name__}: {e}"}
    return {"params_m": sum(p.numel() for p in lm.parameters()) / 1e6}


def run_worker(run_dir: str | Path) -> int:
    """Fit (then test) ``run_dir/config.yaml``; write ``run_dir/metrics.json``. Returns the exit code."""
    from favit_probsparse.training.project_cli import lightning_cli

    run_dir = Path(run_dir)
    spec = json.loads((run_dir / "run.json").read_text())
    t0 = time.time()
    resume = ["--ckpt_path", spec["resume_from"]] if spec.get("resume_from") else []  # a requeued run
    cli = lightning_cli(["fit", "--config", str(run_dir / "config.yaml"), *spec.get("cli_args", []), *resume])
    fit_s = time.time() - t0
    trainer = cli.trainer
    if getattr(trainer, "interrupted", False):
        raise RuntimeError("training was interrupted")
    check_trained(trainer)  # never a record of untrained weights
    metrics = _scalars(trainer.callback_metrics)
    test_s = None
    test = spec.get("test", True)
    # "if-missing": a test already run inside fit (a TestAfterFit callback) is kept, not repeated
    if test and not (test == "if-missing" and spec.get("metric") in metrics):
        t1 = time.time()
        has_best = bool(trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path)
        ckpt = "best" if spec.get("test_ckpt", "last") == "best" and has_best else None
        trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt, verbose=False)
        test_s = time.time() - t1
        metrics.update(_scalars(trainer.callback_metrics))
    if trainer.global_rank != 0:
        return 0
    write_record(
        run_dir / DONE,
        status="done",
        seed=spec["seed"],
        metrics=metrics,
        config=str(run_dir / "config.yaml"),
        config_hash=spec["config_hash"],
        command=spec.get("command"),
        grid=spec["grid"],
        row=spec["row"],
        cli_args=spec.get("cli_args", []),
        stats=model_stats_of(cli.model),
        fit_s=fit_s,
        test_s=test_s,
        epochs=int(trainer.current_epoch),
    )
    return 0


def main(argv: list[str]) -> int:
    """Run one grid run; a failure ends with its traceback and then one line, the cause (``WORKER_ERROR``)."""
    import os
    import traceback

    from favit_probsparse.training.checkpoints import RunInterrupted
    from favit_probsparse.training.project_cli import user_error_message

    if os.environ.get(PARENT_PID, "").isdigit():
        _follow_parent(int(os.environ[PARENT_PID]))
    try:
        return run_worker(argv[0])
    except RunInterrupted as e:
        print(f"{WORKER_ERROR}{e}", flush=True)
        return e.exit_code
    except Exception as e:
        traceback.print_exc()
        cause = user_error_message(e)
        print(f"{WORKER_ERROR}{type(e).__name__}: {cause}", flush=True)
        return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
