"""Pieces of one training run: synthetic data, the backbone's ManifoldMix hook, loss names."""

from __future__ import annotations

import pytest
import torch

from trainers import losses
from trainers.backbones import SmallNet, build_backbone
from trainers.data.synthetic import synthetic
from trainers.mixing import MixedBatch
from trainers.mixing.manifoldmix import manifoldmix
from trainers.mixing.methods import MethodMixer
from trainers.objectives import LOSSES, objective


def test_synthetic_data_is_deterministic_balanced_and_split():
    train = synthetic(200, num_classes=4, image_size=16, seed=3)
    again = synthetic(200, num_classes=4, image_size=16, seed=3)
    val = synthetic(200, num_classes=4, image_size=16, seed=3, split="val")
    assert train.images.dtype == torch.uint8 and train.images.shape == (200, 3, 16, 16)
    assert torch.equal(train.images, again.images) and torch.equal(train.labels, again.labels)
    assert not torch.equal(train.images, val.images)
    assert torch.bincount(train.labels).tolist() == [50, 50, 50, 50]
    assert train.classes == ["class_0", "class_1", "class_2", "class_3"]
    # Same task in both splits: class means of train and val agree far better than across classes.
    means_train = torch.stack([train.images[train.labels == c].float().mean(0) for c in range(4)])
    means_val = torch.stack([val.images[val.labels == c].float().mean(0) for c in range(4)])
    distance = torch.cdist(means_train.flatten(1), means_val.flatten(1))
    assert (distance.argmin(dim=1) == torch.arange(4)).all()


def test_synthetic_rejects_bad_sizes_and_splits():
    with pytest.raises(ValueError, match="num_classes >= 2"):
        synthetic(10, num_classes=1)
    with pytest.raises(ValueError, match="unknown split 'dev'; allowed: train, val, test"):
        synthetic(10, split="dev")


def test_smallnet_mixes_hidden_features_at_the_chosen_stage():
    torch.manual_seed(0)
    model = SmallNet(num_classes=5).eval()
    x, y = torch.randn(6, 3, 16, 16), torch.arange(6) % 5
    assert model.mix_stages == 3
    seen_shapes = []

    def identity(features):
        seen_shapes.append(tuple(features.shape))
        return features

    for stage in range(model.mix_stages):
        torch.testing.assert_close(model(x, mix=identity, mix_stage=stage), model(x))
    assert seen_shapes == [(6, 3, 16, 16), (6, 16, 8, 8), (6, 32, 4, 4)]
    # Mixing hidden features at stage 1 is not the same as mixing the input.
    g = torch.Generator().manual_seed(0)
    batches: list[MixedBatch] = []

    def mix(features):
        batches.append(manifoldmix(features, y, alpha=1.0, generator=g))
        return batches[-1].inputs

    hidden = model(x, mix=mix, mix_stage=1)
    mixed = batches[-1]
    input_mixed = model(torch.lerp(x[mixed.perm], x, mixed.lam.view(-1, 1, 1, 1)))
    assert not torch.allclose(hidden, input_mixed)


def test_build_backbone_passes_other_names_to_timm():
    model = build_backbone("resnet18", num_classes=7, image_size=32)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_objectives_bind_the_paper_losses():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 5, generator=g)
    batch = MixedBatch(
        inputs=torch.empty(0),
        y_a=torch.arange(8) % 5,
        y_b=torch.arange(8).flip(0) % 5,
        lam=torch.rand(8, generator=g),
        perm=torch.arange(8).flip(0),
    )
    a, b, lam = batch.y_a, batch.y_b, batch.lam
    expected = {
        "ce": losses.ce(logits, a),
        "mce": losses.mce(logits, a, b, lam),
        "dm_ce": losses.dm_ce(logits, a, b, lam, eta=0.3),
        "mbce": losses.mbce(logits, a, b, lam),
        "mbce_two": losses.mbce(logits, a, b, lam, two_hot=True),
        "dm_bce": losses.dm_bce(logits, a, b, lam, xi=0.8, t=1.0),
    }
    options = {"dm_ce": {"eta": 0.3}, "dm_bce": {"xi": 0.8, "t": 1.0}}
    assert set(expected) == set(LOSSES)
    for name, value in expected.items():
        torch.testing.assert_close(objective(name, **options.get(name, {}))(logits, batch), value)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("focal", {}, "unknown loss 'focal'; allowed: ce, mce, dm_ce, mbce, mbce_two, dm_bce"),
        ("dm_ce", {}, "missing eta"),
        ("mce", {"eta": 0.1}, "eta not used by mce"),
        ("dm_bce", {"xi": 0.8}, "missing t"),
    ],
)
def test_objective_names_what_is_wrong(name, options, message):
    with pytest.raises(ValueError, match=message):
        objective(name, **options)


