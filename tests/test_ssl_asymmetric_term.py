"""The AS term of Sec. 3.2 in the pseudo-labelling algorithms ("FixMatch+Mixup", "FixMatch+DM").

The mixed batch and the per-pair losses are rebuilt here from the term's draws (partners and
lambdas) with ``log_softmax`` by hand; the decoupled part's gradient is read off the logits;
finite differences check the masked mean.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.losses import as_dm_ce
from trainers.ssl.asymmetric_term import AsymmetricTerm
from trainers.ssl.base import SemiSupervisedBatch
from trainers.ssl.fixmatch import FixMatch
from trainers.ssl.flexmatch import FlexMatch
from trainers.ssl.pseudo_label import PseudoLabel
from trainers.ssl.uda import UDA
from trainers.vocabulary import STATIC_POLICIES

torch.set_num_threads(1)
# The first assert_close imports its comparison machinery (about a second on a loaded machine):
# paid here, at collection, rather than inside whichever test happens to run first.
torch.testing.assert_close(torch.zeros(1), torch.zeros(1))

CLASSES = 4
SHAPE = (3, 4, 4)


class Recording(nn.Module):
    """A linear classifier of flattened images that keeps its last logits (gradient retained)."""

    def __init__(self, seed: int = 0, scale: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.linear = nn.Linear(math.prod(SHAPE), CLASSES).double()
        with torch.no_grad():
            self.linear.weight.mul_(scale)
        self.logits: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        logits = self.linear(x.flatten(1).double())
        if logits.requires_grad:
            logits.retain_grad()
        self.logits.append(logits)
        return logits


class TwoStage(nn.Module):
    """A network with a ManifoldMix hook: stage 0 mixes the input, stage 1 the hidden layer."""

    mix_stages = 2

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Linear(math.prod(SHAPE), 8).double()
        self.second = nn.Linear(8, CLASSES).double()

    def forward(self, x: Tensor, mix=None, mix_stage: int = 0) -> Tensor:
        h = x.flatten(1).double()
        if mix is not None and mix_stage == 0:
            h = mix(h)
        h = torch.relu(self.first(h))
        if mix is not None and mix_stage == 1:
            h = mix(h)
        return self.second(h)


def data(n: int = 4, m: int = 6, seed: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    labelled = torch.rand(n, *SHAPE, generator=g, dtype=torch.float64)
    targets = torch.randint(CLASSES, (n,), generator=g)
    unlabelled = torch.rand(m, *SHAPE, generator=g, dtype=torch.float64)
    return labelled, targets, unlabelled


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def by_hand(model: nn.Module, labelled, targets, unlabelled, pseudo, mask, outcome, eta=None):
    """The term's loss rebuilt from its partners and lambdas (Mixup): masked mean of MCE(+DM)."""
    lam = outcome.lam.double()
    u = unlabelled[outcome.partners]
    mixed = lam.view(-1, 1, 1, 1) * labelled + (1 - lam.view(-1, 1, 1, 1)) * u
    log_p = F.log_softmax(model(mixed), dim=1)
    v_b = pseudo[outcome.partners]
    rows = torch.arange(len(targets))
    per_pair = -(lam * log_p[rows, targets] + (1 - lam) * log_p[rows, v_b])
    if eta is not None:
        z = model(mixed)
        without_b = z.scatter(1, v_b[:, None], float("-inf"))
        decoupled = torch.logsumexp(without_b, 1) - z[rows, targets]
        per_pair = per_pair + eta * torch.where(targets != v_b, decoupled, 0.0)
    weight = mask[outcome.partners].double()
    return (per_pair * weight).sum() / weight.sum().clamp(min=1)


# --------------------------------------------------------------------------- as_dm_ce


def test_as_dm_ce_per_sample_form():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(5, CLASSES, generator=g, dtype=torch.float64)
    y_a = torch.tensor([0, 1, 2, 3, 0])
    v_b = torch.tensor([1, 1, 0, 2, 3])
    lam = torch.tensor([0.1, 0.3, 0.5, 0.2, 0.4], dtype=torch.float64)
    per_sample = as_dm_ce(logits, y_a, v_b, lam, eta=0.7, reduction="none")
    assert per_sample.shape == (5,)
    for n in range(5):
        single = as_dm_ce(
            logits[n : n + 1], y_a[n : n + 1], v_b[n : n + 1], lam[n : n + 1], eta=0.7
        )
        torch.testing.assert_close(per_sample[n], single)
    torch.testing.assert_close(per_sample.mean(), as_dm_ce(logits, y_a, v_b, lam, eta=0.7))
    with pytest.raises(ValueError, match="reduction"):
        as_dm_ce(logits, y_a, v_b, lam, eta=0.7, reduction="sum")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the term alone


