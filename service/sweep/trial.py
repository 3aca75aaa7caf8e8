"""One trial of a sweep, on the cluster: its driver (a Tune function trainable) and its context.

``run_trial`` is what Ray Tune runs for each trial. A trial of one worker trains right there,
in the Tune trial's process, which holds the worker's CPUs and GPUs
(``service.sweep.worker.train_in_trial``): no Ray Train run, controller or worker group to start
for it. A trial of several workers builds a Ray Train V2 ``TorchTrainer`` over
``service.sweep.worker.train_loop_per_worker`` with the trial's resources, checkpoints and
``FailureConfig``, reporting to Tune through ``TuneReportCallback``. Either way it writes the
trial's record to the sweep folder. ``build_context`` resolves, once in the sweep's driver,
everything the trials need (``SweepContext``, sent to the cluster with ``tune.with_parameters``).
"""

from __future__ import annotations

import copy
import traceback
from dataclasses import asdict, dataclass
from typing import Any

import ray
import ray.train
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from service.results.folder import SweepFolder
from service.results.records import TrialRecord, TrialState, numbers
from service.spec.cells import AXES, comparable, expand, labels_text, train_config
from service.spec.model import SweepSpec
from service.storage.paths import as_path
from service.sweep.worker import (
    CHECKPOINTS_KEPT,
    TrialCheckpoints,
    append_log,
    train_in_trial,
    train_loop_per_worker,
)
from service.tracking.store import Tracking
from service.tracking.trial_runs import flatten, trial_yaml
from trainers.config import TrainConfig
from trainers.data.datasets import data_location, is_synthetic
from trainers.mixing.base import LambdaMode
from trainers.recipes import get_recipe
from trainers.vocabulary import DEFAULT_AS_SIDE, LOSS_HYPERPARAMETER_NAMES

TRAIN_RETRIES = 2  # worker group restarts of a several-worker trial (from its last checkpoint)


class TrialFailedError(RuntimeError):
    """A trial failed in a way a retry would repeat (the message says why)."""


@dataclass(frozen=True)
class CellRun:
    """One cell as its trials run it: identity, resolved settings, whether the paper compares."""

    dataset: str
    backbone: str
    method: str
    loss: str
    recipe: str
    epochs: int
    hyperparameters: dict[str, float]
    comparable: bool  # the paper's recipe as is: its number compares with ours
    lambda_mode: LambdaMode  # one lambda per batch (the paper's configurations) or per sample
    algorithm: str = "supervised"  # or a semi-supervised algorithm of Table 7
    labels: float | None = None  # the labels kept (grid.labels), or None: the data's
    as_side: str | None = None  # the AS side (grid.as_side) where not the default
    labelled_mixup: str | None = None  # a transfer cell's labelled mixing beside its AS term


@dataclass(frozen=True)
class SweepContext:
    """What every trial's driver needs; sent once to the cluster with ``tune.with_parameters``."""

    folder: str
    configs: dict[str, dict[str, Any]]  # "<cell id>#<seed>" -> TrainConfig as JSON
    cells: dict[str, CellRun]  # by cell id
    tracking: dict[str, str] | None
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float


def config_key(cell_id: str, seed: int) -> str:
    """The key of a trial's TrainConfig in ``SweepContext.configs``."""
    return f"{cell_id}#{seed}"


def with_params(config: dict[str, Any], params: dict[str, float]) -> TrainConfig:
    """A trial's TrainConfig with a sampled setting substituted (eta/xi/t, alpha, lr, wd)."""
    config = copy.deepcopy(config)
    for name, value in params.items():
        if name in LOSS_HYPERPARAMETER_NAMES:
            config["loss"][name] = value
            if name in ("xi", "t"):
                # A searched xi / t is one setting for every batch, Mixup's and CutMix's alike
                # (service.spec.cells: A.3's split applies only to its own defaults).
                config["loss"]["interpolation_xi"] = config["loss"]["interpolation_t"] = None
        elif name == "alpha":
            config["mixing"]["alpha"] = value
        else:
            config["recipe_overrides"][name] = value
    return TrainConfig.model_validate(config)


def trial_name(cell_id: str, seed: int, params: dict[str, float]) -> str:
    """``dataset/backbone/method/loss/seed<k>``, then the sampled setting when tuning."""
    name = f"{cell_id}/seed{seed}"
    if params:
        name += "/" + ",".join(f"{k}={v:.4g}" for k, v in sorted(params.items()))
    return name


