"""A plan in a few lines of text, from its JSON form (``Plan.model_dump``).

What ``dmsweep submit`` prints of the plan the service returns, and the totals under
``dmsweep plan``'s table. Reads plain data only, so the client needs neither torch nor the
spec model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def hours(value: float | None) -> str:
    """``12.3 h``, ``45 min`` or ``-``."""
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 60:.3g} min"
    return f"{value:,.1f} h" if value >= 100 else f"{value:.3g} h"


def money(value: float | None) -> str:
    """``1,234.50`` or ``-``."""
    return "-" if value is None else f"{value:,.2f}"


def summary_lines(plan: Mapping[str, Any]) -> list[str]:
    """The plan's totals, its early-stopping expectation and its warnings, one per line.

    A plan that could not be made (``{"error": ...}``) is that one line.
    """
    if plan.get("error"):
        return [f"no plan: {plan['error']}"]
    totals = plan["totals"]
    device = plan.get("device") or "no device"
    lines = []
    if totals.get("device_hours") is None:
        lines.append(f"{totals['trials']} trials on {device}: no hours (see the warnings)")
    else:
        line = f"{totals['trials']} trials: {hours(totals['device_hours'])} on {device}"
        if plan.get("asha"):
            line += f" without stopping, {hours(totals['expected_device_hours'])} expected (ASHA)"
        if totals.get("wall_hours") is not None:
            line += (
                f"; at least {hours(totals['wall_hours'])} wall time on "
                f"{plan['devices']:g} device(s)"
            )
            if plan.get("asha"):
                line += f" ({hours(totals['expected_wall_hours'])} expected)"
        if totals.get("cost") is not None:
            line += f"; cost {money(totals['cost'])}"
            if plan.get("asha"):
                line += f" ({money(totals['expected_cost'])} expected)"
        lines.append(line)
    lines += [f"warning: {text}" for text in plan.get("warnings", [])]
    return lines
