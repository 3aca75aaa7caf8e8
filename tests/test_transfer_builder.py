"""The transfer builder (trainers/transfer/algorithms.py): each cell of Table 6 / 9 to its
algorithm and settings; Fine-Tuning and Co-Tuning with the AS term on their own pseudo-labels."""

from __future__ import annotations

import pytest
import torch

from tests.support.transfer import SOURCE_CLASSES, TARGET_CLASSES, transfer_trial, write_weights
from trainers.backbones import SmallNet
from trainers.ssl.algorithms import build_algorithm, unlabelled_views
from trainers.ssl.asymmetric_term import AsymmetricTerm
from trainers.ssl.base import SemiSupervisedBatch
from trainers.transfer.bss import FineTuning
from trainers.transfer.co_tuning import CoTuning
from trainers.transfer.self_tuning import SelfTuning


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return write_weights(tmp_path_factory.mktemp("weights"))


def build(config):
    model = SmallNet(TARGET_CLASSES)
    return build_algorithm(config, model, TARGET_CLASSES, 120)


def test_the_algorithms_alone(weights):
    fine = build(transfer_trial(weights, "fine_tuning"))
    assert isinstance(fine, FineTuning)
    assert (fine.bss_weight, fine.asymmetric, fine.views) == (0.0, None, ())
    bss = build(transfer_trial(weights, "bss"))
    assert isinstance(bss, FineTuning)
    assert (bss.bss_weight, bss.asymmetric, bss.views) == (0.001, None, ())
    co = build(transfer_trial(weights, "co_tuning"))
    assert isinstance(co, CoTuning)
    assert (co.source_head.out_features, co.asymmetric, co.views) == (SOURCE_CLASSES, None, ())
    # The relationship starts uniform; the loop learns it before the first step.
    assert torch.allclose(co.relationship, torch.full((3, 7), 1 / 7))
    # The source head is the file's classifier.
    state = torch.load(weights)
    assert torch.equal(co.source_head.weight, state["head.weight"])
    selftuning = build(transfer_trial(weights, "self_tuning"))
    assert isinstance(selftuning, SelfTuning)
    assert (selftuning.asymmetric, selftuning.labelled_mixup) == (None, "none")
    assert selftuning.views == ("weak", "weak")
    views = [
        unlabelled_views(transfer_trial(weights, name))
        for name in ("fine_tuning", "bss", "co_tuning", "self_tuning")
    ]
    assert views == [0, 0, 0, 2]


@pytest.mark.parametrize("name", ["fine_tuning", "bss", "co_tuning"])
def test_as_rows_of_the_hosts_without_unlabelled_images(weights, name):
    config = transfer_trial(
        weights,
        name,
        {"method": "cutmix", "alpha": 0.5},
        {"name": "dm_ce", "eta": 0.3},
        semi_supervised={"steps": 6, "eval_every": 2, "as_side": "labelled_major"},
    )
    algorithm = build(config)
    term = algorithm.asymmetric
    assert isinstance(term, AsymmetricTerm)
    assert (term.policy, term.alpha, term.loss, term.eta, term.side) == (
        "cutmix",
        0.5,
        "dm_ce",
        0.3,
        "labelled_major",
    )
    assert algorithm.threshold == 0.95  # FixMatch's, where no threshold is given
    assert algorithm.views == ("weak",)
    assert unlabelled_views(config) == 1
    assert config.unlabelled_ratio() == 1


def test_as_defaults_and_a_given_threshold(weights):
    config = transfer_trial(
        weights,
        "co_tuning",
        {"method": "resizemix"},
        {"name": "mce"},
        transfer={"as_threshold": 0.5},
    )
    algorithm = build(config)
    assert algorithm.threshold == 0.5
    term = algorithm.asymmetric
    assert (term.policy, term.alpha, term.loss, term.eta, term.side) == (
        "resizemix",
        1.0,  # AS_DEFAULT_ALPHA: resizemix takes none
        "mce",
        0.1,  # AS_DEFAULT_ETA
        "labelled_minor",
    )


def test_self_tuning_rows(weights):
    # Table 9's "+MCE": labelled images mixed among themselves, no AS term.
    off = build(
        transfer_trial(
            weights,
            "self_tuning",
            {"method": "cutmix", "alpha": 0.2},
            {"name": "mce"},
            semi_supervised={"steps": 6, "eval_every": 2, "as_side": "none"},
        )
    )
    assert off.asymmetric is None
    assert (off.labelled_mixup, off.mixup_policy, off.mixup_alpha) == ("mce", "cutmix", 0.2)
    # Table 6's "Self-Tuning+DM": the AS term at Self-Tuning's threshold 0.
    as_row = build(
        transfer_trial(
            weights, "self_tuning", {"method": "mixup", "alpha": 1.0}, {"name": "dm_ce", "eta": 0.1}
        )
    )
    assert isinstance(as_row.asymmetric, AsymmetricTerm)
    assert (as_row.threshold, as_row.labelled_mixup, as_row.asymmetric.loss) == (
        0.0,
        "none",
        "dm_ce",
    )
    # Table 9's "+MCE+AS": both.
    both = build(
        transfer_trial(
            weights,
            "self_tuning",
            {"method": "mixup", "alpha": 1.0},
            {"name": "mce"},
            transfer={"labelled_mixup": "mce", "as_threshold": 0.7},
        )
    )
    assert (both.labelled_mixup, both.asymmetric.loss, both.threshold) == ("mce", "mce", 0.7)


# --- the AS term on the host's own pseudo-labels ---------------------------------------------


