"""A PatchTST-style forecaster (Nie et al., ICLR 2023) and the patch-forecaster skeleton it shares with
:class:`~favit_probsparse.models.fasa_forecaster.FaSAForecaster`.

:class:`PatchForecaster` (the shared part, as the official ``PatchTST_supervised`` code): RevIN on each input
window (:class:`~favit_probsparse.layers.patch_ts.RevIN`, official defaults ``affine=False``,
``subtract_last=False``) -> patches over time (:class:`~favit_probsparse.layers.patch_ts.TimePatches`, end
padding) -> ``Linear(patch_len, d_model)`` per patch (``W_P``) + a position encoding from
:mod:`favit_probsparse.posenc` -> dropout -> an encoder (the subclass's) -> flatten + ``Linear(n·d_model,
pred_len)`` (the official ``Flatten_Head``) -> RevIN undone. Channel-independent by default: every channel is a
separate sequence of patch tokens through the same weights; ``channel_mixing=True`` embeds the patches of all
channels at one time span as one token (``Linear(C·patch_len, d_model)``) and the head forecasts every channel
from the flattened tokens.

:class:`PatchTST` (the encoder of the official ``TSTEncoder``): post-norm Transformer layers with BatchNorm over
``d_model`` (the official ``norm='BatchNorm'``), GELU MLP, full multi-head attention with *residual attention*
(``res_attention=True``: each layer adds the previous layer's pre-softmax scores to its own, as the official
code), a learned position table initialised ``U(−0.02, 0.02)`` (the official ``pe='zeros', learn_pe=True``).
Differences from the official code: the head flattens tokens position-major (``n, d_model``) instead of
``d_model``-major, and the official ``fc_dropout`` (unused by its flatten head) is not an argument.

Position encodings that act inside attention (``rope``: q and k rotated by patch index; ``alibi``: ``−m_h|i−j|``
added to the scores) are applied in :class:`PatchTSTAttention`; absolute ones are added to the patch tokens.
``delta_v`` replaces the values by ``V + g·ΔV`` along the patch axis (the report's ΔV, ``out = A(V + gΔV)``,
:func:`delta_values`).
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from timm.layers import Mlp
from torch import Tensor, nn

from favit_probsparse.attention.delta_v import momentum_ema, temporal_difference
from favit_probsparse.layers.patch_ts import RevIN, TimePatches
from favit_probsparse.models._checks import check_int, check_x_enc, set_forecast_shapes
from favit_probsparse.posenc import POS_ENCODINGS, PositionEncoding, build_pos_encoding

__all__ = [
    "DeltaValues",
    "PatchForecaster",
    "PatchTST",
    "PatchTSTAttention",
    "PatchTSTLayer",
    "TokenBatchNorm",
    "build_token_norm",
]

_DELTA_V_KEYS = ("gate", "boundary", "momentum", "beta")


class DeltaValues(nn.Module):
    """``v -> v + g·M(v)`` along the key axis (−2) of ``[B, H, K, D]`` values, ``M`` the temporal difference
    (``boundary`` rule at the first key) or its EMA (``momentum``, fixed ``beta``): the report's ΔV, since
    ``A(V + gΔV) = AV + g·Σ_j A_ij (v_j − v_{j−1})`` (:mod:`favit_probsparse.attention.delta_v`)."""

    def __init__(
        self, gate: float = 1.0, boundary: str = "replicate", momentum: bool = False, beta: float = 0.5
    ):
        super().__init__()
        temporal_difference(torch.zeros(1, 1), boundary)  # one-line error for an unknown boundary
        if momentum and not 0.0 <= beta < 1.0:
            raise ValueError(f"delta_v beta must be in [0, 1), got {beta}")
        self.gate, self.boundary, self.momentum, self.beta = float(gate), boundary, momentum, beta

    def extra_repr(self) -> str:
        return f"gate={self.gate}, boundary={self.boundary!r}, momentum={self.momentum}, beta={self.beta}"

    def forward(self, v: Tensor) -> Tensor:
        u = temporal_difference(v, self.boundary)
        if self.momentum:
            u = momentum_ema(u, self.beta)
        return v + self.gate * u


def delta_values(spec: bool | dict | None) -> DeltaValues | None:
    """``delta_v`` argument -> :class:`DeltaValues` (``True``: the defaults; a dict: its options) or None."""
    if not spec:
        return None
    opts = dict(spec) if isinstance(spec, dict) else {}
    bad = sorted(set(opts) - set(_DELTA_V_KEYS))
    if bad:
        raise ValueError(f"unknown delta_v options {bad}; choose from {list(_DELTA_V_KEYS)}")
    return DeltaValues(**opts)


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channels of ``[B, N, D]`` tokens (the official ``Transpose, BatchNorm1d, Transpose``)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def build_token_norm(norm: str, dim: int) -> nn.Module:
    """``"batch"`` -> :class:`TokenBatchNorm`, ``"layer"`` -> ``nn.LayerNorm``."""
    if norm == "batch":
        return TokenBatchNorm(dim)
    if norm == "layer":
        return nn.LayerNorm(dim)
    raise ValueError(f"unknown norm {norm!r}; choose 'batch' or 'layer'")


class PatchForecaster(nn.Module):
    """Patching, RevIN, patch embedding, position encoding and the flatten head around an encoder
    (:meth:`forward_features`, the subclass's). ``forward(x_enc, x_mark_enc, x_dec, x_mark_dec) -> [B, pred_len,
    c_out]``; reads only ``x_enc`` and forecasts the last ``c_out`` channels (as DLinear).

    Args: see :class:`PatchTST` (the shape arguments are linked from the data by ``favit-ps``).
    """

    #: position-encoding kinds the encoder applies (absolute ones are always added to the tokens)
    inner_kinds: tuple[str, ...] = ("rotary", "bias")

    def __init__(
        self,
        *,
        enc_in: int,
        dec_in: int | None,
        c_out: int | None,
        seq_len: int,
        label_len: int,
        pred_len: int,
        patch_len: int,
        stride: int,
        padding_patch: str | None,
        d_model: int,
        dropout: float,
        head_dropout: float,
        revin: bool,
        affine: bool,
        subtract_last: bool,
        channel_mixing: bool,
        pos_encoding: str,
        pos_kwargs: dict[str, Any] | None,
    ):
        super().__init__()
        set_forecast_shapes(self, enc_in, dec_in, c_out, seq_len, label_len, pred_len)
        for arg, value in (("patch_len", patch_len), ("stride", stride), ("d_model", d_model)):
            check_int(arg, value, 1)
        if patch_len > seq_len:
            raise ValueError(f"patch_len={patch_len} must be <= seq_len={seq_len}")
        if padding_patch not in ("end", None):
            raise ValueError(f"padding_patch must be 'end' or None, got {padding_patch!r}")
        if pos_encoding not in POS_ENCODINGS:
            raise ValueError(f"unknown pos_encoding {pos_encoding!r}; choose one of {sorted(POS_ENCODINGS)}")
        for arg, p in (("dropout", dropout), ("head_dropout", head_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{arg} must be in [0, 1), got {p}")
        self.channel_mixing = channel_mixing
        self.revin = RevIN(enc_in, affine=affine, subtract_last=subtract_last) if revin else None
        self.patching = TimePatches(seq_len, patch_len, stride, padding_patch)
        self.num_patches = n = self.patching.num_patches
        width = enc_in if channel_mixing else 1  # channels one token carries and one head output forecasts
        self.patch_embed = nn.Linear(width * patch_len, d_model)
        self.pos_encoding: PositionEncoding = build_pos_encoding(
            pos_encoding, d_model, max_len=n, **(pos_kwargs or {})
        )
        self.pos_drop = nn.Dropout(dropout)
        self.head_drop = nn.Dropout(head_dropout)
        self.head = nn.Linear(n * d_model, width * pred_len)

    def inner_pos_encoding(self) -> PositionEncoding | None:
        """The encoding the attention layers apply (rotary/bias kinds), else None."""
        return self.pos_encoding if self.pos_encoding.kind in self.inner_kinds else None

    def forward_features(self, tokens: Tensor) -> Tensor:
        """Encoder over ``[B', n, d_model]`` patch tokens (subclasses)."""
        raise NotImplementedError

    def forward_head(self, tokens: Tensor, batch: int) -> Tensor:
        """``[B', n, d_model]`` -> ``[B, pred_len, enc_in]`` (still normalized)."""
        y = self.head(self.head_drop(tokens.flatten(1)))
        if self.channel_mixing:
            return rearrange(y, "b (c p) -> b p c", c=self.enc_in)
        return rearrange(y, "(b c) p -> b p c", b=batch)

    def forward(
        self,
        x_enc: Tensor,
        x_mark_enc: Tensor | None = None,
        x_dec: Tensor | None = None,
        x_mark_dec: Tensor | None = None,
    ) -> Tensor:
        check_x_enc(self, x_enc)
        x = self.revin.norm(x_enc) if self.revin is not None else x_enc
        z = self.patching(x)  # [B, C, n, patch_len]
        pattern = "b c n p -> b n (c p)" if self.channel_mixing else "b c n p -> (b c) n p"
        t = self.patch_embed(rearrange(z, pattern))
        pe = self.pos_encoding(t)
        if pe is not None:
            t = t + pe
        t = self.forward_features(self.pos_drop(t))
        y = self.forward_head(t, x_enc.shape[0])
        if self.revin is not None:
            y = self.revin.denorm(y)
        return y[..., -self.c_out :]


class PatchTSTAttention(nn.Module):
    """Multi-head full attention with the official PatchTST options: ``forward(x, prev) -> (out, scores)`` where
    ``scores`` are this layer's pre-softmax logits (``prev`` added: residual attention).

    Args:
        dim: model width.
        num_heads: heads (``dim`` divisible by it).
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
        pos_encoding: a rotary (``rotate(q, k)``) or bias (``bias(l_q, l_k, H)``) encoding, or None.
        delta_v: :class:`DeltaValues` applied to the values, or None.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        pos_encoding: PositionEncoding | None = None,
        delta_v: DeltaValues | None = None,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"d_model {dim} must be divisible by n_heads {num_heads}")
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.W_Q, self.W_K, self.W_V = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(attn_drop)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(proj_drop))
        self.pos_encoding, self.delta_v = pos_encoding, delta_v

    def forward(self, x: Tensor, prev: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = self.num_heads
        q, k, v = (rearrange(w(x), "b n (h d) -> b h n d", h=h) for w in (self.W_Q, self.W_K, self.W_V))
        pe = self.pos_encoding
        if pe is not None and pe.kind == "rotary":
            q, k = pe.rotate(q, k)
        scores = (q @ k.transpose(-1, -2)) * self.scale
        if prev is not None:
            scores = scores + prev
        if pe is not None and pe.kind == "bias":
            scores = scores + pe.bias(q.shape[2], k.shape[2], h).to(scores.dtype)
        if self.delta_v is not None:
            v = self.delta_v(v)
        out = self.attn_drop(scores.softmax(-1)) @ v
        return self.to_out(rearrange(out, "b h n d -> b n (h d)")), scores


class PatchTSTLayer(nn.Module):
    """One encoder layer: attention and a GELU MLP, each with a residual and a norm (post-norm as the official
    default, or pre-norm).

    Args:
        dim, num_heads, d_ff: width, heads, MLP hidden width.
        dropout: residual and MLP dropout; attn_drop: on the attention weights.
        norm: ``"batch"`` (official) or ``"layer"``; pre_norm: normalize before each sub-layer.
        pos_encoding, delta_v: see :class:`PatchTSTAttention`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        d_ff: int,
        dropout: float = 0.0,
        attn_drop: float = 0.0,
        norm: str = "batch",
        pre_norm: bool = False,
        pos_encoding: PositionEncoding | None = None,
        delta_v: DeltaValues | None = None,
    ):
        super().__init__()
        self.self_attn = PatchTSTAttention(dim, num_heads, attn_drop, dropout, pos_encoding, delta_v)
        self.dropout_attn = nn.Dropout(dropout)
        self.norm_attn, self.norm_ffn = build_token_norm(norm, dim), build_token_norm(norm, dim)
        self.ff = Mlp(dim, d_ff, act_layer=nn.GELU, drop=(dropout, dropout))  # fc1, GELU, drop, fc2, drop
        self.pre_norm = pre_norm

    def forward(self, x: Tensor, prev: Tensor | None = None) -> tuple[Tensor, Tensor]:
        a, scores = self.self_attn(self.norm_attn(x) if self.pre_norm else x, prev)
        x = x + self.dropout_attn(a)
        if not self.pre_norm:
            x = self.norm_attn(x)
        x = x + self.ff(self.norm_ffn(x) if self.pre_norm else x)
        if not self.pre_norm:
            x = self.norm_ffn(x)
        return x, scores


