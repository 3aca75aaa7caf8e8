"""Self-Tuning (Wang et al., ICML 2021): Table 6's "Self-Tuning" rows and Table 9's ablation.

Self-Tuning ("Self-Tuning for Data-Efficient Deep Learning", Sec. 4; the authors' code,
github.com/thuml/Self-Tuning, ``models/method.py`` and ``src/main.py``) fine-tunes a pre-trained
network on labelled and unlabelled target data in one stage. Each step:

1. *Queries*: the model runs on the labelled batch and on the unlabelled query view; its
   classifier's input (the penultimate features, :mod:`trainers.ssl.features`) goes through a
   projector head and is L2-normalised. The labelled logits give the cross-entropy; the
   unlabelled logits give the pseudo-labels, ``argmax softmax`` with no threshold
   (``src/main.py``: ``torch.max(prob_unlabeled, dim=-1)``).
2. *Keys*: a momentum (key) encoder, an EMA copy of the model and the projector
   (``_momentum_update_key_encoder``, m = 0.999), encodes the key views without gradient.
3. *Pseudo-group contrast* (PGC, Sec. 4.2, :func:`pgc_loss`): each query is contrasted against
   its own key and a queue of ``K`` keys per class (:class:`ClassQueues`): positives are its key
   and the ``K`` keys queued under its (pseudo-)class, negatives the other classes' keys,
   temperature 0.07. Labelled queries use their labels, unlabelled ones their pseudo-labels, and
   both kinds of keys enter the same queues ("a shared key queue", the paper's answer to model
   shift): the labelled batch is contrasted against the queues as they were at the start of the
   step, then its keys are queued, then the unlabelled batch is contrasted and queued (the
   order of ``src/main.py``).
4. ``loss = CE(labelled) + w (PGC(labelled) + PGC(unlabelled))`` with ``w = 1``
   (``total_loss = classifier_loss + PGC_loss_labeled + PGC_loss_unlabeled``).

Numbers (``src/main.py`` and ``run.sh``, every CUB-200 / Cars / Aircraft command): queue size 32
per class, projector dimension 1024, temperature 0.07, momentum 0.999. The DM authors'
re-implementation (OpenMixup, ``configs/semisup/selftuning/*/r{18,50}/*.py``) uses the same four.

Departures and choices, each for a reason:

* *Views.* Both codebases give every image two views from one pipeline: Self-Tuning's
  ``TransformTrain`` (RandomResizedCrop, flip, RandAugment(2, 10)) and OpenMixup's configs named
  ``*_no_randaug`` (RandomResizedCrop and flip only). The loop gives the labelled images one
  view, the weak one, and the unlabelled images the views of :attr:`SelfTuning.views`. The
  default is ``("weak", "weak")`` for the unlabelled query and key: the query is then augmented
  like the labelled batch it shares the queues with (as in both codebases, where labelled and
  unlabelled images share one pipeline), it matches the DM authors' runs without RandAugment,
  and the pseudo-labels and the AS term's partners come from a weak view as in FixMatch.
  ``view="strong"`` takes RandAugment views instead, closer to Self-Tuning's own code.
* *The labelled key.* With one labelled view, the key encoder encodes the same labelled images
  the query encoder sees (Self-Tuning draws a second view). The key then differs from the query
  only by the encoders, so the "own key" positive of a labelled query is nearly trivial; the
  ``K`` positives of its class, where the label's signal lies, are unaffected. A loop that gives
  a second labelled view would remove this departure.
* *One momentum update per step.* Self-Tuning updates the key encoder before each of its two
  key forwards (labelled, then unlabelled) with no optimiser step in between: one update with
  momentum ``m ** 2`` (0.998001), which is what is done here, once per step.
* *One query forward of the unlabelled view.* Self-Tuning runs its query encoder on the
  unlabelled view twice (once for the pseudo-labels, once for PGC) with the same weights; here
  one forward gives both, so batch norm's running statistics see that batch once.
* *The PGC loss's value.* The code computes ``KLDiv(log_softmax(logits / T), uniform over the
  K + 1 positives)``, the cross-entropy of :func:`pgc_loss` (the paper's Eq.) minus the
  constant ``log(K + 1)``: the same gradients; the value here is the paper's.
* *Projector.* Self-Tuning's projector is one linear layer (``models/resnet.py``: the ResNet's
  ``fc`` with ``projector_dim`` outputs, on the pooled features the classifier also reads);
  OpenMixup uses MoCo v2's two-layer MLP (``MoCoV2Neck``, hidden size the feature size):
  ``projector_hidden`` gives that variant. The projector's parameters are this module's, so
  the loop's optimiser trains them at the base lr, as Self-Tuning does (its ``fc`` is in
  ``model.parameters()``, the group at ``lr``).

Not this module's business (the transfer loop's): Self-Tuning trains the classifier at 10 times
the base lr (``--lr_ratio 10``; OpenMixup ``lr_mult=10`` on ``head_cls``), initialises it
``N(0, 0.01)`` with zero bias (``models/classifier.py``), uses SGD with lr 0.001, momentum 0.9,
Nesterov, weight decay 1e-4 (the DM paper, Sec. 4.3: 5e-4), 27k steps, MultiStepLR at 6k, 12k,
18k, 24k (x0.1), 24 labelled and 24 unlabelled images per step (``run.sh``).

The mixing rows (DM paper Sec. 4.3, Table 6; Sec. 4.5, Table 9), after the DM authors'
``DMixTuning`` (OpenMixup ``openmixup/models/semisup/dmix_tuning.py``), which adds to
Self-Tuning two optional mixup terms with weight 1: ``mix_loss_ll``, mixup *among labelled
samples* (a batch mixed with its own permutation, labels ``(y_a, y_b, lam)``), and
``mix_loss_lu``, labelled images mixed with unlabelled ones labelled by their pseudo-labels,
its ``lam`` folded to the labelled or the unlabelled side (``lam_bias``):

* ``asymmetric``: the AS term (:class:`~trainers.ssl.asymmetric_term.AsymmetricTerm`), its
  ``mix_loss_lu``: Table 6's "Self-Tuning+Mixup" is ``loss="mce"``, "Self-Tuning+DM"
  ``loss="dm_ce"``; Table 9's AS(lambda >= 0.5) is ``side="labelled_major"``. Its partners are
  the unlabelled query views, labelled with Self-Tuning's pseudo-labels, masked where the
  confidence is below ``threshold``. Self-Tuning has no threshold and DMixTuning mixes every
  pseudo-label: ``threshold = 0`` (the mask is all ones) is the default; FixMatch's 0.95 is a
  setting away.
* ``labelled_mixup``: ``mix_loss_ll``, Table 9's "+MCE". Its rows read as cumulative additions
  to Self-Tuning: "+MCE" adds MCE and no AS, and since AS is the only term that mixes in
  unlabelled images, the MCE of "+MCE" must come from mixing labelled samples among themselves,
  DMixTuning's ``mix_loss_ll`` (which that class keeps on, weight 1, with the ``mix_loss_lu``
  of the AS rows). So "+MCE" is ``labelled_mixup="mce"``, and the "+MCE+AS(...)" rows add
  ``asymmetric`` with ``loss="mce"`` and either side; "+DM(CE)+AS(lambda <= 0.5)" is read as
  ``labelled_mixup="mce"`` plus ``asymmetric`` with ``loss="dm_ce"`` (DM decouples the hard
  labelled-unlabelled samples, Sec. 3.2); ``labelled_mixup="dm_ce"`` is there for the other
  reading. Table 6's rows say "+Mixup" and "+DM" only: AS alone, ``labelled_mixup="none"``.
  The labelled mixing uses ``mixup_policy`` (any static policy, by
  :class:`~trainers.mixing.methods.MethodMixer`), ``mixup_alpha`` and ``mixup_eta``; Beta(1, 1)
  is DMixTuning's ``alpha=1.0`` and 0.1 the paper's eta for static policies (Sec. 4.5).
  DMixTuning also ramps ``weight_mix_lu`` from 0 to 1 by a cosine hook; the DM paper says
  nothing of it, and the weights here are constant.

The labelled CE, the labelled PGC and the labelled mixup are the step's ``supervised`` part;
the unlabelled PGC and the AS term its ``unsupervised`` part. The step's ``mask`` is the AS
term's confidence mask; at the default threshold 0 it is all ones, which is also how much each
unlabelled image takes part in PGC (every pseudo-label counts there, whatever the threshold).
"""

