"""Repository hygiene: no absolute path of a development machine in a tracked file, and every ``docs/*.md`` the
code points to exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# An absolute path that only exists on some machine: a home folder (home/<user>, Users/<user>, root), a scratch
# mount (work, scratch, mnt/<x>) or a named entry under tmp, each right after a leading slash. The look-behind skips
# URLs (https://host/work/...), relative paths (runs/work/...) and paths inside longer names; system paths a program
# may legitimately name (/dev/null, /proc/cpuinfo, /usr/bin/env) are not in the list.
MACHINE_PATH = re.compile(
    r"(?<![\w.~:/\\-])/(?:(?:home|Users)/[\w.-]+|root|work|scratch|mnt/[\w.-]+|tmp/[\w.-]+)(?=/|\b)"
)
DOC_REF = re.compile(r"\bdocs/[\w./-]+?\.md\b")


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip("not a git checkout (git ls-files failed)")
    files = [REPO / p for p in out.decode().split("\0") if p]
    if not files:
        pytest.skip("git ls-files listed nothing")
    return [f for f in files if f.is_file()]


def _text(path: Path) -> str | None:
    """The file's text, or None for a binary file (a NUL byte or not UTF-8)."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ("see /" + "work/shared/reference/favit.md", True),
        ("saved to /" + "home/alice/runs/x.ckpt", True),
        ("/" + "root/.cache/torch", True),
        ("python x.py --out /" + "tmp/run1", True),
        ("data in /" + "Users/bob/data", True),
        ("(/" + "mnt/nfs/data)", True),
        ("https://github.com/" + "work/x and https://example.org/" + "home/alice/", False),
        ("> /dev/null 2>&1; cat /proc/cpuinfo; #!/usr/bin/env python", False),
        ("runs/" + "work/seed0, ../shared/data, ~/.cache/favit-probsparse, file:///" + "tmp/mirror", False),
        ("a/b/" + "home/x", False),
    ],
)
def test_machine_path_pattern(text, bad):
    """The pattern flags machine paths and leaves URLs, relative paths and system files alone."""
    assert bool(MACHINE_PATH.search(text)) is bad


def test_no_machine_paths_in_tracked_files():
    hits = []
    for path in _tracked_files():
        text = _text(path)
        if text is None:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            m = MACHINE_PATH.search(line)
            if m:
                hits.append(f"{path.relative_to(REPO)}:{lineno}: {m.group(0)}")
    assert not hits, "absolute machine paths in tracked files:\n" + "\n".join(hits)


def test_docs_references_resolve():
    """Every ``docs/<file>.md`` named in src/, tests/, benchmarks/, configs/ or the README exists."""
    roots = ("src/", "tests/", "benchmarks/", "configs/", "README.md", "docs/")
    missing, seen = [], 0
    for path in _tracked_files():
        rel = path.relative_to(REPO).as_posix()
        if not rel.startswith(roots):
            continue
        text = _text(path)
        if text is None:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            for ref in DOC_REF.findall(line):
                seen += 1
                if not (REPO / ref).is_file():
                    missing.append(f"{rel}:{lineno}: {ref}")
    assert seen > 0, "no docs/*.md references found: the code should point at its docs"
    assert not missing, "references to missing docs:\n" + "\n".join(missing)


# A reference to this project's tracker (an issue number) or to a work branch (a branch name in backquotes): the repository
# outlives both. Links to other projects' trackers (".../issues/134") are citations and pass.
TRACKER_REF = re.compile(r"(?<![/\w])issues? ?#?\d+|\bbranch `[\w./-]{2,}`", re.IGNORECASE)


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ("as asked in iss" + "ue 12 §1", True),
        ("Issue" + " #3", True),
        ("code of branch " + "`fv` at commit abc", True),
        ("https://github.com/zhouhaoyi/Informer2020/" + "issues/134 reports", False),
        ("window branch ``i`` of the shared K/V source; the issue tracker", False),
    ],
)
def test_tracker_reference_pattern(text, bad):
    assert bool(TRACKER_REF.search(text)) is bad


def test_no_tracker_or_branch_references_in_tracked_files():
    hits = []
    for path in _tracked_files():
        if path.name == "LICENSE" or path.suffix == ".json":
            continue
        text = _text(path)
        if text is None:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            m = TRACKER_REF.search(line)
            if m:
                hits.append(f"{path.relative_to(REPO)}:{lineno}: {m.group(0)}")
    assert not hits, "references to issue numbers or work branches:\n" + "\n".join(hits)


def test_every_result_file_opens_with_a_status_line():
    """Each ``results/**/*.md`` says right under its title what it shows, when, on what and with which command."""
    files = sorted((REPO / "results").rglob("*.md"))
    assert files
    missing = [
        f.relative_to(REPO).as_posix()
        for f in files
        if not f.read_text(encoding="utf-8").split("\n\n", 2)[1].startswith("**Status.**")
    ]
    assert not missing, "results files without a status line under the title:\n" + "\n".join(missing)
