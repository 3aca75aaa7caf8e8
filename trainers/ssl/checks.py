"""Checks of the algorithms' keyword settings: a ValueError naming the setting and its range."""

from __future__ import annotations

import math


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    return float(value)


def check_unit(name: str, value: object) -> None:
    """``value`` in [0, 1] (a confidence threshold, a fraction of the run)."""
    if not 0 <= _number(name, value) <= 1:
        raise ValueError(f"{name} must lie within [0, 1]; got {value!r}")


def check_weight(name: str, value: object) -> None:
    """``value`` >= 0 (a loss weight)."""
    if _number(name, value) < 0:
        raise ValueError(f"{name} must be >= 0; got {value!r}")


def check_positive(name: str, value: object) -> None:
    """``value`` > 0 (a temperature)."""
    if _number(name, value) <= 0:
        raise ValueError(f"{name} must be > 0; got {value!r}")


def check_count(name: str, value: object) -> None:
    """``value`` a positive int (a data set's size)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