@pytest.mark.parametrize("loss", ["mce", "dm_ce"])
def test_only_confident_partners_count(loss):
    labelled, targets, unlabelled = data()
    pseudo = torch.tensor([0, 1, 2, 3, 0, 1])
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    model = Recording()
    term = AsymmetricTerm(loss=loss, eta=0.5)
    outcome = term(model, labelled, targets, unlabelled, pseudo, mask, seeded())
    eta = 0.5 if loss == "dm_ce" else None
    expected = by_hand(model, labelled, targets, unlabelled, pseudo, mask, outcome, eta)
    torch.testing.assert_close(outcome.loss, expected)
    assert outcome.weight.tolist() == mask[outcome.partners].tolist()
    assert 0 < outcome.weight.sum() < len(targets)  # the seed draws both kinds of partner
    # The labels of unconfident partners do not matter.
    other = torch.where(mask > 0, pseudo, (pseudo + 1) % CLASSES)
    again = term(model, labelled, targets, unlabelled, other, mask, seeded())
    torch.testing.assert_close(again.loss, outcome.loss)


def test_no_confident_partner_gives_zero_and_zero_gradients():
    labelled, targets, unlabelled = data()
    model = Recording()
    outcome = AsymmetricTerm()(
        model,
        labelled,
        targets,
        unlabelled,
        torch.zeros(6, dtype=torch.long),
        torch.zeros(6),
        seeded(),
    )
    assert outcome.loss.item() == 0.0
    outcome.loss.backward()
    assert model.linear.weight.grad is not None
    assert model.linear.weight.grad.abs().sum().item() == 0.0


def test_partners_are_distinct_and_lambda_on_the_labelled_minor_side():
    labelled, targets, unlabelled = data(n=4, m=6)
    pseudo, mask = torch.zeros(6, dtype=torch.long), torch.ones(6)
    for seed in range(5):
        outcome = AsymmetricTerm(lambda_mode="sample")(
            Recording(), labelled, targets, unlabelled, pseudo, mask, seeded(seed)
        )
        assert len(set(outcome.partners.tolist())) == 4
        assert bool((outcome.lam <= 0.5).all())
    major = AsymmetricTerm(side="labelled_major")(
        Recording(), labelled, targets, unlabelled, pseudo, mask, seeded()
    )
    assert bool((major.lam >= 0.5).all())
    # Fewer unlabelled images than labelled ones: partners drawn with replacement.
    small = AsymmetricTerm()(
        Recording(), labelled, targets, unlabelled[:2], pseudo[:2], mask[:2], seeded()
    )
    assert small.partners.shape == (4,) and bool((small.partners < 2).all())


def test_the_decoupled_part_touches_only_the_labelled_class():
    labelled, targets, unlabelled = data()
    targets = torch.tensor([0, 1, 0, 1])
    pseudo = torch.tensor([2, 3, 2, 3, 2, 3])  # never a labelled image's class
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    grads: list[Tensor] = []
    for eta in (1.0, 0.0):
        model = Recording()
        AsymmetricTerm(eta=eta)(
            model, labelled, targets, unlabelled, pseudo, mask, seeded()
        ).loss.backward()
        grad = model.logits[0].grad
        assert grad is not None
        grads.append(grad)
    outcome = AsymmetricTerm()(Recording(), labelled, targets, unlabelled, pseudo, mask, seeded())
    assert bool((outcome.lam > 1e-3).all())
    decoupled = grads[0] - grads[1]  # the gradient of the decoupled part alone
    rows = torch.arange(4)
    v_b = pseudo[outcome.partners]
    confident = mask[outcome.partners] > 0
    assert 0 < int(confident.sum()) < 4  # both kinds of partner drawn
    # The pseudo-labelled class is left out of phi: its logit gets no push from the term...
    assert decoupled[rows, v_b].abs().max().item() < 1e-12
    # ...the labelled class is raised, every other class lowered, confident pairs only.
    assert bool((decoupled[rows, targets][confident] < 0).all())
    others = torch.ones_like(decoupled, dtype=torch.bool)
    others[rows, targets] = False
    others[rows, v_b] = False
    assert bool((decoupled[others].view(4, -1)[confident] > 0).all())
    assert decoupled[~confident].abs().max().item() == 0.0


@pytest.mark.parametrize("loss", ["mce", "dm_ce"])
def test_finite_at_large_logits(loss):
    labelled, targets, unlabelled = data()
    model = Recording(scale=1e5)  # logits of order 1e4 and more
    pseudo, mask = torch.tensor([1, 2, 3, 0, 1, 2]), torch.ones(6)
    outcome = AsymmetricTerm(loss=loss, eta=1.0)(
        model, labelled, targets, unlabelled, pseudo, mask, seeded()
    )
    assert model.logits[0].abs().max().item() > 1e3
    assert math.isfinite(outcome.loss.item())
    outcome.loss.backward()
    assert model.linear.weight.grad is not None
    assert bool(torch.isfinite(model.linear.weight.grad).all())


