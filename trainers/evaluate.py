"""Evaluation passes of the loop: accuracy, mixed accuracy (Fig. 2 and 7), FGSM error (Table 8).

Each rank evaluates its share of the test images and the counts are summed across ranks, so
every rank reports the same numbers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from trainers.augment import EvalTransform
from trainers.data import ImageSource
from trainers.distributed import Ranks, all_sum
from trainers.metrics import fgsm_error, mixed_correct, topk_correct
from trainers.mixing import POLICIES, MixedBatch


def _shard(source: ImageSource, ranks: Ranks) -> Tensor:
    return torch.arange(ranks.rank, len(source), ranks.world_size)


@torch.no_grad()
def accuracy(
    model: nn.Module, source: ImageSource, transform: EvalTransform, ranks: Ranks, batch_size: int
) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (%) on every image of ``source``."""
    model.eval()
    shard = _shard(source, ranks)
    counts = torch.zeros(3, device=ranks.device, dtype=torch.long)
    for start in range(0, len(shard), batch_size):
        index = shard[start : start + batch_size]
        images = transform(source.read(index).to(ranks.device))
        labels = source.labels[index].to(ranks.device)
        counts[:2] += topk_correct(model(images), labels, ks=(1, 5))
        counts[2] += len(index)
    top1, top5, total = all_sum(counts, ranks).tolist()
    return 100.0 * top1 / total, 100.0 * top5 / total


def fixed_mixed_batch(
    source: ImageSource,
    transform: EvalTransform,
    *,
    method: str,
    alpha: float | None,
    count: int,
    seed: int,
    device: torch.device,
) -> MixedBatch:
    """A fixed mixed validation batch for the mixed top-1 / top-2 of Fig. 2 and 7.

    Mixed with the trial's policy where it mixes inputs, with Mixup otherwise (ManifoldMix,
    PuzzleMix, AutoMix and SAMix, whose masks depend on the model being trained, Mixup/CutMix
    switching, no mixing), always from the same seed, so epochs are comparable.
    """
    # A random draw: test splits are often stored class by class, and a batch of one class
    # would hold only same-class pairs, which the mixed accuracies leave out.
    index = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed))
    index = index[: min(count, len(source))].sort().values
    images = transform(source.read(index).to(device))
    labels = source.labels[index].to(device)
    policy = method if method in POLICIES and method != "manifoldmix" else "mixup"
    generator = torch.Generator(device=device).manual_seed(seed)
    # A lambda per sample: one draw for the whole batch would make the metric hang on one value.
    return POLICIES[policy](
        images, labels, alpha=alpha or 1.0, generator=generator, lambda_mode="sample"
    )


@torch.no_grad()
def mixed_accuracy(model: nn.Module, batch: MixedBatch) -> tuple[float, float]:
    """Mixed top-1 and top-2 accuracy (%) on a mixed batch, same-class pairs left out."""
    model.eval()
    top1, top2, pairs = mixed_correct(model(batch.inputs), batch.y_a, batch.y_b).tolist()
    return 100.0 * top1 / max(pairs, 1), 100.0 * top2 / max(pairs, 1)


def fgsm_error_rate(
    model: nn.Module,
    source: ImageSource,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    epsilon: float,
    ranks: Ranks,
    batch_size: int = 256,
) -> float:
    """Error (%) under white-box FGSM at ``epsilon`` in pixel space, on the stored test images."""
    mean_t = torch.tensor(mean, device=ranks.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=ranks.device).view(1, -1, 1, 1)

    def normalise(pixels: Tensor) -> Tensor:
        return (pixels - mean_t) / std_t

    shard = _shard(source, ranks)
    counts = torch.zeros(2, device=ranks.device, dtype=torch.long)
    for start in range(0, len(shard), batch_size):
        index = shard[start : start + batch_size]
        pixels = source.read(index).to(ranks.device).float() / 255
        labels = source.labels[index].to(ranks.device)
        counts += fgsm_error(model, pixels, labels, normalise, epsilon=epsilon)
    wrong, total = all_sum(counts, ranks).tolist()
    return 100.0 * wrong / total
