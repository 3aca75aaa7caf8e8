"""What the semi-supervised loop gives an algorithm each step, and what the algorithm returns.

The loop (:mod:`trainers.ssl.loop`) draws a labelled batch of ``B`` images and an unlabelled
batch of ``mu * B`` (TorchSSL's ratio), augments the labelled batch weakly and each unlabelled
image once per entry of the algorithm's ``views`` ("weak": flip and shift; "strong": the weak
view then RandAugment and Cutout, :mod:`trainers.ssl.views`), and hands the algorithm one
:class:`SemiSupervisedBatch`. The algorithm runs its forwards (concatenated, where it can, so
that batch norm sees labelled and unlabelled images together, as TorchSSL does), and returns a
:class:`SemiSupervisedStep`: the loss to optimise, its parts, and for the metrics its hard
pseudo-labels and mask of the unlabelled batch.

An algorithm is an ``nn.Module``: what it keeps across steps (FlexMatch's per-image
predictions, ReMixMatch's running class distribution and rotation head) is in its
``state_dict``, so checkpoints carry it, and ``.to(device)`` moves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

View = Literal["weak", "strong"]


@dataclass(frozen=True)
class SemiSupervisedBatch:
    """One step's inputs, augmented and normalised, on the training device."""

    labelled: Tensor  # (B, 3, H, W): the weak view of the labelled images
    targets: Tensor  # (B,) int64: their labels
    unlabelled: tuple[Tensor, ...]  # one (mu * B, 3, H, W) tensor per entry of ``views``
    unlabelled_index: Tensor  # (mu * B,) int64: the unlabelled images' indices in the train set
    step: int  # optimisation steps taken before this one (0-based)
    total_steps: int  # steps of the whole run


@dataclass(frozen=True)
class SemiSupervisedStep:
    """What one step of an algorithm computed."""

    loss: Tensor  # scalar: what is optimised
    supervised: Tensor  # scalar, detached: the labelled part
    unsupervised: Tensor  # scalar, detached: the unlabelled part, weighted as in ``loss``
    pseudo_labels: Tensor  # (mu * B,) int64: argmax of the guess for each unlabelled image
    mask: Tensor  # (mu * B,) float in [0, 1]: how much each took part in the unlabelled loss


class SemiSupervisedAlgorithm(nn.Module):
    """The interface of every algorithm of Table 7.

    ``views``: the augmentations of each unlabelled image the step needs, in order.
    ``forward(model, batch, generator)``: one step's loss; ``generator`` lives on the batch's
    device and is the only source of randomness (mixing draws, permutations).
    """

    views: tuple[View, ...] = ("weak",)
    # Buffers with one entry per unlabelled image (FlexMatch's memory): under torch.distributed
    # the loop writes each rank's entries of the step into every rank's copy.
    per_image_buffers: tuple[str, ...] = ()

    def forward(
        self, model: nn.Module, batch: SemiSupervisedBatch, generator: torch.Generator
    ) -> SemiSupervisedStep:
        """One step's loss, its parts, and the pseudo-labels and mask of the unlabelled batch."""
        raise NotImplementedError
