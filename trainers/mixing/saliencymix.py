"""SaliencyMix (Uddin et al., ICLR 2021): CutMix with the box centred on a salient pixel.

The box has CutMix's size, ``(1 - lam) * H * W`` with ``lam ~ Beta(alpha, alpha)``, centred on
the most salient pixel of a partner image, clipped at the border and pasted from the partner at
the same place; ``lam`` is recomputed from the clipped box.

``lambda_mode="batch"`` (the default) is what SaliencyMix's code and OpenMixup's
``openmixup/models/augments/saliencymix.py`` (whose configurations made the paper's numbers,
appendix A.3) do: one Beta draw, one permutation, and one box for the whole batch, centred on
the saliency peak of the first image of the shuffled batch (``inputs[perm[0]]``, the partner of
sample 0) and pasted at the same place in every image; ``lam`` is one value repeated N times.
``lambda_mode="sample"`` draws a lambda per sample and centres each sample's box on the peak of
its own partner. The box's sides are ``int(side * sqrt(1 - lam))`` and it spans
``peak - cut // 2`` to ``peak + cut // 2`` before clipping, as in OpenMixup
(:func:`boxes.centred_boxes`, shared with CutMix); ``lam`` is the share of pixels really kept.

``detector`` chooses the saliency map (:mod:`trainers.mixing.saliency`):

* ``fine_grained`` (default): the static fine-grained saliency of Montabone & Soto (2010) that
  SaliencyMix and OpenMixup take from OpenCV (``cv2.saliency.StaticSaliencyFineGrained``). It is
  reimplemented batched in torch rather than called through OpenCV on a host copy of the image,
  because (1) ``sample`` mode needs a map per image, N OpenCV calls on the host per batch;
  (2) a host copy would make every CUDA training step wait for the device, which
  tests/test_gpu.py forbids for every policy; (3) the reimplementation's map equals OpenCV's
  8-bit map pixel for pixel on real CIFAR-10 JPEGs (tests/test_saliencymix.py), so nothing of
  the detector is lost and OpenCV is a test dependency only (the ``dev`` extra). The peak is
  the map's first maximum in row-major order, as NumPy's ``argmax`` in OpenMixup.
  The normalised batch is brought back to 8-bit levels per image by its own range before the
  detector (see :mod:`trainers.mixing.saliency` for why OpenMixup's float input is not copied).
* ``spectral_residual``: the spectral residual of Hou & Zhang (CVPR 2007) at 64 px, a cheaper
  detector; a documented option, not the paper's setting.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trainers.mixing import boxes
from trainers.mixing.base import (
    LambdaMode,
    MixedBatch,
    SaliencyDetector,
    check_batch,
    draw_count,
    draw_permutation,
    mixed_batch,
    sample_beta,
)
from trainers.mixing.saliency import check_detector, salient_points

__all__ = ["saliencymix", "salient_points"]


def saliencymix(
    inputs: Tensor,
    targets: Tensor,
    *,
    alpha: float,
    generator: torch.Generator,
    lambda_mode: LambdaMode = "batch",
    detector: SaliencyDetector = "fine_grained",
) -> MixedBatch:
    """Paste the salient region of partner images ``inputs[perm[n]]`` into ``inputs[n]``.

    One box for the batch, around the peak of ``inputs[perm[0]]`` (``batch``), or one box per
    sample around the peak of its own partner (``sample``); the saliency map from ``detector``.
    """
    check_batch(inputs, targets, generator, images=True, alpha=alpha, lambda_mode=lambda_mode)
    detector = check_detector(detector)
    n, _, height, width = inputs.shape
    device = inputs.device
    draws = draw_count(n, lambda_mode)
    cut_h, cut_w = boxes.cut_size(sample_beta(alpha, draws, generator, device), height, width)
    perm = draw_permutation(n, generator, device)
    partners = inputs[perm]
    # batch: the first image of the shuffled batch only; sample: every partner.
    centre_y, centre_x = salient_points(partners[:draws], detector)
    box = boxes.centred_boxes(centre_y, centre_x, cut_h, cut_w, height, width)
    mixed = boxes.paste(inputs, partners, boxes.box_mask(box, height, width))
    return mixed_batch(mixed, targets, boxes.share_outside(box, height, width), perm)
