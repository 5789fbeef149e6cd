"""Argument checks shared by the model constructors (short errors that name the argument)."""

from __future__ import annotations

import numbers


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int when it is an integer (not a bool) ``>= minimum``; else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
