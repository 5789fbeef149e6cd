"""Bad or unusual input met through the command line: every case ends with a one-line error that names the file,
column or row (asserted here, never only a non-zero exit), or gives the same numbers as the well-formed input.

One tiny DLinear forecaster is trained once (module fixture) and exported; the tests feed it reordered columns,
numeric dates, damaged files, and runs that would never train."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from favit_probsparse.cli import main

SEQ, LABEL, PRED = 24, 12, 12
COLS = ["a", "b", "c"]


def _series(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """Three channels on very different scales, so a channel swap changes every number."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    df = pd.DataFrame(
        {
            "a": np.sin(t / 6) + 0.1 * rng.normal(size=n),
            "b": 50 + 10 * np.cos(t / 9) + rng.normal(size=n),
            "c": 1000 + 0.5 * t + 5 * rng.normal(size=n),
        }
    )
    df.insert(0, "date", pd.date_range("2021-03-01", periods=n, freq="h").strftime("%Y-%m-%d %H:%M:%S"))
    return df


def _config(root: Path, csv: Path | str, trainer: dict | None = None, data: dict | None = None) -> dict:
    return {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 1,
            "accelerator": "cpu",
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "default_root_dir": str(root),
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(root / "checkpoints"), "save_last": True},
                },
                {"class_path": "favit_probsparse.training.forecast.ForecastWriter"},
            ],
            **(trainer or {}),
        },
        "model": {
            "class_path": "favit_probsparse.training.forecast.Forecaster",
            "init_args": {
                "learning_rate": 0.01,
                "network": {
                    "class_path": "favit_probsparse.models.dlinear.DLinear",
                    "init_args": {"kernel_size": 5},
                },
            },
        },
        "data": {
            "class_path": "favit_probsparse.data.timeseries.TimeSeriesDataModule",
            "init_args": {
                "path": str(csv),
                "seq_len": SEQ,
                "label_len": LABEL,
                "pred_len": PRED,
                "batch_size": 16,
                **(data or {}),
            },
        },
    }


def _write(path: Path, cfg: dict) -> str:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


