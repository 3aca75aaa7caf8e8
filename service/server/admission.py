"""Whether a submitted spec may run here: the checks between the HTTP body and a stored sweep.

In order: the spec model (the same pydantic models as the CLI), the service's path policy
(data roots, storage root, tracking server), downloads when the service forbids them, the data
sets' folders, and whether the cluster, with what its autoscaler may add, can hold the spec's
trials and driver. Every refusal is a :class:`SpecRejectedError` listing all its problems.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from service.server.ray_jobs import DRIVER_MEMORY_BYTES, RayJobs, RayUnavailableError
from service.server.settings import ServiceSettings
from service.spec.capacity import cluster_shapes, live_nodes, resource_problems
from service.spec.data_check import data_problems
from service.spec.downloads import download_problems
from service.spec.kuberay import KubeRayUnavailableError, autoscaling_groups
from service.spec.model import SweepSpec
from service.spec.path_policy import path_problems, resolve_paths
from service.spec.reading import parse_spec
from trainers.validation import Problem, describe, problems_of

log = logging.getLogger("dmsweep.api")


class SpecRejectedError(ValueError):
    """The spec is not valid here; ``problems`` say where and why."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(describe(problems))
        self.problems = problems


def admit(
    body: bytes, content_type: str | None, settings: ServiceSettings, jobs: RayJobs
) -> tuple[SweepSpec, dict]:
    """The spec and its resolved mapping (absolute paths); raises what the API answers."""
    raw = parse_spec(body, content_type)
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as error:
        raise SpecRejectedError(problems_of(error)) from None
    problems = path_problems(
        spec,
        data_roots=settings.data_roots,
        storage_root=settings.storage_root,
        tracking_uri=settings.mlflow_uri,
    )
    if not settings.allow_downloads:
        problems += download_problems(spec)
    if problems:
        raise SpecRejectedError(problems)
    resolved = resolve_paths(
        raw, spec, data_roots=settings.data_roots, storage_root=settings.storage_root
    )
    spec = SweepSpec.model_validate(resolved)
    data = data_problems(spec)
    if data:
        raise SpecRejectedError(data)
    fits = capacity_problems(spec, jobs)
    if fits:
        raise SpecRejectedError(fits)
    return spec, resolved


def capacity_problems(spec: SweepSpec, jobs: RayJobs) -> list[Problem]:
    """What the cluster cannot hold; none when Ray or Kubernetes cannot say now.

    Skipped checks are not refusals: the sweep waits queued, and its job checks again when
    it starts (``service.sweep.engine.preflight``).
    """
    try:
        nodes = jobs.nodes()
    except RayUnavailableError:
        return []
    try:
        groups = autoscaling_groups()
    except KubeRayUnavailableError as error:
        log.warning("capacity check skipped, the sweep's job checks again: %s", error)
        return []
    shapes = cluster_shapes(live_nodes(nodes), groups)
    return resource_problems(spec.resources, shapes, driver_memory=DRIVER_MEMORY_BYTES)
