"""Control cells: MCE (MBCE) at the DM cell's alpha, asked for by a spec's ``controls: true``.

The paper compares MCE at its tuned alpha with DM at alpha 0.2 (A.3), so part of a DM gain can
be the alpha. A control cell runs the base loss at the DM cell's alpha, with the DM cell's other
settings; it has its own cell id and counts wherever cells and trials are counted.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from service.spec.cells import expand, is_control_id, summary, total_trials, train_config, trials
from service.spec.reading import spec_from_dict

# Alphas set by hand: Mixup's baseline at 1 (its tuned alpha), CutMix's at 0.2 like DM.
RAW: dict[str, Any] = {
    "name": "c",
    "grid": {
        "dataset": ["synthetic"],
        "backbone": ["smallnet"],
        "method": ["mixup", "cutmix"],
        "loss": ["mce", "dm_ce"],
        "seeds": [0, 1, 2],
    },
    "recipe": "smoke",
    "controls": True,
    "overrides": [
        {"match": {"method": "mixup", "loss": "mce"}, "set": {"alpha": 1.0}},
        {"match": {"method": "cutmix", "loss": "mce"}, "set": {"alpha": 0.2}},
        {"match": {"loss": "dm_ce"}, "set": {"alpha": 0.2, "epochs": 3}},
    ],
}


def spec(**changes: Any):
    raw = copy.deepcopy(RAW)
    raw.update(changes)
    return spec_from_dict(raw)


def test_a_dm_cell_gets_its_control_at_its_alpha_with_its_own_id() -> None:
    cells = {c.cell_id: c for c in expand(spec())}
    control = cells["synthetic/smallnet/mixup/mce/control"]
    assert is_control_id(control.cell_id) and not is_control_id("synthetic/smallnet/mixup/mce")
    assert control.loss == "mce" and control.hyperparameters == {"alpha": 0.2}
    assert cells["synthetic/smallnet/mixup/mce"].hyperparameters == {"alpha": 1.0}
    assert control.epochs == 3  # the DM cell's settings but its loss
    # CutMix's baseline already runs at the DM cell's alpha: it is its own control.
    assert "synthetic/smallnet/cutmix/mce/control" not in cells
    assert len(cells) == 5

    config = train_config(spec(), control, seed=1)
    assert (config.loss.name, config.mixing.alpha, config.epochs) == ("mce", 0.2, 3)


def test_controls_count_in_summaries_and_trials() -> None:
    with_controls, without = spec(), spec(controls=False)
    assert summary(with_controls)["cells"] == 5 and summary(without)["cells"] == 4
    assert summary(with_controls)["controls"] == 1 and summary(without)["controls"] == 0
    assert summary(with_controls)["trials"] == 15 == total_trials(with_controls)
    assert total_trials(without) == 12
    ids = [cell.cell_id for cell, _, _ in trials(with_controls)]
    assert ids.count("synthetic/smallnet/mixup/mce/control") == 3


def test_dm_bce_gets_an_mbce_control_and_a_method_without_alpha_none() -> None:
    grid = {**RAW["grid"], "method": ["mixup", "resizemix"], "loss": ["mbce", "dm_bce"]}
    overrides = [
        {"match": {"loss": "mbce"}, "set": {"alpha": 1.0}},
        {"match": {"method": "mixup", "loss": "dm_bce"}, "set": {"alpha": 0.2}},
    ]
    cells = {c.cell_id: c for c in expand(spec(grid=grid, overrides=overrides))}
    assert cells["synthetic/smallnet/mixup/mbce/control"].hyperparameters == {"alpha": 0.2}
    # ResizeMix draws its scale from U[0.1, 0.8]: no alpha, so nothing to control for.
    assert [c for c in cells if c.endswith("/control")] == ["synthetic/smallnet/mixup/mbce/control"]


def test_controls_refuse_a_search_that_tunes_alpha() -> None:
    search = {"parameters": {"alpha": [0.2, 1.0]}, "sampler": "grid"}
    with pytest.raises(ValueError, match="controls"):
        spec(search=search)
    spec(search=search, controls=False)  # without controls the same search is fine