def _err(capsys) -> str:
    """The one error line favit-ps printed (Lightning's log lines aside)."""
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("favit-ps ")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(folder, csv, checkpoint, export folder) of one tiny run on `_series()`."""
    root = tmp_path_factory.mktemp("trained")
    csv = root / "series.csv"
    _series().to_csv(csv, index=False)
    cfg = _write(root / "fit.yaml", _config(root / "run", csv))
    assert main(["fit", "--config", cfg]) == 0
    ckpt = root / "run" / "checkpoints" / "last.ckpt"
    assert main(["export", "--ckpt", str(ckpt), "--out", str(root / "export")]) == 0
    return root, csv, ckpt, root / "export"


# ------------------------------------------------------------------------------------------------ columns
def _test_mse(cfg: str, ckpt: Path) -> float:
    from favit_probsparse.cli import run_lightning

    cli = run_lightning(["test", "--config", cfg, "--ckpt", str(ckpt)])
    return float(cli.trainer.callback_metrics["test_mse_original"])


def test_reordered_columns_are_read_by_name_in_test_predict_and_forecast(trained, tmp_path):
    _, csv, ckpt, _ = trained
    df = _series()
    swapped = tmp_path / "swapped.csv"
    df[["date", "c", "b", "a"]].to_csv(swapped, index=False)
    same = _write(tmp_path / "same.yaml", _config(tmp_path / "same", csv))
    other = _write(tmp_path / "other.yaml", _config(tmp_path / "other", swapped))
    assert _test_mse(other, ckpt) == pytest.approx(_test_mse(same, ckpt), rel=1e-6)

    for cfg in (same, other):
        assert main(["predict", "--config", cfg, "--ckpt", str(ckpt)]) == 0
    a = pd.read_csv(tmp_path / "same" / "forecast" / "forecast.csv")
    b = pd.read_csv(tmp_path / "other" / "forecast" / "forecast.csv")
    assert list(b.columns) == ["date", *COLS]  # the model's order, whatever the file's
    pd.testing.assert_frame_equal(a, b)

    from favit_probsparse.training.forecast import forecaster_from_checkpoint

    model = forecaster_from_checkpoint(ckpt)
    pd.testing.assert_frame_equal(model.forecast(df[["date", "c", "b", "a"]]), model.forecast(df))


def test_reordered_columns_through_lightning_restore(trained, tmp_path):
    """The Python API: ``Trainer.test(ckpt_path=...)`` on reordered data restores, then reads by name."""
    from lightning.pytorch import Trainer

    from favit_probsparse.data.timeseries import TimeSeriesDataModule
    from favit_probsparse.training.forecast import forecaster_from_checkpoint

    _, csv, ckpt, _ = trained
    swapped = tmp_path / "swapped.csv"
    _series()[["date", "b", "c", "a"]].to_csv(swapped, index=False)
    kw = dict(seq_len=SEQ, label_len=LABEL, pred_len=PRED, batch_size=16)
    results = []
    for path in (csv, swapped):
        trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
        model = forecaster_from_checkpoint(ckpt)
        model.data_info = {}  # as a module built in Python: the checkpoint's columns come with the restore
        trainer.test(
            model, datamodule=TimeSeriesDataModule(str(path), **kw), ckpt_path=str(ckpt), weights_only=True
        )
        results.append(model.test_results["mse_original"])
    assert results[1] == pytest.approx(results[0], rel=1e-6)


def test_other_column_names_name_both_lists(trained, tmp_path, capsys):
    ckpt = trained[2]
    renamed = tmp_path / "renamed.csv"
    _series().rename(columns={"b": "B"}).to_csv(renamed, index=False)
    cfg = _write(tmp_path / "c.yaml", _config(tmp_path / "run", renamed))
    assert main(["test", "--config", cfg, "--ckpt", str(ckpt)]) == 1
    err = _err(capsys)
    assert (
        "renamed.csv: the model was trained on columns ['a', 'b', 'c'] but this data has ['a', 'B', 'c']"
        in err
    )

    wider = tmp_path / "wider.csv"
    _series().assign(d=1.0).to_csv(wider, index=False)  # another column count: not a weight-shape error
    cfg = _write(tmp_path / "w.yaml", _config(tmp_path / "run", wider))
    assert main(["predict", "--config", cfg, "--ckpt", str(ckpt)]) == 1
    err = _err(capsys)
    assert "trained on columns ['a', 'b', 'c'] but this data has ['a', 'b', 'c', 'd']" in err, err


# ------------------------------------------------------------------------------------------------ dates
def test_numeric_dates_are_refused_in_fit_and_predict_model(trained, tmp_path, capsys):
    _, _, _, export = trained
    df = _series()
    df["date"] = (pd.to_datetime(df["date"]) - pd.Timestamp(0)) // pd.Timedelta("1s")  # epoch seconds
    epoch = tmp_path / "epoch.csv"
    df.to_csv(epoch, index=False)
    cfg = _write(tmp_path / "c.yaml", _config(tmp_path / "run", epoch))
    assert main(["fit", "--config", cfg]) == 1
    err = _err(capsys)
    assert "epoch.csv: column 'date' holds numbers (1614556800 in row 0 (line 2)), not dates" in err, err
    assert main(["predict", "--model", str(export), "--input", str(epoch)]) == 2
    assert "epoch.csv: column 'date' holds numbers" in _err(capsys)


# ------------------------------------------------------------------------------------------------ predict --model
def test_predict_model_checks_the_input_as_fit_does(trained, tmp_path, capsys):
    _, _, _, export = trained
    df = _series()
    dup = df.copy()
    dup.loc[290, "date"] = dup.loc[289, "date"]
    dup.to_csv(tmp_path / "dup.csv", index=False)
    assert main(["predict", "--model", str(export), "--input", str(tmp_path / "dup.csv")]) == 2
    assert "dup.csv: column 'date', row 290 (line 292): duplicate timestamp" in _err(capsys)

    swapped = df.copy()
    swapped.iloc[[285, 286]] = swapped.iloc[[286, 285]].to_numpy()
    swapped.to_csv(tmp_path / "rows.csv", index=False)
    assert main(["predict", "--model", str(export), "--input", str(tmp_path / "rows.csv")]) == 2
    assert "rows.csv: column 'date', row 286 (line 288): timestamps not increasing" in _err(capsys)


def test_predict_model_reads_parquet_like_csv(trained, tmp_path, capsys):
    pytest.importorskip("pyarrow")
    _, csv, _, export = trained
    _series()[["date", "c", "a", "b"]].to_parquet(tmp_path / "x.parquet")
    out_csv, out_pq = tmp_path / "from_csv.csv", tmp_path / "from_pq.csv"
    assert main(["predict", "--model", str(export), "--input", str(csv), "--out", str(out_csv)]) == 0
    assert (
        main(
            ["predict", "--model", str(export), "--input", str(tmp_path / "x.parquet"), "--out", str(out_pq)]
        )
        == 0
    )
    pd.testing.assert_frame_equal(pd.read_csv(out_csv), pd.read_csv(out_pq))
    assert list(pd.read_csv(out_pq).columns) == ["date", *COLS]


# ------------------------------------------------------------------------------------------------ never trained
def test_batch_size_above_the_training_windows_is_refused(tmp_path, capsys):
    csv = tmp_path / "s.csv"
    _series().to_csv(csv, index=False)
    # 300 rows: 210 train rows -> 210 - 24 - 12 + 1 = 175 windows
    cfg = _write(tmp_path / "c.yaml", _config(tmp_path / "run", csv, data={"batch_size": 1000}))
    assert main(["fit", "--config", cfg]) == 1
    err = _err(capsys)
    assert "s.csv: batch_size=1000 is larger than the 175 training windows; lower batch_size" in err, err
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


def test_max_epochs_zero_is_not_tested(tmp_path, capsys):
    csv = tmp_path / "s.csv"
    _series().to_csv(csv, index=False)
    trainer = {"max_epochs": 0}
    trainer["callbacks"] = [{"class_path": "favit_probsparse.training.forecast.TestAfterFit"}]
    cfg = _write(tmp_path / "c.yaml", _config(tmp_path / "run", csv, trainer=trainer))
    assert main(["fit", "--config", cfg]) == 2
    err = _err(capsys)
    assert "the run trained no step (max_epochs=0" in err and "nothing is tested or recorded" in err, err
    assert "test_mse" not in capsys.readouterr().out


def test_ablate_records_an_untrained_run_as_failed(tmp_path, monkeypatch, capsys):
    from favit_probsparse.experiments.ablate import main as ablate

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    csv = tmp_path / "s.csv"
    _series().to_csv(csv, index=False)
    base = _config(tmp_path / "unused", csv, trainer={"max_epochs": 0})
    base["trainer"]["callbacks"] = []
    grid = {
        "name": "untrained",
        "base_config": _write(tmp_path / "base.yaml", base),
        "metric": {"name": "test_mse", "mode": "min"},
        "seeds": [0],
        "rows": [{"name": "dlinear"}],
    }
    path = _write(tmp_path / "grid.yaml", grid)
    runs = tmp_path / "runs"
    assert ablate([path, "--runs-dir", str(runs), "--no-chart"]) == 1
    run = runs / "untrained" / "dlinear" / "seed0"
    assert not (run / "metrics.json").exists()
    failed = json.loads((run / "failed.json").read_text())
    assert "the run trained no step (max_epochs=0" in failed["error"], failed["error"]


# ------------------------------------------------------------------------------------------------ signals
def test_sigterm_during_fit_exits_143_and_names_last_ckpt(tmp_path):
    csv = tmp_path / "s.csv"
    _series(400).to_csv(csv, index=False)
    cfg = _write(tmp_path / "c.yaml", _config(tmp_path / "run", csv, trainer={"max_epochs": 1000}))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "favit_probsparse.cli", "fit", "--config", cfg],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
        )
    try:
        deadline = time.time() + 300
        while not last.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert last.exists(), f"no last.ckpt (exit code {proc.poll()}): {log.read_text()[-2000:]}"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = log.read_text()
    assert proc.returncode == 143, err[-2000:]
    assert (
        f"favit-ps fit: stopped by SIGTERM; the last checkpoint is {last} (resume with --ckpt {last})" in err
    )


# ------------------------------------------------------------------------------------------------ file reading
def _parquet_named_csv(path: Path) -> None:
    pytest.importorskip("pyarrow")
    _series().to_parquet(path)


def _bad_tail_date(path: Path) -> None:
    df = _series()
    df.loc[297, "date"] = "2021-03-13 25:00:00"
    df.to_csv(path, index=False)


def _dst(path: Path) -> None:
    df = _series()
    dates = pd.date_range("2021-03-27 00:00", periods=len(df), freq="h", tz="Europe/Berlin")
    df["date"] = [d.isoformat(sep=" ") for d in dates]  # +01:00 until 2021-03-28 02:00, then +02:00
    df.to_csv(path, index=False)


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (_parquet_named_csv, "data.csv: a Parquet file with a .csv suffix; name it .parquet"),
        (lambda p: p.write_text(""), "data.csv: empty file (no header, no rows)"),
        (lambda p: p.write_text("date,a,b,c\n"), "data.csv: no rows (only a header)"),
        (
            _bad_tail_date,
            "data.csv: column 'date', row 297 (line 299): cannot parse '2021-03-13 25:00:00' as a date",
        ),
        (_dst, "data.csv: column 'date', row 26 (line 28): UTC offset changes from 1:00:00 to 2:00:00"),
    ],
    ids=["parquet-as-csv", "empty", "header-only", "bad-tail-date", "dst"],
)
def test_unreadable_files_are_one_line_naming_file_column_row(tmp_path, capsys, write, message):
    csv = tmp_path / "data.csv"
    write(csv)
    cfg = _write(tmp_path / "c.yaml", _config(tmp_path / "run", csv))
    assert main(["fit", "--config", cfg]) == 1
    err = _err(capsys)
    assert err.startswith("favit-ps fit: error: DataError: ") and message in err, err


def test_a_given_freq_that_disagrees_with_the_timestamps_warns(tmp_path):
    csv = tmp_path / "s.csv"
    _series().to_csv(csv, index=False)
    short = {"max_epochs": 1, "limit_train_batches": 1, "limit_val_batches": 1, "callbacks": []}
    cfg = _write(tmp_path / "c.yaml", _config(tmp_path / "run", csv, trainer=short, data={"freq": "15min"}))
    with pytest.warns(UserWarning, match=r"s\.csv: freq='15min' \(0 days 00:15:00\) but the timestamps are "):
        assert main(["fit", "--config", cfg]) == 0


# ------------------------------------------------------------------------------------------------ checkpoints, exports
def test_load_from_checkpoint_goes_through_the_safe_loader(trained, tmp_path):
    from favit_probsparse.training.checkpoint import CheckpointError
    from favit_probsparse.training.forecast import Forecaster

    ckpt = trained[2]
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "random.ckpt").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "cut.ckpt").write_bytes(ckpt.read_bytes()[:5000])
    for name, msg in (("empty", "is empty"), ("random", "not a PyTorch checkpoint"), ("cut", "truncated")):
        with pytest.raises(CheckpointError, match=rf"checkpoint \S*{name}\.ckpt: .*{msg}"):
            Forecaster.load_from_checkpoint(tmp_path / f"{name}.ckpt", map_location="cpu")
    model = Forecaster.load_from_checkpoint(ckpt, map_location="cpu")  # the README's call still works
    assert model.data_info["columns"] == COLS


def test_forecaster_export_refuses_timm_and_another_export_is_not_overwritten(trained, tmp_path, capsys):
    import timm

    _, _, ckpt, export = trained
    with pytest.raises(RuntimeError, match=r"Unknown model \(favit-probsparse-forecaster \(not a timm model: "
                       r"load it with favit_probsparse\.training\.export\.from_pretrained\)\)"):  # fmt: skip
        timm.create_model(f"local-dir:{export}", pretrained=True)

    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text('{"architecture": "another_model"}')
    assert main(["export", "--ckpt", str(ckpt), "--out", str(out)]) == 2
    assert (
        f"{out} already holds an exported model (config.json); choose another --out, or give --overwrite"
        in _err(capsys)
    )
    assert json.loads((out / "config.json").read_text()) == {"architecture": "another_model"}
    assert main(["export", "--ckpt", str(ckpt), "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["data"]["columns"] == COLS


# ------------------------------------------------------------------------------------------------ one-line errors
def test_trainer_option_errors_are_one_line(tmp_path, capsys):
    csv = tmp_path / "s.csv"
    _series().to_csv(csv, index=False)
    cfg = _write(tmp_path / "neg.yaml", _config(tmp_path / "neg", csv, trainer={"max_epochs": -3}))
    assert main(["fit", "--config", cfg]) == 2
    assert "`max_epochs` must be a non-negative integer or -1. You passed in -3." in _err(capsys)

    stop = {"class_path": "lightning.pytorch.callbacks.EarlyStopping", "init_args": {"monitor": "val_loss"}}
    cfg = _write(
        tmp_path / "es.yaml", _config(tmp_path / "es", csv, trainer={"max_steps": 2, "callbacks": [stop]})
    )
    assert main(["fit", "--config", cfg]) == 2
    err = _err(capsys)
    assert "Early stopping conditioned on metric `val_loss` which is not available" in err
    assert "let the run validate, or remove EarlyStopping" in err


def test_unwritable_output_folder_is_one_line(tmp_path, capsys):
    csv = tmp_path / "s.csv"
    _series().to_csv(csv, index=False)
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:  # root writes anywhere a mode allows nothing; an immutable folder stops it
        if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
            pytest.skip("running as root without chattr: no folder is unwritable")
    else:
        locked.chmod(0o500)
    try:
        cfg = _write(tmp_path / "c.yaml", _config(locked / "run", csv))
        assert main(["fit", "--config", cfg]) == 2
        err = _err(capsys)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(locked)], check=True)
        else:
            locked.chmod(0o700)
    assert f"{locked / 'run'}" in err and ("Permission denied" in err or "not permitted" in err), err


def test_ckpt_last_without_a_checkpoint_is_refused_and_the_hint_names_last(tmp_path, capsys):
    csv = tmp_path / "s.csv"
    _series().to_csv(csv, index=False)
    cfg = _write(tmp_path / "c.yaml", _config(tmp_path / "run", csv, trainer={"limit_train_batches": 2}))
    assert main(["fit", "--config", cfg, "--ckpt", "last"]) == 1
    err = _err(capsys)
    assert (
        f"--ckpt last: no last.ckpt in {tmp_path / 'run' / 'checkpoints'}; give the checkpoint's path" in err
    )
    assert not (tmp_path / "run" / "checkpoints").exists()

    assert main(["fit", "--config", cfg]) == 0
    capsys.readouterr()
    assert main(["fit", "--config", cfg]) == 2
    err = _err(capsys)
    folder = tmp_path / "run" / "checkpoints"
    assert "already holds checkpoints of an earlier run (last.ckpt, epoch=0-step=2.ckpt)" in err, err
    assert f"resume it with --ckpt {folder / 'last.ckpt'}" in err


# ------------------------------------------------------------------------------------------------ concurrency
def _grid(tmp_path: Path, rows: list[dict], trainer: dict | None = None) -> str:
    csv = tmp_path / "s.csv"
    _series().to_csv(csv, index=False)
    base = _config(
        tmp_path / "unused",
        csv,
        trainer={"limit_train_batches": 2, "limit_val_batches": 1, **(trainer or {})},
    )
    base["trainer"]["callbacks"] = []
    grid = {
        "name": "g",
        "base_config": _write(tmp_path / "base.yaml", base),
        "metric": {"name": "test_mse", "mode": "min"},
        "seeds": [0],
        "rows": rows,
    }
    return _write(tmp_path / "grid.yaml", grid)


def test_a_second_fit_into_a_folder_in_use_is_refused(tmp_path, capsys):
    from favit_probsparse.training.checkpoints import lock_folder

    csv = tmp_path / "s.csv"
    _series().to_csv(csv, index=False)
    cfg = _write(tmp_path / "c.yaml", _config(tmp_path / "run", csv))
    fd = lock_folder(tmp_path / "run" / "checkpoints")  # as a running fit holds it
    try:
        assert main(["fit", "--config", cfg]) == 2
    finally:
        os.close(fd)
    err = _err(capsys)
    assert (
        f"{tmp_path / 'run' / 'checkpoints'}: another fit is writing into this folder (pid {os.getpid()})"
        in err
    )
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


def test_ablate_skips_a_run_another_ablate_holds(tmp_path, capsys):
    from favit_probsparse.experiments.ablate import main as ablate
    from favit_probsparse.training.checkpoints import lock_folder

    grid = _grid(tmp_path, [{"name": "r"}])
    run = tmp_path / "runs" / "g" / "r" / "seed0"
    fd = lock_folder(run, "ablate run", name=".favit-ps-ablate.lock")
    try:
        ablate([grid, "--runs-dir", str(tmp_path / "runs"), "--no-chart"])
    finally:
        os.close(fd)
    out = capsys.readouterr().out
    assert (
        f"r/seed0: skipped: {run}: another ablate run is writing into this folder (pid {os.getpid()})" in out
    )
    assert not (run / "metrics.json").exists() and not (run / "failed.json").exists()


def test_ablate_records_one_result_and_names_a_killing_signal(tmp_path, monkeypatch, capsys):
    from favit_probsparse.experiments import runner
    from favit_probsparse.experiments.ablate import main as ablate

    grid = _grid(tmp_path, [{"name": "r"}])
    run = tmp_path / "runs" / "g" / "r" / "seed0"
    # a worker that writes its record, then is killed: the run failed, and only failed.json says so
    script = (
        "import json, os, signal, sys; "
        "open(os.path.join(sys.argv[1], 'metrics.json'), 'w').write(json.dumps({'metrics': {'test_mse': 1.0}})); "
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    monkeypatch.setattr(runner, "_worker_command", lambda d: [sys.executable, "-c", script, str(d)])
    assert ablate([grid, "--runs-dir", str(tmp_path / "runs"), "--no-chart"]) == 1
    assert not (run / "metrics.json").exists()
    assert json.loads((run / "failed.json").read_text())["error"] == "killed by signal 9 (SIGKILL)"


def test_ablate_checks_every_row_before_the_first_run(tmp_path, capsys):
    grid = _grid(
        tmp_path,
        [{"name": "good"}, {"name": "typo", "overrides": {"model.init_args.learning_rat": 0.1}}],
    )
    with pytest.raises(SystemExit) as stop:
        main(["ablate", grid, "--runs-dir", str(tmp_path / "runs"), "--no-chart"])
    msg = str(stop.value)
    assert msg.startswith(f"favit-ps ablate: {grid}: row 'typo': ") and "learning_rat" in msg, msg
    assert "\n" not in msg and not (tmp_path / "runs" / "g" / "good").exists()

    with pytest.raises(SystemExit, match=r"favit-ps ablate: seeds must be in \[0, 2\*\*32\), got \[-1\]"):
        main(["ablate", grid, "--seeds", "0", "-1", "--dry-run"])


def test_ablate_stores_the_one_line_cause_of_a_failed_run(tmp_path):
    from favit_probsparse.experiments.ablate import main as ablate

    grid = _grid(tmp_path, [{"name": "big", "overrides": {"data.init_args.batch_size": 1000}}])
    assert ablate([grid, "--runs-dir", str(tmp_path / "runs"), "--no-chart"]) == 1
    rec = json.loads((tmp_path / "runs" / "g" / "big" / "seed0" / "failed.json").read_text())
    assert (
        rec["error"].startswith("DataError: ")
        and "batch_size=1000 is larger than the 175 training" in rec["error"]
    )


def test_a_killed_ablate_takes_its_worker_with_it(tmp_path):
    if not Path("/proc/self/stat").exists():
        pytest.skip("reads the worker's state from /proc")
    grid = _grid(tmp_path, [{"name": "long"}], trainer={"max_epochs": 1000, "limit_train_batches": None})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen(
        [sys.executable, "-m", "favit_probsparse.cli", "ablate", grid, "--runs-dir", str(tmp_path / "runs")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    lock = tmp_path / "runs" / "g" / "long" / "seed0" / ".favit-ps.lock"  # the worker's fit writes its pid
    try:
        deadline = time.time() + 180
        while not (lock.exists() and lock.read_text().strip()) and time.time() < deadline:
            time.sleep(0.2)
        worker = int(lock.read_text())
        parent.kill()
        parent.wait()
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                state = Path(f"/proc/{worker}/stat").read_text().split()[2]
            except FileNotFoundError:
                break
            if state == "Z":  # exited, not yet reaped by init
                break
            time.sleep(0.2)
        else:
            os.kill(worker, signal.SIGKILL)
            pytest.fail("the worker outlived its killed parent by 30 s")
    finally:
        if parent.poll() is None:
            parent.kill()


# ------------------------------------------------------------------------------------------------ numbers
def test_a_value_beyond_float32_is_named(tmp_path, capsys):
    df = _series()
    df.loc[250, "b"] = 1e300  # in the test split
    df.to_csv(tmp_path / "s.csv", index=False)
    cfg = _write(tmp_path / "c.yaml", _config(tmp_path / "run", tmp_path / "s.csv"))
    assert main(["fit", "--config", cfg]) == 1
    err = _err(capsys)
    assert (
        "s.csv: column 'b', row 250 (line 252) (2021-03-11 10:00:00): value 1e+300 is beyond float32's range"
        in err
    )


def test_a_nan_validation_loss_stops_the_forecast_run(tmp_path, capsys):
    """A learning rate of 1e30 with one training step: the step's loss is finite, the weights after it are not."""
    csv = tmp_path / "s.csv"
    _series().to_csv(csv, index=False)
    cfg = _config(tmp_path / "run", csv, trainer={"limit_train_batches": 1, "limit_val_batches": 2})
    cfg["model"]["init_args"].update(learning_rate=1e30, lradj="constant")
    assert main(["fit", "--config", _write(tmp_path / "c.yaml", cfg)]) == 1
    err = _err(capsys)
    assert "NonFiniteLossError: val loss (MSE) is " in err and "at epoch 0: the weights diverged" in err, err


