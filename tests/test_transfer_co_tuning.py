"""Co-Tuning (trainers/transfer/co_tuning.py): the category relationship on hand cases whose
answer is known, the calibration, and the step's loss worked out by hand on tiny inputs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainers.ssl.base import SemiSupervisedBatch
from trainers.transfer.co_tuning import (
    CO_TUNING_WEIGHT,
    SOURCE_LOGIT_SCALE,
    CoTuning,
    calibrated_source_probs,
    category_relationship,
    collect_source_probs,
)


def test_defaults_are_the_authors() -> None:
    # CoTuning train.py --trade_off 2.3 (tllib's example too); relationship_learning.py's scale.
    assert CO_TUNING_WEIGHT == 2.3
    assert SOURCE_LOGIT_SCALE == 0.8840456604957581


def test_one_hot_predictions_give_a_permutation() -> None:
    # Each target class t is always predicted as source class perm[t], with certainty.
    perm = [2, 0, 3, 1]
    labels = torch.tensor([0, 1, 2, 3, 3, 1, 0, 2, 2])
    probs = torch.eye(4)[torch.tensor([perm[t] for t in labels.tolist()])]
    relationship = category_relationship(probs, labels, 4)
    expected = torch.zeros(4, 4)
    for t, s in enumerate(perm):
        expected[t, s] = 1.0
    assert torch.equal(relationship, expected)


def test_two_images_per_class_are_averaged() -> None:
    probs = torch.tensor(
        [
            [0.6, 0.3, 0.1],  # class 1
            [0.2, 0.2, 0.6],  # class 0
            [0.0, 1.0, 0.0],  # class 1
            [0.4, 0.4, 0.2],  # class 0
        ]
    )
    labels = torch.tensor([1, 0, 1, 0])
    relationship = category_relationship(probs, labels, 2)
    expected = torch.tensor([[0.3, 0.3, 0.4], [0.3, 0.65, 0.05]])  # by hand
    assert torch.allclose(relationship, expected)
    assert torch.allclose(relationship.sum(dim=1), torch.ones(2))


def test_relationship_refuses_bad_labels() -> None:
    probs = torch.full((3, 2), 0.5)
    with pytest.raises(ValueError, match=r"no image of target class\(es\) 2"):
        category_relationship(probs, torch.tensor([0, 1, 1]), 3)
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\)"):
        category_relationship(probs, torch.tensor([0, 1, 2]), 2)
    with pytest.raises(ValueError, match="one per row"):
        category_relationship(probs, torch.tensor([0, 1]), 2)
    with pytest.raises(ValueError, match="integers"):
        category_relationship(probs, torch.tensor([0.0, 1.0, 1.0]), 2)


def test_calibration_scales_the_logits() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)]])
    assert torch.allclose(calibrated_source_probs(logits, 1.0), torch.tensor([[0.25, 0.75]]))
    root = math.sqrt(3.0)  # exp(0.5 * log 3)
    half = torch.tensor([[1 / (1 + root), root / (1 + root)]])
    assert torch.allclose(calibrated_source_probs(logits, 0.5), half)
    with pytest.raises(ValueError, match="scale"):
        calibrated_source_probs(logits, 0.0)


class Flat(nn.Module):
    """A model whose penultimate features are its flattened input, and a linear head."""

    classifier_name = "head"

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))


def linear(weight: list[list[float]]) -> nn.Linear:
    w = torch.tensor(weight)
    layer = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.zero_()
    return layer


def batch_of(images: torch.Tensor, targets: torch.Tensor) -> SemiSupervisedBatch:
    empty = torch.zeros(0, dtype=torch.long)
    return SemiSupervisedBatch(images, targets, (), empty, step=0, total_steps=1)


def test_step_loss_by_hand() -> None:
    model = Flat(2, 2)
    model.head = linear([[1.0, 0.0], [0.0, 1.0]])  # target logits = features
    source = linear([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # source logits = (f1, f2, 0)
    relationship = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    algorithm = CoTuning(source, relationship, weight=2.3)
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([0, 1])
    step = algorithm(model, batch_of(images, targets), torch.Generator())

    e = math.e
    # Target CE: both images have logit 1 on their class and 0 on the other.
    target_ce = math.log(1 + 1 / e)
    # Source: image 1 has logits (1, 0, 0), log-softmax (1 - log(e+2), -log(e+2), -log(e+2)),
    # soft label (0.5, 0.5, 0); image 2 has (0, 1, 0) and soft label (0, 0, 1).
    soft_ce_1 = math.log(e + 2) - 0.5
    soft_ce_2 = math.log(e + 2)
    source_term = 2.3 * (soft_ce_1 + soft_ce_2) / 2
    assert step.supervised.item() == pytest.approx(target_ce, rel=1e-6)
    assert step.unsupervised.item() == pytest.approx(source_term, rel=1e-6)
    assert step.loss.item() == pytest.approx(target_ce + source_term, rel=1e-6)
    assert step.pseudo_labels.numel() == 0 and step.mask.numel() == 0

    step.loss.backward()
    assert source.weight.grad is not None and source.weight.grad.abs().sum() > 0
    assert model.head.weight.grad is not None


def test_algorithm_holds_head_and_relationship() -> None:
    source = nn.Linear(4, 3)
    relationship = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    algorithm = CoTuning(source, relationship)
    assert algorithm.views == ()
    assert algorithm.weight == CO_TUNING_WEIGHT
    state = algorithm.state_dict()
    assert set(state) == {"relationship", "source_head.weight", "source_head.bias"}
    assert torch.equal(state["relationship"], relationship)
    assert {id(p) for p in algorithm.parameters()} == {id(p) for p in source.parameters()}


def test_algorithm_refuses_what_does_not_fit() -> None:
    source = nn.Linear(4, 3)
    with pytest.raises(ValueError, match=r"\(C_t, 3\)"):
        CoTuning(source, torch.full((2, 4), 0.25))
    with pytest.raises(ValueError, match="probability distributions"):
        CoTuning(source, torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="weight"):
        CoTuning(source, torch.full((2, 3), 1 / 3), weight=-1.0)
    algorithm = CoTuning(source, torch.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="3 target classes"):
        algorithm(Flat(4, 3), batch_of(torch.ones(2, 4), torch.tensor([0, 1])), torch.Generator())


def test_collect_source_probs_runs_in_eval_mode() -> None:
    class Dropping(Flat):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # In training mode every feature would be dropped: eval mode must be used.
            return self.head(nn.functional.dropout(x.flatten(1), 1.0, self.training))

    model = Dropping(2, 5).train()
    source = linear([[1.0, 0.0], [0.0, 2.0]])
    batches = [
        (torch.tensor([[1.0, 0.0]]), torch.tensor([1])),
        (torch.tensor([[0.0, 1.0], [0.0, 0.0]]), torch.tensor([0, 1])),
    ]
    probs, labels = collect_source_probs(model, source, batches, scale=1.0)
    expected = torch.softmax(torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]]), dim=1)
    assert torch.allclose(probs, expected)
    assert torch.equal(labels, torch.tensor([1, 0, 1]))
    assert model.training and source.training
    relationship = category_relationship(probs, labels, 2)
    assert torch.allclose(relationship[0], expected[1])
    assert torch.allclose(relationship[1], (expected[0] + expected[2]) / 2)
