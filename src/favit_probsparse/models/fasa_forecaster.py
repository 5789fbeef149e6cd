"""FaSA forecaster: factorized self-attention (:class:`~favit_probsparse.attention.fasa.FaSA`) over the 1-D grid of
time patches, with any cross-window fusion (``official``, ``max``, ``probsparse``, ...).

Around the encoder it is the PatchTST skeleton of :class:`~favit_probsparse.models.patchtst.PatchForecaster`:
RevIN on each input window (PatchTST's copy of RevIN, ``affine`` optional, off by default as PatchTST's scripts),
patches of ``patch_len`` steps every ``stride`` steps with PatchTST's end padding, ``Linear(patch_len, d_model)``
per patch, a position encoding, a flatten + linear head; channel-independent by default, ``channel_mixing=True``
makes one token of all channels' patches at a time span.

Encoder: ``e_layers`` blocks ``x + FaSA(norm(x)); x + MLP(norm(x))`` (``pre_norm=True``, the default, as FaViT's
blocks) or the post-norm form ``norm(x + FaSA(x)); norm(x + MLP(x))`` (PatchTST's). Every block gets its own
random stream for sampled fusions (``fusion_seed_offset = 1000·block``, as FaViT).

Position encodings. Absolute ones (``sinusoidal``, ``learned``, ``legendre``/``pope``, ``legendre_orth``,
``legendre_gauss``) are added to the patch tokens; ``none`` adds nothing. ``rope`` and ``alibi`` act on the
query-key logits of each (query, key) pair by their positions; FaSA's window branches attend to keys *fused across
windows* (window position ``p`` stands for ``p`` of every window at once), so a key has no single position and
FaSAForecaster refuses them with a one-line error (the PatchTST-style network accepts them).

ΔV (``delta_v``): every attention call of FaSA (global branch and window branches) gets the values
``V + g·ΔV`` along its key axis. The keys are in time order in every branch that keeps the window layout (global:
the reduced grid; window branches: the window's positions), so the difference is taken between keys adjacent in
time; ``hierarchical`` fusion (keys not in time order) is refused with ΔV.
"""

from __future__ import annotations

from typing import Any

from timm.layers import Mlp
from torch import Tensor, nn

from favit_probsparse.attention.fasa import FaSA
from favit_probsparse.attention.fusion import FUSIONS
from favit_probsparse.models._checks import check_int
from favit_probsparse.models.patchtst import DeltaValues, PatchForecaster, build_token_norm, delta_values

__all__ = ["DeltaVFaSA", "FaSABlock", "FaSAForecaster"]


class DeltaVFaSA(FaSA):
    """:class:`FaSA` whose every attention call sees the values ``V + g·M(V)`` (:class:`DeltaValues`).

    Args: those of :class:`FaSA`, and ``delta_v``: the :class:`DeltaValues` module.
    """

    def __init__(self, *args: Any, delta_v: DeltaValues, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.delta_v = delta_v

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        return super()._attend(q, k, self.delta_v(v), scale)


class FaSABlock(nn.Module):
    """FaSA + MLP with residuals, pre- or post-norm. ``forward(x [B, n, dim]) -> [B, n, dim]`` on the 1-D grid
    ``(n,)``.

    Args:
        dim: token width.
        attn: the FaSA module.
        d_ff: MLP hidden width (GELU).
        dropout: on the residual branches and inside the MLP.
        norm: ``"layer"`` or ``"batch"``; pre_norm: normalize before each sub-layer.
    """

    def __init__(self, dim: int, attn: FaSA, d_ff: int, dropout: float, norm: str, pre_norm: bool):
        super().__init__()
        self.norm1, self.norm2 = build_token_norm(norm, dim), build_token_norm(norm, dim)
        self.attn = attn
        self.drop = nn.Dropout(dropout)
        self.mlp = Mlp(dim, d_ff, act_layer=nn.GELU, drop=(dropout, dropout))
        self.pre_norm = pre_norm

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[1]
        if self.pre_norm:
            x = x + self.drop(self.attn(self.norm1(x), n))
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.drop(self.attn(x, n)))
        return self.norm2(x + self.mlp(x))


