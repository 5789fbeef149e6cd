"""The ground floor's atomic writer: whole files or none, with the mode an ordinary ``open()`` gives."""

from __future__ import annotations

import os
import stat

import pytest

from favit_probsparse.utils.io import atomic_write, save_figure, write_json, write_text


@pytest.fixture
def umask():
    """Set a umask for one test and put the old one back."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda m: os.umask(m)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_files_get_the_mode_plain_open_gives(tmp_path, umask, mask):
    """mkstemp creates 0600 files; the result must look like any other file the user writes (0644 at umask 022)."""
    umask(mask)
    ref = tmp_path / "plain.txt"
    with open(ref, "w") as fh:  # the reference: what Python's open() gives under this umask
        fh.write("x")
    path = write_text(tmp_path / "atomic.txt", "x")
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(ref.stat().st_mode) == 0o666 & ~mask


def test_text_and_json_round_trip_and_create_folders(tmp_path):
    path = write_text(tmp_path / "a" / "b" / "t.md", "é ± ²\n")
    assert path.read_text(encoding="utf-8") == "é ± ²\n"
    assert write_json(tmp_path / "j.json", {"x": [1.5, float("inf")]}).read_text() == (
        '{\n  "x": [\n    1.5,\n    null\n  ]\n}\n'
    )


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_text(tmp_path / "r.md", "old")

    def half_then_crash(p):
        p.write_text("new, but only ha")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(path, half_then_crash)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.md"]


def test_figures_keep_the_format_of_their_suffix(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    try:
        png = save_figure(fig, tmp_path / "f.png", dpi=20)
        pdf = save_figure(fig, tmp_path / "f.pdf")
    finally:
        plt.close(fig)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.pdf", "f.png"]
