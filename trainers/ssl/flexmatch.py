"""FlexMatch (Zhang et al., 2021), the "FlexMatch" row of Table 7 ("CE+Con+CPL").

FixMatch with curriculum pseudo-labelling: the fixed threshold ``tau`` becomes one threshold per
class, ``T_t(c) = M(beta_t(c)) tau`` (:func:`~trainers.ssl.pseudo_labels.curriculum_thresholds`),
where ``beta_t(c)`` is the class's learning effect, the number of unlabelled images whose latest
confident prediction (probability at least ``tau``) is ``c``, normalised
(:func:`~trainers.ssl.pseudo_labels.learning_effect`, with threshold warm-up by default), and
``M(x) = x / (2 - x)``. The per-image memory of those predictions (``-1``: never confident) is a
buffer sized to the unlabelled set, so checkpoints carry it; each step reads the thresholds from
it before the loss and then writes the batch's confident predictions into it (TorchSSL,
models/flexmatch/flexmatch.py and flexmatch_utils.py). Distribution alignment (TorchSSL's
``use_DA``, off by default) is not implemented.

Under data parallelism each replica updates its own memory from its own batch; the loop then
writes every rank's entries of the step into each copy (``per_image_buffers``), so all ranks
hold the same memory and thresholds.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from trainers.ssl.asymmetric_term import AsymmetricTerm, pseudo_labelling_step
from trainers.ssl.base import SemiSupervisedAlgorithm, SemiSupervisedBatch, SemiSupervisedStep, View
from trainers.ssl.checks import check_count, check_positive, check_unit, check_weight
from trainers.ssl.forwards import joint_logits
from trainers.ssl.pseudo_labels import (
    UNUSED,
    compute_probs,
    cross_entropy,
    curriculum_thresholds,
    learning_effect,
    sharpen,
)


class FlexMatch(SemiSupervisedAlgorithm):
    """FlexMatch: FixMatch with class-wise curriculum thresholds from a per-image memory.

    ``num_unlabelled``: the size of the unlabelled set (the memory's length; the batch's
    ``unlabelled_index`` indexes it). Keyword settings (TorchSSL defaults, the same for
    CIFAR-10 and CIFAR-100): ``threshold`` (tau), ``lambda_u``, ``threshold_warmup``,
    ``hard_labels``, ``temperature``, ``asymmetric`` (an optional AS term).
    """

    views: tuple[View, ...] = ("weak", "strong")
    per_image_buffers = ("memory",)

    # config/flexmatch/flexmatch_cifar10_4000_0.yaml and flexmatch_cifar100_2500_0.yaml:
    # p_cutoff 0.95, ulb_loss_ratio 1.0, hard_label True, T 0.5; flexmatch.py: --thresh_warmup
    # defaults to True (the configs leave it so).
    THRESHOLD = 0.95
    LAMBDA_U = 1.0
    THRESHOLD_WARMUP = True
    HARD_LABELS = True
    TEMPERATURE = 0.5

    memory: Tensor

    def __init__(
        self,
        num_unlabelled: int,
        *,
        threshold: float = THRESHOLD,
        lambda_u: float = LAMBDA_U,
        threshold_warmup: bool = THRESHOLD_WARMUP,
        hard_labels: bool = HARD_LABELS,
        temperature: float = TEMPERATURE,
        asymmetric: AsymmetricTerm | None = None,
    ) -> None:
        super().__init__()
        check_count("num_unlabelled", num_unlabelled)
        check_unit("threshold", threshold)
        check_weight("lambda_u", lambda_u)
        check_positive("temperature", temperature)
        self.threshold = float(threshold)
        self.lambda_u = float(lambda_u)
        self.threshold_warmup = bool(threshold_warmup)
        self.hard_labels = bool(hard_labels)
        self.temperature = float(temperature)
        self.asymmetric = asymmetric
        # The latest confident prediction of each unlabelled image; UNUSED until it has one.
        self.register_buffer("memory", torch.full((num_unlabelled,), UNUSED, dtype=torch.long))

    def extra_repr(self) -> str:
        """The settings, in ``print(algorithm)``."""
        return (
            f"num_unlabelled={len(self.memory)}, threshold={self.threshold}, "
            f"lambda_u={self.lambda_u}, threshold_warmup={self.threshold_warmup}, "
            f"hard_labels={self.hard_labels}, temperature={self.temperature}"
        )

    def class_thresholds(self, num_classes: int) -> Tensor:
        """The current threshold of each class, (C,), from the memory as it stands."""
        beta = learning_effect(self.memory, num_classes, warmup=self.threshold_warmup)
        return curriculum_thresholds(beta, self.threshold)

    def forward(
        self, model: nn.Module, batch: SemiSupervisedBatch, generator: torch.Generator
    ) -> SemiSupervisedStep:
        """One step: CE, consistency masked by the class thresholds, memory update, AS term."""
        weak, strong = batch.unlabelled
        logits_l, logits_w, logits_s = joint_logits(model, batch.labelled, weak, strong)
        supervised = cross_entropy(logits_l, batch.targets).mean()
        probs = compute_probs(logits_w)
        confidence, pseudo_labels = probs.max(dim=-1)
        thresholds = self.class_thresholds(probs.shape[1])
        mask = (confidence >= thresholds[pseudo_labels]).to(probs.dtype)
        target = pseudo_labels if self.hard_labels else sharpen(probs, self.temperature)
        consistency = (cross_entropy(logits_s, target) * mask).mean()
        self._remember(batch.unlabelled_index, pseudo_labels, confidence >= self.threshold)
        unsupervised = self.lambda_u * consistency
        return pseudo_labelling_step(
            self.asymmetric,
            model,
            batch,
            weak,
            generator,
            supervised=supervised,
            unsupervised=unsupervised,
            pseudo_labels=pseudo_labels,
            mask=mask,
        )

    @torch.no_grad()
    def _remember(self, index: Tensor, pseudo_labels: Tensor, confident: Tensor) -> None:
        """Write the confident predictions at their images' entries; leave the others alone.

        Only predictions at least as confident as the fixed ``tau`` are remembered (FlexMatch's
        ``sigma_t(c)``; TorchSSL's ``select``), whatever the class's current threshold. The
        unconfident entries are written back unchanged rather than selected out, so shapes
        stay static and nothing is read back to the host. An image drawn twice in one batch
        keeps one of its two writes, unspecified which (as with TorchSSL's indexed assignment).
        """
        index = index.to(self.memory.device)
        kept = torch.where(confident.to(self.memory.device), pseudo_labels, self.memory[index])
        self.memory.index_put_((index,), kept)
