"""Mixing methods of a trial: a policy, no mixing, or Mixup/CutMix switching, run with the model.

``vanilla`` trains on the plain batch (lambda 1, each sample its own partner);
``mixup_cutmix`` picks Mixup or CutMix per batch (the DeiT and RSB A3 recipes, Table 10);
``manifoldmix`` draws a stage per batch and lets the backbone mix the features entering it;
``puzzlemix`` asks the model for the saliency of the clean batch first (:func:`input_saliency`)
and mixes by PuzzleMix's optimal masks (:mod:`trainers.mixing.puzzlemix`); ``automix`` and
``samix`` are not mixed here: their Mix Block trains beside the model
(:class:`trainers.mixing.learned.LearnedMixing`); every other method is an input-level policy
of :data:`POLICIES`.

Per-batch choices (which policy, which stage) come from a CPU generator, so deciding them never
waits for the device; the mixing itself draws from the batch's device generator. The mixed
batch records which policy made it (``MixedBatch.policy``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.mixing import POLICIES, MixedBatch
from trainers.mixing.base import LambdaMode, SaliencyDetector, mixed_batch
from trainers.mixing.learned import LEARNED_POLICIES
from trainers.mixing.puzzlemix import PuzzleMixSettings, puzzlemix, saliency_from_gradient
from trainers.vocabulary import METHODS, takes_alpha


def _unwrapped(model: nn.Module) -> nn.Module:
    """The network under ``model``'s DistributedDataParallel wrapper, or ``model`` itself."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        network = model.module
        assert isinstance(network, nn.Module)
        return network
    return model


def _mix_stages(model: nn.Module) -> int:
    """The ManifoldMix stages of the backbone under ``model`` (or under its DDP wrapper)."""
    stages = _unwrapped(model).mix_stages
    assert isinstance(stages, int)  # every network of trainers.backbones has an int count
    return stages


