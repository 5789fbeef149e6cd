"""Tubelet embeddings for video ``[B, C, T, H, W]``: the report repository's four, and a channel-mixing default.

The report's repository keeps the input channels apart, like the variates of a multivariate time series
("video vision transformers are analogous to time-series transformers, with multiple channels evolving across
space and time"). Its embeddings give channel-separated tokens ``[B, C, N, D]``:

* :class:`TubeletEmbedding` (its ``tubelet.py``): non-overlapping ``(t, h, w)`` tubelets of each channel,
  flattened and projected by one ``nn.Linear(t*h*w, D)`` shared by all channels;
* :class:`TubeletEmbeddingOverlapping` (``tubelet.py``): a grouped ``nn.Conv3d(C, C*D, groups=C)``, one kernel
  bank per channel, whose kernel is larger than its stride;
* :class:`TubeletEmbeddingDNN` (``tubelet_deep_cnn.py``): per channel, a small 3-D CNN on each tubelet
  (Conv3d 1→8→16, ReLU, global average pool, Linear 16→D);
* :class:`S3DTubeletEmbedding` (``tubelet_pretrained.py``): torchvision's S3D, frozen, cut after
  ``features[:12]`` (528 channels), run on each channel alone (repeated to 3), then a Linear 528→D per channel.

:class:`PatchEmbed3d` is the usual channel-mixing embedding (``nn.Conv3d(C, D, kernel=stride=tubelet)``) giving
``[B, N, D]`` directly.

Every embedding's ``forward`` returns ``(tokens, grid)`` with ``grid = (T', H', W')`` and ``N = T'·H'·W'``
(row-major: time, then height, then width). A model that wants ``[B, N, D]`` from a channel-separated embedding
merges the channels with :func:`merge_channels` (a sum over C) or wraps it in :class:`ChannelMerged`. The sum is
chosen because each of the four ends in a per-channel (or shared) linear map: summing the per-channel
projections is exactly ``concat over C + one Linear(C·F → D)`` on the features before the projection, so it is
the concat+linear merge at no extra parameters or MACs, and for the two linear embeddings it makes the merged
result a channel-mixing linear tubelet embedding of the same family as :class:`PatchEmbed3d`. A mean is the same
up to a constant the projection absorbs.

:func:`embedding_stats` counts parameters and GMACs (torch's FLOP counter on the meta device; MACs = FLOPs / 2)
and :func:`stats_markdown` writes them as a markdown table. See docs/tubelets.md.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = [
    "TUBELET_EMBEDS",
    "ChannelLinear",
    "ChannelMerged",
    "PatchEmbed3d",
    "S3DTubeletEmbedding",
    "TubeletEmbedding",
    "TubeletEmbeddingDNN",
    "TubeletEmbeddingOverlapping",
    "build_tubelet_embed",
    "compare_embeddings",
    "embedding_stats",
    "load_s3d_features",
    "merge_channels",
    "stats_markdown",
]

Grid = tuple[int, int, int]
S3D_CUT = (
    12  # torchvision S3D ``features[:12]``: up to Mixed_4e (528 channels); Mixed_4f (832) is features[12]
)
S3D_DIM = 528


def _triple(v: int | Sequence[int], name: str) -> Grid:
    t = (v, v, v) if isinstance(v, int) else tuple(int(i) for i in v)
    if len(t) != 3 or any(i < 1 for i in t):
        raise ValueError(f"{name} must be one positive int or three (t, h, w), got {v!r}")
    return t  # type: ignore[return-value]


def _check_video(x: Tensor, in_chans: int, who: str) -> None:
    if x.dim() != 5:
        raise ValueError(
            f"{who}: expected a video [B, C, T, H, W], got a {x.dim()}-D tensor {tuple(x.shape)}"
        )
    if x.shape[1] != in_chans:
        raise ValueError(
            f"{who}: expected {in_chans} channels (dim 1 of [B, C, T, H, W]), got {x.shape[1]} in {tuple(x.shape)}"
        )


def _check_divisible(x: Tensor, tubelet: Grid, who: str) -> Grid:
    thw = tuple(x.shape[2:])
    bad = [f"{ax}={n} % {k} = {n % k}" for ax, n, k in zip("THW", thw, tubelet) if n % k]
    if bad:
        raise ValueError(
            f"{who}: clip T×H×W = {'×'.join(map(str, thw))} is not divisible by the tubelet "
            f"{'×'.join(map(str, tubelet))} ({', '.join(bad)}); crop or resize the clip"
        )
    return tuple(n // k for n, k in zip(thw, tubelet))  # type: ignore[return-value]


def merge_channels(tokens: Tensor) -> Tensor:
    """Channel-separated tokens ``[B, C, N, D]`` → ``[B, N, D]`` by a sum over C (see the module docstring)."""
    if tokens.dim() != 4:
        raise ValueError(
            f"merge_channels expects [B, C, N, D], got a {tokens.dim()}-D tensor {tuple(tokens.shape)}"
        )
    return tokens.sum(1)


class ChannelLinear(nn.Module):
    """One ``nn.Linear(in_features, out_features)`` per channel: ``[..., C, F] → [..., C, D]``.

    Each channel's weights are initialised as ``nn.Linear`` initialises its own.
    """

    def __init__(self, channels: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(channels, out_features))
        for w in self.weight:
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        bound = 1 / math.sqrt(in_features)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("...cf,cdf->...cd", x, self.weight) + self.bias


class TubeletEmbedding(nn.Module):
    """Linear embedding of non-overlapping tubelets, per channel: ``[B, C, T, H, W] → [B, C, N, D]``.

    Follows the report repository's ``tubelet.py``: each channel's ``(t, h, w)`` tubelet is flattened in
    ``(t, h, w)`` order and projected by one ``nn.Linear(t*h*w, D)`` shared by all channels.

    Args:
        in_chans: input channels C.
        embed_dim: token width D.
        tubelet_size: ``(t, h, w)``; T, H and W must be divisible by it.
    """

    channel_separated = True

    def __init__(self, in_chans: int = 3, embed_dim: int = 96, tubelet_size: int | Sequence[int] = (2, 4, 4)):
        super().__init__()
        self.in_chans, self.embed_dim = in_chans, embed_dim
        self.tubelet_size = _triple(tubelet_size, "tubelet_size")
        t, h, w = self.tubelet_size
        self.proj = nn.Linear(t * h * w, embed_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Grid]:
        _check_video(x, self.in_chans, type(self).__name__)
        grid = _check_divisible(x, self.tubelet_size, type(self).__name__)
        t, h, w = self.tubelet_size
        x = rearrange(x, "b c (nt t) (nh h) (nw w) -> b c (nt nh nw) (t h w)", t=t, h=h, w=w)
        return self.proj(x), grid


class TubeletEmbeddingOverlapping(nn.Module):
    """Overlapping tubelets per channel, a grouped Conv3d: ``[B, C, T, H, W] → [B, C, N, D]``.

    Follows the report repository's ``tubelet.py`` (``nn.Conv3d(C, C*D, groups=C)``: one bank of D kernels per
    channel). Here the tubelet is the stride and the kernel is ``tubelet + overlap``; the clip is zero-padded by
    ``overlap`` per axis (half before, half after) so that the grid is ``⌊T/t⌋×⌊H/h⌋×⌊W/w⌋``, the same as the
    non-overlapping embeddings' (the repository pads nothing, so its grid shrinks by the kernel; ``pad=False``
    gives that).

    Args:
        in_chans: input channels C.
        embed_dim: token width D.
        tubelet_size: ``(t, h, w)``, the stride between tokens.
        overlap: voxels added to the kernel per axis (``(0, 0, 0)`` gives non-overlapping tubelets).
        pad: pad the clip so the grid is ``⌊T/t⌋×⌊H/h⌋×⌊W/w⌋``.
    """

    channel_separated = True

    def __init__(
        self,
        in_chans: int = 3,
        embed_dim: int = 96,
        tubelet_size: int | Sequence[int] = (2, 4, 4),
        overlap: int | Sequence[int] = (0, 2, 2),
        pad: bool = True,
    ):
        super().__init__()
        self.in_chans, self.embed_dim = in_chans, embed_dim
        self.tubelet_size = _triple(tubelet_size, "tubelet_size")
        ov = (overlap,) * 3 if isinstance(overlap, int) else tuple(overlap)
        if len(ov) != 3 or any(o < 0 for o in ov):
            raise ValueError(f"overlap must be one int >= 0 or three (t, h, w), got {overlap!r}")
        self.overlap: Grid = ov  # type: ignore[assignment]
        self.kernel_size = tuple(k + o for k, o in zip(self.tubelet_size, ov))
        # F.pad order: (w_before, w_after, h_before, h_after, t_before, t_after)
        self.padding = tuple(p for o in reversed(ov) for p in (o // 2, o - o // 2)) if pad else (0,) * 6
        self.proj = nn.Conv3d(
            in_chans, in_chans * embed_dim, self.kernel_size, stride=self.tubelet_size, groups=in_chans
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Grid]:
        who = type(self).__name__
        _check_video(x, self.in_chans, who)
        if any(self.padding):
            x = F.pad(x, self.padding)
        small = [f"{ax}={n}" for ax, n, k in zip("THW", x.shape[2:], self.kernel_size) if n < k]
        if small:
            raise ValueError(
                f"{who}: clip (padded) {', '.join(small)} is smaller than the kernel "
                f"{'×'.join(map(str, self.kernel_size))}"
            )
        x = self.proj(x)
        grid: Grid = tuple(x.shape[2:])  # type: ignore[assignment]
        return rearrange(x, "b (c d) nt nh nw -> b c (nt nh nw) d", c=self.in_chans), grid


class TubeletEmbeddingDNN(nn.Module):
    """A small 3-D CNN on each non-overlapping tubelet, one CNN per channel: ``[B, C, T, H, W] → [B, C, N, D]``.

    Follows the report repository's ``tubelet_deep_cnn.py``: per channel, Conv3d(1→8, 3, pad 1), ReLU,
    Conv3d(8→16, 3, pad 1), ReLU, global average pool, Linear(16→D), applied to each tubelet alone (so the
    convolutions zero-pad at every tubelet border). The C CNNs run as one grouped CNN (``groups=C``) instead of
    the repository's loop over channels; the result is the same.

    Args:
        in_chans: input channels C.
        embed_dim: token width D.
        tubelet_size: ``(t, h, w)``; T, H and W must be divisible by it.
        hidden: the two convolutions' widths per channel.
        act_layer: activation after each convolution.
    """

    channel_separated = True

    def __init__(
        self,
        in_chans: int = 3,
        embed_dim: int = 96,
        tubelet_size: int | Sequence[int] = (2, 4, 4),
        hidden: tuple[int, int] = (8, 16),
        act_layer: Callable[..., nn.Module] = nn.ReLU,
    ):
        super().__init__()
        self.in_chans, self.embed_dim = in_chans, embed_dim
        self.tubelet_size = _triple(tubelet_size, "tubelet_size")
        c, (h1, h2) = in_chans, hidden
        self.conv1 = nn.Conv3d(c, c * h1, 3, padding=1, groups=c)
        self.act1 = act_layer()
        self.conv2 = nn.Conv3d(c * h1, c * h2, 3, padding=1, groups=c)
        self.act2 = act_layer()
        self.proj = ChannelLinear(c, h2, embed_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Grid]:
        _check_video(x, self.in_chans, type(self).__name__)
        nt, nh, nw = _check_divisible(x, self.tubelet_size, type(self).__name__)
        t, h, w = self.tubelet_size
        # every tubelet becomes one sample of a C-channel batch, so padding never reaches a neighbour
        z = rearrange(x, "b c (nt t) (nh h) (nw w) -> (b nt nh nw) c t h w", t=t, h=h, w=w)
        z = self.act2(self.conv2(self.act1(self.conv1(z))))
        z = rearrange(z.mean((2, 3, 4)), "(b n) (c f) -> b n c f", b=x.shape[0], c=self.in_chans)
        return rearrange(self.proj(z), "b n c d -> b c n d"), (nt, nh, nw)


def load_s3d_features(weights: str | Path | None, cut: int = S3D_CUT) -> nn.Sequential:
    """torchvision's S3D ``features[:cut]``, with a local S3D state dict's weights (``None``: random weights).

    ``weights`` is the path of a torchvision S3D state dict (``S3D_Weights.KINETICS400_V1``, file
    ``s3d-d76dad2f.pth``), loaded with ``weights_only=True``. Keys of the classifier, or of blocks after the cut,
    may be absent or present.
    """
    from torchvision.models.video import s3d

    features = s3d(weights=None).features[:cut]
    if weights is None:
        return features
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"S3D weights file not found: {path} (pass the path of torchvision's S3D state dict "
            "s3d-d76dad2f.pth, S3D_Weights.KINETICS400_V1, downloaded where the internet is reachable; "
            "or weights=None for random weights)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"S3D weights file {path} is not a loadable state dict: {type(e).__name__}: {msg}"
        ) from e
    if not isinstance(state, dict):
        raise ValueError(f"S3D weights file {path} holds a {type(state).__name__}, not a state dict")
    own = {
        k[len("features.") :]: v
        for k, v in state.items()
        if k.startswith("features.") and k.split(".")[1].isdigit() and int(k.split(".")[1]) < cut
    }
    expected = features.state_dict()
    missing = sorted(set(expected) - set(own))
    wrong = [k for k in expected if k in own and own[k].shape != expected[k].shape]
    if missing or wrong:
        raise ValueError(
            f"S3D weights file {path} does not fit torchvision's S3D features[:{cut}]: "
            f"{len(missing)} missing keys (e.g. {['features.' + k for k in missing[:3]]}), "
            f"{len(wrong)} of another shape (e.g. {['features.' + k for k in wrong[:3]]})"
        )
    features.load_state_dict(own)
    return features


class S3DTubeletEmbedding(nn.Module):
    """A frozen pretrained S3D on each channel alone, then a Linear per channel: ``[B, C, T, H, W] → [B, C, N, D]``.

    Follows the report repository's ``tubelet_pretrained.py``: torchvision's S3D cut after ``features[:12]``,
    frozen. Each input channel is repeated to 3 channels and run alone, and its feature map
    ``[528, T/4, H/16, W/16]`` (rounded up) is projected by that channel's ``Linear(528, D)``. (The repository's
    comment says "up to Mixed_4f (inclusive)", but in the S3D/I3D inception naming ``features[11]`` is
    Mixed_4e, 528 channels, and Mixed_4f, 832 channels, is ``features[12]``; this follows the code.) The channels run
    as one batch of ``B·C`` clips (the backbone stays in eval mode, so this equals the repository's loop).
    The input is expected normalized the way the S3D weights were trained (Kinetics mean/std); that is the
    data pipeline's job.

    Args:
        in_chans: input channels C.
        embed_dim: token width D.
        weights: path of a torchvision S3D state dict (``s3d-d76dad2f.pth``), required because nothing can be
            downloaded here; pass ``None`` explicitly for random weights (tests, cost counts).
    """

    channel_separated = True

    def __init__(self, in_chans: int = 3, embed_dim: int = 96, *, weights: str | Path | None):
        super().__init__()
        self.in_chans, self.embed_dim = in_chans, embed_dim
        self.backbone = load_s3d_features(weights)
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        self.proj = ChannelLinear(in_chans, S3D_DIM, embed_dim)

    def train(self, mode: bool = True) -> S3DTubeletEmbedding:
        super().train(mode)
        self.backbone.eval()  # frozen: its batch norms keep their running statistics
        return self

    def forward(self, x: Tensor) -> tuple[Tensor, Grid]:
        _check_video(x, self.in_chans, type(self).__name__)
        clips = rearrange(x, "b c t h w -> (b c) 1 t h w").expand(-1, 3, -1, -1, -1)
        with torch.no_grad():
            feat = self.backbone(clips.contiguous())
        grid: Grid = tuple(feat.shape[2:])  # type: ignore[assignment]
        feat = rearrange(feat, "(b c) f nt nh nw -> b (nt nh nw) c f", c=self.in_chans)
        return rearrange(self.proj(feat), "b n c d -> b c n d"), grid


class PatchEmbed3d(nn.Module):
    """Channel-mixing tubelet embedding: ``nn.Conv3d(C, D, kernel=stride=tubelet)`` → ``[B, N, D]`` (+ norm).

    Args:
        in_chans: input channels C.
        embed_dim: token width D.
        tubelet_size: ``(t, h, w)``; T, H and W must be divisible by it.
        norm_layer: optional norm on the tokens (e.g. ``nn.LayerNorm``).
    """

    channel_separated = False

    def __init__(
        self,
        in_chans: int = 3,
        embed_dim: int = 96,
        tubelet_size: int | Sequence[int] = (2, 4, 4),
        norm_layer: Callable[..., nn.Module] | None = None,
    ):
        super().__init__()
        self.in_chans, self.embed_dim = in_chans, embed_dim
        self.tubelet_size = _triple(tubelet_size, "tubelet_size")
        self.proj = nn.Conv3d(in_chans, embed_dim, self.tubelet_size, stride=self.tubelet_size)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: Tensor) -> tuple[Tensor, Grid]:
        _check_video(x, self.in_chans, type(self).__name__)
        grid = _check_divisible(x, self.tubelet_size, type(self).__name__)
        return self.norm(rearrange(self.proj(x), "b d nt nh nw -> b (nt nh nw) d")), grid


class ChannelMerged(nn.Module):
    """A channel-separated embedding whose channels are summed: ``[B, C, T, H, W] → [B, N, D]`` (+ norm).

    Args:
        embed: an embedding returning ``([B, C, N, D], grid)``.
        norm_layer: optional norm on the merged tokens.
    """

    channel_separated = False

    def __init__(self, embed: nn.Module, norm_layer: Callable[..., nn.Module] | None = None):
        super().__init__()
        self.embed = embed
        self.in_chans, self.embed_dim = embed.in_chans, embed.embed_dim
        self.norm = norm_layer(self.embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: Tensor) -> tuple[Tensor, Grid]:
        tokens, grid = self.embed(x)
        return self.norm(merge_channels(tokens)), grid


TUBELET_EMBEDS: dict[str, type[nn.Module]] = {
    "patch": PatchEmbed3d,
    "linear": TubeletEmbedding,
    "overlap": TubeletEmbeddingOverlapping,
    "dnn": TubeletEmbeddingDNN,
    "s3d": S3DTubeletEmbedding,
}


def build_tubelet_embed(
    kind: str,
    in_chans: int = 3,
    embed_dim: int = 96,
    merge: bool = False,
    norm_layer: Callable[..., nn.Module] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build an embedding of :data:`TUBELET_EMBEDS` by name; ``merge=True`` sums a channel-separated one's
    channels (:class:`ChannelMerged`) so that every kind returns ``[B, N, D]``."""
    if kind not in TUBELET_EMBEDS:
        raise ValueError(f"unknown tubelet embedding {kind!r}; choose one of {sorted(TUBELET_EMBEDS)}")
    cls = TUBELET_EMBEDS[kind]
    if cls is PatchEmbed3d:
        return PatchEmbed3d(in_chans, embed_dim, norm_layer=norm_layer, **kwargs)
    embed = cls(in_chans, embed_dim, **kwargs)
    if merge:
        return ChannelMerged(embed, norm_layer)
    if norm_layer is not None:
        raise ValueError("norm_layer applies to merged tokens; pass merge=True or no norm_layer")
    return embed


def embedding_stats(embed: nn.Module, input_size: Sequence[int]) -> dict[str, Any]:
    """Parameters and GMACs of one forward pass of an embedding on one clip of ``input_size = (C, T, H, W)``.

    The count runs on a meta-device copy (no memory, no compute), with torch's FLOP counter: convolutions and
    matmuls; element-wise ops (bias, ReLU, pooling, norm) are not counted, as in fvcore. MACs = FLOPs / 2.
    """
    from torch.utils.flop_counter import FlopCounterMode

    if len(input_size) != 4:
        raise ValueError(f"input_size must be (C, T, H, W), got {tuple(input_size)!r}")
    meta = copy.deepcopy(embed).to("meta").eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        tokens, grid = meta(torch.empty(1, *input_size, device="meta"))
    return {
        "params": sum(p.numel() for p in embed.parameters()),
        "trainable_params": sum(p.numel() for p in embed.parameters() if p.requires_grad),
        "gmacs": counter.get_total_flops() / 2 / 1e9,
        "grid": tuple(int(g) for g in grid),
        "tokens": tuple(tokens.shape[1:]),
    }


def compare_embeddings(
    sizes: Sequence[Sequence[int]],
    in_chans: int = 3,
    embed_dim: int = 96,
    tubelet_size: Sequence[int] = (2, 4, 4),
    overlap: Sequence[int] = (0, 2, 2),
    kinds: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """:func:`embedding_stats` of every kind (default: all of :data:`TUBELET_EMBEDS`) at each clip size
    ``(T, H, W)``, as rows for :func:`stats_markdown`. S3D gets random weights (counts do not depend on them)."""
    rows = []
    for kind in kinds or list(TUBELET_EMBEDS):
        kw: dict[str, Any] = {"weights": None} if kind == "s3d" else {"tubelet_size": tuple(tubelet_size)}
        if kind == "overlap":
            kw["overlap"] = tuple(overlap)
        embed = build_tubelet_embed(kind, in_chans, embed_dim, **kw)
        for size in sizes:
            full = (in_chans, *size)
            rows.append(
                {"name": f"{kind} (`{type(embed).__name__}`)", "input": full} | embedding_stats(embed, full)
            )
    return rows


def stats_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of :func:`embedding_stats` results, each row with a ``name`` (and ``input`` if given)."""
    header = ["Embedding", "Input C×T×H×W", "Params", "Trainable", "GMACs", "Grid T'×H'×W'", "Tokens"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["--:"] * 4 + ["---"] * 2) + "|"]
    for r in rows:
        size = "×".join(map(str, r.get("input", ()))) or "–"
        cells = [
            str(r["name"]),
            size,
            f"{r['params']:,}",
            f"{r['trainable_params']:,}",
            f"{r['gmacs']:.3f}",
            "×".join(map(str, r["grid"])),
            "[" + ", ".join(map(str, r["tokens"])) + "]",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
