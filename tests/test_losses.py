"""The losses against the paper's equations: hand-computed values, a float64 sample-by-sample
reference written from the equations with the math module, gradients by autograd and finite
differences, and numerical extremes."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.dm_reference import textbook_dm_ce
from trainers import losses

# --------------------------------------------------------------------------- float64 reference


def ref_logsumexp(row: list[float], without: int | None = None) -> float:
    values = [v for c, v in enumerate(row) if c != without]
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def ref_mce_sample(row: list[float], a: int, b: int, lam: float) -> float:
    """Eq. (1): -[lam log p_a + (1 - lam) log p_b]."""
    lse = ref_logsumexp(row)
    return -(lam * (row[a] - lse) + (1 - lam) * (row[b] - lse))


def ref_dm_sample(row: list[float], a: int, b: int, lam: float) -> float:
    """-log phi(a; without b) - log phi(b; without a); zero where the sample holds one class.

    One class: a same-class pair, or one side's share at most 1e-3 (Proposition 2 assumes both).
    """
    if a == b or min(lam, 1 - lam) <= 1e-3:
        return 0.0
    return -(row[a] - ref_logsumexp(row, without=b)) - (row[b] - ref_logsumexp(row, without=a))


def ref_bce_mean(rows: list[list[float]], targets: list[list[float]]) -> float:
    total, count = 0.0, 0
    for row, target in zip(rows, targets, strict=True):
        for z, y in zip(row, target, strict=True):
            softplus_pos = max(z, 0) + math.log1p(math.exp(-abs(z)))  # -log(1 - sigmoid(z))
            total += y * (softplus_pos - z) + (1 - y) * softplus_pos
            count += 1
    return total / count


def ref_r(lam: float, xi: float, t: float) -> float:
    return 0.0 if lam == 0 else min(1.0, (lam / xi) ** t)


def ref_mixed_targets(a, b, wa, wb, num_classes):
    rows = []
    for ai, bi, wai, wbi in zip(a, b, wa, wb, strict=True):
        row = [0.0] * num_classes
        row[ai] += wai
        row[bi] += wbi
        rows.append([min(1.0, v) for v in row])
    return rows


def random_batch(n: int, c: int, seed: int, *, scale: float = 3.0, same_class_every: int = 4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    a = torch.randint(c, (n,), generator=g)
    b = torch.randint(c, (n,), generator=g)
    b[::same_class_every] = a[::same_class_every]  # some same-class pairs
    lam = torch.rand(n, generator=g, dtype=torch.float64)
    lam[1::7] = 0.0  # the ends of the interval
    lam[2::7] = 1.0
    return logits, a, b, lam


def lam_list(lam, n):
    return lam.tolist() if isinstance(lam, torch.Tensor) else [lam] * n


# --------------------------------------------------------------------------- hand-computed values


def test_mce_hand_computed():
    # C = 2, equal logits: p = 1/2 for both classes whatever lambda.
    logits = torch.zeros(1, 2)
    assert losses.mce(logits, torch.tensor([0]), torch.tensor([1]), 0.3).item() == pytest.approx(
        math.log(2)
    )
    # z = (ln 3, 0, 0): p = (3/5, 1/5, 1/5); lam = 0.25 on class 0, 0.75 on class 1.
    logits = torch.tensor([[math.log(3), 0.0, 0.0]])
    expected = -(0.25 * math.log(3 / 5) + 0.75 * math.log(1 / 5))
    got = losses.mce(logits, torch.tensor([0]), torch.tensor([1]), 0.25)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_dm_ce_hand_computed():
    # C = 3, equal logits: MCE = ln 3; phi(0; without 1) = phi(1; without 0) = 1/2.
    logits = torch.zeros(1, 3)
    got = losses.dm_ce(logits, torch.tensor([0]), torch.tensor([1]), 0.5, eta=1.0)
    assert got.item() == pytest.approx(math.log(3) + 2 * math.log(2), rel=1e-6)
    # z = (ln 3, 0, 0), eta = 0.1: phi(0; without 1) = 3/4, phi(1; without 0) = 1/2.
    logits = torch.tensor([[math.log(3), 0.0, 0.0]])
    mce = -(0.25 * math.log(3 / 5) + 0.75 * math.log(1 / 5))
    expected = mce + 0.1 * (-math.log(3 / 4) - math.log(1 / 2))
    got = losses.dm_ce(logits, torch.tensor([0]), torch.tensor([1]), 0.25, eta=0.1)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_dm_ce_same_class_pair_has_no_decoupled_term_but_counts_in_the_mean():
    logits = torch.tensor([[math.log(3), 0.0, 0.0], [0.0, 0.0, 0.0]])
    a, b = torch.tensor([0, 2]), torch.tensor([0, 1])
    same_class = -math.log(3 / 5)  # lam e_0 + (1 - lam) e_0 = e_0
    mixed = math.log(3) + 2 * math.log(2)
    got = losses.dm_ce(logits, a, b, torch.tensor([0.3, 0.5]), eta=1.0)
    assert got.item() == pytest.approx((same_class + mixed) / 2, rel=1e-6)


@pytest.mark.parametrize(
    ("lam", "two_classes"),
    [(0.0, False), (1e-4, False), (0.5, True), (1 - 1e-4, False), (1.0, False)],
)
def test_dm_ce_decoupled_term_only_where_both_classes_are_present(lam, two_classes):
    """Proposition 2 needs both classes in the sample: at a share <= 1e-3 the term is off."""
    # z = (ln 3, 0, 0), a = 0, b = 1: phi(0; without 1) = 3/4, phi(1; without 0) = 1/2.
    logits = torch.tensor([[math.log(3), 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    a, b = torch.tensor([0]), torch.tensor([1])
    mce = -(lam * math.log(3 / 5) + (1 - lam) * math.log(1 / 5))
    decoupled = -math.log(3 / 4) - math.log(1 / 2) if two_classes else 0.0
    loss = losses.dm_ce(logits, a, b, torch.tensor([lam], dtype=torch.float64), eta=0.5)
    assert loss.item() == pytest.approx(mce + 0.5 * decoupled, rel=1e-12)
    loss.backward()
    # Autograd through the textbook form, with the decoupled part present or not by hand.
    z = logits.detach().clone().requires_grad_(True)
    log_p = torch.log_softmax(z, dim=1)[0]
    expected = -(lam * log_p[0] + (1 - lam) * log_p[1])
    if two_classes:
        phi_a = z[0, 0] - torch.logsumexp(z[0, [0, 2]], dim=0)
        phi_b = z[0, 1] - torch.logsumexp(z[0, [1, 2]], dim=0)
        expected = expected - 0.5 * (phi_a + phi_b)
    expected.backward()
    torch.testing.assert_close(logits.grad, z.grad)


def test_mbce_hand_computed():
    # z = (0, ln 3): sigmoid = (1/2, 3/4); target (1/4, 3/4).
    logits = torch.tensor([[0.0, math.log(3)]])
    entry0 = math.log(2)
    entry1 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    got = losses.mbce(logits, torch.tensor([0]), torch.tensor([1]), 0.25)
    assert got.item() == pytest.approx((entry0 + entry1) / 2, rel=1e-6)
    # Two-hot: target (1, 1).
    two_hot = (math.log(2) - math.log(0.75)) / 2
    got = losses.mbce(logits, torch.tensor([0]), torch.tensor([1]), 0.25, two_hot=True)
    assert got.item() == pytest.approx(two_hot, rel=1e-6)


def test_mbce_same_class_target_is_clamped_to_one():
    logits = torch.tensor([[0.0, math.log(3)]])
    # Target (0, 1) for the pair (1, 1), with or without two-hot.
    expected = (math.log(2) - math.log(0.75)) / 2
    for two_hot in (False, True):
        got = losses.mbce(logits, torch.tensor([1]), torch.tensor([1]), 0.4, two_hot=two_hot)
        assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("lam", "xi", "t", "expected"),
    [
        (0.5, 0.8, 1.0, 0.625),
        (0.25, 1.0, 0.5, 0.5),
        (0.9, 0.8, 1.0, 1.0),  # truncated at 1 above xi
        (0.4, 1.0, 2.0, 0.16),
        (0.0, 1.0, 0.0, 0.0),  # r(0) = 0 even where 0 ** 0 = 1
        (0.3, 0.7, 0.0, 1.0),  # t = 0: two-hot
        (1.0, 1.0, 1.0, 1.0),
    ],
)
def test_rescale_lambda_hand_computed(lam, xi, t, expected):
    assert losses.rescale_lambda(lam, xi=xi, t=t) == pytest.approx(expected)
    as_tensor = losses.rescale_lambda(torch.tensor([lam]), xi=xi, t=t)
    assert as_tensor.item() == pytest.approx(expected)


def test_dm_bce_hand_computed():
    # lam = 0.5, xi = 0.8, t = 1: both sides rescaled to 0.625.
    logits = torch.tensor([[0.0, math.log(3)]])
    entry1 = -(0.625 * math.log(0.75) + 0.375 * math.log(0.25))
    got = losses.dm_bce(logits, torch.tensor([0]), torch.tensor([1]), 0.5, xi=0.8, t=1.0)
    assert got.item() == pytest.approx((math.log(2) + entry1) / 2, rel=1e-6)


# --------------------------------------------------------------------------- the reference


@pytest.mark.parametrize("num_classes", [2, 1000])
@pytest.mark.parametrize("per_sample", [True, False])
def test_softmax_losses_match_float64_reference(num_classes, per_sample):
    n = 12
    logits, a, b, lam = random_batch(n, num_classes, seed=num_classes + per_sample)
    lam_arg = lam if per_sample else 0.35
    lams = lam_list(lam_arg, n)
    rows = logits.tolist()
    ai, bi = a.tolist(), b.tolist()
    ref_mce = (
        sum(ref_mce_sample(r, x, y, m) for r, x, y, m in zip(rows, ai, bi, lams, strict=True)) / n
    )
    ref_dm = (
        sum(ref_dm_sample(r, x, y, m) for r, x, y, m in zip(rows, ai, bi, lams, strict=True)) / n
    )
    eta = 0.7

    for dtype, rel in ((torch.float64, 1e-10), (torch.float32, 2e-5)):
        z = logits.to(dtype)
        lam_t = lam_arg.to(dtype) if per_sample else lam_arg
        assert losses.mce(z, a, b, lam_t).item() == pytest.approx(ref_mce, rel=rel)
        got = losses.dm_ce(z, a, b, lam_t, eta=eta).item()
        assert got == pytest.approx(ref_mce + eta * ref_dm, rel=rel)
        assert losses.dm_ce(z, a, b, lam_t, eta=0.0).item() == pytest.approx(ref_mce, rel=rel)


@pytest.mark.parametrize("num_classes", [2, 1000])
@pytest.mark.parametrize("per_sample", [True, False])
def test_binary_losses_match_float64_reference(num_classes, per_sample):
    n = 8
    logits, a, b, lam = random_batch(n, num_classes, seed=7 * num_classes + per_sample)
    lam_arg = lam if per_sample else 0.35
    lams = lam_list(lam_arg, n)
    rows, ai, bi = logits.tolist(), a.tolist(), b.tolist()

    targets = ref_mixed_targets(ai, bi, lams, [1 - m for m in lams], num_classes)
    assert losses.mbce(logits, a, b, lam_arg).item() == pytest.approx(
        ref_bce_mean(rows, targets), rel=1e-10
    )
    targets = ref_mixed_targets(ai, bi, [1.0] * n, [1.0] * n, num_classes)
    assert losses.mbce(logits, a, b, lam_arg, two_hot=True).item() == pytest.approx(
        ref_bce_mean(rows, targets), rel=1e-10
    )
    for xi, t in ((0.8, 1.0), (1.0, 0.5), (0.7, 2.0)):
        wa = [ref_r(m, xi, t) for m in lams]
        wb = [ref_r(1 - m, xi, t) for m in lams]
        targets = ref_mixed_targets(ai, bi, wa, wb, num_classes)
        got = losses.dm_bce(logits, a, b, lam_arg, xi=xi, t=t).item()
        assert got == pytest.approx(ref_bce_mean(rows, targets), rel=1e-10)


def test_ce_matches_reference():
    logits, a, _, _ = random_batch(10, 5, seed=3)
    expected = (
        sum(ref_logsumexp(r) - r[y] for r, y in zip(logits.tolist(), a.tolist(), strict=True)) / 10
    )
    assert losses.ce(logits, a).item() == pytest.approx(expected, rel=1e-10)


def test_dm_bce_reduces_to_mbce():
    logits, a, b, lam = random_batch(16, 10, seed=11)
    lam = lam.clamp(0.01, 0.99)  # strictly inside (0, 1) for the two-hot identity
    torch.testing.assert_close(
        losses.dm_bce(logits, a, b, lam, xi=1.0, t=1.0), losses.mbce(logits, a, b, lam)
    )
    for xi in (1.0, 0.8, 0.5):
        torch.testing.assert_close(
            losses.dm_bce(logits, a, b, lam, xi=xi, t=0.0),
            losses.mbce(logits, a, b, lam, two_hot=True),
        )


# --------------------------------------------------------------------------- gradients


def test_mce_gradient_is_softmax_minus_mixed_label():
    """Proposition 1 (Eq. 2 / appendix A.1): dL/dz = softmax(z) - y_mix, per sample."""
    logits, a, b, lam = random_batch(16, 7, seed=5)
    logits.requires_grad_(True)
    losses.mce(logits, a, b, lam).backward()
    y_mix = torch.zeros_like(logits)
    y_mix[torch.arange(16), a] += lam
    y_mix[torch.arange(16), b] += 1 - lam
    expected = (torch.softmax(logits.detach(), dim=1) - y_mix) / 16
    torch.testing.assert_close(logits.grad, expected)


@pytest.mark.parametrize("num_classes", [2, 3, 50])
def test_dm_ce_gradient_by_finite_differences(num_classes):
    logits, a, b, lam = random_batch(9, num_classes, seed=num_classes, same_class_every=3)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda z: losses.dm_ce(z, a, b, lam, eta=0.6), (logits,), eps=1e-6, atol=1e-7
    )
    assert torch.autograd.gradcheck(
        lambda z: losses.dm_ce(z, a, b, 0.2, eta=2.0), (logits,), eps=1e-6, atol=1e-7
    )


def test_dm_ce_gradient_matches_autograd_of_masked_logsumexp():
    """The closed-form backward against autograd through the textbook formula."""
    logits, a, b, lam = random_batch(32, 20, seed=21)
    eta = 0.5
    z1 = logits.clone().requires_grad_(True)
    z2 = logits.clone().requires_grad_(True)
    losses.dm_ce(z1, a, b, lam, eta=eta).backward()
    textbook_dm_ce(z2, a, b, lam, eta).backward()
    torch.testing.assert_close(z1.grad, z2.grad)


def test_decoupled_term_gradient_does_not_depend_on_lambda():
    """Sec. 3.1: in the decoupled part the lambda-coupled gradient terms become -1."""
    logits, a, b, _ = random_batch(8, 6, seed=2, same_class_every=100)
    grads = []
    for lam in (0.1, 0.9):
        z = logits.clone().requires_grad_(True)
        (losses.dm_ce(z, a, b, lam, eta=1.0) - losses.mce(z, a, b, lam)).backward()
        grads.append(z.grad)
    torch.testing.assert_close(grads[0], grads[1])


# --------------------------------------------------------------------------- numerical extremes


@pytest.mark.parametrize("name", ["ce", "mce", "dm_ce", "mbce", "dm_bce"])
def test_finite_for_huge_logits_in_float32(name):
    torch.manual_seed(0)
    logits = (torch.randn(64, 100) * 1e4).requires_grad_(True)
    a, b = torch.randint(100, (64,)), torch.randint(100, (64,))
    loss = _call(name, logits, a, b)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()


def test_dm_ce_exact_where_log_one_minus_softmax_breaks():
    """A confident class (p_a rounds to 1 in float32) must not turn 1 - p_a into 0."""
    logits = torch.zeros(3, 10, dtype=torch.float64)
    logits[:, 0] = torch.tensor([30.0, 60.0, 1e4])
    a, b = torch.zeros(3, dtype=torch.long), torch.tensor([1, 2, 3])
    rows = logits.tolist()
    expected = sum(
        ref_mce_sample(r, 0, y, 0.5) + 0.3 * ref_dm_sample(r, 0, y, 0.5)
        for r, y in zip(rows, b.tolist(), strict=True)
    )
    expected /= 3
    z = logits.float().requires_grad_(True)
    got = losses.dm_ce(z, a, b, 0.5, eta=0.3)
    got.backward()
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert torch.isfinite(z.grad).all()
    # The naive form really breaks here, which is what this test guards against.
    naive = torch.log1p(-torch.softmax(z.detach(), dim=1)[:, 0])
    assert torch.isinf(naive).any()


@pytest.mark.parametrize("name", ["ce", "mce", "dm_ce", "mbce", "dm_bce"])
def test_bf16_autocast(name):
    torch.manual_seed(0)
    layer = torch.nn.Linear(32, 100)
    x = torch.randn(16, 32) * 300  # logits in the thousands
    a, b = torch.randint(100, (16,)), torch.randint(100, (16,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(x)
        assert logits.dtype == torch.bfloat16
        loss = _call(name, logits, a, b)
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    assert torch.isfinite(layer.weight.grad).all()
    # The loss matches the float32 computation on the same bf16 logits.
    torch.testing.assert_close(loss, _call(name, logits.detach().float(), a, b))


def _call(name, logits, a, b):
    lam = torch.rand(logits.shape[0], generator=torch.Generator().manual_seed(1))
    return {
        "ce": lambda: losses.ce(logits, a),
        "mce": lambda: losses.mce(logits, a, b, lam),
        "dm_ce": lambda: losses.dm_ce(logits, a, b, lam, eta=0.1),
        "mbce": lambda: losses.mbce(logits, a, b, lam),
        "dm_bce": lambda: losses.dm_bce(logits, a, b, lam, xi=0.8, t=1.0),
    }[name]()


# --------------------------------------------------------------------------- argument checks


def _args(n=4, c=5):
    return torch.zeros(n, c), torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda z, a, b: losses.dm_ce(z, a, b, 0.5, eta=-0.1), r"eta must be a finite number >= 0"),
        (
            lambda z, a, b: losses.dm_ce(z, a, b, 0.5, eta=float("inf")),
            r"eta must be a finite number >= 0; got inf",
        ),
        (lambda z, a, b: losses.dm_bce(z, a, b, 0.5, xi=0.0, t=1), r"xi must lie within \(0, 1\]"),
        (lambda z, a, b: losses.dm_bce(z, a, b, 0.5, xi=1.2, t=1), r"xi must lie within \(0, 1\]"),
        (
            lambda z, a, b: losses.dm_bce(z, a, b, 0.5, xi=1, t=-1),
            r"t must be a finite number >= 0",
        ),
        (lambda z, a, b: losses.mce(z, a, b, 1.5), r"lam must lie within \[0, 1\]; got 1.5"),
        (lambda z, a, b: losses.mce(z, a, b, -0.1), r"lam must lie within \[0, 1\]"),
        (
            lambda z, a, b: losses.mce(z, a, b, torch.tensor([0.1, 0.2, 1.3, 0.4])),
            r"lam must lie within \[0, 1\]; got 1.3",
        ),
        (
            lambda z, a, b: losses.mce(z, a, b, torch.full((4,), float("nan"))),
            r"lam must lie within \[0, 1\]",
        ),
        (lambda z, a, b: losses.mce(z, a, b, torch.rand(3)), r"lam must be .* shape \(4,\)"),
        (lambda z, a, b: losses.mce(z, a[:3], b, 0.5), r"y_a must be .* shape \(4,\)"),
        (lambda z, a, b: losses.mce(z, a, b.float(), 0.5), r"y_b must be an integer tensor"),
        (lambda z, a, b: losses.mce(z, a, b + 4, 0.5), r"y_b holds class 5; allowed: 0 to 4"),
        (lambda z, a, b: losses.mce(z, a - 1, b, 0.5), r"y_a holds class -1; allowed: 0 to 4"),
        (lambda z, a, b: losses.mce(z[0], a, b, 0.5), r"logits must be .* shape \(N, C\)"),
        (lambda z, a, b: losses.ce(z.long(), a), r"logits must be a floating-point tensor"),
        (lambda z, a, b: losses.mce(z, a, b, "0.5"), r"lam must be a float or a tensor"),
        (
            lambda z, a, b: losses.dm_ce(z[:, :1], a, a, 0.5, eta=1.0),
            r"dm_ce needs at least 2 classes",
        ),
    ],
)
def test_bad_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call(*_args())


# --------------------------------------------------------------------------- properties


@settings(max_examples=60, deadline=None)
@given(
    lam=st.floats(0, 1),
    xi=st.floats(0.05, 1),
    t=st.floats(0, 4),
)
def test_rescale_lambda_properties(lam, xi, t):
    r = losses.rescale_lambda(lam, xi=xi, t=t)
    assert 0 <= r <= 1
    assert r == ref_r(lam, xi, t)
    if lam >= xi:
        assert r == 1.0
    as_tensor = losses.rescale_lambda(torch.tensor([lam], dtype=torch.float64), xi=xi, t=t)
    assert as_tensor.item() == pytest.approx(r, rel=1e-12, abs=1e-300)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 6),
    c=st.integers(2, 9),
    eta=st.floats(0, 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_dm_ce_is_mce_plus_eta_times_the_decoupled_term(n, c, eta, seed):
    logits, a, b, lam = random_batch(n, c, seed=seed, same_class_every=2)
    rows, ai, bi = logits.tolist(), a.tolist(), b.tolist()
    expected = sum(
        ref_mce_sample(r, x, y, m) + eta * ref_dm_sample(r, x, y, m)
        for r, x, y, m in zip(rows, ai, bi, lam.tolist(), strict=True)
    )
    assert losses.dm_ce(logits, a, b, lam, eta=eta).item() == pytest.approx(
        expected / n, rel=1e-9, abs=1e-12
    )