def test_a_nan_validation_loss_stops_the_vision_run(tmp_path, capsys):
    from _helpers import vision_config
    from favit_probsparse.data.vision import write_toy_image_folder

    toy = write_toy_image_folder(tmp_path / "toy", num_classes=3, train_per_class=8, test_per_class=4)
    trainer = {"limit_train_batches": 1, "limit_val_batches": 1, "num_sanity_val_steps": 0, "logger": False,
               "enable_checkpointing": False, "enable_model_summary": False, "enable_progress_bar": False,
               "default_root_dir": str(tmp_path / "run")}  # fmt: skip
    model = {"base_batch_size": None, "warmup_epochs": 0.0, "lr": 1e30}
    cfg = _write(tmp_path / "v.yaml", vision_config(toy, trainer, model))
    assert main(["fit", "--config", cfg]) == 2
    err = _err(capsys)
    assert "validation loss is NaN or inf on 1 batch(es) at epoch 0: the weights diverged" in err, err


def test_a_network_fed_the_wrong_number_of_steps_says_so(trained):
    import torch

    from favit_probsparse.training.forecast import forecaster_from_checkpoint

    model = forecaster_from_checkpoint(trained[2])
    x = torch.zeros(2, SEQ + 6, 3)
    y = torch.zeros(2, LABEL + PRED, 3)
    with pytest.raises(
        ValueError, match=rf"the network reads seq_len={SEQ} input steps but the batch has {SEQ + 6}"
    ):
        model(x, y, torch.zeros(2, SEQ + 6, 4), torch.zeros(2, LABEL + PRED, 4))
