"""Video FaViT: FaViT's four-stage trunk on ``(T, H, W)`` token grids, with a choice of space-time attention.

The report is titled "factorized spatio-temporal self-attention"; its repository embeds video as tubelets. This
model takes clips ``[B, C, T, H, W]``:

* **Stem**: a tubelet embedding. The default (``embed="conv"``) is FaViT's overlapping patch embed with a
  temporal extent: ``Conv3d(kernel=(t, 7, 7), stride=(t, 4, 4))`` + LayerNorm, so 2-D FaViT weights inflate into
  it. ``embed`` may also name one of the report repository's embeddings
  (:mod:`favit_probsparse.layers.tubelet`: ``patch``, ``linear``, ``overlap``, ``dnn``, ``s3d``), channels summed.
* **Stages 2–4**: ``Conv3d(kernel=(s_t, 3, 3), stride=(s_t, 2, 2))`` + LayerNorm downsampling (spatial ×2, and
  ``temporal_strides`` in time, 1 by default), then pre-norm blocks of attention + the conv-MLP, whose depthwise
  conv is spatial only (``1×3×3``): the trunk mixes frames only where the attention does, so a comparison of
  attentions on this trunk isolates the attention.
* **Attention** (``attention=``), at equal width:

  ``fasa``
      :class:`~favit_probsparse.attention.fasa.FaSA` on the ``(T, H, W)`` grid: windows of
      ``(temporal_window, 7, 7)``, global reduction ``(temporal_sr, sr, sr)``, any cross-window fusion.
  ``divided``
      TimeSformer's divided attention: temporal attention (each position attends to itself in the other frames),
      then spatial attention within each frame, in every block.
  ``joint``
      Full attention over all ``T·H·W`` tokens (quadratic memory).
  ``frame``
      2-D FaSA on each frame; nothing mixes frames before the head's average over time. The single-frame
      baseline: it needs ``tubelet_time=1`` and no temporal downsampling.

* **Temporal position embedding** (on by default, off for ``frame``): a learned embedding of the token's frame
  after the stem, as TimeSformer's; without it ``divided`` and ``joint`` cannot tell the order of the frames.
* **Head**: mean over all tokens (the temporal average of the frames' means), then a linear layer.

Factories: ``favit_video_tiny`` (a CPU-study size), ``favit_video_b0`` and ``favit_video_b1`` (the 2-D B0/B1 widths).
:func:`checkpoint_filter_fn` inflates a 2-D FaViT checkpoint (official or this package's layout) into a video model.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from einops import rearrange
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import Attention, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from favit_probsparse.attention.fasa import FaSA, grid_tokens, grid_view
from favit_probsparse.attention.fusion import CrossWindowFusion, check_fusion_name
from favit_probsparse.layers.tubelet import build_tubelet_embed
from favit_probsparse.models import favit as favit2d
from favit_probsparse.models.favit import Block, StagedBackbone, _init_weights

__all__ = ["ATTENTIONS", "VideoFaViT", "checkpoint_filter_fn", "inflate_state_dict"]

ATTENTIONS = ("fasa", "divided", "joint", "frame")


# ----------------------------------------------------------------------------------------------------------------
# attention layers (the Block's ``attn_layer``: built as f(dim, num_heads, sr_ratio, qkv_bias=, attn_drop=,
# proj_drop=, ...) and called as f(x, T, H, W))
# ----------------------------------------------------------------------------------------------------------------
class DividedAttention(nn.Module):
    """TimeSformer's divided space-time attention: ``t = temporal(x)``, ``s = spatial(norm(x + t))``, ``t + s``.

    Both are full multi-head attentions (timm's ``Attention``); the temporal one runs per spatial position over
    the ``T`` frames, the spatial one per frame over the ``H·W`` positions.
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: Any = None, qkv_bias: bool = True, **kw: float):
        super().__init__()
        self.temporal = Attention(dim, num_heads, qkv_bias=qkv_bias, **kw)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.spatial = Attention(dim, num_heads, qkv_bias=qkv_bias, **kw)

    def forward(self, x: torch.Tensor, T: int, H: int, W: int) -> torch.Tensor:
        B = x.shape[0]
        t = rearrange(
            self.temporal(rearrange(x, "b (t s) c -> (b s) t c", t=T)), "(b s) t c -> b (t s) c", b=B
        )
        xs = rearrange(self.norm(x + t), "b (t s) c -> (b t) s c", t=T)
        return t + rearrange(self.spatial(xs), "(b t) s c -> b (t s) c", b=B)


