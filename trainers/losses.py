"""Mixup losses of the Decoupled Mixup paper (Sec. 2.1, 3.1, 3.3 and appendix A.1-A.2).

Every loss takes logits ``z`` of shape (N, C), integer classes ``y_a`` and ``y_b`` of shape (N,)
and the mixing ratio ``lam`` (a float, or a tensor of shape (N,) for per-sample mixing), and
returns the batch mean. Sample ``n`` is a mix with weight ``lam[n]`` on class ``y_a[n]`` and
``1 - lam[n]`` on class ``y_b[n]``; ``lam`` is data, never differentiated.

Losses are computed in at least float32 whatever the logits' dtype (so they are safe under
bf16/fp16 autocast), and the gradient is returned in the logits' dtype.

Value checks (lambda within [0, 1], classes within [0, C)) run on CPU tensors and Python numbers;
on an accelerator they would cost a host sync per step, so tensors there are trusted (the mixing
policies produce them by construction).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from trainers.vocabulary import BOUNDS

__all__ = ["as_dm_ce", "ce", "dm_bce", "dm_ce", "mbce", "mce", "rescale_lambda"]

Lambda = float | Tensor

# A mixed sample holds two classes only when each has more than this share of it; below, the
# decoupled terms of Sec. 3.1 are off for that sample (OpenMixup's decoupled mixup loss drops
# such rows as well).
TWO_CLASS_MIN_SHARE = 1e-3


# --------------------------------------------------------------------------- argument checks


def _compute_dtype(logits: Tensor) -> torch.dtype:
    return torch.promote_types(logits.dtype, torch.float32)


def _check_logits(logits: Tensor) -> None:
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.dim() != 2:
        got = (
            f"{tuple(logits.shape)} {logits.dtype}"
            if isinstance(logits, Tensor)
            else type(logits).__name__
        )
        raise ValueError(f"logits must be a floating-point tensor of shape (N, C); got {got}")


def _check_classes(y: Tensor, name: str, logits: Tensor) -> Tensor:
    n, c = logits.shape
    if not isinstance(y, Tensor) or y.is_floating_point() or y.is_complex() or y.shape != (n,):
        got = f"{tuple(y.shape)} {y.dtype}" if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(
            f"{name} must be an integer tensor of class indices with shape ({n},) to match "
            f"logits {tuple(logits.shape)}; got {got}"
        )
    if y.device != logits.device:
        raise ValueError(f"{name} is on {y.device} but logits are on {logits.device}")
    if y.device.type == "cpu" and n > 0:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= c:
            raise ValueError(f"{name} holds class {lo if lo < 0 else hi}; allowed: 0 to {c - 1}")
    return y.long()


def _check_unit_interval(value: Lambda, name: str) -> None:
    if isinstance(value, Tensor):
        if value.device.type != "cpu" or value.numel() == 0:
            return
        bad = ~((value >= 0) & (value <= 1))  # NaN fails both comparisons
        if bool(bad.any()):
            raise ValueError(
                f"{name} must lie within [0, 1]; got {value[bad].flatten()[0].item():g}"
            )
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must lie within [0, 1]; got {value!r}")


def _as_lambda(lam: Lambda, logits: Tensor) -> Tensor:
    """Lambda as a (N,) tensor of the compute dtype on the logits' device."""
    n = logits.shape[0]
    if isinstance(lam, Tensor):
        if lam.shape not in ((n,), ()):
            raise ValueError(
                f"lam must be a float or a tensor of shape ({n},) (one ratio per sample); "
                f"got shape {tuple(lam.shape)}"
            )
        if lam.device != logits.device:
            raise ValueError(f"lam is on {lam.device} but logits are on {logits.device}")
        _check_unit_interval(lam, "lam")
        return lam.detach().to(_compute_dtype(logits)).expand(n)
    if isinstance(lam, bool) or not isinstance(lam, (int, float)):
        raise ValueError(f"lam must be a float or a tensor of shape ({n},); got {lam!r}")
    _check_unit_interval(lam, "lam")
    return torch.full((n,), float(lam), dtype=_compute_dtype(logits), device=logits.device)


