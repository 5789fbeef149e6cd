"""The cluster launcher: the grid's launcher section, the sbatch script submitit writes (through a stand-in
`sbatch`), `--status` from the scheduler's states, a grid run end to end through submitit's local executor, and
a run resumed from its last.ckpt."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from _helpers import checkpoint_callback, vision_config, write_yaml
from favit_probsparse.data.vision import write_toy_image_folder
from favit_probsparse.experiments.ablate import main
from favit_probsparse.experiments.grid import load_grid
from favit_probsparse.experiments.launch import LauncherOptions
from favit_probsparse.experiments.runner import GridRuns, run_grid

pytest.importorskip("submitit")


def _grid(path: Path, base: Path, rows: list[dict], **extra) -> Path:
    grid = {
        "name": "tiny-grid",
        "base_config": str(base),
        "metric": {"name": "test/acc1", "mode": "max", "scale": 100},
        "seeds": [0],
        "rows": rows,
        **extra,
    }
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """`srun`, `sbatch` (keeps each script, answers job 4242, 4243, ...) and `sacct` (prints $SACCT_OUT)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = tmp_path / "sbatch-scripts"
    scripts.mkdir()
    _executable(bin_dir / "srun", "#!/bin/sh\nexit 0\n")
    _executable(
        bin_dir / "sbatch",
        f'#!/bin/sh\nn=$(ls {scripts} | wc -l)\ncp "$1" {scripts}/$n.sh\n'
        'echo "Submitted batch job $((4242 + n))"\n',
    )
    _executable(bin_dir / "sacct", '#!/bin/sh\nprintf "JobID|State|NodeList\\n$SACCT_OUT"\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return scripts


def test_launcher_section_and_command_line(tmp_path):
    base = write_yaml(tmp_path / "base.yaml", {"trainer": {}})
    launcher = {"partition": "gpu", "gpus_per_run": 2, "sbatch": {"account": "proj"}}
    grid = load_grid(_grid(tmp_path / "g.yaml", base, [{"name": "a"}], launcher=launcher))
    opts = LauncherOptions.parse(grid.launcher, "g.yaml")
    assert (opts.partition, opts.gpus_per_run, opts.array, opts.sbatch) == (
        "gpu",
        2,
        True,
        {"account": "proj"},
    )
    with pytest.raises(ValueError, match=r"unknown launcher keys \['gpus'\]"):
        LauncherOptions.parse({"gpus": 2}, "g.yaml")
    with pytest.raises(ValueError, match="gpus_per_run must be a whole number"):
        LauncherOptions.parse({"gpus_per_run": -1}, "g.yaml")
    with pytest.raises(ValueError, match="launcher must be a mapping"):
        load_grid(_grid(tmp_path / "g2.yaml", base, [{"name": "a"}], launcher=["gpu"]))


def _skip_row_check(monkeypatch):
    """Placeholder configs (no model, no data) that the pre-run option check of every row would refuse."""
    from favit_probsparse.experiments import ablate

    monkeypatch.setattr(ablate, "check_rows", lambda *a, **k: None)


def test_slurm_submission_script_status_and_resubmission(tmp_path, fake_slurm, monkeypatch, capsys):
    """Up to sbatch, the real code path: the grid's section + command-line overrides end in the script."""
    monkeypatch.chdir(tmp_path)
    _skip_row_check(monkeypatch)
    base = write_yaml(tmp_path / "base.yaml", {"trainer": {"max_epochs": 1}})
    launcher = {
        "partition": "gpu",
        "gpus_per_run": 1,
        "cpus_per_run": 16,
        "mem_gb": 64,
        "time_min": 600,
        "sbatch": {"account": "proj"},
        "setup": ["source .venv/bin/activate"],
    }
    grid = _grid(tmp_path / "g.yaml", base, [{"name": "a"}, {"name": "b"}], launcher=launcher)
    argv = [
        str(grid),
        "--launcher",
        "slurm",
        "--gpus-per-run",
        "4",
        "--sbatch",
        "qos=high",
        "--time-min",
        "720",
    ]
    assert main(argv) == 0
    [script] = sorted(fake_slurm.iterdir())
    text = script.read_text()
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=4",  # the command line over the grid's 1
        "#SBATCH --cpus-per-task=16",
        "#SBATCH --mem=64GB",
        "#SBATCH --time=720",
        "#SBATCH --array=0-1%2",  # one array for the grid's two runs
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --signal=USR2@120",
        "#SBATCH --account=proj",
        "#SBATCH --qos=high",
        "#SBATCH --job-name=favit-tiny-grid",
        "source .venv/bin/activate",
    ):
        assert line in text.splitlines(), (line, text)
    assert "srun --unbuffered" in text and "-m submitit.core._submit" in text
    run_a = tmp_path / "runs" / "tiny-grid" / "a" / "seed0"
    assert json.loads((run_a / "job.json").read_text())["job_id"] == "4242_0"

    capsys.readouterr()
    monkeypatch.setenv("SACCT_OUT", "4242_0|RUNNING|node1\\n4242_1|PENDING|\\n")
    assert main([str(grid), "--status"]) == 0
    out = capsys.readouterr().out
    assert "running" in out.split("seed 0")[1].splitlines()[0] and "4242_0" in out
    assert "queued" in out.split("seed 0")[2].splitlines()[0]

    # b is killed at its time limit before writing anything: --status records it as failed, naming the state
    monkeypatch.setenv("SACCT_OUT", "4242_0|RUNNING|node1\\n4242_1|TIMEOUT|\\n")
    assert main([str(grid), "--status"]) == 0
    failed = json.loads((tmp_path / "runs" / "tiny-grid" / "b" / "seed0" / "failed.json").read_text())
    assert "job 4242_1 TIMEOUT without a result record" in failed["error"]
    # re-submission: a (still running) is not submitted twice; b (failed) is, as a single job
    assert main(argv) == 0
    scripts = sorted(fake_slurm.iterdir())
    assert len(scripts) == 2 and "#SBATCH --array" not in scripts[1].read_text()
    assert json.loads((run_a / "job.json").read_text())["job_id"] == "4242_0"
    assert "already submitted as job 4242_0" in capsys.readouterr().out


