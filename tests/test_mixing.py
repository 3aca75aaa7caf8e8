"""Mixing policies: what was mixed matches lambda, for every policy and both lambda modes, on
images built so that each pixel says where it came from; plus each policy's own defining
property, and what one draw per batch means (one lambda, one box or mask, Beta-distributed)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainers.mixing import INTERPOLATION_BASED, POLICIES, MixedBatch
from trainers.mixing.base import LAMBDA_MODES, sample_beta
from trainers.mixing.fmix import fmix
from trainers.mixing.resizemix import SCALE_RANGE, resizemix

CUT_BASED = sorted(set(POLICIES) - INTERPOLATION_BASED)


def labelled_images(n: int, height: int, width: int, channels: int = 3) -> torch.Tensor:
    """Image n is the constant n, so every mixed pixel names the sample it came from."""
    values = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)
    return values.expand(n, channels, height, width).contiguous()


def mix(
    name: str,
    inputs: torch.Tensor,
    seed: int = 0,
    alpha: float = 1.0,
    lambda_mode: str = "sample",
) -> MixedBatch:
    generator = torch.Generator().manual_seed(seed)
    targets = torch.arange(inputs.shape[0])
    return POLICIES[name](
        inputs, targets, alpha=alpha, generator=generator, lambda_mode=lambda_mode
    )


def check_conventions(batch: MixedBatch, n: int) -> None:
    assert batch.lam.shape == (n,) and batch.lam.dtype == torch.float32
    assert ((batch.lam >= 0) & (batch.lam <= 1)).all()
    assert sorted(batch.perm.tolist()) == list(range(n))
    torch.testing.assert_close(batch.y_a, torch.arange(n))
    torch.testing.assert_close(batch.y_b, batch.perm)


def test_registry_holds_the_six_static_policies():
    assert set(POLICIES) == {"mixup", "cutmix", "manifoldmix", "saliencymix", "fmix", "resizemix"}
    assert {"mixup", "manifoldmix"} == INTERPOLATION_BASED


@pytest.mark.parametrize("lambda_mode", LAMBDA_MODES)
@pytest.mark.parametrize("name", CUT_BASED)
@pytest.mark.parametrize(("n", "height", "width"), [(16, 32, 32), (9, 17, 23), (4, 224, 224)])
def test_cut_based_lambda_is_the_share_of_pixels_from_a(name, n, height, width, lambda_mode):
    inputs = labelled_images(n, height, width)
    batch = mix(name, inputs, seed=n + height, lambda_mode=lambda_mode)
    check_conventions(batch, n)
    value_a = batch.y_a.float().view(n, 1, 1, 1)
    value_b = batch.y_b.float().view(n, 1, 1, 1)
    # ResizeMix resamples the partner bilinearly: a constant stays constant up to rounding.
    from_a = torch.isclose(batch.inputs, value_a.expand_as(batch.inputs), atol=1e-4)
    from_b = torch.isclose(batch.inputs, value_b.expand_as(batch.inputs), atol=1e-4)
    assert (from_a | from_b).all(), "a mixed pixel came from neither side"
    assert (from_a == from_a[:, :1]).all(), "channels were mixed differently"
    distinct = batch.perm != torch.arange(n)  # a sample paired with itself is all "a"
    share_a = from_a.float().mean(dim=(1, 2, 3))
    torch.testing.assert_close(share_a[distinct], batch.lam[distinct], atol=1e-6, rtol=0)


@pytest.mark.parametrize("lambda_mode", LAMBDA_MODES)
@pytest.mark.parametrize("name", sorted(INTERPOLATION_BASED))
def test_interpolation_value_is_the_lambda_weighted_mean(name, lambda_mode):
    n = 12
    inputs = labelled_images(n, 8, 8)
    batch = mix(name, inputs, seed=3, lambda_mode=lambda_mode)
    check_conventions(batch, n)
    expected = batch.lam * batch.y_a.float() + (1 - batch.lam) * batch.y_b.float()
    torch.testing.assert_close(batch.inputs, expected.view(n, 1, 1, 1).expand_as(inputs))


@pytest.mark.parametrize("shape", [(10, 7), (10, 4, 5, 6, 2), (10,)])
def test_manifoldmix_mixes_features_of_any_shape(shape):
    features = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    batch = mix("manifoldmix", features, seed=1)
    lam = batch.lam.view(-1, *([1] * (features.dim() - 1)))
    torch.testing.assert_close(batch.inputs, lam * features + (1 - lam) * features[batch.perm])


@pytest.mark.parametrize("lambda_mode", LAMBDA_MODES)
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_same_seed_same_batch_other_seed_other_batch(name, lambda_mode):
    inputs = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    first, again, other = (
        mix(name, inputs, seed=seed, lambda_mode=lambda_mode) for seed in (5, 5, 6)
    )
    for field in ("inputs", "lam", "perm"):
        torch.testing.assert_close(getattr(first, field), getattr(again, field))
    assert not torch.equal(first.lam, other.lam)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_sample_mode_draws_lambda_per_sample(name):
    batch = mix(name, torch.rand(32, 3, 32, 32), seed=0, lambda_mode="sample")
    assert batch.lam.unique().numel() > 8


@pytest.mark.parametrize("name", sorted(POLICIES))
@pytest.mark.parametrize("seed", range(4))
def test_batch_mode_shares_one_lambda_and_one_box_or_mask(name, seed):
    """One draw per batch: every row has the same lambda and, for the cutting-based policies,
    the same pixels come from the "a" side in every image; lambda is their exact share."""
    n, height, width = 16, 20, 24
    batch = mix(name, labelled_images(n, height, width), seed=seed, lambda_mode="batch")
    check_conventions(batch, n)
    assert batch.lam.unique().numel() == 1
    if name in INTERPOLATION_BASED:
        return
    value_a = batch.y_a.float().view(n, 1, 1, 1).expand(n, 3, height, width)
    from_a = torch.isclose(batch.inputs, value_a, atol=1e-4)[:, 0]
    distinct = batch.perm != torch.arange(n)
    masks = from_a[distinct]
    assert (masks == masks[:1]).all(), "the rows were cut with different boxes or masks"
    share = masks[0].float().mean().item()
    assert batch.lam[0].item() == pytest.approx(share, abs=1e-6)


def test_batch_mode_mixup_lambda_follows_beta_over_many_batches():
    """One Beta(alpha, alpha) draw per batch: across batches, a Kolmogorov-Smirnov distance to
    Beta(0.5, 0.5)'s CDF, (2 / pi) asin(sqrt(x)), below the 1% critical value 1.63 / sqrt(m)."""
    m, alpha = 2000, 0.5
    generator = torch.Generator().manual_seed(0)
    inputs, targets = torch.rand(8, 4), torch.arange(8)
    draws = (
        torch.tensor(
            [
                POLICIES["mixup"](inputs, targets, alpha=alpha, generator=generator).lam[0].item()
                for _ in range(m)
            ],
            dtype=torch.float64,
        )
        .sort()
        .values
    )
    cdf = (2 / math.pi) * torch.asin(torch.sqrt(draws))
    steps = torch.arange(1, m + 1, dtype=torch.float64) / m
    distance = torch.maximum(steps - cdf, cdf - (steps - 1 / m)).max().item()
    assert distance < 1.63 / math.sqrt(m)


