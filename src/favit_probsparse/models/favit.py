"""FaViT (Factorization Vision Transformer) backbones B0–B3 with pluggable cross-window fusion.

Paper: H. Qin, D. Zhou, T. Xu, Z. Bian, J. Li, *Factorization Vision Transformer: Modeling Long Range Dependency
with Local Window Cost*, IEEE TNNLS 2023 (arXiv:2312.08614). This is a clean reimplementation of the released
code's architecture (github.com/q2479036243/FaViT @ f2c35b5, ``classification/favit.py``), traced in
``docs/favit.md`` (§2, checklist §8):

* PVTv2 skeleton: four stages, overlapping patch embeds (7×7/s4/p3, then 3×3/s2/p1; LayerNorm eps 1e-5), pre-norm
  blocks (LayerNorm eps 1e-6, DropPath with a linear rate over all blocks, no LayerScale), the conv MLP
  (``fc1 → dwconv3×3 → GELU → fc2``), a stage LayerNorm (eps 1e-6), mean-pool head. No positional embedding.
* FaSA attention (:class:`FaSA`): ``q = Linear(C, C)``; channels split ``2:7:7/16`` (stages 1–3) or ``1:7/8``
  (stage 4) into a global spatial-reduction branch (one head, ``Conv(k=s=sr) → LN → Linear(Cg, 2Cg)``, depthwise
  3×3 added to V) and one or two 7×7 window branches (dilation 1 and dilation ``sr``) fed by a shared depthwise 3×3
  + pointwise 1×1 K/V source; each window branch fuses its ``L`` windows into 49 keys/values (the *cross-window
  fusion*, :mod:`favit_probsparse.attention.fusion`), then ``Linear(c, c) → Linear(c, 2c)`` shared across heads and
  a depthwise 3×3 on V over the 7×7 grid.
* Weights are initialised once (trunc-normal .02 Linear, N(0, sqrt(2/fan_out)) conv, LN (1, 0), zero biases).

Module names inside a block are the official ones (``attn.q``, ``attn.kv_g``, ``attn.kv_l.depth_conv``, ``attn.sr``,
``attn.norm``, ``attn.local_conv_g``, ``attn.fcs.i``, ``attn.single_heads.i``, ``attn.local_convs.i``,
``attn.proj``, ``mlp.fc1``, ``mlp.dwconv.dwconv``, ``mlp.fc2``), and :func:`checkpoint_filter_fn` maps the official
top-level layout (``patch_embed{i}``, ``block{i}.{j}``, ``norm{i}``) onto ``stages.{i-1}.{downsample,blocks,norm}``,
so an official checkpoint loads and, with ``fusion="official"``, gives the same logits.

Differences from the official code (none changes the ``fusion="official"`` outputs where the official code runs):

* **Window sampling without padding copies.** The official code reflection-pads the K/V map to a multiple of the
  dilated window span ``6·d + 1`` and runs ``nn.Unfold``. Windows never overlap (stride = span), so the unfold is a
  strided *view* when no padding is needed, and otherwise a gather of only the sampled rows/columns.
* **Padding rule (any input ≥ 32×32).** Padded sample positions are mapped back by *reflection about the last
  row/column* (``torch``'s ``reflect`` padding, which the official code uses and which is only defined while the pad
  is smaller than the map), *extended periodically* (mirror again) when the pad is larger than the map, and
  *replication* for a one-pixel map. This equals the official result wherever the official code runs (≥ 112×112)
  and is well defined down to the global branch's limit: stage ``i``'s map must be at least ``sr_i`` wide, i.e. the
  input must be at least ``8 · stem_stride`` pixels (32 for the ImageNet stem, 8 for the CIFAR stem); smaller
  inputs raise ``ValueError``.
* Attention uses ``F.scaled_dot_product_attention`` (same scales as the official code: ``Cg^-0.5`` and ``c^-0.5``).
* **Channels-last token maps** (:func:`~favit_probsparse.attention.fasa.grid_view` / :func:`~favit_probsparse.attention.fasa.grid_tokens`): every convolution sees a channels-last view of
  the ``[B, H·W, C]`` tokens, so no transpose copies surround the convolutions; stage outputs (``forward_features``,
  ``features_only``) are channels-last NCHW tensors (same values and shape as NCHW-contiguous ones).
* **One attention call for both window branches** (same head width): the queries are viewed as ``h·2`` heads.
* timm integration: ``stages``/``feature_info`` (so ``features_only=True`` works), ``forward_features`` /
  ``forward_head(pre_logits=...)``, a working ``reset_classifier``, ``no_weight_decay`` (empty: there is no
  positional embedding or token; timm's optimiser factory already skips norms and biases).

Factories (``timm.create_model(name, fusion=..., num_classes=..., drop_path_rate=..., img_size=..., in_chans=...)``):
``favit_b0``–``favit_b3`` (ImageNet stem, 224²) and ``favit_b0_cifar``–``favit_b3_cifar`` (3×3 stride-1 stem for
native 32² inputs; ``favit_b1_cifar`` is the report's log-002 "Small" ≈ 13 M configuration).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from favit_probsparse.attention.fasa import (
    FaSA,
    as_axes,
    conv_nd,
    grid_tokens,
    grid_view,
    grid_windows,
    reflect_index,
    window_candidates,
    window_span,
)
from favit_probsparse.attention.fusion import CrossWindowFusion, check_fusion_name
from favit_probsparse.utils.image_stats import CIFAR100_MEAN, CIFAR100_STD

__all__ = [
    "FaSA",
    "FaViT",
    "checkpoint_filter_fn",
    "reflect_index",
    "window_candidates",
    "window_span",
    "windows_per_branch",
]


# ----------------------------------------------------------------------------------------------------------------
# layers
# ----------------------------------------------------------------------------------------------------------------
class DWConv(nn.Module):
    """Depthwise conv over the token grid (PVTv2 conv-MLP): 3×3 on images; any kernel on 1/2/3-axis grids."""

    def __init__(self, dim: int, kernel_size: int | Sequence[int] = 3, ndim: int = 2):
        super().__init__()
        k = as_axes(kernel_size, ndim, "kernel_size")
        self.dwconv = conv_nd(ndim)(dim, dim, k, 1, tuple(n // 2 for n in k), groups=dim)

    def forward(self, x: torch.Tensor, *grid: int) -> torch.Tensor:
        return grid_tokens(self.dwconv(grid_view(x, grid)))


class Mlp(nn.Module):
    """``fc1 → depthwise conv over the grid → GELU → fc2`` (PVTv2's conv-MLP)."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        drop: float = 0.0,
        dw_kernel: int | Sequence[int] = 3,
        ndim: int = 2,
    ):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden, dw_kernel, ndim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, *grid: int) -> torch.Tensor:
        x = self.act(self.dwconv(self.fc1(x), *grid))
        return self.drop(self.fc2(self.drop(x)))


