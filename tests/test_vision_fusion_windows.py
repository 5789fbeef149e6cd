"""Facts that results/fusion-ablation-cifar10-subset.md relies on: how many windows each FaSA branch fuses, and
that with a single window every fusion except ``hierarchical`` passes it through unchanged (at initialisation)."""

from __future__ import annotations

import math

import pytest
import torch

from favit_probsparse.attention.fusion import FUSIONS, build_fusion


def windows_per_branch(img_size: int, stem_stride: int, sr_ratios=(8, 4, 2, 1), window: int = 7):
    """ceil(n / span)² windows per branch (span = dilation·(window-1)+1), stage maps n = img / (stem·2^i)."""
    out = []
    for i, sr in enumerate(sr_ratios):
        n = img_size // (stem_stride * 2**i)
        dilations = [1] + ([sr] if sr > 1 else [])
        out.append([math.ceil(n / (d * (window - 1) + 1)) ** 2 for d in dilations])
    return out


def test_windows_per_branch_tiny_32_vs_b0_224():
    assert windows_per_branch(32, 2) == [[9, 1], [4, 1], [1, 1], [1]]  # the CPU ablation's tiny model
    assert windows_per_branch(224, 4) == [[64, 4], [16, 4], [4, 4], [1]]  # FaViT-B0 at 224 (seed Table 1)


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_single_window_is_passed_through_except_hierarchical(name):
    torch.manual_seed(0)
    cand, q = torch.randn(2, 2, 49, 1, 8), torch.randn(2, 2, 64, 8)
    f = build_fusion(name, 8, 7, num_windows=1)
    out = f(cand, q) if getattr(f, "needs_query", False) else f(cand)
    if name == "hierarchical":
        assert out.shape[2] != 49
    else:
        torch.testing.assert_close(out, cand[:, :, :, 0, :])
