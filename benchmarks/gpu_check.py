"""Everything that needs a GPU, in one command (``make gpu-check``), into one folder.

    python benchmarks/gpu_check.py --out results/gpu-check            # on a machine with one CUDA GPU
    python benchmarks/gpu_check.py --out gpu-check-plan --dry-run     # anywhere: parse, plan, write the skeleton
    python benchmarks/gpu_check.py --out DIR --official-file ~/FaViT/classification/favit.py --data ~/data

Steps (each a subprocess with its own time limit; the limits add up to under 10 minutes, but the script has
never run on a GPU, so its real duration is unknown):

1. ``env``: GPU, driver, torch and CUDA versions (``nvidia-smi``, ``torch.cuda``).
2. ``cuda-tests``: the tests marked ``cuda`` (CUDA code paths: fast == exact ProbSparse, the sparsity-measure
   dispatch on both sides of ``_DENSE_MEASURE_MAX_RATIO``, FaViT's SDPA head-dim padding, masked rows).
3. ``attention``: ``benchmarks/attention.py`` at B=32 (ProbSparse official/exact/fast vs SDPA).
4. ``kernels``: ``benchmarks/attention_kernels.py`` on the GPU: the attention-kernel table of this GPU class
   (``DIR/kernel_table.json``; :mod:`favit_probsparse.attention.dispatch` uses it once merged into the package's).
5. ``favit``: the FaViT throughput table (``benchmarks/favit.py --device cuda``; ours, PVTv2, and the
   official code when ``--official-file`` is given). ``--favit-args`` passes more options through.
6. ``informer``: one Informer epoch with the fast recipe (bf16-mixed, BitsDropout) on ETTh1.

``DIR/summary.md`` lists each step's command, status, wall time and output files; ``DIR/summary.json`` the same
as data. A step that fails or runs out of time is recorded and the next one runs. Before anything runs, every
step's arguments are parsed as its command will parse them (the ``favit-ps`` step through Lightning's parser and
the classes its configs name, each script through its ``build_parser()``), on any machine and without data; a
stale or misspelt option stops the check there with the option named. ``--dry-run`` does everything except run
the steps (exit 1 when an argument is bad; ``tests/test_gpu_check.py`` runs it). This is a script that reports;
it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from favit_probsparse.utils.io import write_text
from favit_probsparse.utils.provenance import hardware_summary, status_line

REPO = Path(__file__).resolve().parents[1]

# ---- the one Informer line (update it here when the forecaster configs change; the dry run parses it) ---------
INFORMER_ARGS = (
    "fit --config configs/forecast/informer_etth1_M_96_48_24.yaml "
    "--trainer.max_epochs 1 --trainer.precision bf16-mixed --model.init_args.network.init_args.dropout_impl bits "
    "--trainer.accelerator gpu --trainer.devices 1 --trainer.logger false "
    "--trainer.default_root_dir {out}/informer"
)

# step name -> time limit in seconds (sum 570 s: under 10 minutes; the cuda tests include torch.compile)
LIMITS = {"env": 20, "cuda-tests": 150, "attention": 90, "kernels": 90, "favit": 140, "informer": 80}

# the FaViT table on a GPU: the project's reference setting (224², batch 128) in float32 and bf16 autocast
FAVIT_GPU_ARGS = (
    "--batch 128 --bf16 --rounds 8 --rounds-large 5 --warmup 2 --fusions official max probsparse hierarchical"
)


def _q(path: Path | str) -> str:
    return shlex.quote(str(path))


def plan(a: argparse.Namespace, out: Path) -> list[dict]:
    """The steps: name, shell command, log file and output files (paths relative to ``out``)."""
    py = _q(sys.executable)
    favit_args = f"--device cuda --markdown {_q(out / 'favit.md')} --json {_q(out / 'favit.json')}"
    if a.official_file:
        favit_args += f" --official-file {_q(a.official_file)}"
    if a.favit_args:
        favit_args += " " + a.favit_args
    attention_args = f"--device cuda --batch {a.attention_batch} --markdown {_q(out / 'attention.md')}"
    informer_args = INFORMER_ARGS.format(out=_q(out))
    # the GPU's attention-kernel table, for src/favit_probsparse/attention/kernel_table.json (merge by hand:
    # `benchmarks/attention_kernels.py --write` there replaces only that machine class's table)
    kernels_args = f"--device cuda --rounds 5 --write --table {_q(out / 'kernel_table.json')}"
    steps = [
        {
            "name": "env",
            "cmd": f"nvidia-smi > {_q(out / 'env.txt')} 2>&1; {py} benchmarks/gpu_check.py --_env >> {_q(out / 'env.txt')}",
            "outputs": ["env.txt"],
        },
        {
            "name": "cuda-tests",
            "cmd": f"{py} -m pytest -m cuda -p no:xdist -q -rs --continue-on-collection-errors tests --junitxml {_q(out / 'cuda-tests.xml')}",
            "outputs": ["cuda-tests.xml"],
            "check": {"pytest_marker": "cuda", "paths": ["tests"]},
        },
        {
            "name": "attention",
            "cmd": f"{py} benchmarks/attention.py {attention_args}",
            "outputs": ["attention.md"],
            "check": {"script": "benchmarks/attention.py", "args": attention_args},
        },
        {
            "name": "kernels",
            "cmd": f"{py} benchmarks/attention_kernels.py {kernels_args}",
            "outputs": ["kernel_table.json"],
            "check": {"script": "benchmarks/attention_kernels.py", "args": kernels_args},
        },
        {
            "name": "favit",
            "cmd": f"{py} benchmarks/favit.py {favit_args}",
            "outputs": ["favit.md", "favit.json"],
            "check": {"script": "benchmarks/favit.py", "args": favit_args},
        },
        {
            "name": "informer",
            "cmd": f"{py} -m favit_probsparse.cli {informer_args}",
            "outputs": ["informer/"],
            "check": {"cli": informer_args},
        },
    ]
    skip = set(a.skip or ())
    for s in steps:
        s["log"] = f"{s['name']}.log"
        s["limit_s"] = LIMITS[s["name"]]
        s["status"] = "skipped (--skip)" if s["name"] in skip else "planned"
    return steps


def _load_script(rel: str):
    spec = importlib.util.spec_from_file_location(f"_gpu_check_{Path(rel).stem}", REPO / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _check_script(rel: str, args: list[str]) -> None:
    """Parse ``args`` with the script's own ``build_parser()`` (argparse prints its error and exits 2)."""
    parser = getattr(_load_script(rel), "build_parser", None)
    if parser is None:
        raise ValueError(f"{rel} has no build_parser() to check its flags against")
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parser().parse_args(args)
    except SystemExit as e:
        msg = err.getvalue().strip().splitlines()
        raise ValueError(msg[-1] if msg else f"{rel}: argument parsing exited with {e.code}") from None


