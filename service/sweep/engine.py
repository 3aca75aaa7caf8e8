"""Run a sweep spec on Ray: Ray Tune schedules the trials, each trained in place or by Ray Train.

Each Tune trial is a function (``service.sweep.trial.run_trial``, the trial's *driver*): a trial of
one worker trains in that process, a trial of several workers is a Ray Train V2 run. Around it:

* **Trials.** Without ``search``, Tune's grid over (cell, seed): one trial each. With
  ``search``, ``CellStudies`` (one Optuna study per cell) suggests ``num_samples`` settings per
  cell and seed, and ASHA (one per cell: ``service.sweep.scheduler``) stops weak trials early.
* **Resources.** A one-worker trial asks Tune for the worker's CPUs and GPUs and trains in its
  own process (no Ray Train run to start: ``bench/sweep_overhead.py`` measures what that saves),
  so it runs on a node with those CPUs, never on a 0-CPU head. A several-worker trial's driver
  builds a ``TorchTrainer`` whose workers ask for the spec's CPUs and GPUs; the driver itself asks
  for no CPU and one ``trial_slot``, a custom resource the local Ray is started with (one slot
  per trial that fits), so drivers never take a worker's CPU; on a cluster without slots, the
  driver asks for 0.01 CPU.
* **Faults.** Tune's ``FailureConfig`` retries a trial whose process or node was lost; a
  one-worker trial goes on from the newest checkpoint in its folder
  (``service.sweep.worker.TrialCheckpoints``). Ray Train's ``FailureConfig`` restarts a
  several-worker trial's worker group from its last checkpoint, and its Train run, named after
  the trial, resumes after a lost driver. Failures that would repeat (NaN, bad data) are not
  retried (see ``service.sweep.worker``): the trial is recorded as failed and the sweep goes on.
* **Resume.** ``resume_sweep`` continues a sweep whose driver died or was interrupted with
  ``Tuner.restore``: finished trials are not run again, interrupted ones resume.
* **Records.** Each trial writes its record to the sweep folder (``service.results.folder``); the
  sweep's results table and report are built from those records, and a tuning sweep's parent
  run gets Optuna's plots of each study (``draw_study_plots``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import ray
import ray.train
import yaml
from ray import tune

from service.results.folder import SweepFolder, find_sweep, new_sweep_id
from service.results.records import SweepInfo, SweepStatus, TrialState, state_counts
from service.results.report import BestSetting, best_settings, write_sweep_report
from service.spec.capacity import cluster_shapes, live_nodes, resource_problems
from service.spec.cells import expand, search_space, study_name, total_trials
from service.spec.data_check import data_problems
from service.spec.kuberay import KubeRayUnavailableError, autoscaling_groups
from service.spec.model import SweepSpec
from service.storage.bucket_path import BucketPath
from service.storage.paths import AnyPath, absolute
from service.sweep.callbacks import SweepCallback, backfill_write, send_pending
from service.sweep.ray_setup import SLOT, ray_init_options
from service.sweep.ray_workarounds import PlacementGroupReaper
from service.sweep.scheduler import StudyASHA
from service.sweep.searcher import (
    EXAMPLE_URL,
    STORAGE_FILE_VAR,
    STORAGE_VAR,
    CellStudies,
    OptunaStorageError,
    StudyPlan,
    StudyStorage,
    open_storage,
    url_from_env,
)
from service.sweep.trial import SweepContext, build_context, run_trial
from service.tracking.outbox import Outbox
from service.tracking.provenance import git_commit
from service.tracking.store import (
    Tracking,
    best_effort,
    default_artifact_location,
    default_tracking_uri,
    prepare_store,
)
from service.tracking.sweep_runs import finish_sweep, reopen_sweep, start_sweep
from service.tracking.uri import redacted
from trainers.validation import describe

# Restarts of a trial's Tune function: a lost process or node (a one-worker trial goes on from
# its newest kept checkpoint), a lost driver (a several-worker trial's Train run resumes).
TUNE_RETRIES = 2

logger = logging.getLogger(__name__)


class SpecError(ValueError):
    """The spec cannot run here: its data, or resources the cluster does not have."""


@dataclass
class SweepOutcome:
    """How a sweep ended."""

    folder: SweepFolder
    counts: dict[str, int]
    interrupted: bool
    outputs: dict[str, AnyPath] = field(default_factory=dict)
    best: list[BestSetting] = field(default_factory=list)
    # what the tracking server could not store (the files are on disk all the same)
    tracking_problems: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 all trials succeeded (or were pruned), 1 some failed, 130 interrupted."""
        if self.interrupted:
            return 130
        return 1 if self.counts.get(TrialState.FAILED, 0) else 0


