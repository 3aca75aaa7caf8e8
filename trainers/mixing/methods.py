"""Mixing methods of a trial: a policy, no mixing, or Mixup/CutMix switching, run with the model.

``vanilla`` trains on the plain batch (lambda 1, each sample its own partner);
``mixup_cutmix`` picks Mixup or CutMix per batch (the DeiT and RSB A3 recipes, Table 10);
``manifoldmix`` draws a stage per batch and lets the backbone mix the features entering it;
every other method is an input-level policy of :data:`POLICIES`.

Per-batch choices (which policy, which stage) come from a CPU generator, so deciding them never
waits for the device; the mixing itself draws from the batch's device generator. The mixed
batch records which policy made it (``MixedBatch.policy``).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from trainers.mixing import POLICIES, MixedBatch
from trainers.mixing.base import LambdaMode, SaliencyDetector, mixed_batch
from trainers.vocabulary import METHODS, takes_alpha


def _mix_stages(model: nn.Module) -> int:
    """The ManifoldMix stages of the backbone under ``model`` (or under its DDP wrapper)."""
    backbone = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    stages = backbone.mix_stages
    assert isinstance(stages, int)  # every network of trainers.backbones has an int count
    return stages


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
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
        self.method, self.alpha = method, alpha
        self.lambda_mode = lambda_mode
        self.saliency_detector = saliency_detector
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