def test_dm_bce_of_mixup_cutmix_takes_each_batchs_family_settings():
    """A.3: xi 1, t 0.5 for interpolation-based and xi 0.8, t 1 for cutting-based policies; a
    batch of mixup_cutmix is one or the other, and its loss follows the policy that mixed it."""
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(8, 5, generator=g, dtype=torch.float64)
    a, b = torch.arange(8) % 5, torch.arange(8).flip(0) % 5
    lam = torch.full((8,), 0.3, dtype=torch.float64)
    loss = objective("dm_bce", xi=0.8, t=1.0, interpolation_xi=1.0, interpolation_t=0.5)
    for policy, (xi, t) in (("mixup", (1.0, 0.5)), ("cutmix", (0.8, 1.0))):
        batch = MixedBatch(torch.empty(0), a, b, lam, torch.arange(8), policy=policy)
        torch.testing.assert_close(
            loss(logits, batch), losses.dm_bce(logits, a, b, lam, xi=xi, t=t)
        )
    # The two settings give different losses here, so picking per batch is not a no-op.
    assert not torch.allclose(
        losses.dm_bce(logits, a, b, lam, xi=1.0, t=0.5),
        losses.dm_bce(logits, a, b, lam, xi=0.8, t=1.0),
    )
    with pytest.raises(ValueError, match="together, or neither"):
        objective("dm_bce", xi=0.8, t=1.0, interpolation_xi=1.0)
    with pytest.raises(ValueError, match="apply to dm_bce, not 'mbce'"):
        objective("mbce", interpolation_xi=1.0, interpolation_t=0.5)


def test_mixup_cutmix_records_which_policy_mixed_each_batch():
    mixer = MethodMixer("mixup_cutmix", 1.0, switch_prob=0.5)
    model = SmallNet(num_classes=4)
    inputs, targets = torch.rand(6, 3, 16, 16), torch.arange(6) % 4
    generator, choices = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(20):
        _, batch = mixer(model, inputs, targets, generator, choices)
        seen.add(batch.policy)
        if batch.policy == "mixup":  # interpolated pixels lie strictly between the two images
            expected = torch.lerp(inputs[batch.perm], inputs, batch.lam[0])
            torch.testing.assert_close(batch.inputs, expected)
    assert seen == {"mixup", "cutmix"}


def test_label_smoothing_is_cross_entropy_against_the_smoothed_mixed_label():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64)
    a, b = torch.tensor([0, 1, 2, 3, 0, 1]), torch.tensor([1, 1, 3, 0, 2, 3])
    lam = torch.rand(6, generator=g, dtype=torch.float64)
    batch = MixedBatch(inputs=torch.empty(0), y_a=a, y_b=b, lam=lam, perm=torch.arange(6))
    eps = 0.1
    y_mix = torch.zeros(6, 4, dtype=torch.float64)
    y_mix[torch.arange(6), a] += lam
    y_mix[torch.arange(6), b] += 1 - lam
    target = (1 - eps) * y_mix + eps / 4
    expected = -(target * torch.log_softmax(logits, dim=1)).sum(1).mean()
    got = objective("mce", label_smoothing=eps)(logits, batch)
    torch.testing.assert_close(got, expected)
    # DM keeps its decoupled term as it is.
    decoupled = losses.dm_ce(logits, a, b, lam, eta=0.5) - losses.mce(logits, a, b, lam)
    got = objective("dm_ce", eta=0.5, label_smoothing=eps)(logits, batch)
    torch.testing.assert_close(got, expected + decoupled)
    with pytest.raises(ValueError, match="label smoothing applies to"):
        objective("mbce", label_smoothing=eps)