def _check_nonnegative(value: float, name: str) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 <= value < float("inf")
    ):
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")


def _check_xi(xi: float) -> None:
    # The range, and why it is not Eq. (3)'s: trainers.vocabulary.BOUNDS.
    allowed = BOUNDS["xi"]
    if isinstance(xi, bool) or not isinstance(xi, (int, float)) or not allowed.admits(xi):
        raise ValueError(f"xi must lie within {allowed.interval}; got {xi!r}")


def _mixed_inputs(
    logits: Tensor, y_a: Tensor, y_b: Tensor, lam: Lambda
) -> tuple[Tensor, Tensor, Tensor]:
    _check_logits(logits)
    return (
        _check_classes(y_a, "y_a", logits),
        _check_classes(y_b, "y_b", logits),
        _as_lambda(lam, logits),
    )


# --------------------------------------------------------------------------- softmax losses


def ce(logits: Tensor, y: Tensor) -> Tensor:
    """Plain cross-entropy, no mixing: ``-log softmax(z)[y]``, averaged over the batch."""
    _check_logits(logits)
    y = _check_classes(y, "y", logits)
    return F.cross_entropy(logits.to(_compute_dtype(logits)), y)


def mce(logits: Tensor, y_a: Tensor, y_b: Tensor, lam: Lambda) -> Tensor:
    """Mixup cross-entropy, Eq. (1): ``-[lam * log p_a + (1 - lam) * log p_b]``.

    Its gradient with respect to the logits is ``softmax(z) - y_mix`` (Proposition 1, Eq. 2).
    """
    y_a, y_b, lam = _mixed_inputs(logits, y_a, y_b, lam)
    log_p = F.log_softmax(logits.to(lam.dtype), dim=1)
    log_p_ab = log_p.gather(1, torch.stack((y_a, y_b), dim=1))
    return -(lam * log_p_ab[:, 0] + (1 - lam) * log_p_ab[:, 1]).mean()


def dm_ce(logits: Tensor, y_a: Tensor, y_b: Tensor, lam: Lambda, *, eta: float) -> Tensor:
    """Decoupled Mixup loss of Sec. 3.1: ``L_MCE + eta * L_DM(CE)``.

    ``L_DM(CE) = -log phi(a; without b) - log phi(b; without a)`` with the decoupled softmax
    ``phi(i; without j) = exp(z_i) / sum_{c != j} exp(z_c)`` (Proposition 2). The paper writes the
    decoupled part as a log-likelihood added with a plus sign; minimising that would lower the
    confidence it is meant to raise, so it enters here as a negative log-likelihood (as in the
    authors' code). A sample holding one class has no decoupled term but still counts in the
    batch mean: a same-class pair (``y_a == y_b``), and a sample whose smaller share
    ``min(lam, 1 - lam)`` is at most :data:`TWO_CLASS_MIN_SHARE` (CutMix pasted nothing, or
    nearly), since Proposition 2 assumes both classes present and the term would otherwise raise
    a class that is not in the image. Needs at least two classes.
    """
    _check_nonnegative(eta, "eta")
    y_a, y_b, lam = _mixed_inputs(logits, y_a, y_b, lam)
    if logits.shape[1] < 2:
        raise ValueError(f"dm_ce needs at least 2 classes; logits have {logits.shape[1]}")
    weight = torch.full_like(lam, float(eta))
    return _DecoupledMixupCE.apply(logits, y_a, y_b, lam, weight, weight)


