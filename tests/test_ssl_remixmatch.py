"""ReMixMatch (trainers/ssl/remixmatch.py) and the feature hook (trainers/ssl/features.py).

Where a test needs the step's random draws it replays them from a generator with the same seed,
in the order the step makes them: one Beta draw and one permutation (``mix_with_shuffled``),
then one rotation per unlabelled image.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from trainers.backbones import build_backbone
from trainers.mixing.base import sample_beta
from trainers.ssl.base import SemiSupervisedBatch
from trainers.ssl.features import classifier_layer, feature_dim, penultimate_features
from trainers.ssl.remixmatch import DistributionAlignment, ReMixMatch, rotate_quarters

CLASSES = 3


class FlatNet(nn.Module):
    """Penultimate features = the flattened 1x2x2 image; a fixed linear classifier ``fc``."""

    classifier_name = "fc"

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, CLASSES)
        with torch.no_grad():
            self.fc.weight.copy_(
                torch.tensor([[0.5, -0.2, 0.1, 0.0], [0.0, 0.3, -0.4, 0.2], [-0.1, 0.0, 0.2, 0.6]])
            )
            self.fc.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1))


def _batch(step: int = 0, total: int = 64, *, seed: int = 0, size: int = 2) -> SemiSupervisedBatch:
    gen = torch.Generator().manual_seed(seed)
    return SemiSupervisedBatch(
        labelled=torch.randn(size, 1, 2, 2, generator=gen),
        targets=torch.arange(size) % CLASSES,
        unlabelled=tuple(torch.randn(size, 1, 2, 2, generator=gen) for _ in range(3)),
        unlabelled_index=torch.arange(size),
        step=step,
        total_steps=total,
    )


# --------------------------------------------------------------------------- alignment


def test_distribution_alignment_ema_hand_values() -> None:
    align = DistributionAlignment(2, target=[3.0, 1.0], momentum=0.9)  # target -> [0.75, 0.25]
    first = torch.tensor([[0.8, 0.2], [0.6, 0.4]])  # batch mean [0.7, 0.3]: p~ starts there
    out = align(first)
    row0 = [0.8 * 0.75 / 0.7, 0.2 * 0.25 / 0.3]
    row1 = [0.6 * 0.75 / 0.7, 0.4 * 0.25 / 0.3]
    expected = [[v / sum(row) for v in row] for row in (row0, row1)]
    torch.testing.assert_close(out, torch.tensor(expected))

    second = torch.tensor([[0.5, 0.5]])  # p~ = 0.9 [0.7, 0.3] + 0.1 [0.5, 0.5] = [0.68, 0.32]
    out = align(second)
    torch.testing.assert_close(align.running_mean(), torch.tensor([0.68, 0.32]))
    row = [0.5 * 0.75 / 0.68, 0.5 * 0.25 / 0.32]
    torch.testing.assert_close(out, torch.tensor([[v / sum(row) for v in row]]))
    assert int(align.seen) == 2


def test_distribution_alignment_window_hand_values() -> None:
    align = DistributionAlignment(2, mode="window", window=2)  # uniform target
    align(torch.tensor([[0.9, 0.1]]))
    torch.testing.assert_close(align.running_mean(), torch.tensor([0.9, 0.1]))
    align(torch.tensor([[0.5, 0.5]]))
    torch.testing.assert_close(align.running_mean(), torch.tensor([0.7, 0.3]))
    out = align(torch.tensor([[0.3, 0.7]]))  # the first batch leaves the window
    torch.testing.assert_close(align.running_mean(), torch.tensor([0.4, 0.6]))
    row = [0.3 * 0.5 / 0.4, 0.7 * 0.5 / 0.6]
    torch.testing.assert_close(out, torch.tensor([[v / sum(row) for v in row]]))


def test_alignment_state_travels_in_the_state_dict() -> None:
    algorithm = ReMixMatch(CLASSES, 4, alignment_momentum=0.5)
    algorithm.alignment(torch.tensor([[0.7, 0.2, 0.1]]))
    restored = ReMixMatch(CLASSES, 4, alignment_momentum=0.5)
    restored.load_state_dict(algorithm.state_dict())
    probs = torch.tensor([[0.2, 0.5, 0.3]])
    torch.testing.assert_close(restored.alignment(probs), algorithm.alignment(probs))
    assert "alignment.history" in algorithm.state_dict()
    assert "rotation_head.weight" in algorithm.state_dict()


def test_alignment_finite_when_a_class_is_never_predicted() -> None:
    align = DistributionAlignment(3)
    probs = torch.softmax(torch.tensor([[1e4, 0.0, -1e4], [0.0, 1e4, -1e4]]), dim=1)
    out = align(probs)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.sum(1), torch.ones(2))


# --------------------------------------------------------------------------- rotation


def test_rotate_quarters_against_rot90_and_by_hand() -> None:
    image = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2).repeat(4, 1, 1, 1)
    rotated = rotate_quarters(image, torch.tensor([0, 1, 2, 3]))
    for k in range(4):
        torch.testing.assert_close(rotated[k], torch.rot90(image[k], k, dims=(1, 2)))
    # One quarter turn counter-clockwise (torchvision's rotate(90), TorchSSL's label 1).
    torch.testing.assert_close(rotated[1, 0], torch.tensor([[2.0, 4.0], [1.0, 3.0]]))
    torch.testing.assert_close(rotated[2, 0], torch.tensor([[4.0, 3.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="square"):
        rotate_quarters(torch.zeros(1, 1, 2, 3), torch.tensor([1]))


def test_rotation_loss_against_hand_computation() -> None:
    seed, size = 5, 4
    batch = _batch(10, 64, seed=seed, size=size)
    algorithm = ReMixMatch(CLASSES, 4, w_match=0.0, w_kl=0.0, w_rot=1.0)
    with torch.no_grad():
        algorithm.rotation_head.weight.copy_(torch.arange(16.0).view(4, 4) / 10 - 0.7)
        algorithm.rotation_head.bias.copy_(torch.tensor([0.1, 0.0, -0.1, 0.2]))
    out = algorithm(FlatNet(), batch, torch.Generator().manual_seed(seed))

    gen = torch.Generator().manual_seed(seed)
    sample_beta(0.75, 1, gen, torch.device("cpu"))
    torch.randperm(4 * size, generator=gen)
    quarters = torch.randint(0, 4, (size,), generator=gen).tolist()
    w = algorithm.rotation_head.weight.detach().double()
    b = algorithm.rotation_head.bias.detach().double()
    total = 0.0
    for n, k in enumerate(quarters):
        features = torch.rot90(batch.unlabelled[1][n, 0].double(), k).flatten()
        z = (w @ features + b).tolist()
        total += math.log(sum(math.exp(v) for v in z)) - z[k]
    assert float(out.unsupervised) == pytest.approx(total / size, rel=1e-5)


def test_rotation_head_is_trained_through_extra_parameters() -> None:
    model = build_backbone("smallnet", CLASSES, 8, width=4)
    algorithm = ReMixMatch(CLASSES, feature_dim(model))
    assert algorithm.views == ("weak", "strong", "strong")
    assert ReMixMatch(CLASSES, 4, strong_views=4).views == ("weak",) + ("strong",) * 4
    extra = algorithm.extra_parameters()
    assert {id(p) for p in extra} == {id(p) for p in algorithm.rotation_head.parameters()}
    gen = torch.Generator().manual_seed(0)
    batch = SemiSupervisedBatch(
        labelled=torch.randn(4, 3, 8, 8, generator=gen),
        targets=torch.tensor([0, 1, 2, 0]),
        unlabelled=tuple(torch.randn(4, 3, 8, 8, generator=gen) for _ in range(3)),
        unlabelled_index=torch.arange(4),
        step=0,
        total_steps=100,
    )
    out = algorithm(model, batch, gen)
    out.loss.backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in extra)
    # Only the mixed forward moved the running statistics (guess and rotation are frozen).
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(int(m.num_batches_tracked or 0) == 1 for m in norms)
    assert int(algorithm.alignment.seen) == 1


# --------------------------------------------------------------------------- the whole step


def test_step_against_hand_computation() -> None:
    seed, size, step, total = 2, 2, 1, 256  # warm-up 1/64 of 256 steps: ramp 1/4 at step 1
    batch = _batch(step, total, seed=seed, size=size)
    model = FlatNet()
    algorithm = ReMixMatch(CLASSES, 4, w_rot=0.0)
    out = algorithm(model, batch, torch.Generator().manual_seed(seed))

    w = model.fc.weight.detach().double()

    def probs(x: Tensor) -> list[list[float]]:
        z = (x.double().flatten(1) @ w.T).tolist()
        return [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in z]

    weak = probs(batch.unlabelled[0])
    mean = [sum(row[c] for row in weak) / size for c in range(CLASSES)]  # p~ after one batch
    aligned = [[row[c] / mean[c] for c in range(CLASSES)] for row in weak]  # uniform target
    aligned = [[v / sum(row) for v in row] for row in aligned]
    guess = [[v * v / sum(u * u for u in row) for v in row] for row in aligned]
    one_hot = [[1.0 if c == y else 0.0 for c in range(CLASSES)] for y in batch.targets.tolist()]
    targets = one_hot + guess * 3  # labelled, strong 1, strong 2, weak
    inputs = torch.cat(
        [batch.labelled, batch.unlabelled[1], batch.unlabelled[2], batch.unlabelled[0]]
    )

    gen = torch.Generator().manual_seed(seed)
    raw = float(sample_beta(0.75, 1, gen, torch.device("cpu"))[0])
    lam = max(raw, 1 - raw)
    perm = torch.randperm(4 * size, generator=gen).tolist()
    n_all = 4 * size
    mixed_x = torch.stack(
        [lam * inputs[n].double() + (1 - lam) * inputs[perm[n]].double() for n in range(n_all)]
    )
    mixed_t = [
        [lam * targets[n][c] + (1 - lam) * targets[perm[n]][c] for c in range(CLASSES)]
        for n in range(n_all)
    ]
    p = probs(mixed_x)

    def ce(rows: range, pred: list[list[float]], tgt: list[list[float]]) -> float:
        return -sum(tgt[n][c] * math.log(pred[n][c]) for n in rows for c in range(CLASSES)) / len(
            rows
        )

    sup = ce(range(size), p, mixed_t)
    match = ce(range(size, n_all), p, mixed_t)
    pre = ce(range(size), probs(batch.unlabelled[1]), guess)
    ramp = step / (total / 64)
    assert float(out.supervised) == pytest.approx(sup, rel=1e-5)
    assert float(out.unsupervised) == pytest.approx(ramp * (1.5 * match + 0.5 * pre), rel=1e-5)
    expected_labels = [max(range(CLASSES), key=row.__getitem__) for row in guess]
    assert out.pseudo_labels.tolist() == expected_labels


def test_finite_at_large_logits() -> None:
    class Huge(FlatNet):
        def forward(self, x: Tensor) -> Tensor:
            return self.fc(1e4 * x.flatten(1))

    model = Huge()
    algorithm = ReMixMatch(CLASSES, 4)
    for step in (0, 5):
        out = algorithm(
            model, _batch(step, 64, seed=step, size=4), torch.Generator().manual_seed(step)
        )
        out.loss.backward()
        assert torch.isfinite(out.loss)
        for grad in (model.fc.weight.grad, algorithm.rotation_head.weight.grad):
            assert grad is not None and torch.isfinite(grad).all()


# --------------------------------------------------------------------------- features


@pytest.mark.parametrize(
    ("name", "dim"),
    [
        ("wrn28_2", 128),
        ("wrn28_8", 512),
        ("smallnet", 64),
        ("resnet18_cifar", 512),
        ("resnet18", 512),
    ],
)
def test_penultimate_features_of_each_backbone(name: str, dim: int) -> None:
    torch.manual_seed(0)
    model = build_backbone(name, 5, 8).eval()
    assert feature_dim(model) == dim
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad(), penultimate_features(model) as captured:
        logits = model(x)
    features = captured.get()
    assert features.shape == (1, dim)
    # The classifier applied to the captured input gives the logits: it is that layer's input.
    torch.testing.assert_close(classifier_layer(model)(features), logits)
    # The hook is gone after the context.
    with torch.no_grad():
        model(x)
    assert not classifier_layer(model)._forward_pre_hooks


def test_classifier_found_inside_a_compile_wrapper() -> None:
    class Wrapper(nn.Module):  # what torch.compile's OptimizedModule exposes
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self._orig_mod = inner

        def forward(self, x: Tensor) -> Tensor:
            return self._orig_mod(x)

    net = FlatNet()
    assert classifier_layer(Wrapper(net)) is net.fc


def test_penultimate_features_needs_a_forward() -> None:
    with penultimate_features(FlatNet()) as captured, pytest.raises(RuntimeError):
        captured.get()
    with pytest.raises(ValueError, match="classifier"):
        classifier_layer(nn.Sequential(nn.Linear(2, 2)))
