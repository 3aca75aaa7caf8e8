"""The pseudo-labelling algorithms of Table 7 against values computed by hand.

Images are 1x1 pixels whose value names a row of a logit table (``Lookup``), so every logit is
known and the expected losses are written out with ``math``: thresholds, sharpening, FlexMatch's
curriculum over steps, UDA's TSA schedules, Pseudo-Label's warm-up.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from trainers.ssl.base import SemiSupervisedBatch
from trainers.ssl.fixmatch import FixMatch
from trainers.ssl.flexmatch import FlexMatch
from trainers.ssl.forwards import running_statistics_frozen
from trainers.ssl.pseudo_label import PseudoLabel
from trainers.ssl.pseudo_labels import (
    confident_pseudo_labels,
    convex_mapping,
    cross_entropy,
    curriculum_thresholds,
    learning_effect,
    linear_warmup,
    sharpen,
    tsa_threshold,
)
from trainers.ssl.uda import UDA

# The first assert_close imports its comparison machinery (about a second on a loaded machine):
# paid here, at collection, rather than inside whichever test happens to run first.
torch.testing.assert_close(torch.zeros(1), torch.zeros(1))


class Lookup(nn.Module):
    """Logits ``table[i]`` for an image whose pixel holds ``i``."""

    def __init__(self, rows: list[list[float]]) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.tensor(rows, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        return self.table[x.flatten(1)[:, 0].round().long()]


def images(*ids: int) -> Tensor:
    return torch.tensor(ids, dtype=torch.float64).view(-1, 1, 1, 1)


def batch(
    labelled: list[int],
    targets: list[int],
    unlabelled: list[list[int]],
    *,
    index: list[int] | None = None,
    step: int = 0,
    total_steps: int = 100,
) -> SemiSupervisedBatch:
    views = tuple(images(*view) for view in unlabelled)
    n = len(unlabelled[0])
    return SemiSupervisedBatch(
        labelled=images(*labelled),
        targets=torch.tensor(targets),
        unlabelled=views,
        unlabelled_index=torch.tensor(index if index is not None else list(range(n))),
        step=step,
        total_steps=total_steps,
    )


def softmax(z: list[float]) -> list[float]:
    total = sum(math.exp(v) for v in z)
    return [math.exp(v) / total for v in z]


def ce(z: list[float], y: int) -> float:
    return -math.log(softmax(z)[y])


def soft_ce(z: list[float], target: list[float]) -> float:
    return -sum(t * math.log(p) for t, p in zip(target, softmax(z), strict=True))


def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# --------------------------------------------------------------------------- pure functions


def test_sharpen_by_hand_and_as_a_softmax_at_temperature():
    probs = torch.tensor([[0.6, 0.3, 0.1]], dtype=torch.float64)
    squares = [0.36, 0.09, 0.01]
    expected = [v / sum(squares) for v in squares]
    assert sharpen(probs, 0.5)[0].tolist() == pytest.approx(expected)
    z = torch.tensor([[2.0, -1.0, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(sharpen(torch.softmax(z, 1), 0.4), torch.softmax(z / 0.4, 1))
    assert sharpen(torch.tensor([[1.0, 0.0]]), 0.01).tolist() == [[1.0, 0.0]]
    with pytest.raises(ValueError, match="temperature"):
        sharpen(probs, 0.0)


def test_confidence_mask_counts_the_threshold_itself():
    probs = torch.tensor([[0.95, 0.05], [0.2, 0.8], [0.5, 0.5]], dtype=torch.float64)
    labels, mask = confident_pseudo_labels(probs, 0.8)
    assert labels.tolist() == [0, 1, 0]
    assert mask.tolist() == [1.0, 1.0, 0.0]  # 0.8 >= 0.8: TorchSSL's ``ge``


def test_learning_effect_and_curriculum_thresholds_by_hand():
    # Three images unused, two remembered as class 0, one as class 1, none as class 2.
    memory = torch.tensor([-1, -1, -1, 0, 0, 1])
    warm = learning_effect(memory, 3, warmup=True)  # / max(2, unused 3)
    assert warm.tolist() == pytest.approx([2 / 3, 1 / 3, 0.0])
    cold = learning_effect(memory, 3, warmup=False)  # / max_c sigma = 2
    assert cold.tolist() == pytest.approx([1.0, 0.5, 0.0])
    # M(2/3) = (2/3) / (4/3) = 1/2; M(1/3) = (1/3) / (5/3) = 1/5; M(1) = 1.
    assert convex_mapping(torch.tensor([2 / 3, 1 / 3, 1.0])).tolist() == pytest.approx(
        [0.5, 0.2, 1.0]
    )
    assert curriculum_thresholds(warm, 0.95).tolist() == pytest.approx([0.475, 0.19, 0.0])
    for warmup in (True, False):  # before any confident prediction: every threshold 0
        assert learning_effect(torch.full((4,), -1), 3, warmup=warmup).tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    ("schedule", "alpha", "alpha_at_end"),
    [
        ("linear", 0.3, 1.0),
        ("exp", math.exp(-0.7 * 5), 1.0),
        ("log", 1 - math.exp(-0.3 * 5), 1 - math.exp(-5)),  # log never quite reaches 1
    ],
)
def test_tsa_schedules_by_hand(schedule, alpha, alpha_at_end):
    # Step 30 of 100 with 10 classes: eta = alpha_t * 0.9 + 0.1.
    assert tsa_threshold(schedule, 30, 100, 10) == pytest.approx(alpha * 0.9 + 0.1)
    assert tsa_threshold(schedule, 100, 100, 10) == pytest.approx(alpha_at_end * 0.9 + 0.1)
    assert tsa_threshold("none", 30, 100, 10) == 1.0
    with pytest.raises(ValueError, match="TSA schedule"):
        tsa_threshold("cosine", 30, 100, 10)  # type: ignore[arg-type]


def test_tsa_starts_at_chance():
    assert tsa_threshold("linear", 0, 100, 4) == pytest.approx(0.25)
    assert tsa_threshold("log", 0, 100, 4) == pytest.approx(0.25)
    assert tsa_threshold("exp", 0, 100, 4) == pytest.approx(math.exp(-5) * 0.75 + 0.25)


def test_linear_warmup_by_hand():
    values = [linear_warmup(step, 100, 0.4) for step in (0, 10, 20, 40, 90)]
    assert values == pytest.approx([0.0, 0.25, 0.5, 1.0, 1.0])
    assert linear_warmup(0, 100, 0.0) == 1.0


def test_cross_entropy_hard_and_soft_targets():
    z = [1.0, 0.0, -1.0]
    logits = torch.tensor([z], dtype=torch.float64)
    assert cross_entropy(logits, torch.tensor([2])).item() == pytest.approx(ce(z, 2))
    target = [0.2, 0.5, 0.3]
    got = cross_entropy(logits, torch.tensor([target], dtype=torch.float64)).item()
    assert got == pytest.approx(soft_ce(z, target))


# --------------------------------------------------------------------------- FixMatch

# Rows 0-1: labelled; 2-4: weak views; 5-7: strong views.
FIXMATCH_TABLE = [
    [2.0, 0.0, 0.0],
    [0.0, 1.0, 0.0],
    [5.0, 0.0, 0.0],  # p = e^5 / (e^5 + 2) = 0.9867: confident, class 0
    [1.0, 0.0, 0.0],  # 0.576: not confident
    [0.0, 0.0, 4.0],  # e^4 / (e^4 + 2) = 0.9647: confident, class 2
    [0.5, 0.2, 0.1],
    [3.0, 0.0, 1.0],
    [0.0, 1.0, 2.0],
]


def fixmatch_batch(**kwargs) -> SemiSupervisedBatch:
    return batch([0, 1], [0, 2], [[2, 3, 4], [5, 6, 7]], **kwargs)


def test_fixmatch_loss_by_hand():
    t = FIXMATCH_TABLE
    step = FixMatch()(Lookup(t), fixmatch_batch(), generator())
    supervised = (ce(t[0], 0) + ce(t[1], 2)) / 2
    unsupervised = (ce(t[5], 0) + 0.0 + ce(t[7], 2)) / 3  # mean over all three, one masked
    assert step.supervised.item() == pytest.approx(supervised)
    assert step.unsupervised.item() == pytest.approx(unsupervised)
    assert step.loss.item() == pytest.approx(supervised + unsupervised)
    assert step.pseudo_labels.tolist() == [0, 0, 2]
    assert step.mask.tolist() == [1.0, 0.0, 1.0]
    assert FixMatch.views == ("weak", "strong")


def test_fixmatch_threshold_and_weight_are_settings():
    t = FIXMATCH_TABLE
    step = FixMatch(threshold=0.5, lambda_u=2.0)(Lookup(t), fixmatch_batch(), generator())
    unsupervised = 2.0 * (ce(t[5], 0) + ce(t[6], 0) + ce(t[7], 2)) / 3
    assert step.unsupervised.item() == pytest.approx(unsupervised)


def test_fixmatch_soft_labels_use_the_temperature():
    t = FIXMATCH_TABLE
    step = FixMatch(hard_labels=False, temperature=0.5)(Lookup(t), fixmatch_batch(), generator())
    targets = [softmax([v / 0.5 for v in t[i]]) for i in (2, 3, 4)]
    expected = (soft_ce(t[5], targets[0]) + soft_ce(t[7], targets[2])) / 3
    assert step.unsupervised.item() == pytest.approx(expected)


def test_fixmatch_weak_view_gets_no_gradient():
    model = Lookup(FIXMATCH_TABLE)
    FixMatch()(model, fixmatch_batch(), generator()).loss.backward()
    assert model.table.grad is not None
    assert model.table.grad[2:5].abs().sum().item() == 0.0  # the guesses are targets only
    assert model.table.grad[[5, 7]].abs().sum().item() > 0
    assert model.table.grad[6].abs().sum().item() == 0.0  # its guess was masked


# --------------------------------------------------------------------------- FlexMatch

# Rows 0-1: labelled; 2-5: weak views of images 0-3 (two classes); 6: one strong view for all.
FLEX_TABLE = [
    [1.0, 0.0],
    [0.0, 1.0],
    [4.0, 0.0],  # p0 = 0.9820: confident (>= 0.95), class 0
    [0.0, 3.5],  # p1 = 0.9707: confident, class 1
    [1.0, 0.0],  # p0 = 0.7311
    [0.0, 0.2],  # p1 = 0.5498
    [0.3, -0.3],
]


def flex_batch(step: int) -> SemiSupervisedBatch:
    return batch([0, 1], [0, 1], [[2, 3, 4, 5], [6, 6, 6, 6]], step=step)


def test_flexmatch_curriculum_over_steps():
    t = FLEX_TABLE
    algorithm = FlexMatch(4)
    model = Lookup(t)
    assert algorithm.memory.tolist() == [-1, -1, -1, -1]
    assert "memory" in algorithm.state_dict()
    strong = [ce(t[6], 0), ce(t[6], 1)]

    # Step 0: nothing remembered, every threshold 0: all four count.
    first = algorithm(model, flex_batch(0), generator())
    assert first.mask.tolist() == [1.0, 1.0, 1.0, 1.0]
    assert first.unsupervised.item() == pytest.approx((2 * strong[0] + 2 * strong[1]) / 4)
    # Only the two predictions above tau = 0.95 are remembered.
    assert algorithm.memory.tolist() == [0, 1, -1, -1]

    # Step 1: sigma = (1, 1), unused 2; warm-up: beta = 1/2 each, M(1/2) = 1/3,
    # thresholds 0.95 / 3 = 0.3167: 0.7311 and 0.5498 pass.
    torch.testing.assert_close(
        algorithm.class_thresholds(2), torch.full((2,), 0.95 / 3), check_dtype=False
    )
    second = algorithm(model, flex_batch(1), generator())
    assert second.mask.tolist() == [1.0, 1.0, 1.0, 1.0]

    # Without warm-up: beta = 1 each, thresholds 0.95; images 2 and 3 fall below them.
    cold = FlexMatch(4, threshold_warmup=False)
    cold(model, flex_batch(0), generator())
    torch.testing.assert_close(cold.class_thresholds(2), torch.full((2,), 0.95), check_dtype=False)
    step = cold(model, flex_batch(1), generator())
    assert step.mask.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert step.unsupervised.item() == pytest.approx((strong[0] + strong[1]) / 4)


def test_flexmatch_thresholds_by_class_by_hand():
    t = FLEX_TABLE
    algorithm = FlexMatch(6)
    # Three images remembered as class 0, none as class 1, three unused: with warm-up
    # beta = (3/3, 0): thresholds (0.95 * M(1), 0.95 * M(0)) = (0.95, 0).
    algorithm.memory.copy_(torch.tensor([0, 0, 0, -1, -1, -1]))
    step = algorithm(Lookup(t), flex_batch(2), generator())
    # Images 0 and 2 guess class 0 (0.982 passes 0.95, 0.731 does not); 1 and 3 guess class 1.
    assert step.mask.tolist() == [1.0, 1.0, 0.0, 1.0]


def test_flexmatch_memory_follows_the_batch_indices_and_moves_with_the_module():
    t = FLEX_TABLE
    algorithm = FlexMatch(10)
    b = batch([0, 1], [0, 1], [[2, 3, 4, 5], [6, 6, 6, 6]], index=[7, 3, 9, 0])
    algorithm(Lookup(t), b, generator())
    assert algorithm.memory.tolist() == [-1, -1, -1, 1, -1, -1, -1, 0, -1, -1]
    restored = FlexMatch(10)
    restored.load_state_dict(algorithm.state_dict())
    assert restored.memory.tolist() == algorithm.memory.tolist()
    # A later unconfident guess does not erase a remembered one.
    b = batch([0, 1], [0, 1], [[4, 5, 4, 5], [6, 6, 6, 6]], index=[7, 3, 9, 0])
    algorithm(Lookup(t), b, generator())
    assert algorithm.memory.tolist() == [-1, -1, -1, 1, -1, -1, -1, 0, -1, -1]


def test_flexmatch_checks_its_settings():
    with pytest.raises(ValueError, match="num_unlabelled"):
        FlexMatch(0)
    with pytest.raises(ValueError, match="threshold"):
        FlexMatch(4, threshold=1.5)


# --------------------------------------------------------------------------- UDA

# Rows 0-1: labelled; 2-4: weak; 5-7: strong.
UDA_TABLE = [
    [3.0, 0.0, 0.0],  # labelled, class 0: p0 = e^3 / (e^3 + 2) = 0.909
    [0.0, 0.5, 0.0],  # labelled, class 2: p2 = 1 / (e^0.5 + 2) = 0.274, max p = 0.452
    [3.0, 0.0, 0.0],  # 0.909 >= 0.8: confident
    [1.0, 0.0, 0.0],  # 0.576: masked
    [0.0, 0.0, 2.5],  # e^2.5 / (e^2.5 + 2) = 0.859: confident
    [0.5, 0.2, 0.1],
    [3.0, 0.0, 1.0],
    [0.0, 1.0, 2.0],
]


def uda_batch(step: int = 0) -> SemiSupervisedBatch:
    return batch([0, 1], [0, 2], [[2, 3, 4], [5, 6, 7]], step=step, total_steps=100)


def test_uda_loss_by_hand():
    t = UDA_TABLE
    step = UDA()(Lookup(t), uda_batch(), generator())
    sharpened = [softmax([v / 0.4 for v in t[i]]) for i in (2, 3, 4)]
    unsupervised = (soft_ce(t[5], sharpened[0]) + soft_ce(t[7], sharpened[2])) / 3
    supervised = (ce(t[0], 0) + ce(t[1], 2)) / 2  # TSA "none": every labelled sample
    assert step.supervised.item() == pytest.approx(supervised)
    assert step.unsupervised.item() == pytest.approx(unsupervised)
    assert step.mask.tolist() == [1.0, 0.0, 1.0]
    assert step.pseudo_labels.tolist() == [0, 0, 2]


def test_uda_kl_differs_from_ce_by_the_target_entropy_only():
    t = UDA_TABLE
    sharpened = [softmax([v / 0.4 for v in t[i]]) for i in (2, 4)]
    entropy = [-sum(p * math.log(p) for p in q) for q in sharpened]
    models = Lookup(t), Lookup(t)
    ce_step = UDA()(models[0], uda_batch(), generator())
    kl_step = UDA(consistency="kl")(models[1], uda_batch(), generator())
    assert ce_step.unsupervised.item() - kl_step.unsupervised.item() == pytest.approx(
        sum(entropy) / 3
    )
    ce_step.loss.backward()
    kl_step.loss.backward()
    torch.testing.assert_close(models[0].table.grad, models[1].table.grad)


@pytest.mark.parametrize(
    ("schedule", "probability", "kept"),
    [
        # Step 20 of 100, 3 classes: linear eta = 0.2 * 2/3 + 1/3 = 0.467. The first sample's
        # p (0.909 for both readings) is above it; the second's true-class p is 0.274 and its
        # largest 0.452, both below.
        ("linear", "max", [0.0, 1.0]),
        ("linear", "target", [0.0, 1.0]),
        # log: eta = (1 - e^-1) * 2/3 + 1/3 = 0.755: the same.
        ("log", "max", [0.0, 1.0]),
        # exp: eta = e^-4 * 2/3 + 1/3 = 0.346: the second's largest p (0.452) is above it, its
        # true-class p (0.274) below.
        ("exp", "max", [0.0, 0.0]),
        ("exp", "target", [0.0, 1.0]),
    ],
)
def test_uda_tsa_masks_the_supervised_loss(schedule, probability, kept):
    t = UDA_TABLE
    algorithm = UDA(tsa_schedule=schedule, tsa_probability=probability)
    step = algorithm(Lookup(t), uda_batch(step=20), generator())
    expected = (kept[0] * ce(t[0], 0) + kept[1] * ce(t[1], 2)) / 2  # mean over the batch
    assert step.supervised.item() == pytest.approx(expected)


# --------------------------------------------------------------------------- Pseudo-Label


def test_pseudo_label_loss_and_warmup_by_hand():
    t = [
        [2.0, 0.0],  # labelled, class 1
        [4.0, 0.0],  # unlabelled: p0 = 0.982, confident
        [0.5, 0.0],  # unlabelled: not confident
    ]
    algorithm = PseudoLabel()
    assert algorithm.views == ("weak",)
    b = batch([0], [1], [[1, 2]], step=20, total_steps=100)
    step = algorithm(Lookup(t), b, generator())
    warmup = 20 / (0.4 * 100)
    assert step.supervised.item() == pytest.approx(ce(t[0], 1))
    assert step.unsupervised.item() == pytest.approx(warmup * ce(t[1], 0) / 2)
    assert step.mask.tolist() == [1.0, 0.0]
    start = algorithm(Lookup(t), batch([0], [1], [[1, 2]], step=0), generator())
    assert start.unsupervised.item() == 0.0
    late = algorithm(Lookup(t), batch([0], [1], [[1, 2]], step=80), generator())
    assert late.unsupervised.item() == pytest.approx(ce(t[1], 0) / 2)


def test_pseudo_label_gradient_flows_through_its_own_prediction():
    t = [[2.0, 0.0], [4.0, 0.0], [0.5, 0.0]]
    model = Lookup(t)
    PseudoLabel()(model, batch([0], [1], [[1, 2]], step=80), generator()).loss.backward()
    assert model.table.grad is not None
    # d/dz of CE(z, argmax z) / 2 for the confident image: (softmax(z) - e_0) / 2.
    p = softmax(t[1])
    assert model.table.grad[1].tolist() == pytest.approx([(p[0] - 1) / 2, p[1] / 2])
    assert model.table.grad[2].abs().sum().item() == 0.0


class Normed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(1)
        self.head = nn.Linear(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(x).flatten(1))


def test_pseudo_label_unlabelled_forward_leaves_running_statistics_alone():
    torch.manual_seed(0)
    model, reference = Normed(), Normed()
    reference.load_state_dict(model.state_dict())
    labelled = torch.randn(4, 1, 1, 1)
    unlabelled = torch.randn(4, 1, 1, 1) + 5.0
    b = SemiSupervisedBatch(
        labelled, torch.tensor([0, 1, 0, 1]), (unlabelled,), torch.arange(4), 10, 100
    )
    PseudoLabel()(model, b, generator())
    reference(labelled)  # the labelled forward alone
    torch.testing.assert_close(model.state_dict(), reference.state_dict())
    with running_statistics_frozen(model):
        model(unlabelled)
    torch.testing.assert_close(model.state_dict(), reference.state_dict())


def test_frozen_statistics_leave_the_backward_of_both_forwards_possible():
    # Batch norm's backward reads the running statistics its forward saw; restoring them must
    # not count as an in-place change of a saved tensor (the AS term's backward came after).
    model = Normed()
    first = model(torch.randn(4, 1, 1, 1))
    with running_statistics_frozen(model):
        second = model(torch.randn(4, 1, 1, 1) + 5.0)
    third = model(torch.randn(4, 1, 1, 1))
    (first.sum() + second.sum() + third.sum()).backward()
    assert model.norm.weight.grad is not None