# --- trials ------------------------------------------------------------------------------------


# --- the driver --------------------------------------------------------------------------------


def connect(spec: SweepSpec, address: str | None = None) -> None:
    """Join the cluster at ``address`` (or ``$RAY_ADDRESS``), or start a local Ray.

    The local Ray gets one ``trial_slot`` per trial that fits its CPUs; a Ray already started in
    this process (tests, notebooks) is used as it is. The options: ``service.sweep.ray_setup``.
    """
    # The sweep draws its own progress; Tune's tables would interleave with it.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    resources = spec.resources
    per_trial = resources.workers_per_trial * resources.cpus_per_worker
    slots = max(1, math.floor((os.cpu_count() or 1) / per_trial))
    if resources.max_concurrent_trials is not None:
        slots = min(slots, resources.max_concurrent_trials)
    ray.init(**ray_init_options(address, slots=slots))


def preflight(spec: SweepSpec, address: str | None = None) -> None:
    """What can be checked before a sweep exists: its data roots, then Ray's resources."""
    problems = data_problems(spec)
    if problems:
        raise SpecError(describe(problems))
    if spec.search is not None and spec.search.storage is None:
        _study_url_set()  # DMSWEEP_OPTUNA_STORAGE, if set, must be usable
    connect(spec, address)
    _check_cluster(spec)


def _check_cluster(spec: SweepSpec) -> None:
    """Refuse, before any trial starts, a trial the cluster could never place."""
    live = live_nodes([n["Resources"] for n in ray.nodes() if n.get("Alive")])
    try:
        groups = autoscaling_groups()
    except KubeRayUnavailableError as error:
        # Trials then wait for what the autoscaler adds, as they would without the check.
        logger.warning("capacity check skipped: %s", error)
        return
    problems = resource_problems(spec.resources, cluster_shapes(live, groups))
    if problems:
        raise SpecError(describe(problems))


def _trial_resources(context: SweepContext) -> tune.PlacementGroupFactory:
    """What a trial's Tune function holds.

    The worker itself for a trial trained in place; a trial slot (or 0.01 CPU) for the driver of
    a several-worker trial.
    """
    if context.workers == 1:
        gpus = context.gpus_per_worker
        return tune.PlacementGroupFactory(
            [{"CPU": context.cpus_per_worker, **({"GPU": gpus} if gpus else {})}]
        )
    if ray.cluster_resources().get(SLOT, 0) >= 1:
        return tune.PlacementGroupFactory([{"CPU": 0, SLOT: 1}])
    return tune.PlacementGroupFactory([{"CPU": 0.01}])


def _study_plans(spec: SweepSpec, sweep_id: str, context: SweepContext) -> list[StudyPlan]:
    assert spec.search is not None
    plans = []
    several_seeds = len(spec.grid.seeds) > 1
    for index, cell in enumerate(expand(spec)):
        for seed in spec.grid.seeds:
            name = study_name(sweep_id, cell, seed if several_seeds else None)
            plans.append(
                StudyPlan(
                    name=name,
                    cell=cell.cell_id,
                    seed=seed,
                    space=search_space(spec, cell),
                    budget=spec.search.num_samples or 1,
                    epochs=context.cells[cell.cell_id].epochs,
                    sampler_seed=1000 * index + seed,
                )
            )
    return plans