from __future__ import annotations

import copy
from typing import Literal, get_args

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.losses import dm_ce, mce
from trainers.mixing.methods import MethodMixer
from trainers.ssl.asymmetric_term import AsymmetricTerm, pseudo_labelling_step
from trainers.ssl.base import SemiSupervisedAlgorithm, SemiSupervisedBatch, SemiSupervisedStep, View
from trainers.ssl.checks import check_count, check_positive, check_unit, check_weight
from trainers.ssl.features import feature_dim, penultimate_features, unwrapped
from trainers.ssl.pseudo_labels import compute_probs, confident_pseudo_labels, cross_entropy
from trainers.vocabulary import STATIC_POLICIES

__all__ = [
    "LABELLED_MIXUPS",
    "ClassQueues",
    "KeyEncoder",
    "LabelledMixup",
    "SelfTuning",
    "pgc_loss",
]

LabelledMixup = Literal["none", "mce", "dm_ce"]
LABELLED_MIXUPS: tuple[str, ...] = get_args(LabelledMixup)


def pgc_loss(
    query: Tensor, key: Tensor, labels: Tensor, queue: Tensor, temperature: float
) -> Tensor:
    """Self-Tuning's pseudo-group contrast loss of each query, shape (N,).

    ``query``, ``key``: (N, D) L2-normalised projections of the query and key views of the same
    images; ``labels``: (N,) their classes or pseudo-classes; ``queue``: (C, K, D) ``K`` keys per
    class; ``temperature``: ``tau``. For query ``q`` of class ``y``, its key ``k_0`` and the
    queue ``Q`` (Self-Tuning, Sec. 4.2, the PGC loss)::

        L(q) = -1/(K+1) sum_{k+ in P} log( exp(q.k+ / tau) / Z ),
        P    = {k_0} U {Q[y, 1], ..., Q[y, K]},
        Z    = exp(q.k_0 / tau) + sum_{c=1..C} sum_{j=1..K} exp(q.Q[c, j] / tau),

    the ``K + 1`` positives (its own key and the keys queued under its class) each against all
    ``1 + C K`` logits, the other classes' ``(C - 1) K`` keys being the negatives. The authors'
    code (``models/method.py``) takes ``KLDiv`` against the uniform distribution on the
    positives, which is this minus ``log(K + 1)``. Computed in at least float32 with
    ``logsumexp``, so large similarities over a small ``tau`` stay finite.
    """
    if query.dim() != 2 or key.shape != query.shape:
        raise ValueError(
            f"query and key must be (N, D) of one shape; got {tuple(query.shape)}, "
            f"{tuple(key.shape)}"
        )
    if queue.dim() != 3 or queue.shape[2] != query.shape[1]:
        raise ValueError(f"queue must be (C, K, {query.shape[1]}); got {tuple(queue.shape)}")
    if labels.shape != query.shape[:1]:
        raise ValueError(f"labels must be ({query.shape[0]},); got {tuple(labels.shape)}")
    check_positive("temperature", temperature)
    dtype = torch.promote_types(query.dtype, torch.float32)
    q, k = query.to(dtype), key.to(dtype)
    own = (q * k).sum(dim=1) / temperature  # (N,)
    queued = torch.einsum("nd,ckd->nck", q, queue.to(dtype)) / temperature  # (N, C, K)
    log_z = torch.logsumexp(torch.cat([own[:, None], queued.flatten(1)], dim=1), dim=1)
    same_class = queued.gather(1, labels.long().view(-1, 1, 1).expand(-1, 1, queue.shape[1]))
    positives = own + same_class.squeeze(1).sum(dim=1)
    return log_z - positives / (queue.shape[1] + 1)


