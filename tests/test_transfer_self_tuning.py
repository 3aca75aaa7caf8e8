"""Self-Tuning (trainers.transfer.self_tuning) against values worked out by hand.

The PGC loss on 2-class, 2-dimensional features whose dot products are 1, 0 or -1; the class
queues' FIFO order and pointer wrap slot by slot; the key encoder against the EMA formula; the
step's parts, its finiteness at huge logits, and the optional terms only where asked for.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.mixing.mixup import mixup
from trainers.ssl.asymmetric_term import AsymmetricOutcome, AsymmetricTerm
from trainers.ssl.base import SemiSupervisedBatch
from trainers.transfer.self_tuning import ClassQueues, SelfTuning, pgc_loss

torch.set_num_threads(1)
# The first assert_close imports its comparison machinery: paid at collection.
torch.testing.assert_close(torch.zeros(1), torch.zeros(1))

CLASSES = 3
SHAPE = (3, 4, 4)


class Tiny(nn.Module):
    """Flatten, linear, batch norm, ReLU, then the classifier ``head``; counts its forwards."""

    classifier_name = "head"

    def __init__(self, seed: int = 0, scale: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(math.prod(SHAPE), 8), nn.BatchNorm1d(8), nn.ReLU()
        )
        self.head = nn.Linear(8, CLASSES)
        with torch.no_grad():
            self.head.weight.mul_(scale)
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.head(self.body(x))


def make_batch(seed: int = 1, labelled: int = 4, unlabelled: int = 6) -> SemiSupervisedBatch:
    g = torch.Generator().manual_seed(seed)
    return SemiSupervisedBatch(
        labelled=torch.randn(labelled, *SHAPE, generator=g),
        targets=torch.tensor([0, 1, 2, 1])[:labelled],
        unlabelled=(
            torch.randn(unlabelled, *SHAPE, generator=g),
            torch.randn(unlabelled, *SHAPE, generator=g),
        ),
        unlabelled_index=torch.arange(unlabelled),
        step=0,
        total_steps=10,
    )


def algorithm(model: nn.Module, **settings: object) -> SelfTuning:
    defaults: dict[str, object] = {"queue_size": 2, "projector_dim": 4}
    defaults.update(settings)
    return SelfTuning(model, CLASSES, generator=torch.Generator().manual_seed(7), **defaults)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the PGC loss, by hand


def two_class_queue() -> Tensor:
    """K = 1: class 0 holds (0, 1), class 1 holds (-1, 0)."""
    return torch.tensor([[[0.0, 1.0]], [[-1.0, 0.0]]])


def test_pgc_loss_on_hand_made_features() -> None:
    # Sample 1: q = k = (1, 0), class 0. Logits q.k = 1 (own key, positive), q.Q[0] = 0
    # (positive), q.Q[1] = -1 (negative): L = log(e + 1 + 1/e) - (1 + 0) / 2.
    # Sample 2: q = k = (0, 1), class 1. q.k = 1 (positive), q.Q[1] = 0 (positive),
    # q.Q[0] = 1 (negative): L = log(e + 1 + e) - (1 + 0) / 2.
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = pgc_loss(query, query.clone(), torch.tensor([0, 1]), two_class_queue(), 1.0)
    e = math.e
    expected = [math.log(e + 1 + 1 / e) - 0.5, math.log(2 * e + 1) - 0.5]
    torch.testing.assert_close(loss, torch.tensor(expected))
    assert loss[0].item() == pytest.approx(0.9076059644, abs=1e-6)  # float32; 1.4076... - 0.5


def test_pgc_loss_temperature_divides_every_logit() -> None:
    # tau = 0.5 doubles the logits of sample 1: L = log(e^2 + 1 + e^-2) - (2 + 0) / 2.
    query = torch.tensor([[1.0, 0.0]])
    loss = pgc_loss(query, query.clone(), torch.tensor([0]), two_class_queue(), 0.5)
    expected = math.log(math.exp(2) + 1 + math.exp(-2)) - 1.0
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_pgc_loss_positives_are_the_queue_of_the_label() -> None:
    # The same query labelled 1: positives own key (1) and Q[1] (-1), negative Q[0] (0).
    query = torch.tensor([[1.0, 0.0]])
    loss = pgc_loss(query, query.clone(), torch.tensor([1]), two_class_queue(), 1.0)
    expected = math.log(math.e + 1 + 1 / math.e) - (1 - 1) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_pgc_loss_finite_at_a_tiny_temperature() -> None:
    query = F.normalize(torch.tensor([[1.0, 2.0], [3.0, -1.0]]), dim=1)
    loss = pgc_loss(query, query.clone(), torch.tensor([0, 1]), two_class_queue(), 1e-4)
    assert torch.isfinite(loss).all()


# ------------------------------------------------------------------------ the queues


def test_queue_is_fifo_per_class_and_its_pointer_wraps() -> None:
    queues = ClassQueues(2, 2, 2, generator=torch.Generator().manual_seed(0))
    start = queues.entries.clone()
    assert torch.allclose(start.norm(dim=2), torch.ones(2, 2))  # random unit vectors
    a, b, c, d, e, f, g = (torch.tensor([float(i), 10.0 + i]) for i in range(7))

    queues.enqueue(torch.stack([a, b, c]), torch.tensor([0, 0, 1]))
    assert torch.equal(queues.entries[0], torch.stack([a, b]))
    assert torch.equal(queues.entries[1], torch.stack([c, start[1, 1]]))
    assert queues.pointer.tolist() == [0, 1]  # class 0 wrapped from 2 to 0

    # Three keys into two slots: d to slot 0, e to slot 1, f to slot 0 over d.
    queues.enqueue(torch.stack([d, e, f]), torch.tensor([0, 0, 0]))
    assert torch.equal(queues.entries[0], torch.stack([f, e]))
    assert queues.pointer.tolist() == [1, 1]

    queues.enqueue(g[None], torch.tensor([1]))
    assert torch.equal(queues.entries[1], torch.stack([c, g]))
    assert queues.pointer.tolist() == [1, 0]


def test_queue_keeps_the_entries_a_loss_was_computed_from() -> None:
    queues = ClassQueues(2, 1, 2)
    query = torch.tensor([[1.0, 0.0]], requires_grad=True)
    loss = pgc_loss(query, query.detach(), torch.tensor([0]), queues.entries, 1.0).sum()
    queues.enqueue(torch.tensor([[0.0, 1.0]]), torch.tensor([0]))
    loss.backward()  # would fail had the queue been written in place
    assert query.grad is not None and torch.isfinite(query.grad).all()


# -------------------------------------------------------------- the momentum encoder


def parameter(module: nn.Module, name: str) -> Tensor:
    """``module``'s parameter ``name`` (dotted)."""
    return dict(module.named_parameters())[name]


