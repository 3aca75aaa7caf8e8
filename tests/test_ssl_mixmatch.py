"""MixMatch and MixMatch+DM (trainers/ssl/mixmatch.py) against hand-computed values.

Where a test needs the step's random draws it replays them from a generator with the same seed
in the order ``mix_with_shuffled`` documents (one Beta draw, then one permutation).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from trainers.losses import as_dm_ce
from trainers.mixing.base import sample_beta
from trainers.ssl.base import SemiSupervisedBatch
from trainers.ssl.mixmatch import (
    MixMatch,
    _guess,
    as_decoupled_per_sample,
    mix_with_shuffled,
)
from trainers.ssl.pseudo_labels import linear_warmup, sharpen

CLASSES = 3


class PixelLogits(nn.Module):
    """Logits are the first ``CLASSES`` values of each flattened image: exact hand-made outputs."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)[:, :CLASSES]


class LinearOnPixels(nn.Module):
    """``nn.Linear`` on flattened 1x2x2 images, fixed weights: a tiny deterministic network."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, CLASSES)
        with torch.no_grad():
            self.fc.weight.copy_(
                torch.tensor([[1.0, -0.5, 0.0, 0.3], [0.2, 0.4, -1.0, 0.0], [-0.3, 0.0, 0.5, 0.8]])
            )
            self.fc.bias.copy_(torch.tensor([0.1, -0.2, 0.0]))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1))


def _images(rows: list[list[float]]) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64).float().view(-1, 1, 2, 2)


def _batch(
    step: int = 0, total: int = 100, *, views: int = 2, seed: int = 0
) -> SemiSupervisedBatch:
    gen = torch.Generator().manual_seed(seed)
    labelled = torch.randn(4, 1, 2, 2, generator=gen)
    unlabelled = tuple(torch.randn(4, 1, 2, 2, generator=gen) for _ in range(views))
    return SemiSupervisedBatch(
        labelled=labelled,
        targets=torch.tensor([0, 1, 2, 1]),
        unlabelled=unlabelled,
        unlabelled_index=torch.arange(4),
        step=step,
        total_steps=total,
    )


# --------------------------------------------------------------------------- sharpen, guess


def test_sharpen_matches_hand_values() -> None:
    p = torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.5, 0.0]])
    # T = 0.5 squares: [0.36, 0.09, 0.01] / 0.46 and [0.25, 0.25, 0] / 0.5.
    expected = torch.tensor([[0.36 / 0.46, 0.09 / 0.46, 0.01 / 0.46], [0.5, 0.5, 0.0]])
    torch.testing.assert_close(sharpen(p, 0.5), expected)
    torch.testing.assert_close(sharpen(p, 1.0), p)
    # T -> 0 tends to the one-hot argmax; tiny probabilities do not underflow to 0 / 0.
    tiny = torch.tensor([[1e-30, 2e-30, 1e-30]])
    torch.testing.assert_close(sharpen(tiny, 0.5), torch.tensor([[1 / 6, 4 / 6, 1 / 6]]))


def test_label_guess_is_sharpened_mean_over_views() -> None:
    first = [[0.6, 0.3, 0.1, 0.0], [0.1, 0.1, 0.8, 0.0]]
    second = [[0.2, 0.6, 0.2, 0.0], [0.3, 0.3, 0.4, 0.0]]
    # Logits log(p) give softmax p exactly.
    views = [_images(first).log().clamp_min(-1e4), _images(second).log().clamp_min(-1e4)]
    guess = _guess(PixelLogits(), views, 0.5)
    mean_0 = [0.4, 0.45, 0.15]  # (first[0] + second[0]) / 2
    mean_1 = [0.2, 0.2, 0.6]
    expected = [[m * m / sum(v * v for v in mean) for m in mean] for mean in (mean_0, mean_1)]
    torch.testing.assert_close(guess, torch.tensor(expected))


def test_guess_leaves_batch_norm_running_statistics_alone() -> None:
    norm = nn.BatchNorm2d(1)
    model = nn.Sequential(norm, PixelLogits())
    assert norm.running_mean is not None and norm.running_var is not None
    before = norm.running_mean.clone(), norm.running_var.clone()
    _guess(model, [torch.randn(4, 1, 2, 2) + 3, torch.randn(4, 1, 2, 2)], 0.5)
    torch.testing.assert_close(norm.running_mean, before[0])
    torch.testing.assert_close(norm.running_var, before[1])
    assert norm.num_batches_tracked is not None and int(norm.num_batches_tracked) == 0


# --------------------------------------------------------------------------- mixing


def test_folds_put_lambda_on_the_asked_side() -> None:
    x, t = torch.randn(6, 1, 2, 2), torch.eye(CLASSES)[torch.tensor([0, 1, 2, 0, 1, 2])]
    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        high = mix_with_shuffled(x, t, alpha=0.5, lam_fold="mixmatch", generator=gen)
        gen = torch.Generator().manual_seed(seed)
        low = mix_with_shuffled(x, t, alpha=0.5, lam_fold="asymmetric", generator=gen)
        assert float(high.lam) >= 0.5 >= float(low.lam)
        assert float(high.lam) + float(low.lam) == pytest.approx(1.0)
        torch.testing.assert_close(high.perm, low.perm)
        n = 2
        expected = low.lam * x[n] + (1 - low.lam) * x[low.perm[n]]
        torch.testing.assert_close(low.inputs[n], expected)


# --------------------------------------------------------------------------- losses, ramp


def test_ramp_hand_values() -> None:
    assert linear_warmup(0, 1000, 0.4) == 0.0
    assert linear_warmup(100, 1000, 0.4) == pytest.approx(0.25)
    assert linear_warmup(400, 1000, 0.4) == 1.0
    assert linear_warmup(900, 1000, 0.4) == 1.0


@pytest.mark.parametrize("step", [0, 10, 20, 40, 90])
def test_losses_and_ramp_against_hand_computation(step: int) -> None:
    total, lambda_u, seed = 100, 100.0, 7
    model = LinearOnPixels()
    batch = _batch(step, total)
    out = MixMatch(lambda_u=lambda_u)(model, batch, torch.Generator().manual_seed(seed))

    # By hand, in float64: guess, targets, the replayed mix, the model, the two losses.
    w, b = model.fc.weight.double(), model.fc.bias.double()

    def probs(x: Tensor) -> list[list[float]]:
        z = (x.double().flatten(1) @ w.T + b).tolist()
        return [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in z]

    p1, p2 = probs(batch.unlabelled[0]), probs(batch.unlabelled[1])
    mean = [
        [(a + c) / 2 for a, c in zip(r1, r2, strict=True)] for r1, r2 in zip(p1, p2, strict=True)
    ]
    guess = [[v * v / sum(u * u for u in row) for v in row] for row in mean]
    one_hot = [[1.0 if c == y else 0.0 for c in range(CLASSES)] for y in batch.targets.tolist()]
    targets = one_hot + guess + guess
    inputs = torch.cat([batch.labelled, *batch.unlabelled]).double()

    gen = torch.Generator().manual_seed(seed)
    raw = float(sample_beta(0.5, 1, gen, torch.device("cpu"))[0])
    lam = max(raw, 1 - raw)
    perm = torch.randperm(12, generator=gen).tolist()
    mixed_x = torch.stack([lam * inputs[n] + (1 - lam) * inputs[perm[n]] for n in range(12)])
    mixed_t = [
        [lam * targets[n][c] + (1 - lam) * targets[perm[n]][c] for c in range(CLASSES)]
        for n in range(12)
    ]
    p = probs(mixed_x)
    sup = -sum(mixed_t[n][c] * math.log(p[n][c]) for n in range(4) for c in range(CLASSES)) / 4
    l2 = sum((p[n][c] - mixed_t[n][c]) ** 2 for n in range(4, 12) for c in range(CLASSES)) / (
        8 * CLASSES
    )
    ramp = min(1.0, step / (0.4 * total))
    assert float(out.supervised) == pytest.approx(sup, rel=1e-5)
    assert float(out.unsupervised) == pytest.approx(lambda_u * ramp * l2, rel=1e-5, abs=1e-9)
    assert float(out.loss.detach()) == pytest.approx(sup + lambda_u * ramp * l2, rel=1e-5)
    assert out.pseudo_labels.tolist() == [max(range(3), key=row.__getitem__) for row in guess]
    torch.testing.assert_close(out.mask, torch.ones(4))


# --------------------------------------------------------------------------- MixMatch+DM


def test_dm_with_eta_zero_is_mixmatch_with_the_asymmetric_fold() -> None:
    batch = _batch(30, 100)
    losses, grads = [], []
    for algorithm in (MixMatch(decoupled=True, eta=0.0), MixMatch(lam_fold="asymmetric")):
        model = LinearOnPixels()
        out = algorithm(model, batch, torch.Generator().manual_seed(3))
        out.loss.backward()
        losses.append(out.loss.detach())
        grads.append(model.fc.weight.grad)
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    plain = MixMatch()(LinearOnPixels(), batch, torch.Generator().manual_seed(3))
    assert float(plain.loss.detach()) != float(losses[0])  # the fold matters
    assert MixMatch(decoupled=True).lam_fold == "asymmetric" and MixMatch().lam_fold == "mixmatch"


def test_decoupled_term_per_sample_touches_only_labelled_unlabelled_pairs() -> None:
    z = torch.tensor([[2.0, 0.5, -1.0], [0.3, 1.0, 0.2], [1.0, 1.0, 1.0], [-0.5, 2.0, 0.0]])
    labels = torch.tensor([0, 1, 2, 1])
    partners = torch.tensor(
        [[0.1, 0.7, 0.2], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.6, 0.3, 0.1]]
    )  # b = 1, 1, 2, 0
    partner_unlabelled = torch.tensor([True, True, False, True])
    term = as_decoupled_per_sample(z, labels, partners, torch.tensor(0.3), partner_unlabelled)

    # Row 0: a = 0, b = 1, unlabelled partner: -log(e^2 / (e^2 + e^-1)).
    row0 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(-1.0)))
    # Row 1: a == b -> 0. Row 2: labelled partner -> 0. Row 3: a = 1, b = 0.
    row3 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(0.0)))
    torch.testing.assert_close(term, torch.tensor([row0, 0.0, 0.0, row3]))
    # Not mixed (the labelled share rounds to nothing): no two classes, no decoupled term.
    unmixed = as_decoupled_per_sample(z, labels, partners, torch.tensor(0.0), partner_unlabelled)
    torch.testing.assert_close(unmixed, torch.zeros(4))

    # On AS rows the labelled loss plus the term is as_dm_ce's per-sample loss.
    lam = torch.full((4,), 0.3)
    for n in (0, 3):
        soft = lam[n] * torch.eye(3)[labels[n]] + (1 - lam[n]) * partners[n]
        ce = -(soft * torch.log_softmax(z[n], 0)).sum()
        expected = as_dm_ce(z[n : n + 1], labels[n : n + 1], partners[n : n + 1], 0.3, eta=0.5)
        torch.testing.assert_close(ce + 0.5 * term[n], expected)


def test_decoupled_term_in_the_step_adds_eta_times_the_mean_over_labelled_rows() -> None:
    batch, seed, eta = _batch(50, 100, seed=4), 11, 0.5
    with_term = MixMatch(decoupled=True, eta=eta)(
        LinearOnPixels(), batch, torch.Generator().manual_seed(seed)
    )
    without = MixMatch(decoupled=True, eta=0.0)(
        LinearOnPixels(), batch, torch.Generator().manual_seed(seed)
    )
    torch.testing.assert_close(with_term.unsupervised, without.unsupervised)

    # Replay the mix; per labelled row, the hand value where the partner is unlabelled, else 0.
    model = LinearOnPixels()
    guess = _guess(model, batch.unlabelled, 0.5)
    targets = torch.cat([torch.eye(CLASSES)[batch.targets], guess, guess])
    inputs = torch.cat([batch.labelled, *batch.unlabelled])
    mixed = mix_with_shuffled(
        inputs,
        targets,
        alpha=0.5,
        lam_fold="asymmetric",
        generator=torch.Generator().manual_seed(seed),
    )
    z = model(mixed.inputs).detach().double()
    lam = float(mixed.lam)
    assert lam <= 0.5
    rows = []
    for n in range(4):
        partner = int(mixed.perm[n])
        a, b = int(batch.targets[n]), int(targets[partner].argmax())
        if partner < 4 or a == b:
            rows.append(0.0)
            continue
        denominator = sum(math.exp(float(z[n, c])) for c in range(CLASSES) if c != b)
        rows.append(-(float(z[n, a]) - math.log(denominator)))
    assert any(row != 0 for row in rows)  # seed 11 pairs some labelled rows with unlabelled
    difference = float(with_term.supervised - without.supervised)
    assert difference == pytest.approx(eta * sum(rows) / 4, rel=1e-5, abs=1e-7)


def test_decoupled_term_is_nonzero_for_some_seed_and_zero_for_labelled_partners() -> None:
    batch = _batch(50, 100, seed=4)
    seen_nonzero = False
    for seed in range(10):
        a = MixMatch(decoupled=True, eta=1.0)(
            LinearOnPixels(), batch, torch.Generator().manual_seed(seed)
        )
        b = MixMatch(decoupled=True, eta=0.0)(
            LinearOnPixels(), batch, torch.Generator().manual_seed(seed)
        )
        gen = torch.Generator().manual_seed(seed)
        sample_beta(0.5, 1, gen, torch.device("cpu"))
        perm = torch.randperm(12, generator=gen)
        difference = float(a.supervised - b.supervised)
        if bool((perm[:4] < 4).all()):
            assert difference == 0.0
        seen_nonzero |= difference > 0
    assert seen_nonzero


def test_finite_at_large_logits() -> None:
    class Huge(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = LinearOnPixels()

        def forward(self, x: Tensor) -> Tensor:
            return 1e4 * self.inner(x)

    for algorithm in (MixMatch(), MixMatch(decoupled=True, eta=1.0)):
        model = Huge()
        out = algorithm(model, _batch(80, 100), torch.Generator().manual_seed(0))
        out.loss.backward()
        assert torch.isfinite(out.loss)
        grad = model.inner.fc.weight.grad
        assert grad is not None and torch.isfinite(grad).all()


def test_views_and_checks() -> None:
    assert MixMatch().views == ("weak", "weak")
    assert MixMatch(unlabelled_views=3).views == ("weak",) * 3
    assert MixMatch().extra_parameters() == []
    with pytest.raises(ValueError, match="unlabelled views"):
        MixMatch()(LinearOnPixels(), _batch(views=1), torch.Generator())
    with pytest.raises(ValueError):
        MixMatch(temperature=0)
    with pytest.raises(ValueError):
        MixMatch(lam_fold="max")  # type: ignore[arg-type]


def test_mixed_forward_updates_batch_norm_once() -> None:
    norm = nn.BatchNorm2d(1)
    model = nn.Sequential(norm, LinearOnPixels())
    MixMatch()(model, _batch(10, 100), torch.Generator().manual_seed(0))
    assert norm.num_batches_tracked is not None and int(norm.num_batches_tracked) == 1