def test_batch_is_the_default_lambda_mode():
    generator = torch.Generator().manual_seed(0)
    batch = POLICIES["cutmix"](
        torch.rand(8, 3, 16, 16), torch.arange(8), alpha=1.0, generator=generator
    )
    assert batch.lam.unique().numel() == 1


@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0])
def test_beta_draws_have_the_beta_moments(alpha):
    draws = sample_beta(alpha, 40_000, torch.Generator().manual_seed(0), torch.device("cpu"))
    variance = 1 / (4 * (2 * alpha + 1))  # Beta(alpha, alpha)
    assert draws.mean().item() == pytest.approx(0.5, abs=4 * math.sqrt(variance / 40_000))
    assert draws.var().item() == pytest.approx(variance, rel=0.03)
    assert ((draws >= 0) & (draws <= 1)).all()


def test_beta_draws_stay_finite_for_small_alpha():
    draws = sample_beta(0.01, 100_000, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.isfinite(draws).all()


def test_cutmix_lambda_follows_beta_before_clipping():
    """Clipping only shrinks the box, so lambda can only grow: E[lam] > 1/2 for a symmetric Beta;
    and big boxes placed near the centre keep their area."""
    batch = mix("cutmix", labelled_images(4096, 32, 32), seed=0)
    assert batch.lam.mean().item() > 0.5
    assert batch.lam.min().item() < 0.3


def test_fmix_masks_are_smooth_blobs():
    """Decay power 3 makes large regions: neighbouring pixels rarely change side, unlike a
    random mask of the same lambda (where about 2 lam (1 - lam) of neighbours differ)."""
    n = 64
    batch = fmix(
        labelled_images(n, 32, 32),
        torch.arange(n),
        alpha=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    from_a = batch.inputs[:, 0] == batch.y_a.float().view(n, 1, 1)
    distinct = batch.perm != torch.arange(n)
    changes = (from_a[:, :, 1:] != from_a[:, :, :-1]).float().mean(dim=(1, 2))[distinct]
    random_mask_changes = (2 * batch.lam * (1 - batch.lam))[distinct]
    assert changes.mean() < 0.25 * random_mask_changes.mean()


def test_resizemix_pastes_the_whole_partner_shrunk():
    n, size = 64, 40
    # A horizontal ramp: the pasted patch must hold the whole ramp, from its left to right end.
    ramp = torch.linspace(0, 1, size).view(1, 1, 1, size).expand(n, 3, size, size)
    inputs = torch.cat([ramp[: n // 2], -ramp[n // 2 :] - 1])  # partners differ in sign
    batch = resizemix(
        inputs.contiguous(), torch.arange(n), alpha=1.0, generator=torch.Generator().manual_seed(0)
    )
    low, high = SCALE_RANGE
    smallest = round(low * size) ** 2 / size**2
    largest = round(high * size) ** 2 / size**2
    assert ((1 - batch.lam >= smallest - 1e-6) & (1 - batch.lam <= largest + 1e-6)).all()
    for i in range(n):
        j = batch.perm[i].item()
        if (j < n // 2) == (i < n // 2):
            continue  # same-sign partner: the patch cannot be told apart
        patch = batch.inputs[i, 0][
            (batch.inputs[i, 0] >= 0) if j < n // 2 else (batch.inputs[i, 0] < 0)
        ]
        source = inputs[j, 0]
        # The patch samples the source at its own pixel centres: the ends of the ramp are
        # reached up to half a patch pixel, in source pixels.
        side = round(math.sqrt(1 - batch.lam[i].item()) * size)
        tolerance = 0.5 * (size / side) / (size - 1) + 1e-4
        assert patch.min().item() == pytest.approx(source.min().item(), abs=tolerance)
        assert patch.max().item() == pytest.approx(source.max().item(), abs=tolerance)


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(sorted(POLICIES)),
    lambda_mode=st.sampled_from(LAMBDA_MODES),
    n=st.integers(1, 6),
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    alpha=st.sampled_from([0.1, 0.2, 0.5, 1.0, 2.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_every_policy_keeps_lambda_true_on_any_shape(
    name, lambda_mode, n, height, width, alpha, seed
):
    inputs = labelled_images(n, height, width, channels=2)
    batch = mix(name, inputs, seed=seed, alpha=alpha, lambda_mode=lambda_mode)
    check_conventions(batch, n)
    value_a = batch.y_a.float().view(n, 1, 1, 1)
    value_b = batch.y_b.float().view(n, 1, 1, 1)
    if name in INTERPOLATION_BASED:
        expected = batch.lam.view(n, 1, 1, 1) * value_a + (1 - batch.lam.view(n, 1, 1, 1)) * value_b
        torch.testing.assert_close(batch.inputs, expected.expand_as(inputs))
        return
    from_a = torch.isclose(batch.inputs, value_a.expand_as(inputs), atol=1e-4)
    from_b = torch.isclose(batch.inputs, value_b.expand_as(inputs), atol=1e-4)
    assert (from_a | from_b).all()
    distinct = batch.perm != torch.arange(n)
    share_a = from_a.float().mean(dim=(1, 2, 3))
    torch.testing.assert_close(share_a[distinct], batch.lam[distinct], atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- argument checks


def _good():
    return torch.rand(4, 3, 8, 8), torch.arange(4), torch.Generator().manual_seed(0)


@pytest.mark.parametrize("name", sorted(POLICIES))
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda x, y, g: (x.long(), y, g), "inputs must be a floating-point tensor"),
        (lambda x, y, g: (x, y[:3], g), r"targets must be an integer tensor of shape \(4,\)"),
        (lambda x, y, g: (x, y.float(), g), "targets must be an integer tensor"),
        (lambda x, y, g: (x, y, 0), "generator must be a torch.Generator"),
        (lambda x, y, g: (x[:0], y[:0], g), "at least one sample"),
    ],
)
def test_bad_batches_are_named(name, change, message):
    x, y, g = change(*_good())
    with pytest.raises(ValueError, match=message):
        POLICIES[name](x, y, alpha=1.0, generator=g)


@pytest.mark.parametrize("name", sorted(set(POLICIES) - {"resizemix"}))
@pytest.mark.parametrize("alpha", [0, -1.0, float("nan")])
def test_alpha_must_be_positive(name, alpha):
    x, y, g = _good()
    with pytest.raises(ValueError, match=r"alpha must be a number > 0"):
        POLICIES[name](x, y, alpha=alpha, generator=g)


@pytest.mark.parametrize("name", CUT_BASED)
def test_unknown_lambda_mode_is_named(name):
    x, y, g = _good()
    with pytest.raises(ValueError, match=r"lambda_mode must be one of batch, sample; got 'row'"):
        POLICIES[name](x, y, alpha=1.0, generator=g, lambda_mode="row")


@pytest.mark.parametrize("name", CUT_BASED)
def test_cut_based_policies_need_images(name):
    x, y, g = _good()
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        POLICIES[name](x.flatten(1), y, alpha=1.0, generator=g)


def test_resizemix_ignores_alpha_and_checks_its_scale_range():
    x, y, g = _good()
    resizemix(x, y, alpha=0.0, generator=g)
    with pytest.raises(ValueError, match="scale_range"):
        resizemix(x, y, alpha=1.0, generator=g, scale_range=(0.5, 1.5))