class JointAttention(nn.Module):
    """Full multi-head attention over every space-time token (timm's ``Attention``)."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: Any = None, qkv_bias: bool = True, **kw: float):
        super().__init__()
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, **kw)

    def forward(self, x: torch.Tensor, T: int, H: int, W: int) -> torch.Tensor:
        return self.attn(x)


class FrameFaSA(FaSA):
    """2-D FaSA on each frame independently: the frames are folded into the batch."""

    def forward(self, x: torch.Tensor, T: int, H: int, W: int) -> torch.Tensor:  # type: ignore[override]
        B = x.shape[0]
        out = super().forward(rearrange(x, "b (t s) c -> (b t) s c", t=T), H, W)
        return rearrange(out, "(b t) s c -> b (t s) c", b=B)


# ----------------------------------------------------------------------------------------------------------------
# trunk
# ----------------------------------------------------------------------------------------------------------------
class VideoPatchEmbed(nn.Module):
    """``Conv3d(kernel=(t, k, k), stride=(t, s, s), padding=(0, k//2, k//2))`` + LayerNorm: map in, tokens out."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, stride: int, time: int = 1):
        super().__init__()
        pad = patch_size // 2
        self.proj = nn.Conv3d(
            in_chans, embed_dim, (time, patch_size, patch_size), (time, stride, stride), (0, pad, pad)
        )
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        x = self.proj(x)
        return self.norm(grid_tokens(x)), tuple(x.shape[2:])


class VideoStage(nn.Module):
    """Downsample (tokens + grid) → [+ temporal position embedding] → blocks → LayerNorm; ``[B, C, T, H, W]`` in
    and out (channels-last view)."""

    def __init__(
        self,
        downsample: nn.Module,
        blocks: list[nn.Module],
        dim: int,
        norm_eps: float = 1e-6,
        time_embed_frames: int = 0,
    ):
        super().__init__()
        self.downsample = downsample
        #: learned embedding of the token's frame ``[1, T, 1, D]`` (TimeSformer's time embedding); None: no embedding
        self.time_embed = (
            nn.Parameter(torch.zeros(1, time_embed_frames, 1, dim)) if time_embed_frames else None
        )
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, grid = self.downsample(x)
        if self.time_embed is not None:
            if grid[0] != self.time_embed.shape[1]:
                raise ValueError(
                    f"VideoFaViT's temporal position embedding is built for {self.time_embed.shape[1]} token "
                    f"frames, the clip gives {grid[0]}: use clips of the model's num_frames"
                )
            x = (x.unflatten(1, (grid[0], -1)) + self.time_embed).flatten(1, 2)
        for blk in self.blocks:
            if self.grad_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(blk, x, *grid, use_reentrant=False)
            else:
                x = blk(x, *grid)
        return grid_view(self.norm(x), grid)


def _per_stage(value: int | Sequence[int], n: int, name: str) -> list[int]:
    out = [int(value)] * n if isinstance(value, int) else [int(v) for v in value]
    if len(out) != n or min(out) < 1:
        raise ValueError(f"{name} must be a positive int or {n} positive ints, got {value!r}")
    return out


class VideoFaViT(StagedBackbone):
    """FaViT on video clips ``[B, C, T, H, W]`` with a choice of space-time attention (see the module docstring).

    Args:
        num_frames: clip length T the model is built for (learned fusions and the temporal windows use it).
        img_size: frame size the model is built for.
        in_chans: input channels.
        num_classes: classes of the head (0: no head).
        embed_dims, depths, num_heads, mlp_ratios, sr_ratios: the per-stage configuration (as FaViT).
        attention: ``fasa``, ``divided``, ``joint`` or ``frame``.
        fusion, fusion_kwargs: FaSA's cross-window fusion (``fasa`` and ``frame``).
        window_size: FaSA's spatial window side (7).
        temporal_window: FaSA's window extent in time (clipped to each stage's T).
        temporal_sr: FaSA's global-branch reduction in time (also the temporal dilation of its second window
            branch), an int or one per stage.
        embed: the stem: ``conv`` (FaViT's overlapping patch embed with time extent ``tubelet_time``) or a tubelet
            embedding of :mod:`favit_probsparse.layers.tubelet` (``patch``, ``linear``, ``overlap``, ``dnn``,
            ``s3d``; its tubelet is ``(tubelet_time, stem_stride, stem_stride)``).
        embed_kwargs: options of a tubelet embedding (e.g. ``{"weights": "s3d.pth"}`` for ``s3d``).
        tubelet_time: frames per token at the stem.
        stem_patch_size, stem_stride: the stem's spatial kernel and stride (7/4 as FaViT).
        temporal_strides: temporal stride of the downsampling of stages 2–4.
        temporal_pos_embed: a learned embedding of each token's frame, added after the stem (TimeSformer's time
            embedding): without it, ``divided`` and ``joint`` attention are blind to the order of the frames.
            ``None``: on for every attention but ``frame`` (a frame index would let the single-frame baseline
            learn motion from the temporal average).
        qkv_bias, drop_rate, attn_drop_rate, drop_path_rate: as FaViT.
    """

    def __init__(
        self,
        num_frames: int = 8,
        img_size: int | Sequence[int] = 224,
        in_chans: int = 3,
        num_classes: int = 400,
        embed_dims: Sequence[int] = (32, 64, 128, 256),
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (1, 2, 4, 8),
        mlp_ratios: Sequence[float] = (8, 6, 4, 4),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        attention: str = "fasa",
        fusion: str = "official",
        fusion_kwargs: dict[str, Any] | None = None,
        window_size: int = 7,
        temporal_window: int = 4,
        temporal_sr: int | Sequence[int] = 1,
        embed: str = "conv",
        embed_kwargs: dict[str, Any] | None = None,
        tubelet_time: int = 1,
        stem_patch_size: int = 7,
        stem_stride: int = 4,
        temporal_strides: Sequence[int] = (1, 1, 1),
        temporal_pos_embed: bool | None = None,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        n = len(depths)
        self._check_args(attention, fusion, n, embed_dims, num_heads, mlp_ratios, sr_ratios, temporal_strides)
        if attention == "frame" and (tubelet_time > 1 or max(temporal_strides) > 1 or temporal_pos_embed):
            raise ValueError(
                "attention='frame' is the single-frame baseline: it needs tubelet_time=1, temporal_strides of 1 "
                "and no temporal_pos_embed"
            )
        if temporal_pos_embed is None:
            temporal_pos_embed = attention != "frame"
        self.num_frames, self.in_chans, self.num_classes = num_frames, in_chans, num_classes
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.attention, self.fusion = attention, fusion
        self.embed_dims = list(embed_dims)
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.sr_ratios = list(sr_ratios)
        self.temporal_sr = _per_stage(temporal_sr, n, "temporal_sr")
        self.drop_rate = drop_rate
        strides_t = [tubelet_time, *temporal_strides]
        grids = self._stage_grids(stem_patch_size, stem_stride, strides_t)
        self.min_frames = math.prod(strides_t) * max(self.temporal_sr)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        # every block's MLP is a 1×3×3 depthwise conv over the (T, H, W) grid
        block_kw = dict(
            drop=drop_rate, attn_drop=attn_drop_rate, qkv_bias=qkv_bias, mlp_kernel=(1, 3, 3), mlp_ndim=3
        )
        stages, self.feature_info, prev, cur = [], [], in_chans, 0
        for i in range(n):
            if i == 0:
                down = self._stem(embed, embed_kwargs, tubelet_time, stem_patch_size, stem_stride)
            else:
                down = VideoPatchEmbed(prev, embed_dims[i], 3, 2, strides_t[i])
            sr, attn = self._attn_layer(i, grids[i], window_size, temporal_window, fusion, fusion_kwargs)
            blocks = [
                Block(embed_dims[i], num_heads[i], mlp_ratios[i], sr, drop_path=dpr[cur + j], **block_kw,
                      **self._block_attn(attn, cur + j))
                for j in range(depths[i])
            ]  # fmt: skip
            frames = grids[0][0] if i == 0 and temporal_pos_embed else 0
            stages.append(VideoStage(down, blocks, embed_dims[i], time_embed_frames=frames))
            reduction = stem_stride * 2**i
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=reduction, module=f"stages.{i}"))
            prev, cur = embed_dims[i], cur + depths[i]
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    # --- construction helpers ----------------------------------------------------------------------------------
    @staticmethod
    def _check_args(attention, fusion, n, embed_dims, num_heads, mlp_ratios, sr_ratios, temporal_strides):
        if attention not in ATTENTIONS:
            raise ValueError(f"unknown attention {attention!r}; choose one of {list(ATTENTIONS)}")
        check_fusion_name(fusion)
        if not (len(embed_dims) == len(num_heads) == len(mlp_ratios) == len(sr_ratios) == n):
            raise ValueError(
                "embed_dims, depths, num_heads, mlp_ratios and sr_ratios must have the same length"
            )
        if len(temporal_strides) != n - 1 or min(temporal_strides, default=1) < 1:
            raise ValueError(
                f"temporal_strides needs {n - 1} positive ints (stages 2..{n}), got {temporal_strides}"
            )

    def _stage_grids(self, ps: int, st: int, strides_t: Sequence[int]) -> list[tuple[int, int, int]]:
        T, (H, W) = self.num_frames, self.img_size
        out = []
        for i, s_t in enumerate(strides_t):
            k, s = (ps, st) if i == 0 else (3, 2)
            T, H, W = T // s_t, favit2d._conv_out(H, k, s), favit2d._conv_out(W, k, s)
            out.append((max(T, 1), max(H, 1), max(W, 1)))
        return out

    def _stem(self, embed, embed_kwargs, t, ps, st) -> nn.Module:
        if embed == "conv":
            return VideoPatchEmbed(self.in_chans, self.embed_dims[0], ps, st, t)
        kw = dict(embed_kwargs or {})
        if embed != "s3d":
            kw.setdefault("tubelet_size", (t, st, st))
        return build_tubelet_embed(
            embed, self.in_chans, self.embed_dims[0], merge=True, norm_layer=nn.LayerNorm, **kw
        )

    def _attn_layer(self, i, grid, window_size, temporal_window, fusion, fusion_kwargs) -> tuple[Any, dict]:
        """Stage ``i``'s ``sr_ratio`` and the attention layer with its options."""
        sr = self.sr_ratios[i]
        fz = dict(fusion=fusion, fusion_kwargs=dict(fusion_kwargs or {}))
        if self.attention == "fasa":
            window = (min(temporal_window, grid[0]), window_size, window_size)
            return (self.temporal_sr[i], sr, sr), dict(
                attn_layer=FaSA, window_size=window, feat_size=grid, **fz
            )
        if self.attention == "frame":
            return sr, dict(attn_layer=FrameFaSA, window_size=window_size, feat_size=grid[1:], **fz)
        return None, dict(attn_layer=DividedAttention if self.attention == "divided" else JointAttention)

    @staticmethod
    def _block_attn(attn: dict[str, Any], block: int) -> dict[str, Any]:
        if attn["attn_layer"] in (FaSA, FrameFaSA):  # every block its own random streams (see FaSA)
            return attn | dict(fusion_seed_offset=1000 * block)
        return attn

    def init_weights(self) -> None:
        """FaViT's initialisation (PVTv2 scheme); fusions and pretrained tubelet backbones keep their own."""
        for m in self.modules():
            if isinstance(m, CrossWindowFusion):
                m.init_weights()
            elif isinstance(m, VideoStage) and m.time_embed is not None:
                trunc_normal_(m.time_embed, std=0.02)
            elif not any(p.requires_grad is False for p in m.parameters(recurse=False)):
                _init_weights(m)

    # --- timm plumbing -----------------------------------------------------------------------------------------
    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            _init_weights(self.head)

    # --- forward -----------------------------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"VideoFaViT expects clips [B, {self.in_chans}, T, H, W], got shape {list(x.shape)}"
            )
        if x.shape[2] < self.min_frames:
            raise ValueError(
                f"VideoFaViT needs at least {self.min_frames} frames (tubelet, temporal strides and temporal_sr), "
                f"got {x.shape[2]}"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, T, H, W]`` clip -> ``[B, D, T', H', W']`` last-stage map."""
        self.check_input(x)
        return self.stages(x.contiguous(memory_format=torch.channels_last_3d))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3, 4))  # the temporal average of the frames' spatial means
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ----------------------------------------------------------------------------------------------------------------
# inflation of 2-D FaViT weights
# ----------------------------------------------------------------------------------------------------------------
def inflate_state_dict(
    state_dict: dict[str, torch.Tensor], model: nn.Module, mode: str = "centre"
) -> dict[str, torch.Tensor]:
    """A 2-D FaViT state dict (official or this package's layout) as ``model``'s video weights.

    A 2-D conv kernel ``[o, i, kh, kw]`` goes into a 3-D kernel ``[o, i, kt, kh, kw]``: ``centre`` puts it in the
    centre time slice (zeros elsewhere: at initialisation each frame sees the 2-D model), ``repeat`` repeats it
    over time divided by ``kt`` (a static clip gives the 2-D response). Tensors of equal shape are copied; the
    ones that cannot be inflated (e.g. learned fusions tied to another window count, a different head) are
    left out with a warning, so the model keeps its own initialisation for them.
    """
    if mode not in ("centre", "repeat"):
        raise ValueError(f"inflation mode must be 'centre' or 'repeat', got {mode!r}")
    src = favit2d.checkpoint_filter_fn(state_dict)
    out, skipped = {}, []
    for k, target in model.state_dict().items():
        w = src.get(k)
        if w is None:
            continue
        if w.shape == target.shape:
            out[k] = w
        elif w.dim() == 4 and target.dim() == 5 and w.shape == target.shape[:2] + target.shape[3:]:
            kt = target.shape[2]
            if mode == "repeat":
                out[k] = w.unsqueeze(2).repeat(1, 1, kt, 1, 1) / kt
            else:
                out[k] = torch.zeros_like(target, dtype=w.dtype)
                out[k][:, :, kt // 2] = w
        else:
            skipped.append(k)
    if skipped:
        warnings.warn(
            f"inflation left out {len(skipped)} tensor(s) of another shape: {skipped[:5]}", stacklevel=2
        )
    return out


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: VideoFaViT) -> dict[str, torch.Tensor]:
    """timm's ``pretrained_filter_fn``: video weights pass through; 2-D FaViT weights are inflated (centre)."""
    for wrapper in ("model", "state_dict"):
        if wrapper in state_dict and isinstance(state_dict[wrapper], dict):
            state_dict = state_dict[wrapper]
    own = model.state_dict()
    if all(k in own and own[k].shape == v.shape for k, v in state_dict.items()):
        return state_dict
    return inflate_state_dict(state_dict, model)