def _check_pytest(marker: str, paths: list[str]) -> None:
    import tomllib

    ini = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    if not any(m.split(":")[0].strip() == marker for m in ini.get("markers", [])):
        raise ValueError(f"pytest marker {marker!r} is not declared in pyproject.toml (--strict-markers)")
    for rel in paths:
        if not (REPO / rel).exists():
            raise ValueError(f"{rel}: no such folder")


def check_step(step: dict) -> str | None:
    """Parse the step's arguments as its command will, without running it: a favit-ps command through Lightning's
    parser (each option checked against the classes named in its configs), a script through its
    ``build_parser()``. Returns the problem in one line, or None."""
    spec = step.get("check")
    if spec is None:
        return None
    sys.path.insert(0, str(REPO / "src"))
    try:
        with contextlib.chdir(REPO):  # the commands run in the checkout: configs are named relative to it
            if "cli" in spec:
                from favit_probsparse.training.project_cli import check_args

                check_args(shlex.split(spec["cli"]))
            elif "script" in spec:
                _check_script(spec["script"], shlex.split(spec["args"]))
            else:
                _check_pytest(spec["pytest_marker"], spec["paths"])
    except Exception as e:  # every failure is reported in the summary; the checks go on
        from favit_probsparse.training.project_cli import user_error_message

        return f"{type(e).__name__}: {user_error_message(e)}"
    return None


def _favit_supports(flag: str) -> bool:
    """Whether benchmarks/favit.py knows ``flag`` (it is being extended; absent flags are dropped, not fatal)."""
    try:
        text = (REPO / "benchmarks" / "favit.py").read_text()
    except OSError:
        return False
    return f'"{flag}"' in text


def _ett_csv(data: str | None) -> Path:
    """Where the Informer step will look for ETTh1 (``favit_probsparse.data.ett.ett_path``'s rule, without
    importing the data stack in a dry run)."""
    sys.path.insert(0, str(REPO / "src"))
    from favit_probsparse.paths import data_root

    return (Path(data).expanduser() if data else data_root()) / "ETT" / "ETTh1.csv"


def _print_env() -> int:
    import torch

    print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())
    if not torch.cuda.is_available():
        print("no CUDA device visible to torch")
        return 1
    props = torch.cuda.get_device_properties(0)
    print(
        torch.cuda.get_device_name(0),
        f"{props.total_memory / 2**30:.0f} GiB",
        f"sm_{props.major}{props.minor}",
    )
    return 0


