"""Informer (Zhou et al., AAAI 2021) for long-sequence forecasting, built on :mod:`favit_probsparse.attention`.

Architecture as the official Informer2020 code (``docs/informer.md`` §1):

* :class:`DataEmbedding` = value (Conv1d k=3, circular) + position (``pos_encoding``) + temporal
  (``timeF`` linear, or ``fixed`` / ``learned`` calendar tables), then dropout.
* Encoder: post-LN layers (ProbSparse or full self-attention, conv-k1 FFN) with distilling
  (:class:`ConvLayer`: Conv1d k=3 circular -> BatchNorm -> ELU -> MaxPool k=3 s=2) between them; final LayerNorm.
* Decoder: masked self-attention (ProbSparse or full), full cross-attention, FFN; final LayerNorm; linear head.
  Generative "start token" decoding: the decoder input is the last ``label_len`` known steps followed by
  ``pred_len`` zeros (:func:`decoder_input`), one forward pass for the whole horizon.

Protocol presets (``docs/informer.md`` §3) differ only in these switches (each one can be overridden):

================  ====================  ===============  ========  ==========  =======  ======
preset            head/time "mix"       cross-attention  distil    embedding   dropout  factor
                                                         padding   biases
================  ====================  ===============  ========  ==========  =======  ======
official-head     decoder self only     full             1         yes         0.05     5
paper-2021-03     every ProbSparse      full             1         yes         0.05     5
tsl               every ProbSparse      ProbSparse       2         no          0.1      3
================  ====================  ===============  ========  ==========  =======  ======

"mix" is the official ``AttentionLayer(mix=True)`` reinterpretation of the ``[B, H, L, D]`` attention output as
``[B, L, H*D]`` (row t then holds (head, time) fragments of other positions). Official HEAD (since ``cf58e44``)
does it in decoder self-attention for *both* attention types (``--mix``, default on). Before ``cf58e44`` (the
code that produced the Mar-2021 README numbers) and in TSL, ProbAttention returned ``[B, H, L, D]`` and every
ProbSparse layer was viewed that way, while FullAttention returned ``[B, L, H, D]`` (never mixed).
Note that any mixing makes the decoder non-causal in its output positions; use ``mix="none"`` for a strictly
causal decoder with full attention.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from favit_probsparse.attention import build_attention
from favit_probsparse.attention.delta_v import DeltaVAttention
from favit_probsparse.layers import swap_dropout
from favit_probsparse.models._checks import check_int
from favit_probsparse.posenc import PositionEncoding, build_pos_encoding, parse_terms, select_term_qk

__all__ = [
    "MIX_MODES",
    "PRESETS",
    "AttentionLayer",
    "AttentionPlan",
    "ConvLayer",
    "DataEmbedding",
    "Decoder",
    "DecoderLayer",
    "Encoder",
    "EncoderLayer",
    "FixedEmbedding",
    "Informer",
    "InformerPreset",
    "ProbSparseOptions",
    "TemporalEmbedding",
    "TimeFeatureEmbedding",
    "TokenEmbedding",
    "build_decoder",
    "build_encoder",
    "check_lengths",
    "decoder_input",
    "distilled_length",
    "resolve_preset",
]

# time-feature widths for embed="timeF" (official TimeFeatureEmbedding.freq_map)
TIMEF_DIMS = {"h": 4, "t": 5, "s": 6, "m": 1, "w": 2, "d": 3, "b": 3}
MIX_MODES = ("none", "decoder_self", "prob_layers")


# ================================================================================================================
# embeddings
# ================================================================================================================
class TokenEmbedding(nn.Module):
    """Value embedding: Conv1d(c_in -> d_model, k=3, circular padding), Kaiming-normal (fan_in, leaky_relu)."""

    def __init__(self, c_in: int, d_model: int, bias: bool = True, padding: int = 1):
        super().__init__()
        self.token_conv = nn.Conv1d(
            c_in, d_model, kernel_size=3, padding=padding, padding_mode="circular", bias=bias
        )
        nn.init.kaiming_normal_(self.token_conv.weight, mode="fan_in", nonlinearity="leaky_relu")

    def forward(self, x: Tensor) -> Tensor:  # [B, L, c_in] -> [B, L', d_model]
        return self.token_conv(x.transpose(1, 2)).transpose(1, 2)


class FixedEmbedding(nn.Module):
    """Frozen sinusoid table ``[c_in, d_model]`` looked up by integer index (official ``FixedEmbedding``)."""

    def __init__(self, c_in: int, d_model: int):
        super().__init__()
        w = torch.zeros(c_in, d_model)
        position = torch.arange(0, c_in, dtype=torch.float32).unsqueeze(1)
        div_term = torch.exp(
            torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / d_model)
        )
        w[:, 0::2] = torch.sin(position * div_term)
        w[:, 1::2] = torch.cos(position * div_term[: d_model // 2])
        self.emb = nn.Embedding(c_in, d_model)
        self.emb.weight = nn.Parameter(w, requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.emb(x).detach()


class TemporalEmbedding(nn.Module):
    """Sum of calendar-field embeddings (``embed="fixed"``: frozen sinusoid tables; ``"learned"``: nn.Embedding).

    Input columns ``[month, day, weekday, hour(, minute // 15)]`` as produced by the ETT loader with timeenc 0.
    """

    def __init__(self, d_model: int, embed_type: str = "fixed", freq: str = "h"):
        super().__init__()
        if freq not in ("h", "t"):
            raise ValueError(f"embed={embed_type!r} supports freq 'h' or 't', got {freq!r}")
        table = FixedEmbedding if embed_type == "fixed" else nn.Embedding
        self.minute_embed = table(4, d_model) if freq == "t" else None
        self.hour_embed = table(24, d_model)
        self.weekday_embed = table(7, d_model)
        self.day_embed = table(32, d_model)
        self.month_embed = table(13, d_model)

    def forward(self, x: Tensor) -> Tensor:
        x = x.long()
        out = self.hour_embed(x[:, :, 3]) + self.weekday_embed(x[:, :, 2])
        out = out + self.day_embed(x[:, :, 1]) + self.month_embed(x[:, :, 0])
        if self.minute_embed is not None:
            out = out + self.minute_embed(x[:, :, 4])
        return out


class TimeFeatureEmbedding(nn.Module):
    """``embed="timeF"``: Linear(d_time -> d_model) on the [-0.5, 0.5] time features."""

    def __init__(self, d_model: int, freq: str = "h", bias: bool = True):
        super().__init__()
        if freq not in TIMEF_DIMS:
            raise ValueError(f"unknown freq {freq!r} for timeF; choose one of {sorted(TIMEF_DIMS)}")
        self.embed = nn.Linear(TIMEF_DIMS[freq], d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.embed(x)


class DataEmbedding(nn.Module):
    """value + position + temporal embedding, then dropout (official ``DataEmbedding``).

    ``pos_encoding`` names a :func:`favit_probsparse.posenc.build_pos_encoding` entry; only encodings of kind
    ``"absolute"`` are added here (``"none"`` adds nothing; rotary/bias encodings act inside attention).
    The position index runs 0..L-1 within each window, for encoder and decoder alike (official behaviour).

    Position-encoding ablations (additive options, defaults = official):
        parts: which embeddings are summed: ``"all"`` (= ``"value+position+temporal"``) or a ``+``-joined subset
            that contains ``value`` (report Tables 2-3: ``"value"``, ``"value+temporal"``).
        pos_kwargs: extra keyword arguments of :func:`build_pos_encoding` (e.g. Legendre ``layout``/``grid``).
    """

    def __init__(
        self,
        c_in: int,
        d_model: int,
        embed: str = "timeF",
        freq: str = "h",
        dropout: float = 0.1,
        pos_encoding: str = "sinusoidal",
        max_len: int = 5000,
        bias: bool = True,
        parts: str = "all",
        pos_kwargs: dict | None = None,
    ):
        super().__init__()
        if embed not in ("timeF", "fixed", "learned"):
            raise ValueError(f"unknown embed {embed!r}; choose timeF, fixed or learned")
        self.parts = _embedding_parts(parts)
        self.embed, self.freq = embed, freq
        self.value_embedding = TokenEmbedding(c_in, d_model, bias=bias)
        self.position_embedding = build_pos_encoding(pos_encoding, d_model, max_len, **(pos_kwargs or {}))
        if embed == "timeF":
            self.temporal_embedding: nn.Module = TimeFeatureEmbedding(d_model, freq, bias=bias)
            self.time_features = TIMEF_DIMS[freq]
        else:
            self.temporal_embedding = TemporalEmbedding(d_model, embed, freq)
            self.time_features = 5 if freq == "t" else 4  # [month, day, weekday, hour(, minute // 15)]
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, x_mark: Tensor | None) -> Tensor:
        out = self.value_embedding(x)
        if "position" in self.parts and getattr(self.position_embedding, "kind", "absolute") == "absolute":
            pe = self.position_embedding(out)
            if pe is not None:
                out = out + pe
        if x_mark is not None and "temporal" in self.parts:
            out = out + self.temporal_embedding(x_mark)
        return self.dropout(out)


_EMBEDDING_PARTS = ("value", "position", "temporal")


def _embedding_parts(parts: str) -> frozenset[str]:
    names = frozenset(_EMBEDDING_PARTS) if parts == "all" else frozenset(p.strip() for p in parts.split("+"))
    if not names <= set(_EMBEDDING_PARTS) or "value" not in names:
        raise ValueError(
            f"embedding parts {parts!r}: use 'all' or '+'-joined {list(_EMBEDDING_PARTS)} with 'value'"
        )
    return names


# ================================================================================================================
# attention layer
# ================================================================================================================
class AttentionLayer(nn.Module):
    """Multi-head attention wrapper: Q/K/V projections -> ``attention`` on [B, H, L, D] -> output projection.

    ``mix=True`` reinterprets the operator's ``[B, H, L, D]`` output buffer as ``[B, L, H*D]`` (the official
    head/time "mix"); ``mix=False`` concatenates the heads of each position (standard multi-head attention).

    Position-encoding ablations (additive options; defaults leave the layer as above):
        pos_encoding: a :class:`~favit_probsparse.posenc.PositionEncoding` used *inside* this layer (self-attention
            only): ``rotary`` rotates q and k; ``bias`` adds ``bias(L_Q, L_K, H)`` to the logits; ``absolute`` is
            injected into the logits with the terms ``pos_terms`` (positions 0..L-1 of this layer's sequence).
        pos_terms: ``None`` (no injection of an absolute encoding) or a term set of
            :func:`~favit_probsparse.posenc.parse_terms` (``"all"``, ``"cross"``, ``"pospos"``, ...). Content
            projections keep their biases, position projections have none; values come from the content only.
        delta_v: wrap the attention operator in :class:`~favit_probsparse.attention.delta_v.DeltaVAttention`
            (``True`` or a dict of its keyword arguments).
        deep_mlp: the output projection becomes a 2-layer MLP (``Linear -> GELU -> Linear(d_model, d_model)``).
    """

    def __init__(
        self,
        attention: nn.Module,
        d_model: int,
        n_heads: int,
        d_keys: int | None = None,
        d_values: int | None = None,
        mix: bool = False,
        pos_encoding: PositionEncoding | None = None,
        pos_terms: str | None = None,
        delta_v: bool | dict | None = None,
        deep_mlp: bool = False,
    ):
        super().__init__()
        if d_model % n_heads and (d_keys is None or d_values is None):
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        d_keys = d_keys or d_model // n_heads
        d_values = d_values or d_model // n_heads
        if delta_v:
            attention = DeltaVAttention(
                attention, n_heads=n_heads, **(delta_v if isinstance(delta_v, dict) else {})
            )
        self.inner_attention = attention
        self.query_projection = nn.Linear(d_model, d_keys * n_heads)
        self.key_projection = nn.Linear(d_model, d_keys * n_heads)
        self.value_projection = nn.Linear(d_model, d_values * n_heads)
        self.out_projection = nn.Linear(d_values * n_heads, d_model)
        self.n_heads = n_heads
        self.mix = mix
        self.pos_encoding = pos_encoding
        self.pos_terms = parse_terms(pos_terms) if pos_terms is not None else None
        self.out_mlp = nn.Linear(d_model, d_model) if deep_mlp else None

    def extra_repr(self) -> str:
        return f"n_heads={self.n_heads}, mix={self.mix}"

    def forward(
        self, queries: Tensor, keys: Tensor, values: Tensor, attn_mask: Tensor | None = None
    ) -> Tensor:
        b, l_q, _ = queries.shape
        l_k = keys.shape[1]
        h = self.n_heads
        q = self.query_projection(queries).view(b, l_q, h, -1).transpose(1, 2)
        k = self.key_projection(keys).view(b, l_k, h, -1).transpose(1, 2)
        v = self.value_projection(values).view(b, l_k, h, -1).transpose(1, 2)
        if self.pos_encoding is not None:
            q, k, attn_mask = self._inject_positions(q, k, attn_mask)
        out = self.inner_attention(q, k, v, attn_mask)  # [B, H, L_Q, D_v]
        if self.mix:
            out = out.contiguous().view(b, l_q, -1)  # official mix: the [B,H,L,D] buffer read as [B,L,H*D]
        else:
            out = out.transpose(1, 2).reshape(b, l_q, -1)
        if self.out_mlp is not None:
            return self.out_mlp(F.gelu(self.out_projection(out)))
        return self.out_projection(out)

    def position_qk(self, l_q: int, l_k: int) -> tuple[Tensor, Tensor]:
        """Projected positions (no biases) [1, H, L, d_k] of an absolute ``pos_encoding`` for injection."""
        pe, h = self.pos_encoding, self.n_heads
        p_q, p_k = pe.table(l_q), pe.table(l_k)
        qp = F.linear(p_q.to(self.query_projection.weight.dtype), self.query_projection.weight)
        kp = F.linear(p_k.to(self.key_projection.weight.dtype), self.key_projection.weight)
        return qp.view(1, l_q, h, -1).transpose(1, 2), kp.view(1, l_k, h, -1).transpose(1, 2)

    def _inject_positions(self, q: Tensor, k: Tensor, attn_mask: Tensor | None):
        pe, l_q, l_k = self.pos_encoding, q.shape[2], k.shape[2]
        if pe.kind == "rotary":
            q, k = pe.rotate(q, k)
        elif pe.kind == "bias":
            bias = pe.bias(l_q, l_k, self.n_heads).to(q.dtype)[None]  # [1, H, L_Q, L_K]
            if attn_mask is None:
                attn_mask = bias
            elif attn_mask.dtype == torch.bool:
                attn_mask = bias.masked_fill(~attn_mask, float("-inf"))
            else:
                attn_mask = attn_mask + bias
        elif pe.kind == "absolute" and self.pos_terms is not None:
            qp, kp = self.position_qk(l_q, l_k)
            q, k = select_term_qk(q, k, qp, kp, self.pos_terms)
        return q, k, attn_mask


# ================================================================================================================
# encoder / decoder
# ================================================================================================================
def _activation(name: str):
    if name == "gelu":
        return F.gelu
    if name == "relu":
        return F.relu
    raise ValueError(f"unknown activation {name!r}; choose gelu or relu")


class ConvLayer(nn.Module):
    """Distilling: Conv1d(k=3, circular) -> BatchNorm1d -> ELU -> MaxPool1d(k=3, s=2, p=1).

    ``padding=1`` halves the length (L -> ceil(L/2)); ``padding=2`` is TSL's (and official code on torch
    1.10-1.13 through its string version test): L -> floor((L+1)/2) + 1, e.g. 96 -> 49.
    """

    def __init__(self, c_in: int, padding: int = 1):
        super().__init__()
        if padding not in (1, 2):
            raise ValueError(f"distil padding must be 1 or 2, got {padding!r}")
        self.down_conv = nn.Conv1d(c_in, c_in, kernel_size=3, padding=padding, padding_mode="circular")
        self.norm = nn.BatchNorm1d(c_in)
        self.activation = nn.ELU()
        self.max_pool = nn.MaxPool1d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.down_conv(x.transpose(1, 2))
        x = self.max_pool(self.activation(self.norm(x)))
        return x.transpose(1, 2)


def distilled_length(length: int, padding: int = 1) -> int:
    """Sequence length after one :class:`ConvLayer`."""
    conv = length + 2 * padding - 2
    return (conv + 2 - 3) // 2 + 1


def _pointwise(conv: nn.Conv1d, x: Tensor) -> Tensor:
    """A kernel-1 ``Conv1d`` applied to ``[B, L, C]`` as a linear map over C.

    Same math and parameters as the official ``conv(x.transpose(-1, 1)).transpose(-1, 1)``, without the two
    transposes and the convolution kernel: on CPU under bf16 autocast the GEMM is ~20 % faster than oneDNN's conv.
    """
    return F.linear(x, conv.weight.squeeze(-1), conv.bias)


class _FeedForwardLayer(nn.Module):
    """The position-wise feed-forward of encoder and decoder layers: ``Drop(Conv_k1(Drop(act(Conv_k1(x)))))``.

    Its parameters stay attributes of the layer (``conv1``, ``conv2``: the official names, which checkpoints and
    the official-equivalence tests use), created in the official order so that seeded initialisation matches.
    """

    def _add_feed_forward(self, d_model: int, d_ff: int | None, dropout: float, activation: str) -> None:
        d_ff = d_ff or 4 * d_model
        self.conv1 = nn.Conv1d(d_model, d_ff, kernel_size=1)
        self.conv2 = nn.Conv1d(d_ff, d_model, kernel_size=1)
        self.dropout = nn.Dropout(dropout)
        self.activation = _activation(activation)

    def _feed_forward(self, x: Tensor) -> Tensor:
        y = self.dropout(self.activation(_pointwise(self.conv1, x)))
        return self.dropout(_pointwise(self.conv2, y))


class EncoderLayer(_FeedForwardLayer):
    """Post-LN: ``x = LN1(x + Drop(Attn(x)))``; ``LN2(x + Drop(Conv_k1(Drop(act(Conv_k1(x))))))``."""

    def __init__(
        self,
        attention: AttentionLayer,
        d_model: int,
        d_ff: int | None = None,
        dropout: float = 0.1,
        activation: str = "relu",
    ):
        super().__init__()
        self.attention = attention
        self._add_feed_forward(d_model, d_ff, dropout, activation)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        x = self.norm1(x + self.dropout(self.attention(x, x, x, attn_mask)))
        return self.norm2(x + self._feed_forward(x))


class Encoder(nn.Module):
    """attn[0], conv[0], attn[1], conv[1], ..., attn[-1], then LayerNorm (no conv layers without distilling)."""

    def __init__(
        self,
        attn_layers: list[EncoderLayer],
        conv_layers: list[ConvLayer] | None = None,
        norm_layer: nn.Module | None = None,
    ):
        super().__init__()
        self.attn_layers = nn.ModuleList(attn_layers)
        self.conv_layers = nn.ModuleList(conv_layers) if conv_layers is not None else None
        self.norm = norm_layer

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        if self.conv_layers is not None:
            for attn_layer, conv_layer in zip(self.attn_layers, self.conv_layers):
                x = conv_layer(attn_layer(x, attn_mask))
            x = self.attn_layers[-1](x, attn_mask)
        else:
            for attn_layer in self.attn_layers:
                x = attn_layer(x, attn_mask)
        return self.norm(x) if self.norm is not None else x


class DecoderLayer(_FeedForwardLayer):
    """``LN1(x + Drop(SelfAttn(x)))``, ``LN2(x + Drop(CrossAttn(x, enc)))``, ``LN3(x + FFN(x))``."""

    def __init__(
        self,
        self_attention: AttentionLayer,
        cross_attention: AttentionLayer,
        d_model: int,
        d_ff: int | None = None,
        dropout: float = 0.1,
        activation: str = "relu",
    ):
        super().__init__()
        self.self_attention = self_attention
        self.cross_attention = cross_attention
        self._add_feed_forward(d_model, d_ff, dropout, activation)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self,
        x: Tensor,
        cross: Tensor,
        x_mask: Tensor | None = None,
        cross_mask: Tensor | None = None,
        keep_last: int | None = None,
    ) -> Tensor:
        """``keep_last``: return only the last ``keep_last`` positions, dropped right after self-attention.

        Exact when everything after self-attention is per position (full, unmixed cross-attention without a
        cross mask); :class:`Informer` decides that.
        """
        x = self.norm1(x + self.dropout(self.self_attention(x, x, x, x_mask)))
        if keep_last is not None:
            x = x[:, -keep_last:]
        x = self.norm2(x + self.dropout(self.cross_attention(x, cross, cross, cross_mask)))
        return self.norm3(x + self._feed_forward(x))


class Decoder(nn.Module):
    def __init__(self, layers: list[DecoderLayer], norm_layer: nn.Module | None = None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm_layer

    def forward(
        self,
        x: Tensor,
        cross: Tensor,
        x_mask: Tensor | None = None,
        cross_mask: Tensor | None = None,
        keep_last: int | None = None,
    ) -> Tensor:
        """``keep_last`` is passed to the last layer only (earlier layers' outputs are all keys of the next)."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x, cross, x_mask, cross_mask, keep_last if i == last else None)
        return self.norm(x) if self.norm is not None else x


# ================================================================================================================
# presets and the model
# ================================================================================================================
@dataclass(frozen=True)
class InformerPreset:
    """Protocol-mode switches (``docs/informer.md`` §3); see the module docstring's table."""

    mix: str  # one of MIX_MODES
    cross_attention: str  # "full" | "prob"
    distil_padding: int
    embed_bias: bool
    dropout: float
    factor: float


PRESETS: dict[str, InformerPreset] = {
    "official-head": InformerPreset("decoder_self", "full", 1, True, 0.05, 5),
    "paper-2021-03": InformerPreset("prob_layers", "full", 1, True, 0.05, 5),
    "tsl": InformerPreset("prob_layers", "prob", 2, False, 0.1, 3),
}


def resolve_preset(
    preset: str,
    mix: bool | str | None = None,
    cross_attention: str | None = None,
    distil_padding: int | None = None,
    embed_bias: bool | None = None,
    dropout: float | None = None,
    factor: float | None = None,
) -> InformerPreset:
    """The switches of ``preset`` with every non-None override applied (``mix`` True/False = official ``--mix``)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    p = PRESETS[preset]
    if mix is True:
        mix = "decoder_self"
    elif mix is False:
        mix = "none"
    p = replace(
        p,
        mix=p.mix if mix is None else mix,
        cross_attention=p.cross_attention if cross_attention is None else cross_attention,
        distil_padding=p.distil_padding if distil_padding is None else distil_padding,
        embed_bias=p.embed_bias if embed_bias is None else embed_bias,
        dropout=p.dropout if dropout is None else dropout,
        factor=p.factor if factor is None else factor,
    )
    if p.mix not in MIX_MODES:
        raise ValueError(f"unknown mix {p.mix!r}; choose True, False or one of {list(MIX_MODES)}")
    if p.cross_attention not in ("prob", "full"):
        raise ValueError(f"unknown cross_attention {p.cross_attention!r}; choose prob or full")
    return p


def check_lengths(seq_len: int, label_len: int, pred_len: int) -> None:
    """Window lengths of the generative decoder: ``seq_len, pred_len >= 1`` and ``0 <= label_len <= seq_len``.

    The start token is the last ``label_len`` steps of the encoder window, so it cannot be longer than the window.
    """
    check_int("seq_len", seq_len, 1)
    check_int("pred_len", pred_len, 1)
    check_int("label_len", label_len, 0)
    if label_len > seq_len:
        raise ValueError(f"label_len must be in [0, seq_len={seq_len}], got {label_len}")


def decoder_input(batch_y: Tensor, label_len: int, pred_len: int, dec_fill: int = 0) -> Tensor:
    """Generative start token: ``cat(batch_y[:, :label_len], zeros/ones[B, pred_len, C])`` (official ``dec_inp``).

    ``dec_fill`` is the official ``--padding`` flag: 0 fills the unknown steps with zeros (default), 1 with ones.
    """
    if dec_fill not in (0, 1):
        raise ValueError(f"dec_fill (official --padding) must be 0 (zeros) or 1 (ones), got {dec_fill!r}")
    b, _, c = batch_y.shape
    fill = batch_y.new_zeros(b, pred_len, c) if dec_fill == 0 else batch_y.new_ones(b, pred_len, c)
    return torch.cat([batch_y[:, :label_len], fill], dim=1)


# the three attention roles of an Informer layer stack
ROLES = ("encoder", "decoder_self", "cross")


@dataclass(frozen=True)
class ProbSparseOptions:
    """The :class:`~favit_probsparse.attention.ProbSparseAttention` options of every ProbSparse layer, under that
    class's names (:class:`Informer` takes ``measure`` and ``impl`` as ``prob_measure`` and ``prob_impl``)."""

    factor: float
    measure: str
    masked_lazy: str
    causal_sampling: bool
    impl: str
    fixed_eval_sample: bool


@dataclass(frozen=True)
class AttentionPlan:
    """How :class:`Informer` builds the :class:`AttentionLayer` of each role (``ROLES``).

    Self-attention (encoder and decoder) is of kind ``attention``, cross-attention of kind
    ``settings.cross_attention``; the decoder's self-attention is causal. The other fields are
    :class:`Informer`'s arguments of the same names.
    """

    settings: InformerPreset
    attention: str  # "prob" | "full": encoder and decoder self-attention
    d_model: int
    n_heads: int
    prob: ProbSparseOptions
    pos_inject: str = "input"
    pos_terms: str = "all"
    delta_v: bool | dict = False
    delta_v_layers: str = "self"
    deep_mlp: bool = False

    def kind(self, role: str) -> str:
        return self.settings.cross_attention if role == "cross" else self.attention

    def operator(self, role: str) -> nn.Module:
        """The attention operator (no parameters) of ``role``."""
        causal = role == "decoder_self"
        if self.kind(role) == "prob":
            return build_attention("prob", causal=causal, **asdict(self.prob))
        return build_attention("full", causal=causal, dropout=self.settings.dropout)

    def mixed(self, role: str) -> bool:
        """Whether ``role``'s output is the official head/time "mix" (see the module docstring)."""
        if self.settings.mix == "prob_layers":
            return self.kind(role) == "prob"
        return self.settings.mix == "decoder_self" and role == "decoder_self"

    def delta_v_options(self, role: str) -> bool | dict | None:
        """``delta_v`` for the layers ``delta_v_layers`` selects, else None."""
        selected = (
            self.delta_v_layers == "all"
            or role == "encoder"
            or (self.delta_v_layers == "self" and role == "decoder_self")
        )
        return self.delta_v if self.delta_v and selected else None

    def positions(self, embedding: DataEmbedding | None) -> dict:
        """Position-encoding arguments of a self-attention layer fed by ``embedding`` (None for cross-attention).

        Rotary and bias encodings always act inside the layer; an absolute one only when ``pos_inject`` says so.
        """
        if embedding is None:
            return {}
        pe = embedding.position_embedding
        if pe.kind in ("rotary", "bias"):
            return {"pos_encoding": pe}
        if pe.kind == "absolute" and self.pos_inject != "input":
            return {"pos_encoding": pe, "pos_terms": self.pos_terms}
        return {}

    def layer(self, role: str, embedding: DataEmbedding | None = None) -> AttentionLayer:
        return AttentionLayer(
            self.operator(role),
            d_model=self.d_model,
            n_heads=self.n_heads,
            mix=self.mixed(role),
            **self.positions(embedding),
            delta_v=self.delta_v_options(role),
            deep_mlp=self.deep_mlp,
        )

    def trims_decoder(self) -> bool:
        """Whether the decoder may drop its ``label_len`` rows after the last self-attention: every operation
        after it is per position when cross-attention is full and unmixed (same output, about 15 % fewer training
        FLOPs at the official settings)."""
        return self.kind("cross") == "full" and not self.mixed("cross") and not self.delta_v_options("cross")


def build_encoder(
    plan: AttentionPlan,
    embedding: DataEmbedding,
    e_layers: int,
    d_ff: int,
    activation: str,
    distil: bool,
) -> Encoder:
    """``e_layers`` encoder layers, ``e_layers - 1`` distilling ConvLayers between them if ``distil``, LayerNorm."""
    d_model, p = plan.d_model, plan.settings
    layers = [
        EncoderLayer(
            plan.layer("encoder", embedding),
            d_model=d_model,
            d_ff=d_ff,
            dropout=p.dropout,
            activation=activation,
        )
        for _ in range(e_layers)
    ]
    convs = [ConvLayer(d_model, padding=p.distil_padding) for _ in range(e_layers - 1)] if distil else None
    return Encoder(layers, convs, norm_layer=nn.LayerNorm(d_model))


def build_decoder(
    plan: AttentionPlan, embedding: DataEmbedding, d_layers: int, d_ff: int, activation: str
) -> Decoder:
    """``d_layers`` decoder layers (causal self-attention fed by ``embedding``, cross-attention), LayerNorm."""
    d_model, p = plan.d_model, plan.settings
    layers = [
        DecoderLayer(
            plan.layer("decoder_self", embedding),
            plan.layer("cross"),
            d_model=d_model,
            d_ff=d_ff,
            dropout=p.dropout,
            activation=activation,
        )
        for _ in range(d_layers)
    ]
    return Decoder(layers, norm_layer=nn.LayerNorm(d_model))


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose {', '.join(choices[:-1])} or {choices[-1]}")


def _input_embedding_parts(embed_parts: str, pos_inject: str) -> str:
    """The :class:`DataEmbedding` parts: without ``position`` when an absolute encoding goes into the layers only."""
    if pos_inject != "layers":
        return embed_parts
    names = _embedding_parts(embed_parts) - {"position"}
    return "+".join(n for n in _EMBEDDING_PARTS if n in names)


class Informer(nn.Module):
    """Informer encoder-decoder. ``forward(x_enc, x_mark_enc, x_dec, x_mark_dec) -> [B, pred_len, c_out]``.

    The switches resolve to an :class:`InformerPreset` (:func:`resolve_preset`); an :class:`AttentionPlan` says
    what each attention role gets, and :func:`build_encoder` / :func:`build_decoder` build the stacks from it.

    Args:
        enc_in / dec_in / c_out: channels in (encoder / decoder) and out (M: 7/7/7, S: 1/1/1, MS: 7/7/1 on ETT).
        seq_len / label_len / pred_len: encoder length, start-token length, horizon (the decoder input has
            ``label_len + pred_len`` steps; only ``pred_len`` is needed by the model, the others are checked:
            ``seq_len, pred_len >= 1`` and ``0 <= label_len <= seq_len``, see :func:`check_lengths`).
        preset: "official-head" | "paper-2021-03" | "tsl" (defaults of the switches below when they are None).
        attention: "prob" (ProbSparse) or "full" for encoder self- and decoder self-attention (Informer†).
        factor: ProbSparse sampling factor c (preset default 5, tsl 3).
        mix: None (preset), True/False (official ``--mix``: decoder self-attention only / nothing), or one of
            "none" | "decoder_self" | "prob_layers".
        cross_attention: None (preset), "full" or "prob".
        distil: distilling ConvLayers between encoder layers; distil_padding: None (preset), 1 or 2.
        embed_bias: biases of the value conv and timeF linear (official True, TSL False).
        embed: "timeF" | "fixed" | "learned"; freq: time-feature frequency ("h", "t", ...). Together they fix
            the width of ``x_mark_*`` (timeF: ``TIMEF_DIMS[freq]``; fixed/learned: 4 calendar fields, 5 for "t");
            ``forward`` names a mark of another width.
        pos_encoding: name for :func:`favit_probsparse.posenc.build_pos_encoding` (default "sinusoidal").
        prob_impl: "fast" | "exact" ProbSparse implementation; prob_measure, masked_lazy, causal_sampling,
            fixed_eval_sample: :class:`favit_probsparse.attention.ProbSparseAttention` options (official defaults).
        dropout_impl: "torch" (``nn.Dropout``, official) or "bits" (:class:`favit_probsparse.layers.BitsDropout`:
            same distribution up to p rounded to 2**-15, ~2x cheaper masks on CPU) for the model's dropout layers.

    Position-encoding / ΔV ablations (report Tables 2-6; defaults = the official model):
        pos_kwargs: keyword arguments for ``build_pos_encoding`` (e.g. ``{"layout": "B"}`` for Legendre).
        embed_parts: :class:`DataEmbedding` parts, ``"all"`` or e.g. ``"value"``, ``"value+temporal"``.
        pos_inject: where an *absolute* encoding enters: ``"input"`` (official: added to the embedding),
            ``"layers"`` (not at the input; injected into the logits of every self-attention layer with
            ``pos_terms``), or ``"both"``. Rotary and bias encodings always act in the self-attention layers.
        pos_terms: term set for injected positions (``"all"``, ``"cross"``, ``"pospos"``, ...; see
            :func:`favit_probsparse.posenc.parse_terms`).
        delta_v: ΔV attention (``True`` or a dict of :class:`DeltaVAttention` options, e.g. ``{"momentum": True}``).
        delta_v_layers: which layers get ΔV: ``"self"`` (encoder and decoder self-attention), ``"encoder"``, ``"all"``.
        deep_mlp: every attention layer's output projection becomes a 2-layer MLP (report Table 2's "deep MLP").
    """

    def __init__(
        self,
        enc_in: int = 7,
        dec_in: int = 7,
        c_out: int = 7,
        seq_len: int = 96,
        label_len: int = 48,
        pred_len: int = 24,
        preset: str = "official-head",
        attention: str = "prob",
        factor: float | None = None,
        d_model: int = 512,
        n_heads: int = 8,
        e_layers: int = 2,
        d_layers: int = 1,
        d_ff: int = 2048,
        dropout: float | None = None,
        embed: str = "timeF",
        freq: str = "h",
        activation: str = "gelu",
        distil: bool = True,
        mix: bool | str | None = None,
        cross_attention: str | None = None,
        distil_padding: int | None = None,
        embed_bias: bool | None = None,
        pos_encoding: str = "sinusoidal",
        max_len: int = 5000,
        prob_impl: str = "fast",
        prob_measure: str = "official",
        masked_lazy: str = "cumsum",
        causal_sampling: bool = False,
        fixed_eval_sample: bool = False,
        dropout_impl: str = "torch",
        pos_kwargs: dict | None = None,
        embed_parts: str = "all",
        pos_inject: str = "input",
        pos_terms: str = "all",
        delta_v: bool | dict = False,
        delta_v_layers: str = "self",
        deep_mlp: bool = False,
    ):
        super().__init__()
        _check_choice("pos_inject", pos_inject, ("input", "layers", "both"))
        _check_choice("delta_v_layers", delta_v_layers, ("self", "encoder", "all"))
        _check_choice("attention", attention, ("prob", "full"))
        for name, value in (("enc_in", enc_in), ("dec_in", dec_in), ("c_out", c_out)):
            check_int(name, value, 1)
        if e_layers < 1 or d_layers < 1:
            raise ValueError(f"e_layers and d_layers must be >= 1, got {e_layers}, {d_layers}")
        check_lengths(seq_len, label_len, pred_len)
        p = resolve_preset(preset, mix, cross_attention, distil_padding, embed_bias, dropout, factor)
        self.settings = p
        self.preset, self.attention_kind = preset, attention
        self.seq_len, self.label_len, self.pred_len = seq_len, label_len, pred_len
        self.enc_in, self.dec_in, self.c_out = enc_in, dec_in, c_out
        self.d_model, self.n_heads = d_model, n_heads
        self.pos_inject, self.pos_terms = pos_inject, pos_terms

        embedding = partial(
            DataEmbedding, d_model=d_model, embed=embed, freq=freq, dropout=p.dropout, pos_encoding=pos_encoding,
            max_len=max_len, bias=p.embed_bias, parts=_input_embedding_parts(embed_parts, pos_inject),
            pos_kwargs=pos_kwargs,
        )  # fmt: skip
        self.enc_embedding, self.dec_embedding = embedding(enc_in), embedding(dec_in)
        prob = ProbSparseOptions(
            factor=p.factor, measure=prob_measure, masked_lazy=masked_lazy, causal_sampling=causal_sampling,
            impl=prob_impl, fixed_eval_sample=fixed_eval_sample,
        )  # fmt: skip
        plan = AttentionPlan(
            settings=p, attention=attention, d_model=d_model, n_heads=n_heads, prob=prob, pos_inject=pos_inject,
            pos_terms=pos_terms, delta_v=delta_v, delta_v_layers=delta_v_layers, deep_mlp=deep_mlp,
        )  # fmt: skip
        ffn = dict(d_ff=d_ff, activation=activation)
        self.encoder = build_encoder(plan, self.enc_embedding, e_layers=e_layers, distil=distil, **ffn)
        self.decoder = build_decoder(plan, self.dec_embedding, d_layers=d_layers, **ffn)
        self.projection = nn.Linear(d_model, c_out, bias=True)
        self.trim_decoder = plan.trims_decoder()  # the forecast is the last pred_len rows
        if dropout_impl != "torch":
            swap_dropout(self, dropout_impl)

    def encoder_length(self, seq_len: int | None = None) -> int:
        """Length of the encoder output for an input of ``seq_len`` steps."""
        length = self.seq_len if seq_len is None else seq_len
        if self.encoder.conv_layers is not None:
            for _ in self.encoder.conv_layers:
                length = distilled_length(length, self.settings.distil_padding)
        return length

    def _check_inputs(
        self, x_enc: Tensor, x_mark_enc: Tensor | None, x_dec: Tensor, x_mark_dec: Tensor | None
    ) -> None:
        """Shape errors that name the input (instead of a convolution or matmul error deep inside)."""
        for name, x, channels in (("x_enc", x_enc, self.enc_in), ("x_dec", x_dec, self.dec_in)):
            if x.ndim != 3 or x.shape[-1] != channels:
                raise ValueError(f"{name} must have shape [B, L, {channels}], got {list(x.shape)}")
        if x_enc.shape[1] != self.seq_len:  # a longer window would run, on positions the model never saw
            raise ValueError(
                f"x_enc has {x_enc.shape[1]} steps; this Informer is built for seq_len={self.seq_len}"
            )
        if x_dec.shape[1] < self.pred_len:
            raise ValueError(f"decoder input has {x_dec.shape[1]} steps, fewer than pred_len={self.pred_len}")
        for name, mark, x, emb in (
            ("x_mark_enc", x_mark_enc, x_enc, self.enc_embedding),
            ("x_mark_dec", x_mark_dec, x_dec, self.dec_embedding),
        ):
            if mark is not None and "temporal" in emb.parts:
                width = emb.time_features
                if mark.ndim != 3 or mark.shape[-1] != width or mark.shape[:2] != x.shape[:2]:
                    raise ValueError(
                        f"{name} must have shape [B={x.shape[0]}, L={x.shape[1]}, {width}] "
                        f"({width} time features for embed={emb.embed!r}, freq={emb.freq!r}), got {list(mark.shape)}"
                    )

    def forward(
        self, x_enc: Tensor, x_mark_enc: Tensor | None, x_dec: Tensor, x_mark_dec: Tensor | None
    ) -> Tensor:
        self._check_inputs(x_enc, x_mark_enc, x_dec, x_mark_dec)
        enc_out = self.encoder(self.enc_embedding(x_enc, x_mark_enc))
        keep = self.pred_len if self.trim_decoder else None
        dec_out = self.decoder(self.dec_embedding(x_dec, x_mark_dec), enc_out, keep_last=keep)
        return self.projection(dec_out)[:, -self.pred_len :, :]
