"""What a spec submitted to the service may download: nothing, unless the operator allows it.

A download runs on the cluster's workers with their network and permissions: timm's
``pretrained: true`` fetches weights from the Hugging Face hub or a URL of timm's choosing, and a
hub model name (``hf-hub:org/repo``) fetches a repository's config and weights. The sweep service
refuses both unless its operator sets ``DMSWEEP_ALLOW_DOWNLOADS=1``; ``dmsweep run`` on one's own
machine allows them (the spec's author runs it with their own network).
"""

from __future__ import annotations

from service.spec.model import SweepSpec
from trainers.backbones import is_hub_name
from trainers.validation import Problem

ALLOW_VARIABLE = "DMSWEEP_ALLOW_DOWNLOADS"


def download_problems(spec: SweepSpec) -> list[Problem]:
    """A problem at every field of ``spec`` that would download weights or a model."""
    problems: list[Problem] = []
    for index, name in enumerate(spec.grid.backbone):
        if is_hub_name(name):
            problems.append(
                Problem(
                    ("grid", "backbone", index),
                    f"{name!r} downloads from a model hub, which this service does not allow "
                    f"({ALLOW_VARIABLE} is off); use a timm name with backbones.<name>.weights "
                    "(a file under the data roots)",
                )
            )
    for name, settings in spec.backbones.items():
        if settings.pretrained:
            problems.append(
                Problem(
                    ("backbones", name, "pretrained"),
                    f"this service does not download weights ({ALLOW_VARIABLE} is off); set "
                    "weights: to a file under the data roots instead",
                )
            )
    return problems