class ClassQueues(nn.Module):
    """A FIFO queue of ``size`` keys per class, its state in buffers (checkpoints carry it).

    ``entries`` (C, K, D): class ``c``'s queue is ``entries[c]``, ``pointer[c]`` its next slot
    to overwrite (Self-Tuning's ``queue_list`` of shape (D, K C) and ``queue_ptr``, as one
    tensor per class rather than one flat matrix). The entries start as random unit vectors
    (``torch.randn`` then ``normalize``, as ``models/method.py``).
    """

    entries: Tensor
    pointer: Tensor

    def __init__(
        self,
        num_classes: int,
        size: int,
        dim: int,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        check_count("num_classes", num_classes)
        check_count("queue size", size)
        check_count("dim", dim)
        start = F.normalize(torch.randn(num_classes, size, dim, generator=generator), dim=2)
        self.register_buffer("entries", start)
        self.register_buffer("pointer", torch.zeros(num_classes, dtype=torch.long))

    def extra_repr(self) -> str:
        """The shape, in ``print(algorithm)``."""
        classes, size, dim = self.entries.shape
        return f"num_classes={classes}, size={size}, dim={dim}"

    @property
    def num_classes(self) -> int:
        """C."""
        return self.entries.shape[0]

    @property
    def size(self) -> int:
        """K, the keys kept per class."""
        return self.entries.shape[1]

    @torch.no_grad()
    def enqueue(self, keys: Tensor, labels: Tensor) -> None:
        """Queue ``keys`` (N, D) under ``labels`` (N,), in batch order, oldest keys out.

        The same as queuing one key after the other (``_dequeue_and_enqueue`` per sample in
        ``models/method.py``): key ``i`` goes to its class's slot ``pointer + r`` (mod K), ``r``
        the keys of that class before it in the batch; where a batch holds more than ``K`` keys
        of a class, the later ones win. Without a read back to the host: each slot takes the
        last key that lands in it (a ``scatter_reduce`` of the keys' positions).

        The entries are replaced, not written in place, so a loss computed from the previous
        entries keeps them for its backward.
        """
        n = keys.shape[0]
        if keys.dim() != 2 or keys.shape[1] != self.entries.shape[2] or labels.shape != (n,):
            raise ValueError(
                f"keys must be (N, {self.entries.shape[2]}) with labels (N,); got "
                f"{tuple(keys.shape)}, {tuple(labels.shape)}"
            )
        labels = labels.long()
        one_hot = F.one_hot(labels, self.num_classes)
        before = (one_hot.cumsum(0) - one_hot).gather(1, labels[:, None]).squeeze(1)
        slots = labels * self.size + (self.pointer[labels] + before) % self.size
        positions = torch.arange(n, device=keys.device)
        last = torch.full((self.num_classes * self.size,), -1, device=keys.device)
        last = last.scatter_reduce(0, slots, positions, reduce="amax")
        flat = self.entries.flatten(0, 1)
        written = keys.detach().to(flat.dtype)[last.clamp(min=0)]
        self.entries = torch.where((last >= 0)[:, None], written, flat).view_as(self.entries)
        self.pointer.add_(one_hot.sum(0)).remainder_(self.size)


class KeyEncoder(nn.Module):
    """The momentum (key) encoder: EMA copies of the model and the projector, no gradient.

    Built from the model given to :class:`SelfTuning`'s constructor (not lazily at the first
    forward), so a checkpoint written before the first step loads into a new instance and the
    copy starts from the model's initial (pre-trained) weights, as Self-Tuning copies
    ``encoder_q`` into ``encoder_k`` after loading them. ``update`` sets
    ``p_k <- m p_k + (1 - m) p_q`` for every parameter (``_momentum_update_key_encoder``);
    buffers (batch-norm statistics) are not averaged: the copy runs in training mode, on its own
    batch statistics, as ``encoder_k`` does.
    """

    def __init__(self, model: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.network = copy.deepcopy(unwrapped(model))
        self.projector = copy.deepcopy(projector)
        self.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, projector: nn.Module, momentum: float) -> None:
        """Move the copies toward ``model`` and ``projector`` by EMA with ``momentum``."""
        for copied, live in ((self.network, unwrapped(model)), (self.projector, projector)):
            ema = dict(copied.named_parameters())
            for name, p in live.named_parameters():
                if name not in ema:
                    raise ValueError(f"the key encoder has no parameter {name!r}: another model?")
                ema[name].mul_(momentum).add_(p.detach().to(ema[name].dtype), alpha=1 - momentum)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """L2-normalised projections of ``images`` (N, D), without gradient."""
        with penultimate_features(self.network) as captured:
            self.network(images)
        return F.normalize(self.projector(captured.get()).float(), dim=1)


def _all_ranks(tensor: Tensor) -> Tensor:
    """``tensor`` of every rank, concatenated in rank order (MoCo's ``concat_all_gather``).

    Under ``torch.distributed`` every rank queues every rank's keys, so the queues stay the same
    on all ranks; alone, the tensor itself.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class SelfTuning(SemiSupervisedAlgorithm):
    """Self-Tuning: CE, and pseudo-group contrast over class queues (see the module docstring).

    Args:
        model: the network to train, with its initial (pre-trained) weights: the key encoder
            is copied from it, and the projector's input size is its classifier's.
        num_classes: classes of the target task (the queues).
        queue_size: keys kept per class, K.
        projector_dim: size of the projections.
        projector_hidden: None for Self-Tuning's linear projector; a size for a MoCo v2 MLP
            (OpenMixup's ``MoCoV2Neck``: linear, ReLU, linear).
        temperature: PGC's tau.
        momentum: the key encoder's EMA momentum per key forward (updated once a step with
            ``momentum ** 2``, module docstring).
        pgc_weight: weight of each PGC term.
        view: the loop's view for the unlabelled query and key ("weak" or "strong").
        threshold: the AS term's confidence mask on the pseudo-labels (0: every one).
        labelled_mixup: "none", or Table 9's "+MCE" term, mixing among labelled samples with
            "mce" or "dm_ce".
        mixup_policy, mixup_alpha, mixup_eta: that term's static policy, Beta parameter and
            weight of the decoupled part.
        asymmetric: the AS term (Table 6's "+Mixup" / "+DM", Table 9's "+AS" rows), or None.
        generator: draws the queues' random initial keys (None: the global RNG).

    """

    # Self-Tuning src/main.py (--queue_size 32, --projector_dim 1024 in run.sh; --momentum
    # 0.999) and models/method.py (temp 0.07); OpenMixup's Self-Tuning configs set the same.
    QUEUE_SIZE = 32
    PROJECTOR_DIM = 1024
    TEMPERATURE = 0.07
    MOMENTUM = 0.999
    # src/main.py: total_loss = classifier_loss + PGC_loss_labeled + PGC_loss_unlabeled.
    PGC_WEIGHT = 1.0
    # Self-Tuning has no threshold; DMixTuning mixes every pseudo-label into its AS term.
    THRESHOLD = 0.0
    # The DM authors' own runs do without RandAugment (OpenMixup "*_no_randaug" configs).
    VIEW: View = "weak"
    # DMixTuning: alpha=1.0, mix_mode="mixup"; eta 0.1 for static policies (DM paper Sec. 4.5).
    MIXUP_POLICY = "mixup"
    MIXUP_ALPHA = 1.0
    MIXUP_ETA = 0.1

    views: tuple[View, ...] = (VIEW, VIEW)

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        *,
        queue_size: int = QUEUE_SIZE,
        projector_dim: int = PROJECTOR_DIM,
        projector_hidden: int | None = None,
        temperature: float = TEMPERATURE,
        momentum: float = MOMENTUM,
        pgc_weight: float = PGC_WEIGHT,
        view: View = VIEW,
        threshold: float = THRESHOLD,
        labelled_mixup: LabelledMixup = "none",
        mixup_policy: str = MIXUP_POLICY,
        mixup_alpha: float = MIXUP_ALPHA,
        mixup_eta: float = MIXUP_ETA,
        asymmetric: AsymmetricTerm | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        check_count("num_classes", num_classes)
        check_count("projector_dim", projector_dim)
        if projector_hidden is not None:
            check_count("projector_hidden", projector_hidden)
        check_positive("temperature", temperature)
        check_unit("momentum", momentum)
        check_weight("pgc_weight", pgc_weight)
        check_unit("threshold", threshold)
        check_positive("mixup_alpha", mixup_alpha)
        check_weight("mixup_eta", mixup_eta)
        if view not in ("weak", "strong"):
            raise ValueError(f"view must be weak or strong; got {view!r}")
        if labelled_mixup not in LABELLED_MIXUPS:
            raise ValueError(
                f"labelled_mixup must be one of {', '.join(LABELLED_MIXUPS)}; got "
                f"{labelled_mixup!r}"
            )
        if mixup_policy not in STATIC_POLICIES:
            raise ValueError(
                f"mixup_policy must be a static policy ({', '.join(STATIC_POLICIES)}); got "
                f"{mixup_policy!r}"
            )
        self.num_classes = int(num_classes)
        self.temperature = float(temperature)
        self.momentum = float(momentum)
        self.pgc_weight = float(pgc_weight)
        self.threshold = float(threshold)
        self.labelled_mixup: LabelledMixup = labelled_mixup
        self.mixup_policy = mixup_policy
        self.mixup_alpha = float(mixup_alpha)
        self.mixup_eta = float(mixup_eta)
        self.views = (view, view)
        size = feature_dim(model)
        self.projector: nn.Module
        if projector_hidden is None:
            # Self-Tuning models/resnet.py: fc = nn.Linear(features, projector_dim), default init.
            self.projector = nn.Linear(size, projector_dim)
        else:
            self.projector = nn.Sequential(
                nn.Linear(size, projector_hidden),
                nn.ReLU(inplace=True),
                nn.Linear(projector_hidden, projector_dim),
            )
        self.key_encoder = KeyEncoder(model, self.projector)
        self.queues = ClassQueues(num_classes, queue_size, projector_dim, generator=generator)
        self.asymmetric = asymmetric

    def extra_repr(self) -> str:
        """The settings, in ``print(algorithm)``."""
        return (
            f"num_classes={self.num_classes}, queue_size={self.queues.size}, "
            f"temperature={self.temperature}, momentum={self.momentum}, "
            f"pgc_weight={self.pgc_weight}, views={self.views}, threshold={self.threshold}, "
            f"labelled_mixup={self.labelled_mixup}"
        )

    def extra_parameters(self) -> list[nn.Parameter]:
        """The projector's parameters (the key encoder's are frozen copies, never trained)."""
        return list(self.projector.parameters())

    def forward(
        self, model: nn.Module, batch: SemiSupervisedBatch, generator: torch.Generator
    ) -> SemiSupervisedStep:
        """One Self-Tuning step: CE, PGC of both batches, optional labelled mixup and AS."""
        if len(batch.unlabelled) != 2:
            raise ValueError(
                f"Self-Tuning takes 2 unlabelled views {self.views}; got {len(batch.unlabelled)}"
            )
        unlabelled_query, unlabelled_key = batch.unlabelled
        targets = batch.targets.long()
        # Before the key forwards, as Self-Tuning (twice there, with no step between: m ** 2).
        self.key_encoder.update(model, self.projector, self.momentum**2)

        # Two query forwards, not one concatenated: Self-Tuning normalises each batch apart.
        with penultimate_features(model) as captured:
            logits_l = model(batch.labelled)
            features_l = captured.get()
            logits_u = model(unlabelled_query)
            features_u = captured.get()
        query_l = F.normalize(self.projector(features_l).float(), dim=1)
        query_u = F.normalize(self.projector(features_u).float(), dim=1)
        pseudo_labels, mask = confident_pseudo_labels(compute_probs(logits_u), self.threshold)

        key_l = self.key_encoder(batch.labelled)  # the one labelled view (module docstring)
        key_u = self.key_encoder(unlabelled_key)
        pgc_l = pgc_loss(query_l, key_l, targets, self.queues.entries, self.temperature).mean()
        self.queues.enqueue(_all_ranks(key_l), _all_ranks(targets))
        pgc_u = pgc_loss(
            query_u, key_u, pseudo_labels, self.queues.entries, self.temperature
        ).mean()
        self.queues.enqueue(_all_ranks(key_u), _all_ranks(pseudo_labels))

        supervised = cross_entropy(logits_l, targets).mean() + self.pgc_weight * pgc_l
        if self.labelled_mixup != "none":
            supervised = supervised + self._labelled_mixup(
                model, batch.labelled, targets, generator
            )
        return pseudo_labelling_step(
            self.asymmetric,
            model,
            batch,
            unlabelled_query,
            generator,
            supervised=supervised,
            unsupervised=self.pgc_weight * pgc_u,
            pseudo_labels=pseudo_labels,
            mask=mask,
        )

    def _labelled_mixup(
        self, model: nn.Module, labelled: Tensor, targets: Tensor, generator: torch.Generator
    ) -> Tensor:
        """DMixTuning's ``mix_loss_ll``: the labelled batch mixed with its own permutation."""
        choices = generator
        if self.mixup_policy == "manifoldmix":
            # MethodMixer draws ManifoldMix's stage on the CPU; a CPU generator seeded from the
            # step's keeps the run reproducible (one read back, that policy only).
            seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
            choices = torch.Generator().manual_seed(seed)
        mixer = MethodMixer(self.mixup_policy, self.mixup_alpha)
        logits, mixed = mixer(model, labelled, targets, generator, choices)
        if self.labelled_mixup == "mce":
            return mce(logits, mixed.y_a, mixed.y_b, mixed.lam)
        return dm_ce(logits, mixed.y_a, mixed.y_b, mixed.lam, eta=self.mixup_eta)