def _flat_params(config: TrainConfig, params: dict[str, float]) -> dict[str, str]:
    resolved = get_recipe(config.recipe, config.recipe_overrides).model_dump(mode="json")
    return {
        **flatten(config.model_dump(mode="json")),
        **flatten(resolved, "resolved_recipe"),
        **flatten({k: v for k, v in params.items()}, "search"),
    }


def trial_record(
    context: SweepContext,
    trial_id: str,
    cell_id: str,
    seed: int,
    params: dict[str, float],
    status: TrialState,
    *,
    metrics: dict[str, float] | None = None,
    error: str | None = None,
    traceback: str | None = None,
    deterministic: bool | None = None,
) -> TrialRecord:
    """A trial's record: identity, settings (the cell's, then the sampled ones), how it ended."""
    cell = context.cells[cell_id]
    return TrialRecord(
        trial_id=trial_id,
        name=trial_name(cell_id, seed, params),
        cell=cell_id,
        dataset=cell.dataset,
        backbone=cell.backbone,
        method=cell.method,
        loss=cell.loss,
        seed=seed,
        status=status,
        recipe=cell.recipe,
        epochs=cell.epochs,
        comparable=cell.comparable,
        lambda_mode=cell.lambda_mode,
        algorithm=cell.algorithm,
        labels=cell.labels,
        as_side=cell.as_side,
        labelled_mixup=cell.labelled_mixup,
        hyperparameters={**cell.hyperparameters, **params},
        metrics=numbers(metrics or {}),
        error=error,
        traceback=traceback,
        deterministic=deterministic,
    )


def run_trial(config: dict[str, Any], context: SweepContext) -> None:
    """One Tune trial, trained here or by a TorchTrainer over its workers; writes its record."""
    trial_id = tune.get_context().get_trial_id()
    folder = SweepFolder(as_path(context.folder))
    cell_id, seed = config["cell"], int(config["seed"])
    params = dict(config.get("params") or {})
    log_path = folder.log_file(trial_id)
    earlier = folder.read_record(trial_id)
    if earlier is not None and earlier.status == TrialState.FAILED and earlier.deterministic:
        raise TrialFailedError(earlier.error)  # a retry of a failure that would repeat
    if earlier is not None and earlier.status == TrialState.SUCCEEDED:
        # Finished before its sweep's driver died, after Tune's last snapshot: not run again.
        tune.report(dict(earlier.metrics))
        return
    # A one-worker trial keeps its own checkpoints (a Ray Train run's are Ray Train's to read).
    in_place = context.workers == 1
    finished = TrialCheckpoints(folder.train_dir / trial_id).finished() if in_place else None
    if finished is not None:
        # Killed after its last epoch was kept, before its record: its MLflow run was closed.
        append_log(log_path, "finished already: its last checkpoint is kept")
        folder.write_record(
            trial_record(
                context, trial_id, cell_id, seed, params, TrialState.SUCCEEDED, metrics=finished
            )
        )
        tune.report(finished)
        return

    def fail(message: str, trace: str) -> None:  # a failure that a retry would repeat
        folder.write_record(
            trial_record(
                context,
                trial_id,
                cell_id,
                seed,
                params,
                TrialState.FAILED,
                error=message,
                deterministic=True,
                traceback=trace,
            ),
        )

    try:
        trial = with_params(context.configs[config_key(cell_id, seed)], params)
    except ValueError as error:  # a sampled setting TrainConfig refuses
        fail(str(error), traceback.format_exc())
        raise TrialFailedError(str(error)) from None
    node = ray.get_runtime_context().get_node_id()
    append_log(
        log_path, f"trial {trial_name(cell_id, seed, params)} ({trial_id}): driver on node {node}"
    )

    cell = context.cells[cell_id]
    # The child run is opened by rank 0 while it builds the trial (TrialLogger.start); MLflow
    # down, it is made later from the sweep's outbox.
    run_plan = {
        "trial_id": trial_id,
        "name": trial_name(cell_id, seed, params),
        "tags": {
            **{axis: str(getattr(cell, axis)) for axis in AXES},
            "algorithm": cell.algorithm,
            **({"labels": labels_text(cell.labels)} if cell.labels is not None else {}),
            **({"as_side": cell.as_side} if cell.as_side is not None else {}),
            **({"labelled_mixup": cell.labelled_mixup} if cell.labelled_mixup else {}),
            "seed": str(seed),
            "cell": cell_id,
        },
        "params": _flat_params(trial, params),
        "trial_yaml": trial_yaml(trial.model_dump(mode="json")),
    }
    loop_config = {
        "trial": trial.model_dump(mode="json"),
        "trial_id": trial_id,
        "sweep_dir": context.folder,
        "tracking": context.tracking,
        "run_plan": run_plan,
    }
    try:
        if in_place:
            metrics = _numbers(train_in_trial(loop_config))
        else:
            metrics = _train_on_workers(loop_config, context, folder, trial_id)
    except Exception as error:
        message = f"{type(error).__name__}: {error}"
        trace = traceback.format_exc()
        # No record here: Tune may retry the trial, or be stopping it on purpose (ASHA), and
        # only the sweep's driver knows which (SweepCallback writes the record).
        append_log(log_path, f"ended by {message}\n{trace}")
        raise
    failure = folder.read_failure(trial_id)
    if failure is not None:
        fail(failure.error, failure.traceback)
        raise TrialFailedError(failure.error)
    folder.write_record(
        trial_record(
            context, trial_id, cell_id, seed, params, TrialState.SUCCEEDED, metrics=metrics
        )
    )