def _batch(seed: int = 0) -> SemiSupervisedBatch:
    generator = torch.Generator().manual_seed(seed)
    return SemiSupervisedBatch(
        labelled=torch.randn(6, 3, 16, 16, generator=generator),
        targets=torch.randint(TARGET_CLASSES, (6,), generator=generator),
        unlabelled=(torch.randn(8, 3, 16, 16, generator=generator),),
        unlabelled_index=torch.arange(8),
        step=0,
        total_steps=1,
    )


def _hosts(term: AsymmetricTerm | None, threshold: float):
    head = torch.nn.Linear(64, SOURCE_CLASSES)
    relationship = torch.softmax(torch.randn(TARGET_CLASSES, SOURCE_CLASSES), 1)
    return {
        "fine_tuning": FineTuning(bss_weight=0.0, asymmetric=term, threshold=threshold),
        "bss": FineTuning(asymmetric=term, threshold=threshold),
        "co_tuning": CoTuning(head, relationship, asymmetric=term, threshold=threshold),
    }


def _step(algorithm, batch, seed: int = 3):
    torch.manual_seed(0)
    model = SmallNet(TARGET_CLASSES)
    return algorithm(model, batch, torch.Generator().manual_seed(seed)), model


@pytest.mark.parametrize("name", ["fine_tuning", "bss", "co_tuning"])
def test_a_threshold_nobody_reaches_leaves_the_host_alone(name):
    torch.manual_seed(1)
    alone = _hosts(None, 0.95)[name]
    torch.manual_seed(1)
    with_term = _hosts(AsymmetricTerm(policy="mixup", loss="mce"), 1.0)[name]
    with_term.load_state_dict(alone.state_dict())
    batch = _batch()
    plain, _ = _step(alone, batch)
    masked, _ = _step(with_term, batch)
    assert masked.mask.tolist() == [0.0] * 8  # no softmax of 3 classes reaches 1
    assert masked.pseudo_labels.shape == (8,)
    assert torch.equal(masked.loss, plain.loss)


@pytest.mark.parametrize("name", ["fine_tuning", "co_tuning"])
def test_the_mask_is_the_models_own_confidence_on_the_weak_view(name):
    batch = _batch()
    torch.manual_seed(0)
    with torch.no_grad():
        confidence = torch.softmax(SmallNet(TARGET_CLASSES)(batch.unlabelled[0]), 1).max(1)
    threshold = float(confidence.values.median())
    host = _hosts(AsymmetricTerm(policy="mixup", loss="mce"), threshold)[name]
    out, _ = _step(host, batch)
    assert torch.equal(out.mask, (confidence.values >= threshold).float())
    assert torch.equal(out.pseudo_labels, confidence.indices)
    assert 0 < out.mask.sum() < 8


@pytest.mark.parametrize("name", ["fine_tuning", "co_tuning"])
def test_the_term_adds_its_loss_and_dm_at_eta_0_is_mce(name):
    batch = _batch()
    torch.manual_seed(1)
    plain, _ = _step(_hosts(None, 0.0)[name], batch)
    terms = {
        "mce": AsymmetricTerm(policy="mixup", loss="mce"),
        "dm0": AsymmetricTerm(policy="mixup", loss="dm_ce", eta=0.0),
        "dm1": AsymmetricTerm(policy="mixup", loss="dm_ce", eta=1.0),
    }
    losses = {}
    for key, term in terms.items():
        torch.manual_seed(1)  # the same Co-Tuning head and relationship
        out, model = _step(_hosts(term, 0.0)[name], batch)
        assert out.mask.tolist() == [1.0] * 8  # threshold 0: every pseudo-label counts
        losses[key] = out.loss
        # What the term adds: its loss on the model's argmax labels, drawn with the same seed.
        # (The host's supervised forward comes first; the term's draws come from the generator.)
        expected = term(
            model,
            batch.labelled,
            batch.targets,
            batch.unlabelled[0],
            out.pseudo_labels,
            out.mask,
            torch.Generator().manual_seed(3),
        ).loss
        assert out.loss.item() == pytest.approx(plain.loss.item() + expected.item(), rel=1e-5)
    assert losses["dm0"].item() == pytest.approx(losses["mce"].item(), rel=1e-6)
    assert losses["dm1"] > losses["mce"]


def test_the_plan_counts_each_transfer_cells_views():
    # Imported here: the planner brings the spec machinery, which the other tests never need.
    from service.plan.planner import workloads
    from service.spec.reading import spec_from_dict

    raw = {
        "name": "tl",
        "grid": {
            "dataset": ["cub200"],
            "labels": {"cub200": [0.15]},
            "backbone": ["resnet50"],
            "algorithm": ["fine_tuning", "self_tuning"],
            "method": ["vanilla", "mixup"],
            "loss": ["ce", "dm_ce"],
        },
        "recipe": "transfer",
        "backbones": {"resnet50": {"weights": "/nowhere/resnet50.pth"}},
        "semi_supervised": {"steps": 27_000, "eval_every": 1000},
        "exclude": [{"method": "vanilla", "loss": "dm_ce"}, {"method": "mixup", "loss": "ce"}],
    }
    by_cell = {w.cell: w.images_per_epoch for w in workloads(spec_from_dict(raw))}
    # 1000 steps of 24 labelled images, plus 24 unlabelled ones per view: none for Fine-Tuning
    # alone, one weak view with its AS term, Self-Tuning's two always.
    assert by_cell == {
        "cub200@0.15/resnet50/fine_tuning/vanilla/ce": 1000 * 24,
        "cub200@0.15/resnet50/fine_tuning/mixup/dm_ce": 1000 * 24 * 2,
        "cub200@0.15/resnet50/self_tuning/vanilla/ce": 1000 * 24 * 3,
        "cub200@0.15/resnet50/self_tuning/mixup/dm_ce": 1000 * 24 * 3,
    }
