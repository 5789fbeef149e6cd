"""A functional re-statement of the released FaViT forward pass, used as a *test reference*.

This is not the official code and not a second implementation to use: it restates, op for op, what the released
``classification/favit.py`` (github.com/q2479036243/FaViT @ f2c35b5) computes (``docs/favit.md`` §2), directly on
a state_dict in the *official* key layout (``patch_embed{i}``, ``block{i}.{j}``, ``norm{i}``, ``head``), with the
official op sequence: ReflectionPad2d + nn.Unfold + AdaptiveAvgPool2d((None, c)) + explicit softmax attention.
The tests (``tests/test_favit_official.py``) check that :class:`favit_probsparse.models.favit.FaViT` with
``fusion="official"`` gives the same logits; ``benchmarks/favit.py`` times it when no copy of the official file
is given (``--official-file``).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

__all__ = ["official_attention", "official_forward", "to_official_keys"]

WS = 7


def official_attention(sd, p, x, H, W, heads, sr):
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
            x = x + official_attention(sd, f"{p}.attn", ln(x, "norm1"), H, W, heads[i - 1], srs[i - 1])
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