def test_key_encoder_update_is_the_ema_formula() -> None:
    model = Tiny()
    algo = algorithm(model)
    old = {n: p.clone() for n, p in algo.key_encoder.network.named_parameters()}
    old_projector = parameter(algo.key_encoder.projector, "weight").clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        parameter(algo.projector, "weight").add_(2.0)
    algo.key_encoder.update(model, algo.projector, 0.9)
    for name, p in model.named_parameters():
        expected = 0.9 * old[name] + 0.1 * p
        torch.testing.assert_close(parameter(algo.key_encoder.network, name), expected)
    torch.testing.assert_close(
        parameter(algo.key_encoder.projector, "weight"),
        0.9 * old_projector + 0.1 * parameter(algo.projector, "weight"),
    )


def test_step_moves_the_key_encoder_once_with_momentum_squared() -> None:
    model = Tiny()
    algo = algorithm(model, momentum=0.9)
    with torch.no_grad():
        model.head.weight.add_(1.0)  # the live model has moved away from the copy
    old = parameter(algo.key_encoder.network, "head.weight").clone()
    algo(model, make_batch(), torch.Generator().manual_seed(0))
    expected = 0.81 * old + 0.19 * model.head.weight
    torch.testing.assert_close(parameter(algo.key_encoder.network, "head.weight"), expected)


def test_state_dict_carries_key_encoder_and_queues() -> None:
    model = Tiny()
    algo = algorithm(model)
    algo(model, make_batch(), torch.Generator().manual_seed(0))
    state = algo.state_dict()
    for key in ("queues.entries", "queues.pointer", "key_encoder.network.head.weight"):
        assert key in state
    fresh = SelfTuning(
        Tiny(seed=5), CLASSES, queue_size=2, projector_dim=4, generator=torch.Generator()
    )
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.queues.entries, algo.queues.entries)
    assert torch.equal(fresh.queues.pointer, algo.queues.pointer)
    # What the optimiser trains: the projector; the key encoder never takes gradients.
    trainable = {n for n, p in algo.named_parameters() if p.requires_grad}
    assert trainable == {"projector.weight", "projector.bias"}


# ------------------------------------------------------------------------- the step


