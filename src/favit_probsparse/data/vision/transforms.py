"""The timm train/eval transforms, and their uint8-tensor twin for the decoded image cache."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["build_transform", "default_eval_crop_pct", "tensor_transform_supported"]


def _pad_crop(img_size: int, hflip: float):
    from torchvision import transforms as T

    tfs = [T.RandomCrop(img_size, padding=max(1, img_size // 8), padding_mode="reflect")]
    if hflip > 0:
        tfs.append(T.RandomHorizontalFlip(hflip))
    return tfs


def default_eval_crop_pct(img_size: int, native_size: int | None, train_crop: str) -> float:
    """Resize 256 / crop 224 style (0.875) only where training crops too (RandomResizedCrop of an upsampled
    image); a plain resize (1.0) otherwise."""
    upsampled = native_size is not None and img_size > native_size
    return 0.875 if upsampled and train_crop == "rrc" else 1.0


def build_transform(
    is_train: bool,
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    native_size: int | None = None,
    auto_augment: str | None = "rand-m9-mstd0.5-inc1",
    re_prob: float = 0.25,
    interpolation: str = "bicubic",
    color_jitter: float | None = 0.4,
    train_crop: str = "rrc",
    scale: Sequence[float] | None = None,
    hflip: float = 0.5,
    eval_crop_pct: float | None = None,
    tensor_input: bool = False,
):
    """Build a timm train/eval transform (PIL image -> normalized tensor).

    ``eval_crop_pct`` defaults to 0.875 (resize 256, center-crop 224) when ``img_size`` is larger than the native
    size and training uses RandomResizedCrop, and to 1.0 (plain resize) otherwise.

    ``tensor_input=True`` builds the training transform for uint8 ``[3, H, W]`` tensors instead of PIL images
    (the decoded cache of :class:`DecodedImageFolder`); only where :func:`tensor_transform_supported` says so.
    The same torchvision ops run on the tensor and draw the same random numbers, so the output is bit-identical
    to the PIL path's for the same RNG state, at a fraction of the cost.
    """
    from timm.data import create_transform
    from torchvision import transforms as T

    if train_crop not in ("rrc", "pad_crop"):
        raise ValueError(f"train_crop must be 'rrc' or 'pad_crop', got {train_crop!r}")
    if tensor_input and not (
        is_train and tensor_transform_supported(img_size, native_size, auto_augment, color_jitter, train_crop)
    ):
        raise ValueError(
            "tensor_input needs the training pad_crop transform at the native size without auto_augment "
            "or color_jitter"
        )
    if not is_train:
        if eval_crop_pct is None:
            eval_crop_pct = default_eval_crop_pct(img_size, native_size, train_crop)
        return create_transform(
            img_size,
            is_training=False,
            interpolation=interpolation,
            mean=tuple(mean),
            std=tuple(std),
            crop_pct=eval_crop_pct,
        )
    primary, secondary, final = create_transform(
        img_size,
        is_training=True,
        scale=tuple(scale) if scale is not None else None,
        hflip=hflip,
        color_jitter=color_jitter if color_jitter else 0.0,
        auto_augment=auto_augment or None,
        interpolation=interpolation,
        mean=tuple(mean),
        std=tuple(std),
        re_prob=re_prob,
        separate=True,
    )
    if train_crop == "pad_crop":
        pre = []
        if native_size is not None and native_size != img_size:
            from timm.data.transforms import str_to_interp_mode

            pre.append(T.Resize(img_size, interpolation=str_to_interp_mode(interpolation)))
        primary = T.Compose([*pre, *_pad_crop(img_size, hflip)])
    if tensor_input:
        # uint8 -> float in [0, 1] exactly as ToTensor does it (to(float32) then / 255); the rest is unchanged
        # (timm's no-op ColorJitter still draws its randperm, Normalize and RandomErasing take tensors)
        tail = [t for t in final.transforms if type(t).__name__ not in ("MaybeToTensor", "ToTensor")]
        final = T.Compose([T.ConvertImageDtype(torch.float32), *tail])
    return T.Compose([primary, secondary, final])


def tensor_transform_supported(
    img_size: int,
    native_size: int | None,
    auto_augment: str | None,
    color_jitter: float | None,
    train_crop: str,
) -> bool:
    """Whether the training transform has a tensor version identical to the PIL one: pad_crop without resizing,
    RandAugment or colour jitter (these work on PIL images and differ in rounding on tensors)."""
    return (
        train_crop == "pad_crop"
        and not auto_augment
        and not color_jitter
        and (native_size is None or native_size == img_size)
    )
