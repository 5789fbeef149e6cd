"""The fusion figure of docs/fusion.md shows what the operators really read (checked against their definitions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _helpers import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "figures" / "fusion_keys.py"


@pytest.fixture(scope="module")
def fig():
    if not SCRIPT.is_file():
        pytest.skip("docs/figures/fusion_keys.py is not in this checkout")
    return load_script(SCRIPT, "fusion_keys")


def test_official_reads_contiguous_window_major_chunks(fig):
    _, pix, wc, key = fig.trace("official", {})
    L, C, j = fig.L, fig.C, fig.CHANNEL
    expect = np.zeros((L, C))
    for flat in range(j * L, (j + 1) * L):  # AdaptiveAvgPool chunk j of the (window, channel) axis
        expect[flat // C, flat % C] = 1
    assert np.array_equal(wc, expect)
    assert key == fig.KEY_POS and pix.sum() == len(set(np.nonzero(expect)[0]))  # one pixel per window read


@pytest.mark.parametrize(("name", "windows"), [("mean", 4), ("linear", 4), ("max", 1), ("probsparse", 1)])
def test_per_channel_operators_read_one_channel(fig, name, windows):
    count, _, wc, _ = fig.trace(name, {})
    assert (
        wc[:, fig.CHANNEL].sum() == windows and wc.sum() == windows
    )  # only channel j, from `windows` windows
    if name != "max":
        assert count.sum() == fig.P * (fig.L if name in ("mean", "linear") else 1)


def test_conv1x1_reads_every_window_and_channel(fig):
    _, _, wc, _ = fig.trace("conv1x1", {})
    assert wc.all()