def input_saliency(model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
    """PuzzleMix's saliency of the clean batch: (N, H, W), the input gradient's RMS over channels.

    One extra forward and backward of the same network at the current step, as OpenMixup's
    ``MixUpClassification._features`` (openmixup/models/classifiers/mixup_classification.py)
    makes it: the network in eval mode (batch norm reads its running statistics and leaves them
    as they are; no dropout), the cross-entropy of the clean batch, its gradient with respect to
    the input (then :func:`~trainers.mixing.puzzlemix.saliency_from_gradient`).

    Three departures from that code, none changing a mask:

    * the cross-entropy is summed over the batch where OpenMixup's head averages it: in eval
      mode no image's output depends on another's, so each image's map is the gradient of its
      own loss whatever the batch size, and under fp16 autocast (the RSB A3 recipe) the
      backward stays N times further from underflow; PuzzleMix normalises each map to sum 1
      (``pool_saliency``), so the scale is lost there;
    * ``torch.autograd.grad`` asks for the input's gradient alone, where OpenMixup calls
      ``backward()`` and clears the parameters' gradients after: none is made (nor computed);
    * a DistributedDataParallel model is unwrapped: the pass is no training step, so it takes
      no part in DDP's bookkeeping (no buffer broadcast, no reducer prepared for a backward
      that never comes) and no rank waits for another in it.

    Each module's train / eval flag is put back as it was (a module the caller froze in eval
    mode stays so), where OpenMixup sets the whole network back to train mode.
    """
    network = _unwrapped(model)
    modes = [(module, module.training) for module in network.modules()]
    network.eval()
    try:
        probe = inputs.detach().requires_grad_(True)
        with torch.enable_grad():  # the saliency needs a graph even under no_grad
            loss = F.cross_entropy(network(probe), targets, reduction="sum")
            (gradient,) = torch.autograd.grad(loss, probe)
    finally:
        for module, training in modes:
            module.training = training
    return saliency_from_gradient(gradient)


def _policy_alpha(policy: str, alpha: float | None) -> float:
    """The ``alpha`` a policy is called with: its Beta(alpha, alpha) parameter.

    TrainConfig requires it of every policy but ResizeMix, which takes the argument and ignores
    it (it draws its scale uniformly): NaN stands in there.
    """
    if alpha is not None:
        return alpha
    if takes_alpha(policy):
        raise ValueError(f"method {policy!r} needs alpha (> 0)")
    return math.nan


class MethodMixer:
    """Mixes a batch with one method and runs the model on it: ``(logits, MixedBatch)``."""

    def __init__(
        self,
        method: str,
        alpha: float | None,
        *,
        mixup_alpha: float | None = None,
        cutmix_alpha: float | None = None,
        switch_prob: float = 0.5,
        lambda_mode: LambdaMode = "batch",
        saliency_detector: SaliencyDetector = "fine_grained",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        puzzlemix_settings: PuzzleMixSettings | None = None,
        puzzlemix_workers: int = 0,
    ) -> None:
        """``mean`` / ``std``: the normalisation of the inputs (PuzzleMix needs them).

        ``puzzlemix_settings``: None picks OpenMixup's for the image size
        (:func:`trainers.mixing.puzzlemix.default_settings`); ``puzzlemix_workers``: processes
        solving PuzzleMix's graph cuts (0: in this process).
        """
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
        if method == "puzzlemix" and (mean is None or std is None):
            # PuzzleMix's data term compares pixels in [0, 1]; guessing the statistics (as
            # OpenMixup does from the image size) would be wrong for most data sets.
            raise ValueError("method 'puzzlemix' needs the inputs' mean and std")
        self.method, self.alpha = method, alpha
        self.lambda_mode = lambda_mode
        self.saliency_detector = saliency_detector
        self.mean, self.std = mean, std
        self.puzzlemix_settings = puzzlemix_settings
        self.puzzlemix_workers = puzzlemix_workers
        # mixup_cutmix: the recipe's alphas, or the trial's alpha where the recipe has none.
        self.switch_alphas = (
            mixup_alpha if mixup_alpha is not None else alpha,
            cutmix_alpha if cutmix_alpha is not None else alpha,
        )
        self.switch_prob = switch_prob

    def __call__(
        self,
        model: nn.Module,
        inputs: Tensor,
        targets: Tensor,
        generator: torch.Generator,
        choices: torch.Generator,
    ) -> tuple[Tensor, MixedBatch]:
        """Logits of ``model`` on the mixed batch, and the batch's pairs and lambdas."""
        if self.method == "vanilla":
            itself = torch.arange(len(targets), device=targets.device)
            lam = torch.ones(len(targets), device=targets.device)
            return model(inputs), mixed_batch(inputs, targets, lam, itself, policy="vanilla")
        if self.method == "manifoldmix":
            # The stage is drawn once per batch; the backbone mixes the features entering it.
            stage = int(torch.randint(_mix_stages(model), (), generator=choices))
            mixed: list[MixedBatch] = []

            def mix(features: Tensor) -> Tensor:
                mixed.append(
                    POLICIES["manifoldmix"](
                        features,
                        targets,
                        alpha=_policy_alpha("manifoldmix", self.alpha),
                        generator=generator,
                        lambda_mode=self.lambda_mode,
                    )
                )
                return mixed[0].inputs

            logits = model(inputs, mix=mix, mix_stage=stage)
            return logits, dataclasses.replace(mixed[0], policy="manifoldmix")
        if self.method in LEARNED_POLICIES:
            raise ValueError(
                f"method {self.method!r} learns its policy: trainers.mixing.learned.LearnedMixing "
                "mixes its batches"
            )
        if self.method == "puzzlemix":
            batch = self._puzzlemix(model, inputs, targets, generator)
            return model(batch.inputs), batch
        policy, alpha = self.method, self.alpha
        if self.method == "mixup_cutmix":
            use_cutmix = torch.rand((), generator=choices).item() < self.switch_prob
            policy = "cutmix" if use_cutmix else "mixup"
            alpha = self.switch_alphas[use_cutmix]
        options = {"detector": self.saliency_detector} if policy == "saliencymix" else {}
        batch = POLICIES[policy](
            inputs,
            targets,
            alpha=_policy_alpha(policy, alpha),
            generator=generator,
            lambda_mode=self.lambda_mode,
            **options,
        )
        return model(batch.inputs), dataclasses.replace(batch, policy=policy)

    def _puzzlemix(
        self, model: nn.Module, inputs: Tensor, targets: Tensor, generator: torch.Generator
    ) -> MixedBatch:
        """PuzzleMix's batch: the saliency of the current model, then the optimal masks."""
        batch = puzzlemix(
            inputs,
            targets,
            input_saliency(model, inputs, targets),
            alpha=_policy_alpha("puzzlemix", self.alpha),
            generator=generator,
            lambda_mode=self.lambda_mode,
            settings=self.puzzlemix_settings,
            mean=self.mean,
            std=self.std,
            workers=self.puzzlemix_workers,
        )
        return dataclasses.replace(batch, policy="puzzlemix")
