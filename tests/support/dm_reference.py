"""DM(CE) written straight from the paper's equation (Sec. 3.1), to check ``trainers.losses.dm_ce``.

For a sample mixing class ``a`` (weight ``lam``) and class ``b`` (weight ``1 - lam``)::

    L = -[lam log p_a + (1 - lam) log p_b]                      (MCE, Eq. 1)
        + eta * [-log phi(a; without b) - log phi(b; without a)]  (the decoupled part)

    phi(i; without j) = exp(z_i) / sum_{c != j} exp(z_c)

with no decoupled part where the sample holds one class (a same-class pair, or a share
``min(lam, 1 - lam)`` of at most 1e-3), averaged over the batch. Each term is computed as
written, one row per sample, and differentiated by autograd: the obvious form that the fused
loss must agree with, and the baseline bench/losses.py times it against.
"""

from __future__ import annotations

import torch
from torch import Tensor


def log_phi(z: Tensor, i: Tensor, without: Tensor) -> Tensor:
    """``log phi(i; without j)`` of each row: ``z_i - log sum_{c != j} exp(z_c)``."""
    rows = torch.arange(z.shape[0], device=z.device)
    others = z.scatter(1, without[:, None], float("-inf"))
    return z[rows, i] - torch.logsumexp(others, dim=1)


def textbook_dm_ce(z: Tensor, y_a: Tensor, y_b: Tensor, lam: float | Tensor, eta: float) -> Tensor:
    """DM(CE) of logits ``z`` (N, C): the batch mean of MCE + eta * the decoupled part."""
    rows = torch.arange(z.shape[0], device=z.device)
    log_p = torch.log_softmax(z, dim=1)
    mce = -(lam * log_p[rows, y_a] + (1 - lam) * log_p[rows, y_b])
    decoupled = -log_phi(z, y_a, without=y_b) - log_phi(z, y_b, without=y_a)
    lam = torch.as_tensor(lam, dtype=z.dtype, device=z.device).expand(z.shape[0])
    two_classes = (y_a != y_b) & (torch.minimum(lam, 1 - lam) > 1e-3)
    return (mce + eta * torch.where(two_classes, decoupled, 0.0)).mean()
