"""What every mixing policy shares: the result type, input checks and the random draws.

The convention, for every policy: sample ``n`` of the mixed batch is made from ``inputs[n]``
(the "a" side, weight ``lam[n]``) and ``inputs[perm[n]]`` (the "b" side) for one random
permutation ``perm`` of the batch; ``y_a = targets`` and ``y_b = targets[perm]``. ``lam[n]`` is
exactly the fraction of sample ``n`` that comes from the "a" side (the interpolation weight, or
the share of pixels after any clipping).

Every policy has two lambda modes (:data:`LAMBDA_MODES`):

* ``batch``: one draw for the whole batch (one lambda, one box, one mask, one scale), as the
  original papers, OpenMixup (whose configurations produced the paper's numbers, appendix A.3)
  and timm's default do; ``lam`` is then one value repeated N times.
* ``sample``: one draw per sample.

Randomness comes only from the ``generator`` passed in, which must live on the batch's device:
draws then happen where the batch is, with no host round trip, and a seed reproduces a batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, get_args

import torch
from torch import Tensor

LambdaMode = Literal["batch", "sample"]
LAMBDA_MODES: tuple[str, ...] = get_args(LambdaMode)
# SaliencyMix's detectors: OpenCV's fine-grained static saliency (SaliencyMix's and OpenMixup's)
# and the spectral residual of Hou & Zhang (2007).
SaliencyDetector = Literal["fine_grained", "spectral_residual"]


@dataclass(frozen=True)
class MixedBatch:
    """A mixed batch: sample n mixes original n and original ``perm[n]`` in ratio ``lam[n]``."""

    inputs: Tensor
    y_a: Tensor
    y_b: Tensor
    lam: Tensor  # float32, shape (N,), on the batch's device
    perm: Tensor  # int64, shape (N,)
    # The policy that mixed the batch, where a method switches policies per batch (the loss of
    # mixup_cutmix with DM(BCE) depends on it); set by trainers.mixing.methods.
    policy: str | None = None


class MixingPolicy(Protocol):
    """The signature shared by the entries of ``trainers.mixing.POLICIES``.

    The batch and its labels go by position: each policy names them its own way (ManifoldMix
    mixes ``features``).
    """

    def __call__(
        self,
        inputs: Tensor,
        targets: Tensor,
        /,
        *,
        alpha: float,
        generator: torch.Generator,
        lambda_mode: LambdaMode = "batch",
    ) -> MixedBatch:
        """Mix ``inputs`` (labels ``targets``) with Beta(alpha, alpha) or the policy's own law."""
        ...


def check_batch(
    inputs: Tensor,
    targets: Tensor,
    generator: torch.Generator,
    *,
    images: bool,
    alpha: float | None,
    lambda_mode: str = "batch",
) -> None:
    """Raise a ValueError naming what is wrong with a policy's arguments."""
    if lambda_mode not in LAMBDA_MODES:
        raise ValueError(
            f"lambda_mode must be one of {', '.join(LAMBDA_MODES)}; got {lambda_mode!r}"
        )
    if not isinstance(inputs, Tensor) or not inputs.is_floating_point():
        got: object = inputs.dtype if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ValueError(f"inputs must be a floating-point tensor; got {got}")
    if images and inputs.dim() != 4:
        raise ValueError(
            f"inputs must be a batch of images of shape (N, C, H, W); got {tuple(inputs.shape)}"
        )
    if inputs.dim() < 1 or inputs.shape[0] < 1:
        raise ValueError(f"inputs must hold at least one sample; got shape {tuple(inputs.shape)}")
    n = inputs.shape[0]
    if (
        not isinstance(targets, Tensor)
        or targets.is_floating_point()
        or targets.is_complex()
        or targets.shape != (n,)
    ):
        got = f"{tuple(targets.shape)} {targets.dtype}" if isinstance(targets, Tensor) else targets
        raise ValueError(
            f"targets must be an integer tensor of shape ({n},) to match inputs; got {got}"
        )
    if targets.device != inputs.device:
        raise ValueError(f"targets are on {targets.device} but inputs on {inputs.device}")
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator; got {type(generator).__name__}")
    if generator.device.type != inputs.device.type:
        raise ValueError(
            f"generator is on {generator.device} but the batch is on {inputs.device}; "
            f"pass torch.Generator(device={str(inputs.device)!r})"
        )
    if alpha is not None and (
        isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0
    ):
        raise ValueError(f"alpha must be a number > 0 (Beta(alpha, alpha)); got {alpha!r}")


def draw_count(n: int, lambda_mode: str) -> int:
    """How many draws a batch of ``n`` takes: 1 in ``batch`` mode, ``n`` in ``sample`` mode."""
    return 1 if lambda_mode == "batch" else n


def draw_permutation(n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """The batch's pairing: sample ``n`` is mixed with sample ``perm[n]``."""
    return torch.randperm(n, generator=generator, device=device)


def sample_beta(alpha: float, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """``n`` draws from Beta(alpha, alpha) as float64, via two Gamma(alpha) draws.

    ``torch.distributions.Beta`` takes no generator, so the draws go through
    ``torch._standard_gamma``, which does. float64 keeps Gamma(alpha) draws for small alpha
    (the paper's grid goes down to 0.1) from underflowing to 0 and giving 0 / 0.
    """
    concentration = torch.full((2, n), float(alpha), dtype=torch.float64, device=device)
    gamma = torch._standard_gamma(concentration, generator=generator)
    total = gamma.sum(0)
    return torch.where(total > 0, gamma[0] / total, 0.5)


def draw_uniform(n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """``n`` draws from U[0, 1) as float64."""
    return torch.rand(n, generator=generator, device=device, dtype=torch.float64)


def mixed_batch(
    inputs: Tensor, targets: Tensor, lam: Tensor, perm: Tensor, policy: str | None = None
) -> MixedBatch:
    """Assemble the result with the shared conventions (targets of both sides, float32 lambda).

    ``lam`` holds one value per sample, or one for the whole batch (``batch`` mode), repeated.
    """
    n = targets.shape[0]
    lam = lam.to(torch.float32).expand(n).contiguous()
    return MixedBatch(
        inputs=inputs, y_a=targets, y_b=targets[perm], lam=lam, perm=perm, policy=policy
    )
