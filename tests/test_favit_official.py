"""FaViT in ``fusion="official"`` mode against an independent functional re-statement of the official code.

``official_forward`` below runs the released FaViT forward pass (github.com/q2479036243/FaViT @ f2c35b5,
``classification/favit.py``, traced in /work/shared/reference/favit.md §2) directly on a state_dict in the
*official* key layout (``patch_embed{i}``, ``block{i}.{j}``, ``norm{i}``, ``head``), with the official op sequence:
ReflectionPad2d + nn.Unfold + AdaptiveAvgPool2d((None, c)) + explicit softmax attention. Our model loads the same
state_dict through ``checkpoint_filter_fn`` and must give the same logits.
"""

from __future__ import annotations

import re

import pytest
import timm
import torch
import torch.nn.functional as F

import favit_probsparse.models  # noqa: F401  (registers the models)
from favit_probsparse.models.favit import checkpoint_filter_fn, reflect_index, window_candidates

WS = 7


def _official_attention(sd, p, x, H, W, heads, sr):
    B, N, C = x.shape
    mul = [2, 7, 7] if sr > 1 else [1, 7]
    sd_ = [C // sum(mul) * m for m in mul]
    cg = sd_[0]
    lin = lambda name, t: F.linear(t, sd[f"{p}.{name}.weight"], sd[f"{p}.{name}.bias"])
    q = lin("q", x)
    q_g = q[:, :, :cg].reshape(B, N, 1, cg).permute(0, 2, 1, 3)
    x_g = x[:, :, :cg].permute(0, 2, 1).reshape(B, cg, H, W)
    x_g = (
        F.conv2d(x_g, sd[f"{p}.sr.weight"], sd[f"{p}.sr.bias"], stride=sr).reshape(B, cg, -1).permute(0, 2, 1)
    )
    x_g = F.layer_norm(x_g, (cg,), sd[f"{p}.norm.weight"], sd[f"{p}.norm.bias"], eps=1e-5)
    kv_g = lin("kv_g", x_g).reshape(B, -1, 2, 1, cg).permute(2, 0, 3, 1, 4)
    k_g, v_g = kv_g[0], kv_g[1]
    attn_g = ((q_g @ k_g.transpose(-2, -1)) * cg**-0.5).softmax(-1)
    vg_img = v_g.transpose(1, 2).reshape(B, -1, cg).transpose(1, 2).reshape(B, cg, H // sr, W // sr)
    vg_conv = F.conv2d(
        vg_img, sd[f"{p}.local_conv_g.weight"], sd[f"{p}.local_conv_g.bias"], padding=1, groups=cg
    )
    v_g = v_g + vg_conv.reshape(B, 1, cg, -1).transpose(-1, -2)
    outs = [(attn_g @ v_g).transpose(1, 2).reshape(B, N, cg)]

    q_l = q[:, :, cg:].reshape(B, N, heads, -1).permute(0, 2, 1, 3)
    x_l = x[:, :, cg:].reshape(B, H, W, -1).permute(0, 3, 1, 2)
    cl = C - cg
    kv_l = F.conv2d(
        x_l, sd[f"{p}.kv_l.depth_conv.weight"], sd[f"{p}.kv_l.depth_conv.bias"], padding=1, groups=cl
    )
    kv_l = F.conv2d(kv_l, sd[f"{p}.kv_l.point_conv.weight"], sd[f"{p}.kv_l.point_conv.bias"])
    for i in range(1, len(mul)):
        c = sd_[i] // heads
        if i == 1:
            q_, kv_ = q_l[..., :c], kv_l[:, : sd_[1]]
            dil = 1
        else:
            q_, kv_ = q_l[..., sd_[1] // heads :], kv_l[:, sd_[1] :]
            dil = sr
        stride = dil * (WS - 1) + 1
        pad_r, pad_b = (stride - W % stride) % stride, (stride - H % stride) % stride
        kv_ = torch.nn.ReflectionPad2d((0, pad_r, 0, pad_b))(kv_)
        kv_ = torch.nn.Unfold(WS, dilation=dil, padding=0, stride=stride)(kv_)
        kv_ = kv_.reshape(B, heads, c, WS * WS, -1).permute(0, 1, 3, 4, 2).reshape(B, heads, WS * WS, -1)
        kv_ = torch.nn.AdaptiveAvgPool2d((None, c))(kv_)
        kv_ = lin(f"fcs.{i - 1}", kv_)
        kv_ = lin(f"single_heads.{i - 1}", kv_)
        k_, v_ = kv_[..., :c], kv_[..., c:]
        attn_ = ((q_ @ k_.transpose(-2, -1)) * c**-0.5).softmax(-1)
        v_img = v_.transpose(2, 3).reshape(B, sd_[i], WS, WS)
        lc = F.conv2d(
            v_img,
            sd[f"{p}.local_convs.{i - 1}.weight"],
            sd[f"{p}.local_convs.{i - 1}.bias"],
            padding=1,
            groups=sd_[i],
        )
        v_ = v_ + lc.view(B, heads, c, WS * WS).transpose(2, 3)
        outs.append((attn_ @ v_).permute(0, 2, 1, 3).reshape(B, N, sd_[i]))
    return lin("proj", torch.cat(outs, -1))


def official_forward(sd, x, heads=(1, 2, 4, 8), srs=(8, 4, 2, 1)):
    B = x.shape[0]
    for i in range(1, 5):
        w = sd[f"patch_embed{i}.proj.weight"]
        k = w.shape[-1]
        x = F.conv2d(
            x,
            w,
            sd[f"patch_embed{i}.proj.bias"],
            stride=4 if k == 7 else (1 if i == 1 else 2),
            padding=k // 2,
        )
        H, W = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        C = x.shape[-1]
        x = F.layer_norm(
            x, (C,), sd[f"patch_embed{i}.norm.weight"], sd[f"patch_embed{i}.norm.bias"], eps=1e-5
        )
        j = 0
        while f"block{i}.{j}.norm1.weight" in sd:
            p = f"block{i}.{j}"
            ln = lambda t, n: F.layer_norm(t, (C,), sd[f"{p}.{n}.weight"], sd[f"{p}.{n}.bias"], eps=1e-6)  # noqa: B023
            x = x + _official_attention(sd, f"{p}.attn", ln(x, "norm1"), H, W, heads[i - 1], srs[i - 1])
            hdn = F.linear(ln(x, "norm2"), sd[f"{p}.mlp.fc1.weight"], sd[f"{p}.mlp.fc1.bias"])
            Ch = hdn.shape[-1]
            hdn = hdn.transpose(1, 2).view(B, Ch, H, W)
            hdn = F.conv2d(
                hdn,
                sd[f"{p}.mlp.dwconv.dwconv.weight"],
                sd[f"{p}.mlp.dwconv.dwconv.bias"],
                padding=1,
                groups=Ch,
            )
            hdn = F.gelu(hdn.flatten(2).transpose(1, 2))
            x = x + F.linear(hdn, sd[f"{p}.mlp.fc2.weight"], sd[f"{p}.mlp.fc2.bias"])
            j += 1
        x = F.layer_norm(x, (C,), sd[f"norm{i}.weight"], sd[f"norm{i}.bias"], eps=1e-6)
        if i != 4:
            x = x.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous()
    return F.linear(x.mean(dim=1), sd["head.weight"], sd["head.bias"])


def to_official_keys(sd):
    """Rename our state_dict into the official layout (the inverse of checkpoint_filter_fn)."""
    out = {}
    for k, v in sd.items():
        m = re.match(r"^stages\.(\d+)\.(downsample|blocks|norm)\.(.*)$", k)
        if m:
            i, kind, rest = int(m.group(1)) + 1, m.group(2), m.group(3)
            k = {
                "downsample": f"patch_embed{i}.{rest}",
                "blocks": f"block{i}.{rest}",
                "norm": f"norm{i}.{rest}",
            }[kind]
        out[k] = v
    return out


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
