"""Facts that results/fusion-ablation-cifar10-subset.md relies on: how many windows each FaSA branch fuses
(:func:`favit_probsparse.models.favit.windows_per_branch`), and that with a single window every fusion except
``hierarchical`` passes it through unchanged (at initialisation)."""

from __future__ import annotations

import math

import pytest
import timm
import torch

import favit_probsparse.models  # noqa: F401  (registers the models)
from favit_probsparse.attention.fusion import FUSIONS, build_fusion
from favit_probsparse.models.favit import windows_per_branch


def _naive_windows(img: int, stem_stride: int, sr_ratios=(8, 4, 2, 1), window: int = 7):
    """By hand: stage maps n = img / (stem·2^i) (even sizes), ceil(n / span)² windows, span = d·(window-1)+1."""
    out = []
    for i, sr in enumerate(sr_ratios):
        n = img // (stem_stride * 2**i)
        dilations = [1] + ([sr] if sr > 1 else [])
        out.append([math.ceil(n / (d * (window - 1) + 1)) ** 2 for d in dilations])
    return out


# the CIFAR variants' stem is a 3×3 conv; the quick job's tiny model sets its stride to 2 (stem_stride: 2)
CIFAR_STEM = dict(stem_patch_size=3)


@pytest.mark.parametrize(
    ("img", "stem", "expected"),
    [
        (32, dict(stem_stride=2, **CIFAR_STEM), [[9, 1], [4, 1], [1, 1], [1]]),  # the quick job at 32²
        (64, dict(stem_stride=2, **CIFAR_STEM), [[25, 1], [9, 1], [4, 1], [1]]),
        (112, dict(stem_stride=2, **CIFAR_STEM), [[64, 4], [16, 4], [4, 4], [1]]),  # = FaViT-B0 at 224²
        (
            224,
            dict(stem_stride=4),
            [[64, 4], [16, 4], [4, 4], [1]],
        ),  # FaViT-B0 (the report's Table 1 setting)
        (32, dict(stem_stride=1, **CIFAR_STEM), [[25, 1], [9, 1], [4, 1], [1]]),  # favit_b0_cifar at 32²
    ],
)
def test_windows_per_branch(img, stem, expected):
    assert windows_per_branch(img, **stem) == expected
    assert _naive_windows(img, stem["stem_stride"]) == expected


@pytest.mark.parametrize(
    ("name", "kw", "size"),
    [
        ("favit_b0_cifar", dict(stem_stride=2), (64, 64)),
        ("favit_b0", {}, (40, 57)),
        ("favit_b0", {}, (112, 112)),
    ],
)
def test_windows_per_branch_counts_what_the_model_fuses(name, kw, size):
    """The counts are the L of the candidates each FaSA branch of a built model actually receives."""
    m = timm.create_model(name, depths=(1, 1, 1, 1), num_classes=2, **kw).eval()
    seen: list[list[int]] = [[] for _ in range(4)]
    hooks = []
    for i, stage in enumerate(m.stages):
        for fz in stage.blocks[0].attn.fusions:
            hooks.append(
                fz.register_forward_hook(lambda mod, args, out, i=i: seen[i].append(args[0].shape[3]))
            )
    with torch.no_grad():
        m(torch.randn(1, 3, *size))
    for h in hooks:
        h.remove()
    assert seen == m.windows_per_branch(size)
    stem = dict(stem_stride=m.stem_stride, stem_patch_size=m.stages[0].downsample.proj.kernel_size[0])
    assert seen == windows_per_branch(size, **stem)


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