def test_step_parts_and_queue_order() -> None:
    model = Tiny()
    algo = algorithm(model)
    batch = make_batch()
    step = algo(model, batch, torch.Generator().manual_seed(0))
    assert model.calls == 2  # the labelled and the unlabelled query forwards
    assert step.pseudo_labels.shape == (6,) and step.mask.tolist() == [1.0] * 6
    # Every key was queued: labelled under its label, unlabelled under its pseudo-label.
    counts = torch.bincount(batch.targets, minlength=CLASSES) + torch.bincount(
        step.pseudo_labels, minlength=CLASSES
    )
    assert algo.queues.pointer.tolist() == (counts % 2).tolist()
    torch.testing.assert_close(step.loss.detach(), step.supervised + step.unsupervised)


def test_step_is_finite_at_huge_logits() -> None:
    model = Tiny(scale=1e6)
    algo = algorithm(model, temperature=0.01)
    step = algo(model, make_batch(), torch.Generator().manual_seed(0))
    assert torch.isfinite(step.loss)
    step.loss.backward()
    for p in [*model.parameters(), *algo.projector.parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_threshold_masks_only_what_the_as_term_sees() -> None:
    model = Tiny()
    step = algorithm(model, threshold=1.0)(model, make_batch(), torch.Generator().manual_seed(0))
    assert step.mask.sum().item() == 0.0  # no softmax reaches 1 at these logits


class StubTerm(AsymmetricTerm):
    """Records its inputs and returns a fixed loss."""

    def __init__(self) -> None:
        super().__init__(loss="mce")
        self.seen: list[tuple[Tensor, Tensor, Tensor]] = []

    def forward(
        self,
        model: nn.Module,
        labelled: Tensor,
        targets: Tensor,
        unlabelled: Tensor,
        pseudo_labels: Tensor,
        mask: Tensor,
        generator: torch.Generator,
    ) -> AsymmetricOutcome:
        self.seen.append((unlabelled, pseudo_labels, mask))
        n = len(labelled)
        return AsymmetricOutcome(
            torch.tensor(2.5), torch.zeros(n, dtype=torch.long), torch.zeros(n), torch.ones(n)
        )


def test_as_term_only_when_given() -> None:
    model = Tiny()
    plain = algorithm(model)
    stub = StubTerm()
    with_term = algorithm(copy.deepcopy(model), asymmetric=stub)
    with_term.load_state_dict(plain.state_dict())
    batch = make_batch()
    alone = plain(model, batch, torch.Generator().manual_seed(0))
    added = with_term(model, batch, torch.Generator().manual_seed(0))
    assert len(stub.seen) == 1
    unlabelled, pseudo_labels, mask = stub.seen[0]
    assert unlabelled is batch.unlabelled[0]  # mixed with the query view, which was guessed
    assert torch.equal(pseudo_labels, added.pseudo_labels)
    assert torch.equal(mask, added.mask)
    torch.testing.assert_close(added.unsupervised, alone.unsupervised + 2.5)
    torch.testing.assert_close(added.supervised, alone.supervised)

    model.calls = 0
    real = algorithm(model, asymmetric=AsymmetricTerm(loss="dm_ce"))
    step = real(model, batch, torch.Generator().manual_seed(0))
    assert model.calls == 3 and torch.isfinite(step.loss)  # the mixed batch's forward


def test_labelled_mixup_adds_the_mce_of_the_mixed_labelled_batch() -> None:
    model = Tiny()
    plain = algorithm(model)
    mixing = algorithm(model, labelled_mixup="mce")
    mixing.load_state_dict(plain.state_dict())
    batch = make_batch()
    alone = plain(model, batch, torch.Generator().manual_seed(3))
    model.calls = 0
    added = mixing(model, batch, torch.Generator().manual_seed(3))
    assert model.calls == 3
    # The same draws by hand: Beta(1, 1) lam and a permutation, then Eq. (1) of the DM paper.
    mixed = mixup(
        batch.labelled, batch.targets, alpha=1.0, generator=torch.Generator().manual_seed(3)
    )
    log_p = F.log_softmax(model(mixed.inputs), dim=1)
    lam = mixed.lam
    rows = torch.arange(4)
    expected = -(lam * log_p[rows, batch.targets] + (1 - lam) * log_p[rows, mixed.y_b]).mean()
    torch.testing.assert_close(added.supervised, alone.supervised + expected.detach())
    torch.testing.assert_close(added.unsupervised, alone.unsupervised)


@pytest.mark.parametrize(
    "settings",
    [
        {"temperature": 0.0},
        {"momentum": 1.5},
        {"queue_size": 0},
        {"view": "medium"},
        {"labelled_mixup": "bce"},
        {"mixup_policy": "puzzlemix"},
        {"threshold": -0.1},
    ],
)
def test_bad_settings_are_refused(settings: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        algorithm(Tiny(), **settings)


def test_views_follow_the_setting() -> None:
    assert SelfTuning.views == ("weak", "weak")
    assert algorithm(Tiny(), view="strong").views == ("strong", "strong")