def write_summary(out: Path, steps: list[dict], header: str) -> None:
    lines = [
        "# GPU check",
        "",
        header,
        "",
        "| step | status | wall s | limit s | outputs | log | command |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in steps:
        wall = f"{s['wall_s']:.1f}" if "wall_s" in s else ""
        cmd = s["cmd"].replace("|", "\\|")
        lines.append(
            f"| {s['name']} | {s['status']} | {wall} | {s['limit_s']} | {', '.join(s['outputs'])} | "
            f"{s['log']} | `{cmd}` |"
        )
    for name, text in (
        ("summary.md", "\n".join(lines) + "\n"),
        ("summary.json", json.dumps(steps, indent=1)),
    ):
        write_text(out / name, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for every table, log and the summary (created)")
    p.add_argument("--dry-run", action="store_true", help="plan and write the summary skeleton; run nothing")
    p.add_argument("--official-file", default=None, help="the official FaViT classification/favit.py")
    p.add_argument(
        "--favit-args",
        default=FAVIT_GPU_ARGS,
        help=f"options for benchmarks/favit.py, one quoted string (default: {FAVIT_GPU_ARGS!r})",
    )
    p.add_argument("--attention-batch", type=int, default=32)
    p.add_argument("--data", default=None, help="data root holding ETT/ETTh1.csv (default: FAVIT_DATA rules)")
    p.add_argument("--skip", nargs="*", choices=list(LIMITS), default=[], help="steps to leave out")
    p.add_argument("--_env", action="store_true", help=argparse.SUPPRESS)  # internal: print versions
    if "--_env" in (sys.argv[1:] if argv is None else argv):
        return _print_env()
    a = p.parse_args(argv)
    if a.official_file and not Path(a.official_file).is_file():
        p.error(f"--official-file {a.official_file}: no such file")
    if a.attention_batch < 1:
        p.error(f"--attention-batch must be >= 1, got {a.attention_batch}")
    try:
        shlex.split(a.favit_args)
    except ValueError as e:
        p.error(f"--favit-args {a.favit_args!r}: {e}")

    out = Path(a.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    if a.official_file and not _favit_supports("--official-file"):
        print("note: benchmarks/favit.py has no --official-file yet; running without it", file=sys.stderr)
        a.official_file = None
    steps = plan(a, out)
    csv = _ett_csv(a.data)
    if not csv.is_file():
        informer = next(s for s in steps if s["name"] == "informer")
        if informer["status"] == "planned":
            informer["status"] = f"skipped (no {csv}; pass --data DIR holding ETT/ETTh1.csv)"
    header = status_line(  # the line every result file opens with
        "The GPU checks (tests marked cuda, attention benchmark, FaViT throughput, one Informer epoch)",
        time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        hardware_summary() + " (details in env.txt)",
        " ".join(shlex.quote(x) for x in [sys.executable, *sys.argv]),
    )
    bad = 0
    for s in steps:  # every step's arguments are parsed first, on any machine and with or without its data
        if s["status"] == "skipped (--skip)":
            continue
        if problem := check_step(s):
            s["status"] = f"bad arguments ({problem})"
            bad += 1
        elif s["status"] != "planned":  # e.g. skipped for want of data: its command line is still checked
            s["status"] += "; arguments checked"
    if a.dry_run:
        for s in steps:
            if s["status"] == "planned":
                s["status"] = "arguments checked; not run (dry run)"
        write_summary(out, steps, header + " Dry run: arguments parsed, nothing was executed.")
        print(f"dry run: plan written to {out / 'summary.md'}")
        if bad:
            print(f"dry run: {bad} step(s) have bad arguments, see {out / 'summary.md'}", file=sys.stderr)
        return 1 if bad else 0
    if bad:
        write_summary(out, steps, header + " Stopped: bad arguments, nothing was executed.")
        print((out / "summary.md").read_text())
        return 1

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    if a.data:
        env["FAVIT_DATA"] = str(Path(a.data).expanduser().resolve())
    failed = 0
    for s in steps:
        if s["status"] != "planned":
            continue
        print(f"[gpu-check] {s['name']} (limit {s['limit_s']} s): {s['cmd']}", file=sys.stderr)
        t0 = time.perf_counter()
        with open(out / s["log"], "w") as log:
            proc = subprocess.Popen(
                s["cmd"],
                shell=True,
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                rc = proc.wait(timeout=s["limit_s"])
                s["status"] = "ok" if rc == 0 else f"failed (exit {rc})"
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the shell and everything it started
                proc.wait()
                s["status"] = f"timed out after {s['limit_s']} s"
        s["wall_s"] = time.perf_counter() - t0
        failed += s["status"] != "ok"
        write_summary(out, steps, header)  # after every step, so a killed run still leaves its table
    print((out / "summary.md").read_text())
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