def study_storage(
    spec: SweepSpec, folder: SweepFolder, env: Mapping[str, str] | None = None
) -> StudyStorage:
    """Where a tuning sweep's Optuna studies go.

    The spec's ``search.storage`` (a SQLite file: a local run; the service refuses it), else the
    database of ``DMSWEEP_OPTUNA_STORAGE`` (or ``_FILE``) in this driver's environment (the
    cluster's PostgreSQL), else ``optuna.db`` in the sweep's folder. A misconfigured variable
    is a ``SpecError`` naming it: nothing of the sweep is created.
    """
    if spec.search is not None and spec.search.storage is not None:
        return StudyStorage.file(spec.search.storage)
    try:
        configured = StudyStorage.from_env(env)
    except OptunaStorageError as error:
        raise SpecError(str(error)) from None
    return configured or StudyStorage.file(folder.optuna_url)


def _reuse_trial_processes(context: SweepContext) -> bool:
    """Whether a trial's process is kept for the sweep's next trial (Tune's ``reuse_actors``).

    Only for trials trained in place: a new process costs seconds (Python, torch, the trial
    code) against trials of seconds (bench/sweep_overhead.py), and each trial builds its state
    anew in ``run_trial``. A process is handed on only once the previous trial's thread has
    ended (it ends at its next report once Tune stopped it); if it has not within
    ``TUNE_FUNCTION_THREAD_TIMEOUT_S`` (``service.sweep.ray_setup``), Ray 2.60 fails the next
    trial without a retry (``TuneController._on_trial_reset``). A several-worker trial's thread
    waits in ``TorchTrainer.fit`` and never sees Tune's stop, so those keep a process each.
    A lost or killed process is never reused.
    """
    return context.workers == 1


def _tune_config(spec: SweepSpec, sweep_id: str, folder: SweepFolder, context: SweepContext):
    search = spec.search
    limit = spec.resources.max_concurrent_trials
    if search is None:
        tune_config = tune.TuneConfig(
            max_concurrent_trials=limit, reuse_actors=_reuse_trial_processes(context)
        )
        return tune_config, {
            "cell": tune.grid_search(list(context.cells)),
            "seed": tune.grid_search(list(spec.grid.seeds)),
        }
    plans = _study_plans(spec, sweep_id, context)
    searcher = CellStudies(
        plans,
        storage_url=study_storage(spec, folder),
        sampler=search.sampler,
        metric=search.metric,
        mode=search.mode,
        owner=str(folder.path),
    )
    scheduler = None
    if search.scheduler is not None:
        scheduler = StudyASHA(
            time_attr="epoch",
            metric=search.metric,
            mode=search.mode,
            max_t=search.scheduler.max_t,
            grace_period=search.scheduler.grace_period,
            reduction_factor=search.scheduler.reduction_factor,
        )
    config = tune.TuneConfig(
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=sum(p.budget for p in plans),
        max_concurrent_trials=limit,
        reuse_actors=_reuse_trial_processes(context),
    )
    return config, {}


def _trainable(context: SweepContext):
    return tune.with_resources(
        tune.with_parameters(run_trial, context=context), _trial_resources(context)
    )


def _restore(folder: SweepFolder, context: SweepContext) -> tune.Tuner:
    """The sweep's Tune experiment as its driver left it, to run on with a new trainable.

    The experiment brings back its pickled callbacks, searcher and scheduler (they keep no
    path: see ``SweepCallback``). An experiment pickled by a dmsweep whose modules were laid out
    otherwise cannot be read back; that is said, naming the version to resume it with.
    """
    try:
        return tune.Tuner.restore(
            str(folder.path),
            trainable=_trainable(context),
            resume_unfinished=True,
            resume_errored=True,
        )
    except (ModuleNotFoundError, AttributeError) as error:
        raise SpecError(
            f"sweep {folder.sweep_id} was started by another version of dmsweep (commit "
            f"{folder.read_state().git_commit}) whose Tune experiment this one cannot read "
            f"({error}); resume it with that version, or run its spec again"
        ) from None