# ----------------------------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------------------------
_ARCHS: dict[str, dict[str, Any]] = {
    "tiny": dict(embed_dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), mlp_ratios=(4, 4, 4, 4)),
    "b0": dict(embed_dims=(32, 64, 128, 256), depths=(2, 2, 2, 2)),
    "b1": dict(embed_dims=(64, 128, 256, 512), depths=(2, 2, 2, 2)),
}


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 400,
        "input_size": (3, 224, 224),  # timm's (C, H, W); the clip length is the model's num_frames (8)
        "crop_pct": 0.875,
        "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stages.0.downsample.proj",
        "classifier": "head",
        "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({f"favit_video_{a}": _cfg() for a in _ARCHS})


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> VideoFaViT:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(
        VideoFaViT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


@register_model
def favit_video_tiny(pretrained: bool = False, **kwargs: Any) -> VideoFaViT:
    """A CPU-study size: widths 16–128, one block per stage."""
    return _create("favit_video_tiny", pretrained, **(_ARCHS["tiny"] | kwargs))


@register_model
def favit_video_b0(pretrained: bool = False, **kwargs: Any) -> VideoFaViT:
    """FaViT-B0 widths (32–256), two blocks per stage."""
    return _create("favit_video_b0", pretrained, **(_ARCHS["b0"] | kwargs))


@register_model
def favit_video_b1(pretrained: bool = False, **kwargs: Any) -> VideoFaViT:
    """FaViT-B1 widths (64–512), two blocks per stage."""
    return _create("favit_video_b1", pretrained, **(_ARCHS["b1"] | kwargs))