def test_slurm_without_slurm_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    _skip_row_check(monkeypatch)
    base = write_yaml(tmp_path / "base.yaml", {"trainer": {}})
    grid = _grid(tmp_path / "g.yaml", base, [{"name": "a"}])
    with pytest.raises(SystemExit, match='--launcher slurm: Could not detect "srun"'):
        main([str(grid), "--launcher", "slurm", "--runs-dir", str(tmp_path / "runs")])


def _tiny_base(tmp_path: Path, toy: Path, **trainer) -> Path:
    trainer = {
        "limit_train_batches": 2,
        "num_sanity_val_steps": 0,
        "enable_model_summary": False,
        "logger": False,
        **trainer,
    }
    trainer.setdefault("enable_checkpointing", False)
    return write_yaml(tmp_path / "base.yaml", vision_config(toy, trainer, {"base_batch_size": None}))


@pytest.mark.slow
def test_submitit_local_grid_records_skip_and_failure(tmp_path, monkeypatch, capsys):
    """The jobs run through submitit's LocalExecutor; records, report, FAILED row and skip as with the local runner."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    toy = write_toy_image_folder(tmp_path / "toy", num_classes=2, train_per_class=16, test_per_class=8)
    base = _tiny_base(tmp_path, toy)
    rows = [{"name": "ok"}, {"name": "bad", "overrides": {"model.init_args.model_kwargs.fusion": "nope"}}]
    grid = _grid(tmp_path / "g.yaml", base, rows)
    argv = [str(grid), "--launcher", "submitit-local", "--wait", "--gpus-per-run", "0", "--no-chart"]
    assert main(argv) == 1  # the failed row makes the command fail, as locally
    runs = tmp_path / "runs" / "tiny-grid"
    rec = json.loads((runs / "ok" / "seed0" / "metrics.json").read_text())
    assert 0.0 <= rec["metrics"]["test/acc1"] <= 1.0 and rec["status"] == "done"
    assert "fusion" in json.loads((runs / "bad" / "seed0" / "failed.json").read_text())["error"]
    md = (runs / "tiny-grid.md").read_text()
    assert "FAILED" in md and "| ok" in md.replace("**", "")
    capsys.readouterr()
    assert main([str(grid), "--status"]) == 0
    out = capsys.readouterr().out
    assert "1 done, 1 failed" in out
    assert main([*argv, "--rows", "ok"]) == 0  # finished: nothing is submitted again
    assert "nothing to submit" in capsys.readouterr().out


@pytest.mark.slow
def test_requeued_run_resumes_from_last_ckpt(tmp_path, monkeypatch):
    """A run without a record but with a last.ckpt of the same config continues from it (Lightning restores it)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    toy = write_toy_image_folder(tmp_path / "toy", num_classes=2, train_per_class=16, test_per_class=8)
    base = _tiny_base(
        tmp_path, toy, enable_checkpointing=True, callbacks=[checkpoint_callback(tmp_path / "ckpt")]
    )
    grid = load_grid(_grid(tmp_path / "g.yaml", base, [{"name": "a"}]))
    runs = tmp_path / "runs"
    [first] = run_grid(GridRuns(grid, [0], runs), quiet=True)
    assert first.status == "done", first.error
    run_dir = runs / "tiny-grid" / "a" / "seed0"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    (run_dir / "metrics.json").unlink()  # as if the job had been preempted after its last checkpoint
    [again] = run_grid(GridRuns(grid, [0], runs), quiet=True, resume=True)
    assert again.status == "done", again.error
    assert json.loads((run_dir / "run.json").read_text())["resume_from"].endswith("last.ckpt")
    assert "Restoring states from the checkpoint path" in (run_dir / "log.txt").read_text()
    assert again.metrics["test/acc1"] == pytest.approx(first.metrics["test/acc1"])
