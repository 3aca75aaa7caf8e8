"""The asymmetric strategy of Sec. 3.2: AS mixing for every static policy, and its DM(CE) loss.

Shares are read back from the mixed pixels (which pixel came from which image), the loss is
checked against values computed by hand with ``math``, against finite differences, and against
``dm_ce``'s own implementation where the two must agree.
"""

from __future__ import annotations

import math

import pytest
import torch

from trainers.losses import _DecoupledMixupCE, as_dm_ce, mce
from trainers.mixing.asymmetric import SIDES, asymmetric_mix, fold
from trainers.vocabulary import STATIC_POLICIES

torch.set_num_threads(1)


def batches(n: int = 6, size: int = 16, seed: int = 0):
    """Labelled and unlabelled images whose every pixel differs between the two."""
    generator = torch.Generator().manual_seed(seed)
    labelled = torch.rand(n, 3, size, size, generator=generator)
    unlabelled = torch.rand(n, 3, size, size, generator=generator) + 2.0  # never equal
    return labelled, unlabelled


def test_fold_by_hand():
    lam = torch.tensor([0.1, 0.5, 0.8, 1.0, 0.0])
    assert fold(lam, "labelled_minor").tolist() == pytest.approx([0.1, 0.5, 0.2, 0.0, 0.0])
    assert fold(lam, "labelled_major").tolist() == pytest.approx([0.9, 0.5, 0.8, 1.0, 1.0])


@pytest.mark.parametrize("policy", STATIC_POLICIES)
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("lambda_mode", ["batch", "sample"])
def test_the_labelled_share_is_lambda_and_on_the_asked_side(policy, side, lambda_mode):
    labelled, unlabelled = batches()
    for seed in range(12):  # many draws: lambdas near 0.5 and boxes near the border
        mixed = asymmetric_mix(
            policy,
            labelled,
            unlabelled,
            alpha=1.0,
            side=side,
            generator=torch.Generator().manual_seed(seed),
            lambda_mode=lambda_mode,
            saliency_detector="spectral_residual",
        )
        lam = mixed.lam
        assert lam.dtype == torch.float32 and lam.shape == (6,)
        if side == "labelled_minor":
            assert bool((lam <= 0.5).all()), lam
        else:
            assert bool((lam >= 0.5).all()), lam
        if lambda_mode == "batch":
            assert bool((lam == lam[0]).all())
        if policy in ("mixup", "manifoldmix"):
            weight = lam.view(-1, 1, 1, 1).double()
            expected = weight * labelled.double() + (1 - weight) * unlabelled.double()
            torch.testing.assert_close(mixed.inputs.double(), expected, rtol=0, atol=1e-6)
        else:
            from_labelled = (mixed.inputs == labelled).all(dim=1)  # (N, H, W)
            # Every other pixel is the unlabelled image's (as it is, or resized by ResizeMix).
            assert bool((mixed.inputs[~from_labelled[:, None].expand_as(labelled)] >= 1.5).all())
            share = from_labelled.flatten(1).double().mean(1)
            torch.testing.assert_close(share.float(), lam, rtol=0, atol=1e-6)


def test_resizemix_keeps_its_scale_range_on_the_asked_side():
    labelled, unlabelled = batches(n=64)
    for side, bounds in (("labelled_minor", (1 - 0.8**2, 0.5)), ("labelled_major", (0.5, 1.0))):
        mixed = asymmetric_mix(
            "resizemix",
            labelled,
            unlabelled,
            alpha=1.0,
            side=side,
            generator=torch.Generator().manual_seed(0),
            lambda_mode="sample",
        )
        # Labelled share 1 - tau^2 with tau in [0.1, 0.8], rounded to 16-pixel sides.
        assert float(mixed.lam.min()) >= bounds[0] - 0.1 and float(mixed.lam.max()) <= bounds[1]


def test_bad_arguments_are_named():
    labelled, unlabelled = batches()
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="AS mixes with a static policy; got 'puzzlemix'"):
        asymmetric_mix(
            "puzzlemix", labelled, unlabelled, alpha=1.0, side="labelled_minor", generator=generator
        )
    with pytest.raises(ValueError, match="side must be one of labelled_minor, labelled_major"):
        asymmetric_mix("mixup", labelled, unlabelled, alpha=1.0, side="below", generator=generator)
    with pytest.raises(ValueError, match="one partner per labelled sample"):
        asymmetric_mix(
            "cutmix",
            labelled,
            unlabelled[:3],
            alpha=1.0,
            side="labelled_minor",
            generator=generator,
        )


