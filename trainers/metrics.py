"""The paper's metrics, counted on the device.

Top-k accuracy, mixed-sample top-1/top-2 (Fig. 2 and 7), the two summary accuracies of Sec. 4
(median of the last 10 epochs, best) and the FGSM error of Table 8.

Counting functions return tensors of counts on the logits' device, so a loop can add them up
over batches (and across ranks) and synchronise once, at the end of an evaluation.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def topk_correct(logits: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> Tensor:
    """How many samples have their label among the top k predictions, for each k.

    Returns a (len(ks),) tensor; k is capped at the number of classes.
    """
    k_max = min(max(ks), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices
    hits = top == labels[:, None]
    return torch.stack([hits[:, : min(k, k_max)].any(dim=1).sum() for k in ks])


def mixed_correct(logits: Tensor, y_a: Tensor, y_b: Tensor) -> Tensor:
    """Mixed-sample accuracy counts of Fig. 2 / 7: ``(top1, top2, pairs)``.

    Top-1 counts a mixed sample when the prediction is either of its two classes; top-2 when the
    two best predictions are exactly its two classes. Same-class pairs are left out of all three.
    """
    pairs = y_a != y_b
    top2 = logits.topk(2, dim=1).indices
    top1_hit = (top2[:, 0] == y_a) | (top2[:, 0] == y_b)
    top2_hit = ((top2[:, 0] == y_a) & (top2[:, 1] == y_b)) | (
        (top2[:, 0] == y_b) & (top2[:, 1] == y_a)
    )
    return torch.stack(((top1_hit & pairs).sum(), (top2_hit & pairs).sum(), pairs.sum()))


def median_of_last(values: Sequence[float], last: int = 10) -> float:
    """Median of the last ``last`` values (all of them in a shorter run).

    The paper's main metric for supervised classification (Sec. 4, "the median top-1 Acc of the
    last 10 epochs").
    """
    if not values:
        raise ValueError("no values to take the median of")
    return float(statistics.median(values[-last:]))


def fgsm_error(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    normalise: Callable[[Tensor], Tensor],
    *,
    epsilon: float = 8 / 255,
) -> Tensor:
    """Counts ``(wrong, total)`` under a white-box FGSM attack (Goodfellow et al.; Table 8).

    ``images`` are in pixel space [0, 1]; the perturbation ``epsilon * sign(grad)`` is applied
    there and clipped to [0, 1], then the model sees ``normalise(x_adv)``.
    """
    was_training = model.training
    model.eval()
    x = images.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model(normalise(x)), labels)
    (grad,) = torch.autograd.grad(loss, x)
    adversarial = (x.detach() + epsilon * grad.sign()).clamp_(0, 1)
    with torch.no_grad():
        wrong = (model(normalise(adversarial)).argmax(dim=1) != labels).sum()
    model.train(was_training)
    return torch.stack((wrong, torch.tensor(labels.numel(), device=labels.device)))