class Fixed(nn.Module):
    """``x @ w.T`` for a weight that is an input of the checked function."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.weight.T


@pytest.mark.parametrize("loss", ["mce", "dm_ce"])
def test_gradient_matches_finite_differences(loss):
    labelled, targets, unlabelled = data()
    pseudo = torch.tensor([1, 2, 3, 0, 1, 2])
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    g = torch.Generator().manual_seed(5)
    weight = torch.randn(CLASSES, math.prod(SHAPE), generator=g, dtype=torch.float64)
    term = AsymmetricTerm(loss=loss, eta=0.8)

    def loss_of(w: Tensor) -> Tensor:
        return term(Fixed(w), labelled, targets, unlabelled, pseudo, mask, seeded()).loss

    assert torch.autograd.gradcheck(loss_of, (weight.requires_grad_(),))


@pytest.mark.parametrize("policy", STATIC_POLICIES)
def test_every_static_policy(policy):
    labelled, targets, unlabelled = data()
    model = TwoStage() if policy == "manifoldmix" else Recording()
    term = AsymmetricTerm(policy=policy, saliency_detector="spectral_residual")
    outcome = term(
        model, labelled, targets, unlabelled, torch.arange(6) % CLASSES, torch.ones(6), seeded()
    )
    assert math.isfinite(outcome.loss.item()) and outcome.loss.item() > 0
    assert bool((outcome.lam <= 0.5).all()) and outcome.lam.shape == (4,)
    outcome.loss.backward()


def test_settings_are_checked():
    with pytest.raises(ValueError, match="static policy"):
        AsymmetricTerm(policy="puzzlemix")
    with pytest.raises(ValueError, match="loss"):
        AsymmetricTerm(loss="bce")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eta"):
        AsymmetricTerm(eta=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        AsymmetricTerm(alpha=0.0)
    with pytest.raises(ValueError, match="side"):
        AsymmetricTerm(side="both")  # type: ignore[arg-type]
    term = AsymmetricTerm()
    assert (term.policy, term.alpha, term.loss, term.eta, term.side) == (
        "mixup",
        1.0,
        "dm_ce",
        0.1,
        "labelled_minor",
    )


# --------------------------------------------------------------------------- in the hosts


def ssl_batch(views: int) -> SemiSupervisedBatch:
    labelled, targets, unlabelled = data(n=4, m=8)
    g = torch.Generator().manual_seed(9)
    strong = torch.rand(8, *SHAPE, generator=g, dtype=torch.float64)
    return SemiSupervisedBatch(
        labelled, targets, (unlabelled, strong)[:views], torch.arange(8), step=50, total_steps=100
    )


def test_fixmatch_dm_with_eta_zero_is_fixmatch_plus_mce():
    b = ssl_batch(2)
    steps, grads = [], []
    for term in (AsymmetricTerm(loss="dm_ce", eta=0.0), AsymmetricTerm(loss="mce")):
        model = Recording()
        step = FixMatch(threshold=0.38, asymmetric=term)(model, b, seeded(4))
        step.loss.backward()
        steps.append(step)
        grads.append(model.linear.weight.grad)
    torch.testing.assert_close(steps[0].loss, steps[1].loss)
    torch.testing.assert_close(grads[0], grads[1])
    # And that loss is FixMatch's plus the MCE term on the AS-mixed samples, same draws.
    model = Recording()
    plain = FixMatch(threshold=0.38)(model, b, seeded(4))
    assert 0 < plain.mask.sum() < 8  # some partners confident, some not
    extra = AsymmetricTerm(loss="mce")(
        model, b.labelled, b.targets, b.unlabelled[0], plain.pseudo_labels, plain.mask, seeded(4)
    )
    torch.testing.assert_close(steps[1].loss, plain.loss + extra.loss)
    torch.testing.assert_close(steps[1].unsupervised, (plain.unsupervised + extra.loss).detach())
    # With eta > 0 the decoupled term changes it.
    dm = FixMatch(threshold=0.38, asymmetric=AsymmetricTerm(eta=1.0))(Recording(), b, seeded(4))
    assert abs(dm.loss.item() - steps[0].loss.item()) > 1e-6


@pytest.mark.parametrize(
    "make",
    [
        lambda term: FlexMatch(8, asymmetric=term),
        lambda term: UDA(threshold=0.38, asymmetric=term),
        lambda term: PseudoLabel(threshold=0.38, asymmetric=term),
    ],
    ids=["flexmatch", "uda", "pseudo_label"],
)
def test_every_host_adds_the_term_with_weight_one(make):
    plain_algorithm = make(None)
    b = ssl_batch(len(plain_algorithm.views))
    model = Recording()
    plain = plain_algorithm(model, b, seeded(2))
    extra = AsymmetricTerm()(
        model, b.labelled, b.targets, b.unlabelled[0], plain.pseudo_labels, plain.mask, seeded(2)
    )
    with_term = make(AsymmetricTerm())(model, b, seeded(2))
    torch.testing.assert_close(with_term.loss, plain.loss + extra.loss)