class _DecoupledMixupCE(torch.autograd.Function):
    """Per-sample ``MCE + w_a * (-log phi(a; without b)) + w_b * (-log phi(b; without a))``, mean.

    Separate weights per term keep the door open for the asymmetric variant of Sec. 3.2 (only the
    labelled anchor's term); ``dm_ce`` uses ``w_a = w_b = eta``.

    One pass over the logits, and no ``log(1 - softmax)``: of the two classes in a pair, call the
    one with the larger logit ``d`` and the other ``o``, so ``p_o <= 1/2``. A single log-softmax
    of the logits with ``d`` masked out (``-inf``) gives

    * ``log q_o = log phi(o; without d)`` directly, finite however close ``p_d`` is to 1;
    * ``lse_d = logsumexp(z without d) = z_k - log q_k`` for any ``k != d``, hence the full
      ``lse = lse_d + softplus(z_d - lse_d)`` and every ``log p_c = z_c - lse`` (the MCE part);
    * ``log phi(d; without o) = log p_d - log1p(-p_o)``, accurate since ``p_o <= 1/2``.

    The gradient has a closed form, like Proposition 1's ``softmax(z) - y``::

        dL/dz = p - lam e_a - (1 - lam) e_b
              + w_o (q - e_o)                        q = softmax(z without d), q_d = 0
              + w_d (p / (1 - p_o), 0 at o) - w_d e_d

    and since ``p_c = q_c (1 - p_d)`` for ``c != d``, the backward pass is one softmax and a few
    per-row corrections, with no autograd graph over (N, C) intermediates.
    """

    @staticmethod
    def forward(
        ctx: Any, logits: Tensor, y_a: Tensor, y_b: Tensor, lam: Tensor, w_a: Tensor, w_b: Tensor
    ) -> Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            z = logits.to(lam.dtype)
            z_ab = z.gather(1, torch.stack((y_a, y_b), dim=1))
            decoupled = (y_a != y_b) & (torch.minimum(lam, 1 - lam) > TWO_CLASS_MIN_SHARE)
            w_a, w_b = w_a * decoupled, w_b * decoupled

            a_likelier = z_ab[:, 0] >= z_ab[:, 1]
            d = torch.where(a_likelier, y_a, y_b)
            o = torch.where(a_likelier, y_b, y_a)
            z_d = torch.where(a_likelier, z_ab[:, 0], z_ab[:, 1])
            z_o = torch.where(a_likelier, z_ab[:, 1], z_ab[:, 0])
            w_d = torch.where(a_likelier, w_a, w_b)  # weight of the term whose numerator is d
            w_o = torch.where(a_likelier, w_b, w_a)
            # Where the decoupled terms are off (o == d, or one class absent) any class but d
            # gives lse_d as well.
            k = torch.where(decoupled, o, (d + 1) % z.shape[1])

            z_without_d = z.scatter(1, d[:, None], float("-inf"))
            log_q_k = F.log_softmax(z_without_d, dim=1).gather(1, k[:, None]).squeeze(1)
            lse_without_d = z.gather(1, k[:, None]).squeeze(1) - log_q_k
            log_rest = -F.softplus(z_d - lse_without_d)  # log(1 - p_d)
            lse = lse_without_d - log_rest
            log_p_d = z_d - lse
            p_o = torch.exp(z_o - lse)

            mce_part = lse - lam * z_ab[:, 0] - (1 - lam) * z_ab[:, 1]
            neg_log_phi_o = -log_q_k  # k == o wherever w_o != 0
            neg_log_phi_d = torch.log1p(-p_o) - log_p_d
            per_sample = mce_part + w_o * neg_log_phi_o + w_d * neg_log_phi_d
        ctx.save_for_backward(z_without_d, y_a, y_b, d, o, lam, w_d, w_o, p_o, log_p_d, log_rest)
        ctx.logits_dtype = logits.dtype
        return per_sample.mean()

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        z_without_d, y_a, y_b, d, o, lam, w_d, w_o, p_o, log_p_d, log_rest = ctx.saved_tensors
        with torch.autocast(device_type=z_without_d.device.type, enabled=False):
            scale = grad_output.to(lam.dtype) / z_without_d.shape[0]
            ratio = w_d / (1 - p_o)  # 1 / (1 - p_o) <= 2: bounded
            # p = q * (1 - p_d) off d, so p (1 + ratio) + w_o q is q times a per-row factor...
            factor = (1 + ratio) * log_rest.exp() + w_o
            grad = torch.softmax(z_without_d, dim=1).mul_((scale * factor)[:, None])
            # ...plus what that misses: p_d (1 + ratio) at d (q_d = 0), the one-hot targets, and
            # the third term's zero at o.
            rows = torch.stack((y_a, y_b, d, o), dim=1)
            values = torch.stack(
                (-lam, lam - 1, (1 + ratio) * log_p_d.exp() - w_d, -w_o - ratio * p_o), dim=1
            )
            grad.scatter_add_(1, rows, values * scale[..., None])
        return grad.to(ctx.logits_dtype), None, None, None, None, None


