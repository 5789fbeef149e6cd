"""Argument checks shared by the model constructors (short errors that name the argument)."""

from __future__ import annotations

import numbers

from torch import Tensor, nn


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int when it is an integer (not a bool) ``>= minimum``; else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def set_forecast_shapes(
    model: nn.Module,
    enc_in: int,
    dec_in: int | None,
    c_out: int | None,
    seq_len: int,
    label_len: int,
    pred_len: int,
) -> None:
    """Checks the shape arguments of a forecaster that reads only ``x_enc`` and sets them on ``model``
    (``enc_in, dec_in, c_out, seq_len, label_len, pred_len``; ``dec_in`` and ``c_out`` None -> ``enc_in``).

    ``dec_in`` is not read, but a value must equal ``enc_in`` (one data module gives every network its shapes);
    ``c_out`` picks the last ``c_out`` input channels, so it cannot exceed ``enc_in``.
    """
    check_int("enc_in", enc_in, 1)
    check_int("seq_len", seq_len, 1)
    check_int("pred_len", pred_len, 1)
    check_int("label_len", label_len, 0)
    name = type(model).__name__
    if dec_in is not None and check_int("dec_in", dec_in, 1) != enc_in:
        raise ValueError(f"dec_in={dec_in} must equal enc_in={enc_in} ({name} forecasts from x_enc only)")
    c_out = enc_in if c_out is None else check_int("c_out", c_out, 1)
    if c_out > enc_in:
        raise ValueError(f"c_out={c_out} must be <= enc_in={enc_in} (the last c_out input channels)")
    # dec_in None -> enc_in: a network built in Python without it still agrees with its data module's dec_in
    model.enc_in, model.dec_in, model.c_out = enc_in, enc_in, c_out
    model.seq_len, model.label_len, model.pred_len = seq_len, label_len, pred_len


def check_x_enc(model: nn.Module, x_enc: Tensor) -> None:
    """A ValueError naming the expected ``[B, seq_len, enc_in]`` when ``x_enc`` has another shape."""
    if x_enc.ndim != 3 or tuple(x_enc.shape[1:]) != (model.seq_len, model.enc_in):
        raise ValueError(
            f"x_enc must have shape [B, seq_len={model.seq_len}, enc_in={model.enc_in}], got {list(x_enc.shape)}"
        )
