"""The bad-input cases of the README's troubleshooting table, shared by the CLI and API tests.

Each case is a spec text and the words its refusal must contain (the field path and what is
allowed). ``README_CASES`` are the first-column names of the README's table; a test checks
that the table lists every case.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

import yaml

from tests.support.specs import tiny_spec

GOOD: dict[str, Any] = tiny_spec(name="bad-input")


def flat(text: str) -> str:
    """Rich wraps long lines; compare words with single spaces."""
    return re.sub(r"\s+", " ", text)


def changed(*edits: tuple[tuple[str, ...], Any]) -> str:
    """The good spec with each (key path, value) set, as YAML."""
    spec = copy.deepcopy(GOOD)
    for path, value in edits:
        node = spec
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return yaml.safe_dump(spec, sort_keys=False)


@dataclass(frozen=True)
class Case:
    """A spec that must be refused up front, and what the refusal must say."""

    name: str  # as in the README's table
    text: str
    words: tuple[str, ...]
    status: int = 422  # what the API answers


def unknown_name(axis: str, noun: str, value: str, allowed: str) -> Case:
    """A grid axis naming a ``noun`` dmsweep does not know; the refusal lists what is allowed."""
    return Case(
        f"unknown {axis}",
        changed((("grid", axis), [value])),
        (f"grid.{axis}.0", f"unknown {noun} '{value}'", f"allowed: {allowed}"),
    )


CASES = [
    Case("malformed YAML", "name: [unclosed\ngrid: {", ("not valid YAML",)),
    Case("a spec that is a list", "- name: a\n- name: b\n", ("a mapping of settings", "list")),
    Case(
        "unknown top-level key",
        changed((("colour",), "red")),
        ("colour", "Extra inputs are not permitted"),
    ),
    unknown_name("dataset", "data set", "imagenet22k", "cifar10, cifar100"),
    unknown_name("backbone", "backbone", "resnet9000", "resnet18_cifar"),
    unknown_name("method", "method", "mixmix", "vanilla"),
    unknown_name("loss", "loss", "hinge", "ce, mce, dm_ce"),
    Case("eta < 0", changed((("hyperparameters", "eta"), -0.1)), ("hyperparameters.eta", ">= 0")),
    Case("xi = 0", changed((("hyperparameters", "xi"), 0)), ("hyperparameters.xi", "(0, 1]")),
    Case("xi > 1", changed((("hyperparameters", "xi"), 1.5)), ("hyperparameters.xi", "(0, 1]")),
    Case("t < 0", changed((("hyperparameters", "t"), -1)), ("hyperparameters.t", ">= 0")),
    Case(
        "alpha <= 0", changed((("hyperparameters", "alpha"), 0)), ("hyperparameters.alpha", "> 0")
    ),
    Case("seeds empty", changed((("grid", "seeds"), [])), ("grid.seeds", "at least 1 item")),
    Case(
        "negative seed",
        changed((("grid", "seeds"), [-1])),
        ("grid.seeds.0", "greater than or equal to 0"),
    ),
    Case(
        "label fraction outside (0, 1]",
        changed((("data", "synthetic", "label_fraction"), 1.5)),
        ("data.synthetic.label_fraction", "a fraction in (0, 1] or a whole count"),
    ),
    Case(
        "label fraction 0",
        changed((("data", "synthetic", "label_fraction"), 0)),
        ("data.synthetic.label_fraction", "greater than 0"),
    ),
    Case(
        "empty categorical grid",
        changed((("search",), {"parameters": {"eta": []}, "sampler": "grid"})),
        ("search.parameters.eta", "at least one value"),
    ),
    Case(
        "a spec of 10 MB",
        changed() + "#" * (10 << 20) + "\n",
        ("at most 1,048,576", "1 MiB"),
        status=413,
    ),
]

README_CASES = [
    *(case.name for case in CASES),
    "data root that does not exist",
    "more GPUs per trial than the cluster has",
    "unreadable image in an ImageFolder",
    "CIFAR pickle of the wrong shape",
    "API request without a token",
    "API request with a wrong token",
    "path outside the data roots",
    "cancel of an unknown sweep id",
    "duplicate submit with the same Idempotency-Key",
]