# --------------------------------------------------------------------------- binary losses


def as_dm_ce(
    logits: Tensor,
    y_a: Tensor,
    v_b: Tensor,
    lam: Lambda,
    *,
    eta: float,
    reduction: Literal["mean", "none"] = "mean",
) -> Tensor:
    """DM(CE) of the asymmetric strategy, Sec. 3.2: a labelled sample mixed with an unlabelled one.

    Sample ``n`` holds the labelled class ``a = y_a[n]`` with share ``lam[n]`` (AS keeps it at
    most 1/2) and an unlabelled image whose label is the host algorithm's ``v_b[n]``: class
    probabilities (N, C) (e.g. MixMatch's sharpened guess), or classes (N,) (e.g. FixMatch's
    pseudo-labels). The loss is

        -[lam * log p_a + (1 - lam) * sum_c v_b[c] log p_c]  +  eta * (-log phi(a; without b))

    the mixup cross-entropy of ``y = lam e_a + (1 - lam) v_b``, and the paper's
    ``L^_DM(CE) = y_a^T log(phi(z)) y_b`` as a negative log-likelihood (the sign of ``dm_ce``):
    only the labelled class's term, with ``b = argmax v_b`` left out of its softmax
    ``phi(a; without b) = exp(z_a) / sum_{c != b} exp(z_c)``. That term is off where the sample
    holds one class: ``a == b``, or ``min(lam, 1 - lam) <= TWO_CLASS_MIN_SHARE`` (not mixed),
    as in ``dm_ce``. With classes for ``v_b`` it equals ``dm_ce``'s per-sample loss with the
    unlabelled side's decoupled weight set to 0. Batch mean (``reduction="mean"``), or the (N,)
    per-sample losses (``"none"``) for a caller that weighs or masks samples (the semi-supervised
    AS term counts only partners with a confident pseudo-label,
    :mod:`trainers.ssl.asymmetric_term`); logits of any float dtype, computed in at least float32.
    """
    _check_nonnegative(eta, "eta")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none'; got {reduction!r}")
    _check_logits(logits)
    y_a = _check_classes(y_a, "y_a", logits)
    lam = _as_lambda(lam, logits)
    n, classes = logits.shape
    if classes < 2:
        raise ValueError(f"as_dm_ce needs at least 2 classes; logits have {classes}")
    if v_b.dim() == 1:
        b = _check_classes(v_b, "v_b", logits)
        target_b = F.one_hot(b, classes).to(lam.dtype)
    elif v_b.shape == (n, classes) and v_b.is_floating_point():
        target_b = v_b.detach().to(lam.dtype)
        b = target_b.argmax(dim=1)
    else:
        raise ValueError(
            f"v_b must be classes of shape ({n},) or probabilities of shape ({n}, {classes}); "
            f"got {tuple(v_b.shape)} {v_b.dtype}"
        )
    with torch.autocast(device_type=logits.device.type, enabled=False):
        z = logits.to(lam.dtype)
        log_p = F.log_softmax(z, dim=1)
        mixed_ce = -(lam * log_p.gather(1, y_a[:, None]).squeeze(1))
        mixed_ce = mixed_ce - (1 - lam) * (target_b * log_p).sum(1)
        lse_without_b = torch.logsumexp(z.scatter(1, b[:, None], float("-inf")), dim=1)
        neg_log_phi_a = lse_without_b - z.gather(1, y_a[:, None]).squeeze(1)
        decoupled = (y_a != b) & (torch.minimum(lam, 1 - lam) > TWO_CLASS_MIN_SHARE)
        per_sample = mixed_ce + float(eta) * torch.where(decoupled, neg_log_phi_a, 0.0)
        return per_sample if reduction == "none" else per_sample.mean()