class PatchTST(PatchForecaster):
    """PatchTST-style forecaster: the official supervised PatchTST's patching, RevIN, encoder and flatten head
    (module docstring). Defaults are the official ETTh1/ETTh2 script's (``e_layers 3, n_heads 4, d_model 16,
    d_ff 128, dropout 0.3, head_dropout 0, patch_len 16, stride 8``).

    Args:
        enc_in: channels of the input window.
        dec_in: decoder channels; not read, but must equal ``enc_in`` when given (linked from the data).
        c_out: channels forecast, the last ``c_out`` of the input (None: ``enc_in``).
        seq_len: look-back window.
        label_len: decoder start-token length of other networks; not used (checked ``>= 0``).
        pred_len: horizon.
        patch_len: steps per patch.
        stride: steps between patches.
        padding_patch: ``"end"`` (official default: one more patch over the repeated last step) or None.
        d_model: token width.
        n_heads: attention heads.
        e_layers: encoder layers.
        d_ff: MLP hidden width.
        dropout: dropout after the position encoding, in the MLP and on the residuals.
        attn_dropout: dropout on the attention weights (official 0).
        head_dropout: dropout before the head (official 0).
        norm: ``"batch"`` (official BatchNorm) or ``"layer"``.
        pre_norm: pre-norm layers (official False).
        res_attention: add each layer's pre-softmax scores to the next layer's (official True).
        revin: instance normalization (official True); affine: its learned affine map (official False);
            subtract_last: subtract the last value instead of the mean (official False).
        channel_mixing: one token per time span over all channels instead of channel-independent tokens.
        pos_encoding: :func:`~favit_probsparse.posenc.build_pos_encoding` name (official: ``"learned"``, here
            initialised ``U(−0.02, 0.02)`` as the official ``pe='zeros'``); ``rope``/``alibi`` act inside attention.
        pos_kwargs: keyword arguments of the encoding.
        delta_v: ΔV on the values (True or a dict of :class:`DeltaValues` options).
        embed / freq: time-feature settings of the data; accepted so one config links them into any network,
            not used.
    """

    def __init__(
        self,
        enc_in: int = 7,
        dec_in: int | None = None,
        c_out: int | None = None,
        seq_len: int = 96,
        label_len: int = 48,
        pred_len: int = 96,
        patch_len: int = 16,
        stride: int = 8,
        padding_patch: str | None = "end",
        d_model: int = 16,
        n_heads: int = 4,
        e_layers: int = 3,
        d_ff: int = 128,
        dropout: float = 0.3,
        attn_dropout: float = 0.0,
        head_dropout: float = 0.0,
        norm: str = "batch",
        pre_norm: bool = False,
        res_attention: bool = True,
        revin: bool = True,
        affine: bool = False,
        subtract_last: bool = False,
        channel_mixing: bool = False,
        pos_encoding: str = "learned",
        pos_kwargs: dict[str, Any] | None = None,
        delta_v: bool | dict = False,
        embed: str | None = None,
        freq: str | None = None,
    ):
        super().__init__(
            enc_in=enc_in, dec_in=dec_in, c_out=c_out, seq_len=seq_len, label_len=label_len, pred_len=pred_len,
            patch_len=patch_len, stride=stride, padding_patch=padding_patch, d_model=d_model, dropout=dropout,
            head_dropout=head_dropout, revin=revin, affine=affine, subtract_last=subtract_last,
            channel_mixing=channel_mixing, pos_encoding=pos_encoding, pos_kwargs=pos_kwargs,
        )  # fmt: skip
        check_int("e_layers", e_layers, 1)
        check_int("n_heads", n_heads, 1)
        check_int("d_ff", d_ff, 1)
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        if pos_encoding == "learned":  # the official pe='zeros', learn_pe=True init
            nn.init.uniform_(self.pos_encoding.pe, -0.02, 0.02)
        self.res_attention = res_attention
        dv, inner = delta_values(delta_v), self.inner_pos_encoding()
        self.layers = nn.ModuleList(
            PatchTSTLayer(d_model, n_heads, d_ff, dropout, attn_dropout, norm, pre_norm, inner, dv)
            for _ in range(e_layers)
        )

    def forward_features(self, tokens: Tensor) -> Tensor:
        scores = None
        for layer in self.layers:
            tokens, s = layer(tokens, scores if self.res_attention else None)
            scores = s
        return tokens