def _numbers(metrics: dict[str, Any] | None) -> dict[str, float]:
    return {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))}


def _train_on_workers(
    loop_config: dict[str, Any], context: SweepContext, folder: SweepFolder, trial_id: str
) -> dict[str, float]:
    """A several-worker trial as a Ray Train V2 run; its last epoch's metrics."""
    gpus = context.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker=train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=context.workers,
            use_gpu=gpus > 0,
            resources_per_worker={
                "CPU": context.cpus_per_worker,
                **({"GPU": gpus} if gpus else {}),
            },
        ),
        run_config=ray.train.RunConfig(
            # Named after the trial: a restarted driver finds this run and resumes it.
            name=trial_id,
            storage_path=str(folder.train_dir),
            # Ray 2.60's docs pass it here; its annotation names only ray.train.UserCallback.
            callbacks=[TuneReportCallback()],  # type: ignore[list-item]
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
            failure_config=ray.train.FailureConfig(max_failures=TRAIN_RETRIES),
        ),
    )
    return _numbers(trainer.fit().metrics)


def _resolve_data_roots(config: TrainConfig) -> TrainConfig:
    """Absolute data roots: workers read neither this shell's variables nor its directory."""
    data = config.data
    if is_synthetic(data.name, data.source):
        return config
    location = data_location(data.name, data.root)
    root = location if isinstance(location, str) else str(location.resolve())  # a bucket: as is
    return config.model_copy(update={"data": data.model_copy(update={"root": root})})


def build_context(spec: SweepSpec, folder: SweepFolder, track: Tracking | None) -> SweepContext:
    """Every trial's TrainConfig and identity, resolved once in the driver."""
    configs: dict[str, dict[str, Any]] = {}
    cells: dict[str, CellRun] = {}
    for cell in expand(spec):
        for seed in spec.grid.seeds:
            config = _resolve_data_roots(train_config(spec, cell, seed))
            configs[config_key(cell.cell_id, seed)] = config.model_dump(mode="json")
        recipe = get_recipe(spec.recipe, cell.recipe_overrides)
        cells[cell.cell_id] = CellRun(
            dataset=cell.dataset,
            backbone=cell.backbone,
            method=cell.method,
            loss=cell.loss,
            recipe=spec.recipe,
            epochs=cell.epochs or recipe.epochs,
            hyperparameters=dict(cell.hyperparameters),
            comparable=comparable(spec, cell),
            lambda_mode=cell.mixing.lambda_mode,
            algorithm=cell.algorithm,
            labels=cell.labels,
            as_side=None if cell.as_side == DEFAULT_AS_SIDE else cell.as_side,
            labelled_mixup=(
                None if cell.transfer.labelled_mixup == "none" else cell.transfer.labelled_mixup
            ),
        )
    resources = spec.resources
    return SweepContext(
        folder=str(folder.path),
        configs=configs,
        cells=cells,
        tracking=asdict(track) if track is not None else None,
        workers=resources.workers_per_trial,
        cpus_per_worker=resources.cpus_per_worker,
        gpus_per_worker=resources.gpus_per_worker,
    )
