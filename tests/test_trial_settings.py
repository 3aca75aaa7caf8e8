"""A searched setting substituted into a trial's TrainConfig (``trial.with_params``)."""

from __future__ import annotations

from service.spec.cells import trials
from service.spec.reading import spec_from_dict
from service.sweep.trial import with_params
from tests.support.specs import tiny_spec


def test_a_searched_xi_or_t_applies_to_every_batch_of_mixup_cutmix() -> None:
    raw = tiny_spec(
        grid={
            "dataset": ["imagenet"],
            "backbone": ["resnet50"],
            "method": ["mixup_cutmix"],
            "loss": ["dm_bce"],
            "seeds": [0],
        },
        recipe="rsb_a3",
        epochs=None,
        search={"parameters": {"xi": [0.8, 0.9], "lr": [0.001]}, "sampler": "grid"},
    )
    (_, _, config) = trials(spec_from_dict(raw))[0]
    stored = config.model_dump(mode="json")
    assert (stored["loss"]["interpolation_xi"], stored["loss"]["interpolation_t"]) == (1.0, 0.5)
    tuned = with_params(stored, {"xi": 0.9, "lr": 0.001})
    assert (tuned.loss.xi, tuned.loss.t) == (0.9, 1.0)
    assert tuned.loss.interpolation_xi is None and tuned.loss.interpolation_t is None
    # Another searched setting leaves A.3's split as it is.
    kept = with_params(stored, {"lr": 0.001})
    assert (kept.loss.interpolation_xi, kept.loss.interpolation_t) == (1.0, 0.5)
