"""Time-series patching and instance normalization, as the official PatchTST code (``yuqinie98/PatchTST``,
``PatchTST_supervised/layers/RevIN.py`` and ``PatchTST_backbone.py``).

* :class:`RevIN` (Kim et al., ICLR 2022, as PatchTST's copy): each input window is normalised per channel by its
  own mean (or last value, ``subtract_last``) and standard deviation (biased variance + ``eps`` under the root),
  optionally followed by a learned per-channel affine map; the forecast is mapped back with the same statistics
  (the affine map is undone first, dividing by ``weight + eps²`` as the official code). PatchTST's defaults:
  ``revin=1, affine=0, subtract_last=0``.
* :class:`TimePatches`: patches of ``patch_len`` steps every ``stride`` steps; ``padding="end"`` (PatchTST's
  default ``padding_patch='end'``) first repeats the last step ``stride`` times (``ReplicationPad1d((0, stride))``),
  which adds one patch: ``n = (seq_len − patch_len) // stride + 1 (+ 1)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RevIN", "TimePatches", "num_patches"]


class RevIN(nn.Module):
    """Reversible instance normalization of ``[B, L, C]`` windows: ``norm(x)`` stores the statistics of ``x``,
    ``denorm(y)`` maps ``[B, L', C]`` outputs back with them.

    Args:
        num_features: channels C.
        eps: added to the variance (and ``eps²`` to the affine weight when undoing it), as the official code.
        affine: learned per-channel weight (init 1) and bias (init 0) after the normalization.
        subtract_last: subtract the last step instead of the mean (the std is still the window's).
    """

    def __init__(
        self, num_features: int, eps: float = 1e-5, affine: bool = False, subtract_last: bool = False
    ):
        super().__init__()
        self.num_features, self.eps, self.affine, self.subtract_last = (
            num_features,
            eps,
            affine,
            subtract_last,
        )
        if affine:
            self.affine_weight = nn.Parameter(torch.ones(num_features))
            self.affine_bias = nn.Parameter(torch.zeros(num_features))
        self._center: Tensor | None = None
        self._std: Tensor | None = None

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, affine={self.affine}, subtract_last={self.subtract_last}"
        )

    def norm(self, x: Tensor) -> Tensor:
        # statistics are constants for the gradient (the official code detaches them)
        self._center = (x[:, -1:] if self.subtract_last else x.mean(1, keepdim=True)).detach()
        self._std = torch.sqrt(x.var(1, keepdim=True, unbiased=False) + self.eps).detach()
        x = (x - self._center) / self._std
        if self.affine:
            x = x * self.affine_weight + self.affine_bias
        return x

    def denorm(self, y: Tensor) -> Tensor:
        if self._center is None or self._std is None:
            raise RuntimeError("RevIN.denorm called before norm")
        if self.affine:
            y = (y - self.affine_bias) / (self.affine_weight + self.eps * self.eps)
        return y * self._std + self._center


def num_patches(seq_len: int, patch_len: int, stride: int, padding: str | None = "end") -> int:
    """Patches :class:`TimePatches` cuts from ``seq_len`` steps."""
    return (seq_len - patch_len) // stride + 1 + (1 if padding == "end" else 0)


class TimePatches(nn.Module):
    """``[B, L, C]`` -> patches ``[B, C, n, patch_len]`` (``n = num_patches(...)``).

    Args:
        seq_len: window length L.
        patch_len: steps per patch.
        stride: steps between patch starts.
        padding: ``"end"`` (repeat the last step ``stride`` times first, PatchTST's default) or ``None``.
    """

    def __init__(self, seq_len: int, patch_len: int, stride: int, padding: str | None = "end"):
        super().__init__()
        if padding not in ("end", None):
            raise ValueError(f"padding must be 'end' or None, got {padding!r}")
        if patch_len > seq_len:
            raise ValueError(f"patch_len={patch_len} must be <= seq_len={seq_len}")
        self.seq_len, self.patch_len, self.stride, self.padding = seq_len, patch_len, stride, padding
        self.num_patches = num_patches(seq_len, patch_len, stride, padding)

    def extra_repr(self) -> str:
        return (
            f"patch_len={self.patch_len}, stride={self.stride}, padding={self.padding}, n={self.num_patches}"
        )

    def forward(self, x: Tensor) -> Tensor:
        z = x.transpose(1, 2)  # [B, C, L]
        if self.padding == "end":
            z = F.pad(z, (0, self.stride), mode="replicate")
        return z.unfold(-1, self.patch_len, self.stride)  # [B, C, n, patch_len]