def _run_config(folder: SweepFolder, callbacks: list[tune.Callback]) -> tune.RunConfig:
    return tune.RunConfig(
        name=folder.sweep_id,
        storage_path=str(folder.path.parent),
        failure_config=tune.FailureConfig(max_failures=TUNE_RETRIES),
        callbacks=callbacks,
        verbose=0,
    )


def _study_url_set() -> bool:
    """Whether this driver's environment names a database for Optuna's studies (checked)."""
    try:
        return url_from_env(os.environ) is not None
    except OptunaStorageError as error:
        raise SpecError(str(error)) from None


def _check_bucket_sweep(spec: SweepSpec, root: BucketPath, tracking_uri: str | None) -> None:
    """Refuse what a sweep on a bucket cannot keep there: SQLite files (MLflow's, Optuna's)."""
    problems = []
    if tracking_uri is None:
        problems.append(
            f"storage path {root} is a bucket, where the default MLflow store (a SQLite file) "
            "cannot live: give a tracking server (--tracking-uri http://..., the spec's "
            "tracking_uri); its artifacts may go to the bucket (mlflow server "
            "--artifacts-destination s3://...)"
        )
    if spec.search is not None and spec.search.storage is None and not _study_url_set():
        problems.append(
            f"storage path {root} is a bucket, where the default Optuna store (a SQLite file) "
            f"cannot live: give the driver a database for its studies ({STORAGE_VAR}="
            f"{EXAMPLE_URL}, or {STORAGE_FILE_VAR} naming a file that holds it)"
        )
    if problems:
        raise SpecError("; ".join(problems))


def create_sweep(
    spec: SweepSpec,
    spec_text: str,
    *,
    storage_path: str | AnyPath | None = None,
    tracking_uri: str | None = None,
    sweep_id: str | None = None,
) -> SweepFolder:
    """A new sweep folder with the spec and its state; the MLflow parent run.

    ``sweep_id`` is given by the sweep service, which names a sweep when it is submitted.
    Creating it is idempotent until the sweep exists (its ``sweep.json`` is written last): a
    first job that died during set-up left a folder without it, and the next attempt completes
    that folder (and finds the parent run that attempt may have made) instead of refusing it.
    A sweep that exists is refused, naming ``dmsweep resume``.
    """
    problems = data_problems(spec)
    if problems:
        raise SpecError(describe(problems))
    root = absolute(storage_path or spec.storage_path)
    uri = tracking_uri or spec.tracking_uri
    given_uri = uri is not None
    if isinstance(root, BucketPath):
        _check_bucket_sweep(spec, root, uri)
    root.mkdir(parents=True, exist_ok=True)
    given = sweep_id is not None
    sweep_id = sweep_id or new_sweep_id(spec.name, root)
    folder = SweepFolder(root / sweep_id)
    if folder.state_file.is_file():
        raise SpecError(
            f"sweep {sweep_id} already exists in {root}; continue it with "
            f"`dmsweep resume {sweep_id}`"
        )
    try:
        folder.path.mkdir(exist_ok=given)
    except FileExistsError:
        raise SpecError(f"sweep {sweep_id} already exists in {root}") from None
    folder.spec_file.write_text(spec_text)
    if uri is None:
        assert isinstance(root, Path)  # a bucket root without a tracking URI was refused
        uri = default_tracking_uri(root)
    # A fresh SQLite store, made once whoever opens it first; a store that cannot be opened
    # now is an outage like any other (the parent run below waits in the outbox).
    best_effort(lambda: prepare_store(uri), "preparing the tracking store", attempts=1)
    artifacts = None
    if isinstance(root, Path) and uri.startswith("sqlite:") and not given_uri:
        artifacts = default_artifact_location(root, spec.name)
    tags = {"dmsweep.spec": spec.name, "dmsweep.search": str(spec.search is not None)}
    # MLflow down: the sweep runs all the same; its parent run waits in the outbox, and its
    # trials get their runs (with their final metrics) once it exists (``finish``).
    track = best_effort(
        lambda: start_sweep(
            uri=uri,
            experiment=spec.name,
            sweep_id=sweep_id,
            spec_file=folder.spec_file,
            tags=tags,
            artifact_location=artifacts,
            attempts=1,
        ),
        f"the parent run of sweep {sweep_id}",
    )
    if track is None:
        # Stored without credentials, like sweep.json; the sender puts this process's back.
        parent: dict[str, object] = {"op": "sweep_run", "uri": redacted(uri)}
        parent["experiment"] = spec.name
        parent |= {"sweep_id": sweep_id, "tags": tags, "spec_file": str(folder.spec_file)}
        Outbox(folder.tracking_outbox_dir).add({**parent, "artifact_location": artifacts})
    folder.write_state(
        SweepInfo(
            sweep_id=sweep_id,
            name=spec.name,
            status=SweepStatus.CREATED,
            tracking=asdict(track) if track is not None else None,
            git_commit=git_commit(),
        )
    )
    return folder


