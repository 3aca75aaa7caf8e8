"""The labelled images alone, through the semi-supervised loop: the baseline of Table 7's gains.

Cross-entropy on the weak view of the labelled batch, nothing else: what every algorithm adds
to (TorchSSL's ``fullysupervised``, here on the labelled images only, with the same steps,
schedule and EMA as the algorithms it is compared with).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainers.ssl.base import SemiSupervisedAlgorithm, SemiSupervisedBatch, SemiSupervisedStep


class LabelledOnly(SemiSupervisedAlgorithm):
    """Supervised cross-entropy on the labelled batch; no unlabelled view."""

    views = ()

    def forward(
        self, model: nn.Module, batch: SemiSupervisedBatch, generator: torch.Generator
    ) -> SemiSupervisedStep:
        """The labelled batch's cross-entropy; the unlabelled parts are empty."""
        loss = F.cross_entropy(model(batch.labelled), batch.targets)
        empty = batch.targets.new_empty(0)
        return SemiSupervisedStep(
            loss=loss,
            supervised=loss.detach(),
            unsupervised=torch.zeros((), device=loss.device),
            pseudo_labels=empty,
            mask=empty.float(),
        )
