"""Loss names as used in sweep specs and trial configs, bound to their hyperparameters.

``objective("dm_ce", eta=0.1)`` returns ``fn(logits, batch) -> loss`` for a ``MixedBatch``; the
training loop needs nothing else to know which loss of the paper it trains with.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from trainers import losses
from trainers.mixing import MixedBatch
from trainers.vocabulary import (
    INTERPOLATION_BASED,
    LOSS_HYPERPARAMETERS,
    LOSSES,
    SOFTMAX_LOSSES,
)

Objective = Callable[[Tensor, MixedBatch], Tensor]


def _check_hyperparameters(name: str, given: set[str]) -> None:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; allowed: {', '.join(LOSSES)}")
    required = set(LOSS_HYPERPARAMETERS[name])
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
        takes = ", ".join(sorted(required)) or "no hyperparameters"
        raise ValueError(f"loss {name!r} takes {takes}: {detail}")


def _dm_bce_by_policy(xi: float, t: float, interpolation: tuple[float, float]) -> Objective:
    """DM(BCE) with A.3's settings per batch: ``interpolation`` (xi, t) on Mixup batches."""

    def loss(z: Tensor, b: MixedBatch) -> Tensor:
        xi_b, t_b = interpolation if b.policy in INTERPOLATION_BASED else (xi, t)
        return losses.dm_bce(z, b.y_a, b.y_b, b.lam, xi=xi_b, t=t_b)

    return loss


def _unsmoothed(name: str, eta: float | None, xi: float | None, t: float | None) -> Objective:
    if name == "ce":
        return lambda z, b: losses.ce(z, b.y_a)
    if name == "mce":
        return lambda z, b: losses.mce(z, b.y_a, b.y_b, b.lam)
    if name == "dm_ce":
        assert eta is not None  # _check_hyperparameters asked for it
        return lambda z, b: losses.dm_ce(z, b.y_a, b.y_b, b.lam, eta=eta)
    if name == "mbce":
        return lambda z, b: losses.mbce(z, b.y_a, b.y_b, b.lam)
    if name == "mbce_two":
        return lambda z, b: losses.mbce(z, b.y_a, b.y_b, b.lam, two_hot=True)
    assert xi is not None and t is not None  # dm_bce: _check_hyperparameters asked for both
    return lambda z, b: losses.dm_bce(z, b.y_a, b.y_b, b.lam, xi=xi, t=t)


def objective(
    name: str,
    *,
    eta: float | None = None,
    xi: float | None = None,
    t: float | None = None,
    interpolation_xi: float | None = None,
    interpolation_t: float | None = None,
    label_smoothing: float = 0.0,
) -> Objective:
    """The loss ``name`` with its hyperparameters bound; unused ones must be left out.

    ``label_smoothing`` (the DeiT recipe's 0.1, Table 10) smooths the mixed label of the softmax
    losses: the MCE part becomes the cross-entropy against ``(1 - eps) y_mix + eps / C``, which is
    ``(1 - eps) MCE + eps * mean_c(-log p_c)``; the decoupled term of DM is left as it is.

    Args:
        name: one of ``trainers.vocabulary.LOSSES``.
        eta: DM(CE)'s weight of the decoupled term (Eq. 2); dm_ce only.
        xi: DM(BCE)'s truncation of the label rescaling ``r(lambda; xi, t)`` (Eq. 3); dm_bce only.
        t: DM(BCE)'s temperature of that rescaling (Eq. 3); dm_bce only.
        interpolation_xi: DM(BCE)'s xi on the batches an interpolation-based policy mixed (the
            Mixup batches of ``mixup_cutmix``; A.3 sets them apart from the cutting-based ones);
            ``xi`` applies to the others. Given with ``interpolation_t`` or not at all.
        interpolation_t: DM(BCE)'s t on those batches; ``t`` applies to the others.
        label_smoothing: epsilon of the softmax losses' label smoothing.

    Example::

        loss_fn = objective("dm_ce", eta=0.1)
        loss = loss_fn(model(batch.inputs), batch)  # batch: a MixedBatch of a mixing policy

    """
    given = {k for k, v in {"eta": eta, "xi": xi, "t": t}.items() if v is not None}
    _check_hyperparameters(name, given)
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must lie within [0, 1); got {label_smoothing!r}")
    loss = _unsmoothed(name, eta, xi, t)
    if (interpolation_xi is None) != (interpolation_t is None):
        raise ValueError("give interpolation_xi and interpolation_t together, or neither")
    if interpolation_xi is not None and interpolation_t is not None:
        if name != "dm_bce":
            raise ValueError(f"interpolation_xi / interpolation_t apply to dm_bce, not {name!r}")
        assert xi is not None and t is not None  # _check_hyperparameters asked for both
        loss = _dm_bce_by_policy(xi, t, (interpolation_xi, interpolation_t))
    if label_smoothing == 0:
        return loss
    if name not in SOFTMAX_LOSSES:
        raise ValueError(f"label smoothing applies to {sorted(SOFTMAX_LOSSES)}, not to {name!r}")
    mce = _unsmoothed("mce", None, None, None)
    eps = label_smoothing

    def smoothed(z: Tensor, batch: MixedBatch) -> Tensor:
        uniform = -F.log_softmax(z.float(), dim=1).mean()
        return loss(z, batch) + eps * (uniform - mce(z, batch))

    return smoothed