def execute(
    folder: SweepFolder,
    *,
    address: str | None = None,
    resume: bool = False,
    callbacks: Sequence[tune.Callback] = (),
) -> SweepOutcome:
    """Run (or with ``resume``, continue) the sweep in ``folder`` to its end; how it ended.

    Progress is read from the folder while it runs (``SweepFolder.progress``), as the command
    line's display and the sweep service do. ``callbacks`` are Tune callbacks of a new sweep's
    run (a benchmark's timers); a resumed sweep keeps those of its first run.
    """
    spec = folder.read_spec()
    preflight(spec, address)  # a resumed sweep's data may have moved since it started
    track = send_pending(folder)  # what waited for MLflow (a parent run made late, ...)
    if resume and track is not None:
        reopen = track  # bound for the lambda (mypy)
        best_effort(lambda: reopen_sweep(reopen, attempts=1), "reopening the parent run")
    context = build_context(spec, folder, track)
    if resume and tune.Tuner.can_restore(str(folder.path)):
        tuner = _restore(folder, context)
    else:
        tune_config, param_space = _tune_config(spec, folder.sweep_id, folder, context)
        tuner = tune.Tuner(
            _trainable(context),
            param_space=param_space,
            tune_config=tune_config,
            run_config=_run_config(
                folder, [SweepCallback(context), PlacementGroupReaper(), *callbacks]
            ),
        )
    folder.update_state(status=SweepStatus.RUNNING)
    interrupted = False
    try:
        tuner.fit()
    except KeyboardInterrupt:
        interrupted = True
    # Trials that ran without a parent run get their child runs once it exists.
    return finish(folder, spec, interrupted=interrupted, track=track, backfill=track is None)


