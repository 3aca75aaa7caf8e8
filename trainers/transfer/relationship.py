"""Co-Tuning's category relationship, learnt before the first step of a run.

Co-Tuning (You et al., 2020; thuml/CoTuning ``train.py``, tllib's ``co_tuning.py`` example)
runs the pretrained model once over the target training images, in evaluation mode with the
test-time transform, and averages the calibrated source probabilities per target class
(:func:`~trainers.transfer.co_tuning.category_relationship`). Here the images are the run's
labelled ones (tllib's training split; the unlabelled rest has no label to average under).

Under ``torch.distributed`` each rank predicts its share of the images; the shares are gathered
in rank order, and rank 0's relationship is broadcast, so every rank trains with the same
matrix bit for bit (a reduction on another device could round otherwise).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

from trainers.augment import EvalTransform
from trainers.data import ImageSource
from trainers.distributed import Ranks, gather
from trainers.transfer.co_tuning import CoTuning, category_relationship, collect_source_probs

__all__ = ["learn_relationship"]


def learn_relationship(
    algorithm: CoTuning,
    model: nn.Module,
    images: ImageSource,
    labelled: Tensor,
    transform: EvalTransform,
    ranks: Ranks,
    batch_size: int,
) -> None:
    """Set ``algorithm``'s p(y_s | y_t) from ``model``'s predictions on the ``labelled`` images.

    ``images.read`` gives the stored squares, ``transform`` the evaluation view of them; the
    labels are ``images.labels``.
    """
    shard = labelled[ranks.rank :: ranks.world_size]
    device = ranks.device

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, len(shard), batch_size):
            index = shard[start : start + batch_size]
            yield transform(images.read(index).to(device)), images.labels[index]

    probs = torch.empty(0, algorithm.relationship.shape[1])
    labels = torch.empty(0, dtype=torch.long)
    if len(shard):
        probs, labels = collect_source_probs(model, algorithm.source_head, batches())
    shares = gather((probs, labels), ranks)
    relationship = category_relationship(
        torch.cat([p for p, _ in shares]),
        torch.cat([y for _, y in shares]),
        algorithm.relationship.shape[0],
    ).to(device)
    if ranks.world_size > 1:
        dist.broadcast(relationship, src=0)
    algorithm.set_relationship(relationship)
