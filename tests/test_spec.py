"""Sweep specs: shipped files, defaults precedence (appendix A.3), validation messages, search."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from service.spec import defaults
from service.spec.cells import comparable, expand, search_space, study_name, summary, trials
from service.spec.model import MAX_TRIALS
from service.spec.reading import load_spec, spec_from_dict
from service.spec.reference import json_schema
from trainers.config import TrainConfig

SPECS = Path(__file__).resolve().parents[1] / "search_spaces"

BASE: dict[str, Any] = {
    "name": "t",
    "grid": {
        "dataset": ["cifar100"],
        "backbone": ["resnet18_cifar"],
        "method": ["mixup", "cutmix"],
        "loss": ["mce", "dm_ce"],
    },
    "recipe": "cifar",
}


def make(**changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    for key, value in changes.items():
        if key in ("dataset", "backbone", "method", "loss", "seeds"):
            raw["grid"][key] = value
        else:
            raw[key] = value
    return raw


def cells_by_id(raw: dict[str, Any]) -> dict[str, Any]:
    return {c.cell_id: c for c in expand(spec_from_dict(raw))}


def error(raw: dict[str, Any]) -> str:
    with pytest.raises(ValueError) as info:
        spec_from_dict(raw)
    return str(info.value)


# --- shipped specs -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["smoke", "cifar100_table1", "tune_eta"])
def test_shipped_specs_load(name: str) -> None:
    spec = load_spec(SPECS / f"{name}.yaml")
    assert spec.name == name
    assert summary(spec)["trials"] == len(trials(spec))


def test_table1_expands_to_the_full_grid() -> None:
    spec = load_spec(SPECS / "cifar100_table1.yaml")
    g = spec.grid
    cells = expand(spec)
    # Table 1: 3 backbones x 9 methods x MCE / DM(CE).
    assert len(cells) == len(g.backbone) * len(g.method) * len(g.loss) == 54
    assert len({c.cell_id for c in cells}) == len(cells)
    rows = trials(spec)
    assert len(rows) == 3 * len(cells)
    for cell, seed, config in rows:
        assert isinstance(config, TrainConfig)
        assert config.seed == seed
        assert config.data.name == cell.dataset == "cifar100"
        assert (config.mixing.method, config.loss.name) == (cell.method, cell.loss)
        assert TrainConfig.model_validate(config.model_dump()) == config
    assert [s for _, s, _ in rows[:3]] == [0, 1, 2]
    assert summary(spec)["search"] is False


def test_smoke_is_cheap() -> None:
    spec = load_spec(SPECS / "smoke.yaml")
    for _, _, config in trials(spec):
        assert config.data.name == "synthetic"
        assert config.backbone.name == "smallnet"
        assert config.epochs == 2


def test_cell_ids() -> None:
    cell = expand(spec_from_dict(make()))[0]
    assert cell.cell_id == "cifar100/resnet18_cifar/mixup/mce"
    assert cell.slug == "cifar100__resnet18_cifar__mixup__mce"
    assert study_name("sweep-1", cell) == "sweep-1:cifar100/resnet18_cifar/mixup/mce"


# --- defaults and precedence ---------------------------------------------------------------------


def test_defaults_table() -> None:
    r = defaults.resolve_hyperparameters
    # OpenMixup CIFAR-100 alphas with MCE; A.3's 0.2 with DM.
    assert r("cifar100", "resnet18_cifar", "mixup", "mce") == {"alpha": 1.0}
    assert r("cifar100", "resnet18_cifar", "manifoldmix", "mce") == {"alpha": 2.0}
    assert r("cifar100", "resnet18_cifar", "mixup", "dm_ce") == {"alpha": 0.2, "eta": 0.1}
    # A.3: Tiny-ImageNet / fine-grained, static: eta 1 on ResNet-18, 0.1 on ResNeXt-50.
    assert r("tiny_imagenet", "resnet18_cifar", "cutmix", "dm_ce")["eta"] == 1.0
    assert r("cub200", "resnet18", "cutmix", "dm_ce")["eta"] == 1.0
    assert r("tiny_imagenet", "resnext50_cifar", "cutmix", "dm_ce")["eta"] == 0.1
    assert r("tiny_imagenet", "wrn28_8", "cutmix", "dm_ce")["eta"] == 0.1
    # dynamic: eta 1 everywhere, alpha 2 with DM.
    assert r("tiny_imagenet", "resnext50_cifar", "puzzlemix", "dm_ce") == {"alpha": 2.0, "eta": 1.0}
    # DM(BCE): cutting-based xi 0.8 t 1, interpolation-based xi 1 t 0.5.
    assert r("imagenet", "resnet50", "cutmix", "dm_bce") == {"alpha": 0.2, "xi": 0.8, "t": 1.0}
    assert r("imagenet", "resnet50", "mixup", "dm_bce") == {"alpha": 0.2, "xi": 1.0, "t": 0.5}
    assert r("cifar100", "resnet18_cifar", "vanilla", "ce") == {}
    assert r("cifar100", "resnet18_cifar", "resizemix", "mce") == {}
    assert r("imagenet", "resnet50", "mixup_cutmix", "mbce") == {}
    with pytest.raises(ValueError, match="allowed"):
        r("cifar100", "resnet18_cifar", "mixpu", "mce")


def test_spec_uses_defaults() -> None:
    raw = make(
        dataset=["cifar100", "tiny_imagenet"], backbone=["resnet18_cifar", "resnext50_cifar"]
    )
    raw["grid"]["loss"] = ["mce", "dm_ce", "dm_bce"]
    cells = cells_by_id(raw)
    assert cells["cifar100/resnet18_cifar/mixup/mce"].hyperparameters == {"alpha": 1.0}
    assert cells["cifar100/resnet18_cifar/mixup/dm_ce"].hyperparameters == {
        "alpha": 0.2,
        "eta": 0.1,
    }
    assert cells["tiny_imagenet/resnet18_cifar/cutmix/dm_ce"].hyperparameters["eta"] == 1.0
    assert cells["tiny_imagenet/resnext50_cifar/cutmix/dm_ce"].hyperparameters["eta"] == 0.1
    bce = cells["cifar100/resnet18_cifar/cutmix/dm_bce"].hyperparameters
    assert (bce["xi"], bce["t"]) == (0.8, 1.0)
    bce = cells["cifar100/resnet18_cifar/mixup/dm_bce"].hyperparameters
    assert (bce["xi"], bce["t"]) == (1.0, 0.5)


def test_a_spec_runs_puzzlemix_with_its_defaults() -> None:
    """PuzzleMix is a trial's method: OpenMixup's alpha 1 for the baselines (every benchmark's
    "Beta" column), A.3's dynamic settings with DM (alpha 2, eta 1) and its cutting-based
    DM(BCE) settings (xi 0.8, t 1)."""
    raw = make(method=["puzzlemix"], loss=["mce", "dm_ce", "mbce", "dm_bce"])
    cells = cells_by_id(raw)
    cell = "cifar100/resnet18_cifar/puzzlemix/"
    assert cells[cell + "mce"].hyperparameters == {"alpha": 1.0}
    assert cells[cell + "mbce"].hyperparameters == {"alpha": 1.0}
    assert cells[cell + "dm_ce"].hyperparameters == {"alpha": 2.0, "eta": 1.0}
    assert cells[cell + "dm_bce"].hyperparameters == {"alpha": 2.0, "xi": 0.8, "t": 1.0}
    configs = {c.cell_id: config for c, _, config in trials(spec_from_dict(raw))}
    bce = configs[cell + "dm_bce"]
    assert (bce.mixing.method, bce.mixing.alpha) == ("puzzlemix", 2.0)
    # One xi / t for every batch: PuzzleMix never switches to an interpolating policy.
    assert bce.loss.interpolation_settings() == {}


def test_precedence_top_level_then_overrides_later_wins() -> None:
    raw = make(
        hyperparameters={"eta": 0.5},
        overrides=[
            {"match": {"method": "cutmix"}, "set": {"eta": 2.0, "alpha": 0.5}},
            {"match": {"method": ["cutmix"], "loss": "dm_ce"}, "set": {"eta": 1.5}},
        ],
    )
    cells = cells_by_id(raw)
    assert cells["cifar100/resnet18_cifar/mixup/dm_ce"].hyperparameters == {
        "alpha": 0.2,
        "eta": 0.5,
    }
    assert cells["cifar100/resnet18_cifar/cutmix/dm_ce"].hyperparameters == {
        "alpha": 0.5,
        "eta": 1.5,
    }
    # eta does not reach MCE cells; the override's alpha does.
    assert cells["cifar100/resnet18_cifar/cutmix/mce"].hyperparameters == {"alpha": 0.5}
    config = trials(spec_from_dict(raw))[3][2]
    assert (config.mixing.alpha, config.loss.eta) == (0.5, 1.5)


def test_override_recipe_and_epochs() -> None:
    raw = make(
        epochs=10,
        recipe_overrides={"lr": 0.05},
        overrides=[
            {"match": {"method": "cutmix"}, "set": {"epochs": 4, "recipe_overrides": {"lr": 0.2}}}
        ],
    )
    rows = {cell.cell_id: config for cell, _, config in trials(spec_from_dict(raw))}
    assert rows["cifar100/resnet18_cifar/mixup/mce"].epochs == 10
    assert rows["cifar100/resnet18_cifar/mixup/mce"].recipe_overrides == {"lr": 0.05}
    assert rows["cifar100/resnet18_cifar/cutmix/mce"].epochs == 4
    assert rows["cifar100/resnet18_cifar/cutmix/mce"].recipe_overrides == {"lr": 0.2}


def test_mixup_cutmix_uses_recipe_alphas() -> None:
    raw = make(dataset=["imagenet"], backbone=["resnet50"], method=["mixup_cutmix"], loss=["mce"])
    raw["recipe"] = "deit"
    (cell,) = expand(spec_from_dict(raw))
    assert cell.hyperparameters == {}
    assert "hyperparameters.alpha" in error({**raw, "hyperparameters": {"alpha": 1.0}})
    # The cifar recipe has no alphas of its own: then mixing.alpha is used for both.
    raw = make(method=["mixup_cutmix"], loss=["mce"], hyperparameters={"alpha": 1.0})
    (_, _, config) = trials(spec_from_dict(raw))[0]
    assert config.mixing.alpha == 1.0
    assert "needs alphas" in error(make(method=["mixup_cutmix"], loss=["mce"]))


def test_lambda_mode_is_batch_by_default_and_set_per_spec_and_override() -> None:
    configs = {cell.cell_id: config for cell, _, config in trials(spec_from_dict(make()))}
    assert {c.mixing.lambda_mode for c in configs.values()} == {"batch"}
    raw = make(
        mixing={"lambda_mode": "sample"},
        overrides=[{"match": {"method": "cutmix"}, "set": {"mixing": {"lambda_mode": "batch"}}}],
    )
    configs = {cell.cell_id: config for cell, _, config in trials(spec_from_dict(raw))}
    assert configs["cifar100/resnet18_cifar/mixup/mce"].mixing.lambda_mode == "sample"
    assert configs["cifar100/resnet18_cifar/cutmix/dm_ce"].mixing.lambda_mode == "batch"
    # An override setting only the detector leaves the spec's lambda mode alone.
    raw["overrides"] = [
        {
            "match": {"method": "cutmix"},
            "set": {"mixing": {"saliency_detector": "spectral_residual"}},
        }
    ]
    configs = {cell.cell_id: config for cell, _, config in trials(spec_from_dict(raw))}
    cutmix = configs["cifar100/resnet18_cifar/cutmix/mce"].mixing
    assert (cutmix.lambda_mode, cutmix.saliency_detector) == ("sample", "spectral_residual")
    assert "lambda_mode" in error(make(mixing={"lambda_mode": "row"}))


def test_a_cell_drawing_lambda_per_sample_is_not_comparable_with_the_paper() -> None:
    raw = make(
        overrides=[{"match": {"method": "cutmix"}, "set": {"mixing": {"lambda_mode": "sample"}}}]
    )
    spec = spec_from_dict(raw)
    verdicts = {cell.cell_id: comparable(spec, cell) for cell in expand(spec)}
    assert verdicts == {
        "cifar100/resnet18_cifar/mixup/mce": True,
        "cifar100/resnet18_cifar/mixup/dm_ce": True,
        "cifar100/resnet18_cifar/cutmix/mce": False,
        "cifar100/resnet18_cifar/cutmix/dm_ce": False,
    }


def test_saliencymix_on_the_spectral_residual_is_not_comparable() -> None:
    raw = make(method=["saliencymix", "cutmix"], mixing={"saliency_detector": "spectral_residual"})
    spec = spec_from_dict(raw)
    verdicts = {cell.method: comparable(spec, cell) for cell in expand(spec)}
    assert verdicts == {"saliencymix": False, "cutmix": True}


def test_a_samix_balance_other_than_its_configs_is_not_comparable() -> None:
    raw = make(method=["samix", "automix"], mixing={"samix_balance": 0.2})
    spec = spec_from_dict(raw)
    verdicts = {cell.method: comparable(spec, cell) for cell in expand(spec)}
    assert verdicts == {"samix": False, "automix": True}


def test_settings_with_a_cited_source_keep_cells_comparable() -> None:
    def verdicts(**changes: Any) -> dict[str, bool]:
        spec = spec_from_dict(make(**changes))
        return {cell.cell_id.split("/", 2)[2]: comparable(spec, cell) for cell in expand(spec)}

    cited = {"recipe_overrides": {"lr": 0.03}, "epochs": 400, "source": "a config's path"}
    assert set(verdicts(overrides=[{"match": {}, "set": cited}]).values()) == {True}
    uncited = {"recipe_overrides": {"lr": 0.03}}
    assert verdicts(overrides=[{"match": {"method": "cutmix"}, "set": uncited}]) == {
        "mixup/mce": True,
        "mixup/dm_ce": True,
        "cutmix/mce": False,
        "cutmix/dm_ce": False,
    }
    # The spec's own epochs and recipe overrides cite nothing.
    assert set(verdicts(epochs=10).values()) == {False}
    assert set(verdicts(recipe_overrides={"lr": 0.05}).values()) == {False}
    # A cited override replacing the spec's epochs makes them the paper's again...
    assert set(verdicts(epochs=10, overrides=[{"match": {}, "set": cited}]).values()) == {True}
    # ...but recipe overrides merge: an uncited one anywhere taints the merged result.
    both = [{"match": {}, "set": cited}, {"match": {"loss": "mce"}, "set": uncited}]
    assert verdicts(overrides=both)["mixup/mce"] is False
    assert verdicts(overrides=both)["mixup/dm_ce"] is True


def test_every_paper_table_spec_draws_one_lambda_per_batch_and_is_comparable() -> None:
    for path in sorted(SPECS.glob("*table*.yaml")):
        spec = load_spec(path)
        cells = expand(spec)
        assert {c.mixing.lambda_mode for c in cells} == {"batch"}, path.name
        # Their overrides cite their sources: every cell compares with the paper's number.
        assert all(comparable(spec, c) for c in cells), path.name


def test_mixup_cutmix_with_dm_bce_gets_both_families_settings() -> None:
    raw = make(
        dataset=["imagenet"], backbone=["resnet50"], method=["mixup_cutmix"], loss=["dm_bce"]
    )
    raw["recipe"] = "rsb_a3"
    (_, _, config) = trials(spec_from_dict(raw))[0]
    # A.3: cutting-based xi 0.8, t 1 (the CutMix batches); interpolation-based xi 1, t 0.5.
    assert (config.loss.xi, config.loss.t) == (0.8, 1.0)
    assert (config.loss.interpolation_xi, config.loss.interpolation_t) == (1.0, 0.5)
    # A spec that sets xi or t sets them for every batch: the split is A.3's defaults only.
    (_, _, config) = trials(spec_from_dict({**raw, "hyperparameters": {"xi": 0.9}}))[0]
    assert (config.loss.xi, config.loss.t) == (0.9, 1.0)
    assert config.loss.interpolation_xi is None and config.loss.interpolation_t is None
    raw = make(method=["mixup"], loss=["dm_bce"])
    raw["recipe"] = "rsb_a3"
    raw["grid"]["dataset"], raw["grid"]["backbone"] = ["imagenet"], ["resnet50"]
    (_, _, config) = trials(spec_from_dict(raw))[0]
    assert config.loss.interpolation_xi is None


def test_exclude_removes_cells() -> None:
    raw = make(exclude=[{"method": "cutmix", "loss": "mce"}])
    ids = list(cells_by_id(raw))
    assert ids == [
        "cifar100/resnet18_cifar/mixup/mce",
        "cifar100/resnet18_cifar/mixup/dm_ce",
        "cifar100/resnet18_cifar/cutmix/dm_ce",
    ]
    assert summary(spec_from_dict(raw))["trials"] == 3


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "path", "allowed"),
    [
        ({"method": ["mixup", "mixpu"]}, "grid.method.1", "saliencymix"),
        ({"method": ["automix", "snowmix"]}, "grid.method.1", "samix"),
        ({"dataset": ["cifar1000"]}, "grid.dataset.0", "tiny_imagenet"),
        ({"backbone": ["resnet1800"]}, "grid.backbone.0", "timm model name"),
        ({"loss": ["mce", "dmce"]}, "grid.loss.1", "dm_bce"),
        ({"loss": []}, "grid.loss", "at least 1"),
        ({"method": ["mixup", "mixup"]}, "grid.method", "unique"),
        ({"seeds": [-1]}, "grid.seeds.0", "greater than or equal to 0"),
        ({"seeds": list(range(101))}, "grid.seeds", "at most 100"),
        ({"name": "my sweep"}, "name", "letters, digits"),
        ({"name": "sweep\n"}, "name", "letters, digits"),
        ({"name": "-rf"}, "name", "must not start with '-' or '.'"),
        ({"name": ".."}, "name", "must not start with '-' or '.'"),
        ({"name": "a" * 101}, "name", "101 characters; at most 100"),
        ({"hyperparameters": {"eta": -0.1}}, "hyperparameters.eta", ">= 0"),
        ({"hyperparameters": {"alpha": 0}}, "hyperparameters.alpha", "> 0"),
        ({"hyperparameters": {"alpha": float("inf")}}, "hyperparameters.alpha", "finite"),
        ({"hyperparameters": {"eta": float("nan")}}, "hyperparameters.eta", "finite"),
        ({"hyperparameters": {"xi": 0.8}}, "hyperparameters.xi", "dm_bce"),
        ({"hyperparameters": {"gamma": 1}}, "hyperparameters.gamma", "Extra inputs"),
        ({"recipe": "cifar10"}, "recipe", "tiny_imagenet"),
        ({"recipe_overrides": {"lrr": 0.1}}, "recipe_overrides", "'lrr'"),
        ({"recipe_overrides": {"lr": float("nan")}}, "recipe_overrides.lr", "finite"),
        (
            {"recipe_overrides": {"betas": [0.9, float("inf")]}},
            "recipe_overrides.betas.1",
            "finite",
        ),
        ({"epochs": 0}, "epochs", "greater than or equal to 1"),
        ({"loss": ["ce"]}, "cell cifar100/resnet18_cifar/mixup/ce", "vanilla"),
        ({"exclude": [{"method": ["mixup", "cutmix"]}]}, "exclude", "every cell"),
        ({"exclude": [{"method": "fmix"}]}, "exclude.0.method.0", "not in grid.method"),
        ({"data": {"cifar10": {}}}, "data.cifar10", "not in grid.dataset"),
        ({"data": {"cifar100": {"subset": 0}}}, "data.cifar100.subset", "greater than"),
        ({"data": {"cifar100": {"name": "x"}}}, "data.cifar100.name", "Extra inputs"),
        ({"resources": {"workers_per_trial": 0}}, "resources.workers_per_trial", "greater"),
        ({"resources": {"cpus_per_worker": 0}}, "resources.cpus_per_worker", "greater than 0"),
        ({"resources": {"gpus_per_worker": -1}}, "resources.gpus_per_worker", "greater"),
        ({"unknown": 1}, "unknown", "Extra inputs"),
    ],
)
def test_validation_errors(changes: dict[str, Any], path: str, allowed: str) -> None:
    message = error(make(**changes))
    assert path in message
    assert allowed in message


def test_override_errors() -> None:
    bad_xi = make(loss=["dm_bce"], overrides=[{"match": {"loss": "dm_bce"}, "set": {"xi": 1.5}}])
    message = error(bad_xi)
    assert "overrides.0.set.xi" in message and "(0, 1]" in message
    message = error(make(overrides=[{"match": {"loss": "mce"}, "set": {"eta": 0.5}}]))
    assert "overrides.0.set.eta" in message and "dm_ce" in message
    message = error(make(overrides=[{"match": {"mehtod": "mixup"}, "set": {"eta": 0.5}}]))
    assert "overrides.0.match.mehtod" in message
    message = error(make(overrides=[{"match": {}, "set": {"recipe_overrides": {"lr": -1}}}]))
    assert "overrides.0.set.recipe_overrides" in message and "lr" in message
    message = error(make(overrides=[{"match": {}, "set": {"gamma": 1}}]))
    assert "overrides.0.set.gamma" in message


def test_too_many_trials() -> None:
    raw = make(seeds=list(range(100)))
    raw["grid"]["method"] = ["mixup", "cutmix", "manifoldmix", "saliencymix", "fmix", "resizemix"]
    raw["grid"]["backbone"] = [
        "resnet18_cifar",
        "resnext50_cifar",
        "wrn28_8",
        "wrn28_2",
        "smallnet",
    ]
    raw["grid"]["loss"] = ["mce", "dm_ce", "mbce", "dm_bce"]  # 120 cells x 100 seeds
    message = error(raw)
    assert "grid" in message and f"{MAX_TRIALS:,}" in message


def test_the_axes_product_is_refused_before_any_cell_is_built(monkeypatch) -> None:
    """7 data sets x 40 backbones x 6 methods x 6 losses = 10,080 cells: refused without
    expanding a single cell."""
    import timm

    import service.spec.model as model

    def expand_nothing(spec: Any) -> list[Any]:
        raise AssertionError("expanded the cells of a grid over the cap")

    raw = make(
        dataset=["cifar10", "cifar100", "tiny_imagenet", "cub200", "aircraft", "cars", "imagenet"],
        backbone=timm.list_models("resnet*")[:40],
        method=["mixup", "cutmix", "manifoldmix", "saliencymix", "fmix", "resizemix"],
        loss=["ce", "mce", "dm_ce", "mbce", "mbce_two", "dm_bce"],
    )
    monkeypatch.setattr(model, "expand", expand_nothing)
    assert "7 x 40 x 6 x 6 = 10,080 cells; at most 10,000" in error(raw)


def test_search_samples_count_toward_the_trial_cap() -> None:
    raw = make(
        seeds=list(range(50)),
        search={
            "parameters": {"eta": {"low": 0.01, "high": 1.0}},
            "sampler": "tpe",
            "num_samples": 60,
        },
    )
    message = error(raw)
    assert "4 cells x 50 seeds x 60 settings = 12,000 trials; at most 10,000" in message


@pytest.mark.parametrize(
    ("changes", "path", "allowed"),
    [
        ({"epochs": 10_001}, "epochs", "less than or equal to 10000"),
        ({"batch_size": 70_000}, "batch_size", "less than or equal to 65536"),
        ({"seeds": [2**31]}, "grid.seeds.0", "less than or equal to 2147483647"),
        ({"method": [f"m{i}" for i in range(101)]}, "grid.method", "at most 100 items"),
        ({"exclude": [{"method": "mixup"}] * 1001}, "exclude", "at most 1000 items"),
        (
            {"data": {"synthetic": {"synthetic_images": {"train": 10**7}}}},
            "data.synthetic.synthetic_images.train",
            "less than or equal to 1000000",
        ),
        ({"data": {"cifar100": {"image_size": 4096}}}, "data.cifar100.image_size", "1024"),
    ],
)
def test_sizes_have_upper_bounds(changes: dict[str, Any], path: str, allowed: str) -> None:
    message = error(make(**changes))
    assert path in message and allowed in message


def test_load_spec_names_file_and_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: x\ngrid: {dataset: [cifar100], backbone: [resnet18_cifar],"
        " method: [mixup, mixpu], loss: [mce]}\n"
    )
    with pytest.raises(ValueError, match=r"bad\.yaml: grid\.method\.1: .*allowed"):
        load_spec(path)


# --- search --------------------------------------------------------------------------------------


def test_grid_search_defaults_to_grid_size() -> None:
    raw = make(
        search={"parameters": {"eta": [0.01, 0.1, 0.5, 1, 2], "alpha": [0.2, 1]}, "sampler": "grid"}
    )
    spec = spec_from_dict(raw)
    assert spec.search is not None and spec.search.num_samples == 10
    assert (spec.search.metric, spec.search.mode) == ("val_top1", "max")
    cells = expand(spec)
    assert set(search_space(spec, cells[1])) == {"eta", "alpha"}  # mixup/dm_ce
    assert set(search_space(spec, cells[0])) == {"alpha"}  # mixup/mce
    assert len(trials(spec)) == 4
    assert summary(spec)["search"] is True
    raw["search"]["num_samples"] = 11
    assert "search.num_samples" in error(raw)


def test_tpe_search_with_ranges() -> None:
    raw = make(
        epochs=20,
        search={
            "parameters": {"lr": {"low": 1e-3, "high": 1, "log": True}, "eta": [0.1, 1]},
            "num_samples": 8,
            "scheduler": {"type": "asha", "grace_period": 2},
        },
    )
    spec = spec_from_dict(raw)
    assert spec.search is not None and spec.search.sampler == "tpe"
    assert spec.search.scheduler is not None and spec.search.scheduler.max_t == 20
    del raw["search"]["num_samples"]
    assert "search.num_samples" in error(raw)


@pytest.mark.parametrize(
    ("search", "path", "allowed"),
    [
        (
            {"parameters": {"lr": {"low": 0.01, "high": 0.1}}, "sampler": "grid"},
            "search.sampler",
            "tpe",
        ),
        ({"parameters": {"xi": [0.8, 1]}, "num_samples": 2}, "search.parameters.xi", "dm_bce"),
        ({"parameters": {"eta": [0.1, -1]}, "num_samples": 2}, "search.parameters.eta.1", ">= 0"),
        (
            {"parameters": {"eta": {"low": 0, "high": 1, "log": True}}, "num_samples": 2},
            "search.parameters.eta",
            "low > 0",
        ),
        (
            {"parameters": {"momentum": [0.9]}, "num_samples": 1},
            "search.parameters.momentum",
            "'lr'",
        ),
        (
            {"parameters": {"eta": [0.1]}, "num_samples": 1, "scheduler": {"type": "hyperband"}},
            "search.scheduler.type",
            "asha",
        ),
        (
            {
                "parameters": {"eta": [0.1]},
                "num_samples": 1,
                "scheduler": {"type": "asha", "grace_period": 900},
            },
            "search.scheduler.grace_period",
            "max_t",
        ),
    ],
)
def test_search_errors(search: dict[str, Any], path: str, allowed: str) -> None:
    message = error(make(search=search))
    assert path in message and allowed in message


# --- data and schema -----------------------------------------------------------------------------


def test_data_problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.spec.data_check import data_problems

    monkeypatch.setenv("DMSWEEP_DATA_ROOT", str(tmp_path))
    spec = spec_from_dict(make(dataset=["cifar100", "synthetic"], backbone=["smallnet"]))
    (problem,) = data_problems(spec)
    assert str(tmp_path / "cifar100") in str(problem)
    (tmp_path / "cifar100").mkdir()
    assert data_problems(spec) == []
    spec = spec_from_dict(make(data={"cifar100": {"root": str(tmp_path / "elsewhere")}}))
    (problem,) = data_problems(spec)
    assert str(tmp_path / "elsewhere") in str(problem)
    monkeypatch.delenv("DMSWEEP_DATA_ROOT")
    assert data_problems(load_spec(SPECS / "smoke.yaml")) == []
    (problem,) = data_problems(spec_from_dict(make()))
    assert "DMSWEEP_DATA_ROOT" in str(problem)


def test_json_schema() -> None:
    schema = json_schema()
    assert isinstance(schema, dict)
    assert "grid" in schema["properties"]


def test_every_shipped_sweep_spec_validates():
    folder = Path(__file__).resolve().parents[1] / "search_spaces"
    specs = sorted(folder.glob("*.yaml"))
    assert len(specs) >= 8
    for path in specs:
        spec = load_spec(path)
        assert spec.name == path.stem
        assert summary(spec)["trials"] >= 1


def test_storage_path_is_a_folder_or_a_bucket_prefix() -> None:
    assert spec_from_dict(make(storage_path="/mnt/shared/sweeps")).storage_path
    assert spec_from_dict(make(storage_path="s3://bucket/sweeps")).storage_path
    message = error(make(storage_path="gs://bucket/sweeps"))
    assert "storage_path" in message and "s3://BUCKET/PREFIX" in message
    message = error(make(storage_path="s3://bucket/a/../b"))
    assert "storage_path" in message and "'..'" in message