def finish(
    folder: SweepFolder,
    spec: SweepSpec,
    *,
    interrupted: bool,
    track: Tracking | None,
    backfill: bool = False,
) -> SweepOutcome:
    """Results and report from the trial records; the parent run closed unless interrupted.

    MLflow is written best-effort: what it does not take waits in the sweep's outbox, sent at
    the next ``execute`` of the sweep (``dmsweep resume`` of an ended sweep sends it too).
    ``backfill``: the trials ran without a parent run; each gets a child run now.
    """
    records = folder.records()
    # Every trial that ends gets a record; Tune returns early, without error, on Ctrl-C.
    interrupted = interrupted or len(records) < total_trials(spec)
    counts = state_counts(records)
    outputs = write_sweep_report(folder, spec, records) if records else {}
    best = best_settings(spec, records)
    if best:
        settings = [b.to_dict() for b in best]
        folder.best_settings_file.write_text(yaml.safe_dump(settings, sort_keys=False))
        outputs["best"] = folder.best_settings_file
    failed = counts[TrialState.FAILED]
    status = (
        SweepStatus.INTERRUPTED
        if interrupted
        else (SweepStatus.FAILED if failed else SweepStatus.SUCCEEDED)
    )
    folder.update_state(status=status, counts=counts)
    problems: list[str] = []
    if not interrupted:
        outbox = Outbox(folder.tracking_outbox_dir)
        if backfill:
            for record in records:
                outbox.add(backfill_write(record))
        track = send_pending(folder) or track
        run_status = "FAILED" if failed else "FINISHED"
        plots = draw_study_plots(spec, folder)
        sent = None
        if track is not None and not outbox.pending():
            done = track  # bound for the lambda (mypy)
            sent = best_effort(
                lambda: finish_sweep(done, outputs, counts, run_status, attempts=1, plots=plots),
                "closing the parent run",
            )
        if sent is None:
            outbox.add(
                {
                    "op": "finish_sweep",
                    "outputs": {k: str(v) for k, v in outputs.items()},
                    "counts": counts,
                    "status": run_status,
                    "plots": [(str(file), artifact_path) for file, artifact_path in plots],
                }
            )
            send_pending(folder)
        problems = sent or []
        left = len(outbox.pending())
        if left:
            problems.append(
                f"MLflow did not take {left} writes; they wait in {outbox.folder} and are "
                f"sent by `dmsweep resume {folder.sweep_id}`"
            )
        folder.update_state(tracking_problems=problems)
    return SweepOutcome(folder, counts, interrupted, outputs, best, problems)


def draw_study_plots(spec: SweepSpec, folder: SweepFolder) -> list[tuple[AnyPath, str]]:
    """Optuna's plots of a tuning sweep's studies, drawn into its folder: (file, run folder).

    ``service.tracking.study_plots`` says which; a sweep without a search has none. Whatever
    goes wrong (a storage that cannot be opened, a plot) is logged: the sweep ends all the same.
    """
    if spec.search is None:
        return []
    from service.tracking.study_plots import plot_sweep_studies

    try:
        storage = open_storage(study_storage(spec, folder).resolve())
        drawn = plot_sweep_studies(
            storage, folder.sweep_id, folder.study_plots_dir, spec.search.metric
        )
    except Exception as error:  # the plots are an extra: never the sweep's failure
        logger.warning("optuna plots of sweep %s not drawn: %s", folder.sweep_id, error)
        return []
    return [(plot.file, plot.artifact_path) for plot in drawn.made]


def run_sweep(
    spec: SweepSpec,
    spec_text: str,
    *,
    address: str | None = None,
    storage_path: str | AnyPath | None = None,
    callbacks: Sequence[tune.Callback] = (),
) -> SweepOutcome:
    """A new sweep of ``spec``, run to its end on the Ray at ``address`` (default: a local one).

    Args:
        spec: the validated spec (``service.spec.reading.load_spec``).
        spec_text: the spec as the user wrote it, kept in the sweep's folder and MLflow.
        address: a Ray cluster (``host:port``, ``ray://``, ``auto``); None starts a local Ray.
        storage_path: where the sweep's folder goes; default the spec's ``storage_path``.
        callbacks: more Tune callbacks for the sweep's run (``execute``).

    Example::

        spec = load_spec("search_spaces/smoke.yaml")
        outcome = run_sweep(spec, Path("search_spaces/smoke.yaml").read_text())
        print(outcome.counts, outcome.outputs["markdown"])

    """
    preflight(spec, address)
    folder = create_sweep(spec, spec_text, storage_path=storage_path)
    return execute(folder, address=address, callbacks=callbacks)


def resume_sweep(
    id_or_path: str,
    *,
    storage_path: str | AnyPath = "./runs",
    address: str | None = None,
) -> SweepOutcome:
    """Continue a sweep whose driver died or was interrupted; finished trials are kept."""
    folder = find_sweep(id_or_path, storage_path)
    return execute(folder, address=address, resume=True)
