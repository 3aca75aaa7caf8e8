"""The smallest sweep spec that runs: one synthetic cell, one seed, one epoch of the smoke recipe.

Tests that need a valid spec and do not care which take it from here, changed where they care.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

TINY: dict[str, Any] = {
    "name": "tiny",
    "grid": {
        "dataset": ["synthetic"],
        "backbone": ["smallnet"],
        "method": ["mixup"],
        "loss": ["mce"],
        "seeds": [0],
    },
    "recipe": "smoke",
    "epochs": 1,
}


def tiny_spec(**changes: Any) -> dict[str, Any]:
    """A copy of ``TINY`` with top-level ``changes`` (e.g. ``name``)."""
    return {**copy.deepcopy(TINY), **changes}


def tiny_spec_yaml(**changes: Any) -> str:
    """``tiny_spec(**changes)`` as YAML text, as a client sends it."""
    return yaml.safe_dump(tiny_spec(**changes))
