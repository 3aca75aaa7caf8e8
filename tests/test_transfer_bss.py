"""BSS (trainers/transfer/bss.py): the penalty against matrices whose singular values are known
by construction, its gradient against finite differences, and the Fine-Tuning step against a
hand-computed loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainers.backbones import SmallNet
from trainers.ssl.base import SemiSupervisedBatch
from trainers.transfer.bss import BSS_K, BSS_WEIGHT, FineTuning, bss_penalty


def orthonormal(rows: int, cols: int, seed: int) -> torch.Tensor:
    """A rows x cols matrix with orthonormal columns (QR of a random Gaussian matrix)."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=generator, dtype=torch.float64))
    return q


def with_singular_values(rows: int, cols: int, values: list[float]) -> torch.Tensor:
    """U diag(s) V^T: a rows x cols matrix whose singular values are ``values``."""
    s = torch.tensor(values, dtype=torch.float64)
    return orthonormal(rows, len(values), 1) @ torch.diag(s) @ orthonormal(cols, len(values), 2).T


def test_defaults_are_tllibs() -> None:
    # tllib examples/task_adaptation/image_classification/bss.py: -k 1, --trade-off 0.001.
    assert (BSS_K, BSS_WEIGHT) == (1, 0.001)
    algorithm = FineTuning()
    assert (algorithm.k, algorithm.bss_weight, algorithm.views) == (1, 0.001, ())


@pytest.mark.parametrize("rows, cols", [(6, 4), (3, 5)])  # a tall batch, and N < D
def test_penalty_is_the_smallest_squared_singular_values(rows: int, cols: int) -> None:
    values = [5.0, 3.0, 2.0, 0.5][: min(rows, cols)]
    features = with_singular_values(rows, cols, values)
    assert torch.allclose(torch.linalg.svdvals(features), torch.tensor(values, dtype=torch.float64))
    smallest = sorted(values)
    for k in range(1, len(values) + 1):
        expected = sum(v * v for v in smallest[:k])
        assert bss_penalty(features, k).item() == pytest.approx(expected, rel=1e-10)


def test_penalty_of_half_precision_features_is_float32() -> None:
    features = with_singular_values(6, 4, [4.0, 2.0, 1.0, 0.5]).to(torch.bfloat16)
    penalty = bss_penalty(features, 1)
    assert penalty.dtype == torch.float32
    assert penalty.item() == pytest.approx(0.25, rel=0.05)


def test_gradient_matches_finite_differences() -> None:
    features = with_singular_values(5, 3, [3.0, 1.5, 0.7]).requires_grad_()
    bss_penalty(features, 2).backward()
    assert features.grad is not None
    numeric = torch.zeros_like(features)
    step = 1e-6
    with torch.no_grad():
        for index in range(features.numel()):
            bump = torch.zeros(features.numel(), dtype=torch.float64)
            bump[index] = step
            bump = bump.view_as(features)
            up = bss_penalty(features + bump, 2)
            down = bss_penalty(features - bump, 2)
            numeric.view(-1)[index] = (up - down) / (2 * step)
    assert torch.allclose(features.grad, numeric, atol=1e-6)


@pytest.mark.parametrize(
    "shape, k, match",
    [((4, 3), 4, "exceeds the 3 singular values"), ((4, 3), 0, "k must"), ((4,), 1, r"\(N, D\)")],
)
def test_penalty_refuses(shape: tuple[int, ...], k: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bss_penalty(torch.ones(shape), k)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="bss_weight"):
        FineTuning(bss_weight=-1.0)
    with pytest.raises(ValueError, match="k must"):
        FineTuning(k=0)


def batch_of(images: torch.Tensor, targets: torch.Tensor) -> SemiSupervisedBatch:
    empty = torch.zeros(0, dtype=torch.long)
    return SemiSupervisedBatch(images, targets, (), empty, step=0, total_steps=1)


def smallnet_features(model: SmallNet, images: torch.Tensor) -> torch.Tensor:
    """SmallNet's pooled features, by running its stages by hand (not through the hook)."""
    x = images
    for stage in model.stages:
        x = stage(x)
    return x.mean(dim=(2, 3))


@pytest.mark.parametrize("weight", [0.0, 0.001, 0.5])
def test_step_is_cross_entropy_plus_weighted_penalty(weight: float) -> None:
    torch.manual_seed(0)
    model = SmallNet(num_classes=3, width=4).double()
    images = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    step = FineTuning(bss_weight=weight)(model, batch_of(images, targets), torch.Generator())

    features = smallnet_features(model, images)  # D = 16 > N = 6: six singular values
    logits = model.head(features)
    cross_entropy = F.cross_entropy(logits, targets)
    smallest = torch.linalg.svdvals(features.detach())[-1].item()
    expected = cross_entropy.item() + weight * smallest**2
    assert step.loss.item() == pytest.approx(expected, rel=1e-9)
    assert step.supervised.item() == pytest.approx(cross_entropy.item(), rel=1e-9)
    assert step.unsupervised.item() == pytest.approx(weight * smallest**2, rel=1e-9, abs=1e-12)
    assert step.pseudo_labels.numel() == 0 and step.mask.numel() == 0
    step.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert math.isfinite(step.loss.item())