def _mixed_bce(
    logits: Tensor, y_a: Tensor, y_b: Tensor, weight_a: Tensor, weight_b: Tensor
) -> Tensor:
    """BCE with logits against ``weight_a * e_a + weight_b * e_b``, entries clamped to <= 1."""
    z = logits.to(weight_a.dtype)
    target = torch.zeros_like(z)
    target.scatter_add_(1, y_a[:, None], weight_a[:, None])
    target.scatter_add_(1, y_b[:, None], weight_b[:, None])
    return F.binary_cross_entropy_with_logits(z, target.clamp_(max=1.0))


def mbce(logits: Tensor, y_a: Tensor, y_b: Tensor, lam: Lambda, *, two_hot: bool = False) -> Tensor:
    """Mixup binary cross-entropy (the 1-vs-all loss of RSB A3, cited in Sec. 3.3).

    The target is ``lam * e_a + (1 - lam) * e_b``, or the two-hot ``e_a + e_b`` when ``two_hot``,
    each entry clamped to at most 1 (a same-class pair gets 1). Mean over all N x C entries, the
    convention of timm and ``torch.nn.BCEWithLogitsLoss``.
    """
    y_a, y_b, lam = _mixed_inputs(logits, y_a, y_b, lam)
    if two_hot:
        ones = torch.ones_like(lam)
        return _mixed_bce(logits, y_a, y_b, ones, ones)
    return _mixed_bce(logits, y_a, y_b, lam, 1 - lam)


def rescale_lambda(lam: Lambda, *, xi: float, t: float) -> Lambda:
    """The label rescaling of DM(BCE), Eq. (3): ``r(lam) = min(1, (lam / xi) ** t)``, ``r(0) = 0``.

    ``t`` bends the curve and ``xi`` truncates it: ``xi = 1, t = 1`` is the identity (plain
    mixup labels), ``t = 0`` gives 1 for every ``lam > 0`` (two-hot labels). Takes and returns a
    float or a tensor.
    """
    _check_xi(xi)
    _check_nonnegative(t, "t")
    _check_unit_interval(lam, "lam")
    if isinstance(lam, Tensor):
        return _rescale(lam, xi, t)
    return min(1.0, (lam / xi) ** t) if lam > 0 else 0.0


def _rescale(lam: Tensor, xi: float, t: float) -> Tensor:
    """Eq. (3) on a checked lambda tensor."""
    scaled = (lam / xi).pow(t).clamp(max=1.0)
    return torch.where(lam > 0, scaled, torch.zeros_like(scaled))


def dm_bce(logits: Tensor, y_a: Tensor, y_b: Tensor, lam: Lambda, *, xi: float, t: float) -> Tensor:
    """Decoupled mixup binary cross-entropy, DM(BCE), Sec. 3.3 and Eq. (3).

    BCE against ``r(lam) * e_a + r(1 - lam) * e_b`` with ``r`` from :func:`rescale_lambda`, each
    entry clamped to at most 1, mean over all N x C entries. Sec. 3.3 defines DM(BCE) by the
    rescaled labels alone, so there is no eta.
    """
    _check_xi(xi)
    _check_nonnegative(t, "t")
    y_a, y_b, lam = _mixed_inputs(logits, y_a, y_b, lam)
    # xi, t and lam are checked above; the rescaling itself needs no second round of checks.
    return _mixed_bce(logits, y_a, y_b, _rescale(lam, xi, t), _rescale(1 - lam, xi, t))
