"""Loss names as used in sweep specs, bound to their hyperparameters.

``objective("dm_ce", eta=0.1)`` returns ``fn(logits, batch) -> loss`` for a ``MixedBatch``; the
training loop needs nothing else to know which loss of the paper it trains with.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from trainers import losses
from trainers.mixing import MixedBatch

Objective = Callable[[Tensor, MixedBatch], Tensor]

# Names of the grid's `loss` axis: MCE and DM(CE) (Sec. 2.1, 3.1), one- and two-hot MBCE and
# DM(BCE) (Sec. 3.3).
LOSSES = ("mce", "dm_ce", "mbce", "mbce_two", "dm_bce")


def objective(
    name: str, *, eta: float | None = None, xi: float | None = None, t: float | None = None
) -> Objective:
    """The loss ``name`` with its hyperparameters bound; unused ones must be left out."""
    needs = {"dm_ce": {"eta"}, "dm_bce": {"xi", "t"}}
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; allowed: {', '.join(LOSSES)}")
    given = {k for k, v in {"eta": eta, "xi": xi, "t": t}.items() if v is not None}
    required = needs.get(name, set())
    if given != required:
        missing, extra = sorted(required - given), sorted(given - required)
        detail = "; ".join(
            part
            for part in (
                f"missing {', '.join(missing)}" if missing else "",
                f"{', '.join(extra)} not used by {name}" if extra else "",
            )
            if part
        )
        raise ValueError(
            f"loss {name!r} takes {sorted(required) or 'no hyperparameters'}: {detail}"
        )
    if name == "mce":
        return lambda z, b: losses.mce(z, b.y_a, b.y_b, b.lam)
    if name == "dm_ce":
        return lambda z, b: losses.dm_ce(z, b.y_a, b.y_b, b.lam, eta=eta)
    if name == "mbce":
        return lambda z, b: losses.mbce(z, b.y_a, b.y_b, b.lam)
    if name == "mbce_two":
        return lambda z, b: losses.mbce(z, b.y_a, b.y_b, b.lam, two_hot=True)
    return lambda z, b: losses.dm_bce(z, b.y_a, b.y_b, b.lam, xi=xi, t=t)
