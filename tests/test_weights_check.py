"""The pre-flight check of a spec's weights files: missing, headless for Co-Tuning, not fitting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from service.spec.cells import trials
from service.spec.data_check import data_problems
from service.spec.reading import spec_from_dict
from service.spec.weights_check import weights_problems
from trainers.backbones import build_backbone


def _spec(weights: str, algorithms: list[str]) -> dict[str, Any]:
    return {
        "name": "weights-check",
        "grid": {
            "dataset": ["synthetic"],
            "labels": {"synthetic": [0.15]},
            "backbone": ["smallnet"],
            "algorithm": algorithms,
            "method": ["vanilla"],
            "loss": ["ce"],
            "seeds": [0],
        },
        "recipe": "transfer",
        "semi_supervised": {"steps": 10, "eval_every": 5},
        "backbones": {"smallnet": {"weights": weights}},
        "data": {"synthetic": {"num_classes": 5}},
    }


def _source_state(num_classes: int = 5) -> dict[str, torch.Tensor]:
    """A source model's weights, its classifier (``head.*``) included."""
    return build_backbone("smallnet", num_classes, 32).state_dict()


def test_weights_that_fit_pass_for_every_algorithm(tmp_path: Path) -> None:
    path = tmp_path / "source.pt"
    torch.save(_source_state(num_classes=7), path)  # a head of another size: replaced, fine
    spec = spec_from_dict(_spec(str(path), ["fine_tuning", "co_tuning"]))
    assert weights_problems(spec) == []


def test_co_tuning_refuses_a_file_without_a_source_head(tmp_path: Path) -> None:
    path = tmp_path / "headless.pt"
    torch.save({k: v for k, v in _source_state().items() if not k.startswith("head.")}, path)
    spec = spec_from_dict(_spec(str(path), ["fine_tuning", "co_tuning"]))
    # fine_tuning starts from a fresh head and is content; co_tuning needs the file's.
    (problem,) = data_problems(spec)
    assert problem.location == ("backbones", "smallnet", "weights")
    assert str(path) in problem.message
    assert "no source head" in problem.message


@pytest.mark.parametrize("algorithm", ["fine_tuning", "co_tuning"])
def test_weights_that_do_not_fit_name_the_file_and_the_first_mismatching_tensor(
    tmp_path: Path, algorithm: str
) -> None:
    state = _source_state()
    keys = [k for k, v in state.items() if v.dim() == 4]  # the convolutions, in the network's order
    first, later = keys[1], keys[-1]
    state[first] = torch.zeros(*state[first].shape[:-1], state[first].shape[-1] + 2)
    state[later] = torch.zeros(1)
    path = tmp_path / "wide.pt"
    torch.save(state, path)
    (problem,) = weights_problems(spec_from_dict(_spec(str(path), [algorithm])))
    assert str(path) in problem.message
    assert first in problem.message
    # The first mismatch comes first (Co-Tuning's check names it alone).
    at = problem.message.find(later)
    assert at == -1 or at > problem.message.index(first)


def test_a_missing_file_a_make_target_writes_says_how_to_make_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DMSWEEP_DATA_ROOT", str(tmp_path))
    relative = "weights/smallnet_cifar10_source5.pt"
    (problem,) = data_problems(spec_from_dict(_spec(relative, ["fine_tuning", "co_tuning"])))
    # A relative path lies under the data root, as on the service; named once for both cells.
    assert str(tmp_path / relative) in problem.message
    assert "make tl-pretrain" in problem.message
    other = tmp_path / "other.pt"
    (problem,) = data_problems(spec_from_dict(_spec(str(other), ["fine_tuning"])))
    assert problem.message == f"weights file {other} does not exist"


def test_trials_read_a_relative_weights_path_under_the_data_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DMSWEEP_DATA_ROOT", str(tmp_path))
    spec = spec_from_dict(_spec("weights/source.pt", ["fine_tuning"]))
    ((_, _, config),) = trials(spec)
    assert config.backbone.weights == str(tmp_path / "weights" / "source.pt")
