"""The training loss's NaN / infinity check, shared by the supervised and semi-supervised loops."""

from __future__ import annotations

import torch
from torch import Tensor

# Steps between checks of the loss: each check is a host sync on an accelerator.
FINITE_CHECK_EVERY = 25


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def check_finite(losses: list[Tensor], first_step: int, where: str = "") -> None:
    """Raise naming the first step (``first_step`` is ``losses[0]``'s) whose loss is not finite.

    ``where`` is added after the step, e.g. " (epoch 3)".
    """
    if not losses:
        return
    stacked = torch.stack(losses)
    finite = torch.isfinite(stacked)
    if not bool(finite.all()):
        step = first_step + int((~finite).nonzero()[0])
        raise NonFiniteLossError(
            f"the training loss became {stacked[~finite][0].item()} at step {step}{where}; "
            "lower the learning rate or check the data"
        )