class FaSAForecaster(PatchForecaster):
    """FaSA encoder over time patches (module docstring). ``forward(x_enc, x_mark_enc, x_dec, x_mark_dec) ->
    [B, pred_len, c_out]``; reads only ``x_enc``.

    Args:
        enc_in: channels of the input window.
        dec_in: decoder channels; not read, but must equal ``enc_in`` when given (linked from the data).
        c_out: channels forecast, the last ``c_out`` of the input (None: ``enc_in``).
        seq_len: look-back window.
        label_len: decoder start-token length of other networks; not used (checked ``>= 0``).
        pred_len: horizon.
        patch_len: steps per patch.
        stride: steps between patches.
        padding_patch: ``"end"`` (PatchTST's: one more patch over the repeated last step) or None.
        d_model: token width (FaSA splits it 2:7:7 between the global and the two window branches when
            ``sr_ratio > 1``, else 1:7; ``d_model // 16`` resp. ``// 8`` times 7 must divide by ``n_heads``).
        n_heads: heads of each window branch (the global branch has one).
        e_layers: FaSA blocks.
        d_ff: MLP hidden width.
        sr_ratio: the global branch's reduction of the patch grid, also the dilation of the second window branch.
        window_size: patches per window.
        fusion: cross-window fusion (:data:`favit_probsparse.attention.fusion.FUSIONS`).
        fusion_kwargs: its options (e.g. ``{"factor": 5, "seed": 0}`` for ``probsparse``).
        small_grid: a window longer than the patch grid: ``"reflect"`` (completed by reflection, FaSA's rule) or
            ``"error"``.
        dropout: after the position encoding, in the MLP and on the residuals.
        attn_dropout: on FaSA's attention weights; head_dropout: before the head.
        norm: ``"layer"`` or ``"batch"``; pre_norm: pre-norm blocks (default) or post-norm.
        revin: instance normalization (PatchTST's RevIN); affine: its learned affine map; subtract_last:
            subtract the last value instead of the mean.
        channel_mixing: one token per time span over all channels instead of channel-independent tokens.
        pos_encoding: absolute :func:`~favit_probsparse.posenc.build_pos_encoding` name or ``none``.
        pos_kwargs: keyword arguments of the encoding.
        delta_v: ΔV on FaSA's values (True or a dict of :class:`~favit_probsparse.models.patchtst.DeltaValues`
            options).
        embed / freq: time-feature settings of the data; accepted so one config links them into any network,
            not used.
    """

    inner_kinds = ()

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
        d_model: int = 128,
        n_heads: int = 4,
        e_layers: int = 3,
        d_ff: int = 256,
        sr_ratio: int = 2,
        window_size: int = 4,
        fusion: str = "probsparse",
        fusion_kwargs: dict[str, Any] | None = None,
        small_grid: str = "reflect",
        dropout: float = 0.2,
        attn_dropout: float = 0.0,
        head_dropout: float = 0.0,
        norm: str = "layer",
        pre_norm: bool = True,
        revin: bool = True,
        affine: bool = False,
        subtract_last: bool = False,
        channel_mixing: bool = False,
        pos_encoding: str = "sinusoidal",
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
        kind = self.pos_encoding.kind
        if kind not in ("absolute", "none"):
            raise ValueError(
                f"pos_encoding {pos_encoding!r} acts inside attention, but FaSA's window branches attend to keys "
                "fused across windows (no single position); use an absolute encoding or 'none'"
            )
        for arg, value in (("e_layers", e_layers), ("n_heads", n_heads), ("d_ff", d_ff),
                           ("sr_ratio", sr_ratio), ("window_size", window_size)):  # fmt: skip
            check_int(arg, value, 1)
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; choose one of {sorted(FUSIONS)}")
        n = self.num_patches
        if sr_ratio > n:
            raise ValueError(f"sr_ratio={sr_ratio} must be <= the number of patches {n} (seq_len {seq_len})")
        if small_grid == "error" and window_size > n:
            raise ValueError(
                f"window_size={window_size} must be <= the number of patches {n} (small_grid='error')"
            )
        dv = delta_values(delta_v)
        if dv is not None and not FUSIONS[fusion].keeps_grid:
            raise ValueError(f"delta_v needs keys in time order; fusion {fusion!r} reorders them")
        self.sr_ratio, self.window_size, self.fusion = sr_ratio, window_size, fusion
        self.blocks = nn.ModuleList(
            FaSABlock(d_model, self._fasa(d_model, n_heads, sr_ratio, window_size, fusion, fusion_kwargs,
                                          1000 * i, attn_dropout, dropout, small_grid, dv),
                      d_ff, dropout, norm, pre_norm)
            for i in range(e_layers)
        )  # fmt: skip

    def _fasa(
        self, dim, heads, sr, ws, fusion, fusion_kwargs, offset, attn_drop, drop, small_grid, dv
    ) -> FaSA:
        kw = dict(
            num_heads=heads,
            sr_ratio=sr,
            window_size=ws,
            attn_drop=attn_drop,
            proj_drop=drop,
            fusion=fusion,
            fusion_kwargs=fusion_kwargs,
            fusion_seed_offset=offset,
            feat_size=(self.num_patches,),
            small_grid=small_grid,
        )
        return FaSA(dim, **kw) if dv is None else DeltaVFaSA(dim, delta_v=dv, **kw)

    def forward_features(self, tokens: Tensor) -> Tensor:
        for block in self.blocks:
            tokens = block(tokens)
        return tokens
