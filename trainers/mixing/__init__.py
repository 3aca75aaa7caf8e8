"""Mixing policies: each takes a batch and a ``torch.Generator`` and returns a ``MixedBatch``.

``POLICIES`` maps the names used in sweep specs to the policies, a plain dict. The static
policies of the paper (Mixup, CutMix, ManifoldMix, SaliencyMix, FMix, ResizeMix) are here. The
dynamic ones need the model: PuzzleMix a saliency pass (``puzzlemix.py``, run by
``methods.MethodMixer``), AutoMix and SAMix a Mix Block trained beside it (``mix_block.py``,
run in the loop by ``learned.LearnedMixing``).
"""

from trainers.mixing.base import MixedBatch, MixingPolicy
from trainers.mixing.cutmix import cutmix
from trainers.mixing.fmix import fmix
from trainers.mixing.manifoldmix import manifoldmix
from trainers.mixing.mixup import interpolate, mixup
from trainers.mixing.resizemix import resizemix
from trainers.mixing.saliencymix import saliencymix
from trainers.vocabulary import INTERPOLATION_BASED, STATIC_POLICIES

POLICIES: dict[str, MixingPolicy] = {
    "mixup": mixup,
    "cutmix": cutmix,
    "manifoldmix": manifoldmix,
    "saliencymix": saliencymix,
    "fmix": fmix,
    "resizemix": resizemix,
}

# Every static policy of the paper is implemented; their names and families are the vocabulary's.
assert tuple(POLICIES) == STATIC_POLICIES, "trainers.vocabulary.STATIC_POLICIES names POLICIES"

__all__ = [
    "INTERPOLATION_BASED",
    "POLICIES",
    "MixedBatch",
    "MixingPolicy",
    "cutmix",
    "fmix",
    "interpolate",
    "manifoldmix",
    "mixup",
    "resizemix",
    "saliencymix",
]