def _conv_out(n: int, kernel: int, stride: int) -> int:
    """Output length of a ``kernel``/``stride`` convolution padded by ``kernel // 2`` (the patch embeds)."""
    return (n + 2 * (kernel // 2) - kernel) // stride + 1


def windows_per_branch(
    img_size: int | Sequence[int],
    stem_stride: int = 4,
    stem_patch_size: int = 7,
    sr_ratios: Sequence[int] = (8, 4, 2, 1),
    window_size: int = 7,
) -> list[list[int]]:
    """Number of windows ``L`` each FaSA window branch fuses, per stage: ``[[L_dil1, L_dil_sr], ..., [L]]``.

    Stage ``i``'s token map comes from the patch embeds (``stem_patch_size``/``stem_stride``, then 3×3 stride 2);
    a branch with dilation ``d`` (1, and ``sr_ratio`` where ``sr_ratio > 1``) tiles it with windows of span
    ``d·(window_size − 1) + 1``, padding the last one: ``L = ceil(H / span) · ceil(W / span)``. A fusion has
    something to fuse only where ``L > 1``.
    """
    fh, fw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    out = []
    for i, sr in enumerate(sr_ratios):
        ps, st = (stem_patch_size, stem_stride) if i == 0 else (3, 2)
        fh, fw = _conv_out(fh, ps, st), _conv_out(fw, ps, st)
        dilations = [1] + ([sr] if sr > 1 else [])
        out.append([grid_windows((fh, fw), (window_size,) * 2, (d, d)) for d in dilations])
    return out


class Block(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``, on a grid of 1, 2 or 3 axes.

    Args:
        dim: channels.
        num_heads, sr_ratio: passed to the attention layer.
        mlp_ratio: hidden width of the conv-MLP.
        drop_path: stochastic depth rate of both residual branches.
        drop, attn_drop: dropout after the projections / on the attention weights.
        qkv_bias: biases of the attention projections.
        norm_eps: LayerNorm epsilon.
        attn_layer: the attention, built as ``attn_layer(dim, num_heads, sr_ratio, qkv_bias=, attn_drop=,
            proj_drop=, **attn_kwargs)`` and called as ``attn(x, *grid)`` (default: :class:`FaSA`).
        mlp_kernel, mlp_ndim: the conv-MLP's depthwise kernel and grid rank (3×3 on images).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int | Sequence[int],
        drop_path: float = 0.0,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        attn_layer: Callable[..., nn.Module] = FaSA,
        mlp_kernel: int | Sequence[int] = 3,
        mlp_ndim: int = 2,
        **attn_kwargs: Any,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = attn_layer(
            dim, num_heads, sr_ratio, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop, **attn_kwargs
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop, mlp_kernel, mlp_ndim)

    def forward(self, x: torch.Tensor, *grid: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), *grid))
        return x + self.drop_path(self.mlp(self.norm2(x), *grid))


class OverlapPatchEmbed(nn.Module):
    """Conv(k, stride, padding k//2) + LayerNorm (eps 1e-5), NCHW in, tokens out."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride, patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        H, W = x.shape[-2:]
        return self.norm(grid_tokens(x)), H, W


class FaViTStage(nn.Module):
    """Downsample (overlapping patch embed) → blocks → LayerNorm; NCHW in, NCHW out."""

    def __init__(
        self,
        in_chans: int,
        dim: int,
        depth: int,
        patch_size: int,
        stride: int,
        block_kwargs: list[dict[str, Any]],
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.downsample = OverlapPatchEmbed(in_chans, dim, patch_size, stride)
        self.blocks = nn.ModuleList([Block(dim, **block_kwargs[j]) for j in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, H, W = self.downsample(x)
        for blk in self.blocks:
            if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(blk, x, H, W, use_reentrant=False)
            else:
                x = blk(x, H, W)
        return grid_view(self.norm(x), (H, W))  # channels-last NCHW


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        fan_out = math.prod(m.kernel_size) * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class StagedBackbone(nn.Module):
    """timm plumbing of a backbone with ``stages`` (each with ``grad_checkpointing``) and a ``head``: FaViT and the
    video FaViT."""

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for s in self.stages:
            s.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head


class FaViT(StagedBackbone):
    """FaViT backbone + mean-pool classification head.

    Args:
        img_size: input resolution the model is built for (only learned fusions and the default config use it).
        in_chans: input channels.
        num_classes: classes of the head (0: no head, ``forward`` returns pooled features).
        embed_dims, depths, num_heads, mlp_ratios, sr_ratios: the per-stage configuration.
        stem_patch_size, stem_stride: the first patch embed (7/4 for ImageNet, 3/1 for the CIFAR variants).
        window_size: FaSA window side (7).
        fusion: cross-window fusion operator (``official``, ``max``, ``mean``, ``conv1x1``, ``linear``,
            ``probsparse``, ``hierarchical``).
        fusion_kwargs: options of the fusion operator, e.g. ``{"topk": 4, "use_points": True,
            "use_windows": False, "seed": 0}`` for ``hierarchical`` or ``{"factor": 5, "aggregate": "mean"}``
            for ``probsparse``.
        drop_rate, attn_drop_rate, drop_path_rate: dropout (MLP and projection), attention dropout, stochastic depth
            (linearly increasing over all blocks).
        global_pool: ``"avg"`` (mean over tokens) or ``""`` (no pooling: ``forward`` returns per-position logits
            ``[B, num_classes, H/32, W/32]``, timm's convention for an unpooled head).
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (64, 128, 256, 512),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (1, 2, 4, 8),
        mlp_ratios: Sequence[float] = (8, 6, 4, 4),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        stem_patch_size: int = 7,
        stem_stride: int = 4,
        window_size: int = 7,
        qkv_bias: bool = True,
        fusion: str = "official",
        fusion_kwargs: dict[str, Any] | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
    ):
        super().__init__()
        check_fusion_name(fusion)
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        n = len(depths)
        if not (len(embed_dims) == len(num_heads) == len(mlp_ratios) == len(sr_ratios) == n):
            raise ValueError(
                "embed_dims, depths, num_heads, mlp_ratios and sr_ratios must have the same length"
            )
        if stem_patch_size <= stem_stride:
            raise ValueError(
                f"stem_patch_size ({stem_patch_size}) must be larger than stem_stride ({stem_stride})"
            )
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.img_size = img_size
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.fusion = fusion
        self.fusion_kwargs = dict(fusion_kwargs or {})
        self.embed_dims = list(embed_dims)
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.stem_stride = stem_stride
        self.window_size = window_size
        self.sr_ratios = list(sr_ratios)
        # smallest input: every stage's map must be at least sr_ratio wide for the global branch's SR conv
        self.min_input_size = stem_stride * max(s * 2**i for i, s in enumerate(sr_ratios))
        self.drop_rate = drop_rate

        self.stages = self._build_stages(
            in_chans, depths, num_heads, mlp_ratios, stem_patch_size, qkv_bias, attn_drop_rate, drop_path_rate
        )
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def _build_stages(
        self,
        in_chans: int,
        depths: Sequence[int],
        num_heads: Sequence[int],
        mlp_ratios: Sequence[float],
        stem_patch_size: int,
        qkv_bias: bool,
        attn_drop_rate: float,
        drop_path_rate: float,
    ) -> nn.Sequential:
        """The stages (stem, then 3×3 stride-2 downsampling), each block's FaSA built for its stage's map at
        ``img_size``; also fills ``feature_info``."""
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        stages = []
        self.feature_info = []
        fh, fw = self.img_size
        prev, cur, reduction = in_chans, 0, 1
        for i, dim in enumerate(self.embed_dims):
            ps, st = (stem_patch_size, self.stem_stride) if i == 0 else (3, 2)
            fh, fw = (fh + 2 * (ps // 2) - ps) // st + 1, (fw + 2 * (ps // 2) - ps) // st + 1
            reduction *= st
            block_kwargs = [
                dict(
                    num_heads=num_heads[i],
                    mlp_ratio=mlp_ratios[i],
                    sr_ratio=self.sr_ratios[i],
                    drop_path=dpr[cur + j],
                    drop=self.drop_rate,
                    attn_drop=attn_drop_rate,
                    qkv_bias=qkv_bias,
                    window_size=self.window_size,
                    fusion=self.fusion,
                    fusion_kwargs=self.fusion_kwargs,
                    fusion_seed_offset=1000 * (cur + j),
                    feat_size=(max(fh, 1), max(fw, 1)),
                )
                for j in range(depths[i])
            ]
            stages.append(FaViTStage(prev, dim, depths[i], ps, st, block_kwargs))
            self.feature_info.append(dict(num_chs=dim, reduction=reduction, module=f"stages.{i}"))
            prev, cur = dim, cur + depths[i]
        return nn.Sequential(*stages)

    # --- init / timm plumbing ----------------------------------------------------------------------------------
    def init_weights(self) -> None:
        """Initialise every weight once (official PVTv2 scheme); fusion operators use their own init."""
        for m in self.modules():
            if isinstance(m, CrossWindowFusion):
                m.init_weights()
            else:
                _init_weights(m)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^stages\.0\.downsample",
            blocks=r"^stages\.(\d+)"
            if coarse
            else [(r"^stages\.(\d+)\.blocks\.(\d+)", None), (r"^stages\.(\d+)\.(?:downsample|norm)", (0,))],
        )

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            _init_weights(self.head)

    # --- forward -----------------------------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"FaViT expects images [B, C, H, W], got shape {list(x.shape)}")
        H, W = x.shape[-2:]
        m = self.min_input_size
        if m > H or m > W:
            raise ValueError(
                f"FaViT needs inputs of at least {m}×{m} (stem stride {self.stem_stride}: every stage's map must be "
                f"as wide as its spatial-reduction ratio {self.sr_ratios}); got {H}×{W}. Upsample the images or use "
                "a *_cifar variant (stride-1 stem)"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        # channels-last from the stem on (see grid_view); the stage outputs are channels-last NCHW maps
        return self.stages(x.contiguous(memory_format=torch.channels_last))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``[B, C, H, W]`` features -> ``[B, num_classes]`` logits (``global_pool="avg"``), or with
        ``global_pool=""`` (no pooling, timm's convention) the head applied at every position:
        ``[B, num_classes, H, W]`` (``pre_logits``: the feature map itself)."""
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
            return x if pre_logits else self.head(x)
        return x if pre_logits else self.head(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # --- reporting ---------------------------------------------------------------------------------------------
    def windows_per_branch(self, img_size: int | Sequence[int] | None = None) -> list[list[int]]:
        """Windows each FaSA window branch fuses per stage at ``img_size`` (default: the build size); see
        :func:`windows_per_branch`."""
        conv = self.stages[0].downsample.proj
        return windows_per_branch(
            self.img_size if img_size is None else img_size,
            stem_stride=conv.stride[0],
            stem_patch_size=conv.kernel_size[0],
            sr_ratios=self.sr_ratios,
            window_size=self.window_size,
        )

    @torch.no_grad()
    def fusion_summary(self, img_size: int | Sequence[int] | None = None, batch: int = 1) -> dict[str, Any]:
        """Parameters and MACs of the cross-window fusion operators (and keys per branch) at ``img_size``."""
        img_size = self.img_size if img_size is None else img_size
        fh, fw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        params = macs = 0
        keys: list[list[int]] = []
        for i, stage in enumerate(self.stages):
            conv = stage.downsample.proj
            ps, st = conv.kernel_size[0], conv.stride[0]
            fh, fw = (fh + 2 * (ps // 2) - ps) // st + 1, (fw + 2 * (ps // 2) - ps) // st + 1
            for blk in stage.blocks:
                attn: FaSA = blk.attn
                p, m, ks = attn.fusion_cost((fh, fw), batch)
                params, macs = params + p, macs + m
                if i == len(keys):
                    keys.append(ks)
        return dict(fusion=self.fusion, params=params, macs=macs, keys_per_stage=keys)


# ----------------------------------------------------------------------------------------------------------------
# checkpoint conversion
# ----------------------------------------------------------------------------------------------------------------
_OFFICIAL_KEY = re.compile(r"^(patch_embed|block|norm)(\d+)\.(.*)$")


def checkpoint_filter_fn(
    state_dict: dict[str, torch.Tensor], model: FaViT | None = None
) -> dict[str, torch.Tensor]:
    """Map an official FaViT state_dict (``patch_embed{i}``, ``block{i}.{j}``, ``norm{i}``, ``head``) onto
    :class:`FaViT`'s ``stages.{i-1}.{downsample,blocks.{j},norm}`` layout. Keys already in this layout pass
    through; a ``{"model": ...}`` / ``{"state_dict": ...}`` wrapper is unwrapped.
    """
    for wrapper in ("model", "state_dict"):
        if wrapper in state_dict and isinstance(state_dict[wrapper], dict):
            state_dict = state_dict[wrapper]
    out = {}
    for k, v in state_dict.items():
        k = k.removeprefix("module.")
        m = _OFFICIAL_KEY.match(k)
        if m:
            kind, i, rest = m.group(1), int(m.group(2)) - 1, m.group(3)
            if kind == "patch_embed":
                k = f"stages.{i}.downsample.{rest}"
            elif kind == "block":
                k = f"stages.{i}.blocks.{rest}"
            else:
                k = f"stages.{i}.norm.{rest}"
        out[k] = v
    return out


# ----------------------------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------------------------
_ARCHS: dict[str, dict[str, Any]] = {
    "b0": dict(embed_dims=(32, 64, 128, 256), depths=(2, 2, 6, 2)),
    "b1": dict(embed_dims=(64, 128, 256, 512), depths=(2, 2, 6, 2)),
    "b2": dict(embed_dims=(64, 128, 256, 512), depths=(2, 3, 18, 3)),
    "b3": dict(embed_dims=(96, 192, 384, 768), depths=(2, 3, 14, 3)),
}
_CIFAR_STEM = dict(stem_patch_size=3, stem_stride=1, img_size=32)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stages.0.downsample.proj",
        "classifier": "head",
        "license": "unknown (official repository has no LICENSE; no weights released)",
        **kwargs,
    }


_CIFAR_CFG = dict(
    num_classes=100,
    input_size=(3, 32, 32),
    pool_size=(4, 4),
    crop_pct=1.0,
    mean=CIFAR100_MEAN,
    std=CIFAR100_STD,
)
default_cfgs = generate_default_cfgs(
    {f"favit_{a}": _cfg() for a in _ARCHS} | {f"favit_{a}_cifar": _cfg(**_CIFAR_CFG) for a in _ARCHS}
)


def _create_favit(variant: str, pretrained: bool = False, **kwargs: Any) -> FaViT:
    n = len(kwargs.get("depths", _ARCHS["b0"]["depths"]))
    out_indices = kwargs.pop("out_indices", tuple(range(n)))
    idx = (
        () if isinstance(out_indices, int) else tuple(out_indices)
    )  # an int (timm: the last n) is timm's to check
    bad = [i for i in idx if not -n <= i < n]
    if bad:
        raise ValueError(
            f"{variant}: out_indices {tuple(idx)} has {bad} out of range; FaViT has {n} stages, so choose stage "
            f"indices in 0..{n - 1} (or -{n}..-1)"
        )
    return build_model_with_cfg(
        FaViT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


def _args(arch: str, cifar: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
    base = dict(_ARCHS[arch]) | (dict(_CIFAR_STEM) if cifar else {})
    return base | kwargs


@register_model
def favit_b0(pretrained: bool = False, **kwargs: Any) -> FaViT:
    """FaViT-B0 (3.43 M params, 0.63 GMACs at 224²)."""
    return _create_favit("favit_b0", pretrained, **_args("b0", False, kwargs))


@register_model
def favit_b1(pretrained: bool = False, **kwargs: Any) -> FaViT:
    """FaViT-B1 (12.96 M, 2.34 GMACs)."""
    return _create_favit("favit_b1", pretrained, **_args("b1", False, kwargs))


@register_model
def favit_b2(pretrained: bool = False, **kwargs: Any) -> FaViT:
    """FaViT-B2 (24.92 M, 4.46 GMACs)."""
    return _create_favit("favit_b2", pretrained, **_args("b2", False, kwargs))


@register_model
def favit_b3(pretrained: bool = False, **kwargs: Any) -> FaViT:
    """FaViT-B3 (48.75 M, 8.51 GMACs)."""
    return _create_favit("favit_b3", pretrained, **_args("b3", False, kwargs))


@register_model
def favit_b0_cifar(pretrained: bool = False, **kwargs: Any) -> FaViT:
    """FaViT-B0 widths/depths with a 3×3 stride-1 stem for native 32² inputs (maps 32/16/8/4)."""
    return _create_favit("favit_b0_cifar", pretrained, **_args("b0", True, kwargs))


@register_model
def favit_b1_cifar(pretrained: bool = False, **kwargs: Any) -> FaViT:
    """FaViT-B1 widths/depths, CIFAR stem: the report's log-002 "Small" ≈ 13 M configuration."""
    return _create_favit("favit_b1_cifar", pretrained, **_args("b1", True, kwargs))


@register_model
def favit_b2_cifar(pretrained: bool = False, **kwargs: Any) -> FaViT:
    """FaViT-B2 widths/depths, CIFAR stem."""
    return _create_favit("favit_b2_cifar", pretrained, **_args("b2", True, kwargs))


@register_model
def favit_b3_cifar(pretrained: bool = False, **kwargs: Any) -> FaViT:
    """FaViT-B3 widths/depths, CIFAR stem."""
    return _create_favit("favit_b3_cifar", pretrained, **_args("b3", True, kwargs))
