"""FaViT in ``fusion="official"`` mode against an independent functional re-statement of the official code.

``official_forward`` (:mod:`favit_probsparse.testing.favit_official`) runs the released FaViT forward pass
(github.com/q2479036243/FaViT @ f2c35b5, ``classification/favit.py``, traced in docs/favit.md §2) directly on a
state_dict in the *official* key layout (``patch_embed{i}``, ``block{i}.{j}``, ``norm{i}``, ``head``), with the
official op sequence: ReflectionPad2d + nn.Unfold + AdaptiveAvgPool2d((None, c)) + explicit softmax attention. Our
model loads the same state_dict through ``checkpoint_filter_fn`` and must give the same logits.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

import favit_probsparse.models  # noqa: F401  (registers the models)
from favit_probsparse.models.favit import checkpoint_filter_fn, reflect_index, window_candidates
from favit_probsparse.testing.favit_official import official_forward, to_official_keys

WS = 7


def _randomise(model):
    # non-trivial biases/norm weights, so every parameter matters for the comparison
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("favit_b0", (224, 224)),
        ("favit_b0", (112, 112)),
        ("favit_b0", (128, 200)),
        ("favit_b0_cifar", (32, 32)),
    ],
)
def test_official_checkpoint_gives_same_logits(name, size):
    torch.manual_seed(0)
    src = timm.create_model(name, num_classes=10).eval()
    _randomise(src)
    official_sd = {"model": to_official_keys(src.state_dict())}  # what main.py saves
    assert any(k.startswith("block1.0.attn.kv_l.depth_conv") for k in official_sd["model"])
    assert not any(k.startswith("stages.") for k in official_sd["model"])

    dst = timm.create_model(name, num_classes=10, fusion="official").eval()
    dst.load_state_dict(checkpoint_filter_fn(official_sd, dst), strict=True)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = official_forward(official_sd["model"], x)
        out = dst(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_official_checkpoint_through_timm_pretrained(tmp_path):
    src = timm.create_model("favit_b0_cifar", num_classes=100).eval()
    _randomise(src)
    path = tmp_path / "favit_b0_official.pth"
    torch.save({"model": to_official_keys(src.state_dict())}, path)
    dst = timm.create_model(
        "favit_b0_cifar", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))


def test_filter_fn_maps_official_names():
    sd = {
        "patch_embed1.proj.weight": 0,
        "block3.5.attn.local_convs.1.bias": 1,
        "norm4.weight": 2,
        "head.bias": 3,
        "module.block1.0.mlp.dwconv.dwconv.weight": 4,
    }
    assert checkpoint_filter_fn(sd) == {
        "stages.0.downsample.proj.weight": 0,
        "stages.2.blocks.5.attn.local_convs.1.bias": 1,
        "stages.3.norm.weight": 2,
        "head.bias": 3,
        "stages.0.blocks.0.mlp.dwconv.dwconv.weight": 4,
    }


@pytest.mark.parametrize("n", [1, 2, 5, 8, 14])
def test_reflect_index_matches_torch_reflect(n):
    x = torch.arange(float(n)).view(1, 1, n)
    for pad in range(0, 3 * n + 2):
        if pad < n:  # torch's reflect is defined only here
            ref = F.pad(x, (0, pad), mode="reflect").flatten().long().tolist()
            assert [reflect_index(i, n) for i in range(n + pad)] == ref
        # beyond: mirror again (periodic reflection); always a valid index
        assert all(0 <= reflect_index(i, n) < n for i in range(n + pad))


@pytest.mark.parametrize(
    ("hw", "dil"),
    [
        ((14, 14), 1),
        ((13, 20), 1),
        ((56, 56), 8),
        ((98, 98), 8),
        ((49, 60), 8),
        ((28, 30), 4),
        ((50, 75), 4),
        ((26, 26), 2),
        ((8, 9), 2),
    ],
)
def test_window_candidates_match_pad_unfold(hw, dil):
    H, W = hw
    heads, c = 2, 3
    x = torch.randn(2, heads * c, H, W)
    span = dil * (WS - 1) + 1
    pr, pb = (span - W % span) % span, (span - H % span) % span
    xp = F.pad(x, (0, pr, 0, pb), mode="reflect")
    u = F.unfold(xp, WS, dilation=dil, stride=span)
    ref = u.reshape(2, heads, c, WS * WS, -1).permute(0, 1, 3, 4, 2)
    torch.testing.assert_close(window_candidates(x, heads, WS, dil), ref, rtol=0, atol=0)


def test_window_candidates_beyond_reflection_limit():
    # pad (43 - 4 = 39) larger than the map: repeated mirroring
    x = torch.randn(1, 2, 4, 4)
    out = window_candidates(x, 1, WS, 7)  # span 43
    assert out.shape == (1, 1, 49, 1, 2)
    rows = [reflect_index(k * 7, 4) for k in range(7)]
    ref = x[:, :, rows][:, :, :, rows].permute(0, 2, 3, 1).reshape(1, 1, 49, 1, 2)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