# --------------------------------------------------------------------------- the loss


def test_as_dm_ce_by_hand():
    z = [1.0, 2.0, 0.5]
    lam, eta = 0.3, 0.5
    lse = math.log(sum(math.exp(v) for v in z))
    log_p = [v - lse for v in z]
    # a = 0 labelled; the unlabelled sample's label a distribution (0.1, 0.7, 0.2): b = 1.
    v_b = [0.1, 0.7, 0.2]
    mixed_ce = -(lam * log_p[0] + (1 - lam) * sum(v * lp for v, lp in zip(v_b, log_p, strict=True)))
    without_b = -(z[0] - math.log(math.exp(z[0]) + math.exp(z[2])))  # -log phi(0; without 1)
    expected = mixed_ce + eta * without_b
    got = as_dm_ce(torch.tensor([z]), torch.tensor([0]), torch.tensor([v_b]), lam, eta=eta)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_as_dm_ce_with_hard_pseudo_labels_is_dm_ce_without_the_unlabelled_term():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 10, generator=generator, dtype=torch.float64) * 3
    y_a = torch.randint(10, (32,), generator=generator)
    y_b = torch.randint(10, (32,), generator=generator)
    lam = torch.rand(32, generator=generator, dtype=torch.float64) / 2
    eta = torch.full_like(lam, 0.7)
    reference = _DecoupledMixupCE.apply(logits, y_a, y_b, lam, eta, torch.zeros_like(lam))
    torch.testing.assert_close(as_dm_ce(logits, y_a, y_b, lam, eta=0.7), reference)
    # eta = 0: the mixup cross-entropy of y = lam e_a + (1 - lam) e_b.
    torch.testing.assert_close(as_dm_ce(logits, y_a, y_b, lam, eta=0.0), mce(logits, y_a, y_b, lam))


def test_the_decoupled_term_touches_only_the_labelled_class_and_raises_it():
    logits = torch.tensor([[0.3, 2.0, -1.0, 0.5]], requires_grad=True)
    args = (torch.tensor([0]), torch.tensor([1]), 0.4)
    (as_dm_ce(logits, *args, eta=1.0) - as_dm_ce(logits, *args, eta=0.0)).backward()
    grad = logits.grad[0]
    assert grad[1].item() == 0.0  # b is outside phi(a; without b)
    assert grad[0].item() < 0  # descent raises z_a
    assert grad.sum().item() == pytest.approx(0.0, abs=1e-6)  # a softmax's gradient sums to 0


def test_the_decoupled_term_is_off_for_one_class_samples():
    logits = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    y_a = torch.tensor([2, 2, 4])
    v_b = torch.tensor([2, 3, 1])  # same class; then two mixed samples
    lam = torch.tensor([0.3, 0.0, 0.4])  # the second is not mixed
    with_eta = as_dm_ce(logits, y_a, v_b, lam, eta=1.0)
    without = as_dm_ce(logits, y_a, v_b, lam, eta=0.0)
    only_third = as_dm_ce(logits[2:], y_a[2:], v_b[2:], lam[2:], eta=1.0) - as_dm_ce(
        logits[2:], y_a[2:], v_b[2:], lam[2:], eta=0.0
    )
    assert (with_eta - without).item() == pytest.approx(only_third.item() / 3, rel=1e-5)


def test_as_dm_ce_gradient_matches_finite_differences_and_stays_finite():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    v_b = torch.softmax(torch.randn(5, 4, generator=generator, dtype=torch.float64), dim=1)
    y_a = torch.tensor([0, 1, 2, 3, 0])
    lam = torch.tensor([0.1, 0.2, 0.3, 0.45, 0.5], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: as_dm_ce(z, y_a, v_b, lam, eta=0.8), (logits,))
    huge = torch.tensor([[3e4, -3e4, 0.0, 1e4]], requires_grad=True)
    loss = as_dm_ce(huge, torch.tensor([1]), torch.tensor([0]), 0.3, eta=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(huge.grad).all()
    half = as_dm_ce(huge.detach().bfloat16(), torch.tensor([1]), torch.tensor([0]), 0.3, eta=1.0)
    assert torch.isfinite(half)


def test_as_dm_ce_names_a_bad_label_distribution():
    with pytest.raises(ValueError, match=r"v_b must be classes of shape \(2,\) or probabilities"):
        as_dm_ce(torch.zeros(2, 3), torch.tensor([0, 1]), torch.zeros(2, 4), 0.3, eta=1.0)
