"""Can the cluster ever place a trial? Checked before a sweep is created (CLI and service).

A trial that asks for more GPUs than the cluster has would wait in PENDING forever; it is
refused up front instead. The nodes are the live ones, plus, on an autoscaling cluster (KubeRay
with a GPU worker group scaled from 0), the nodes the autoscaler may still add: declare their
shape with ``DMSWEEP_AUTOSCALING_NODE`` (Ray resources as JSON, e.g. ``{"CPU": 8, "GPU": 1}``)
and their number with ``DMSWEEP_AUTOSCALING_MAX_NODES`` (default 1).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from service.spec.model import Resources
from trainers.validation import Problem

Node = Mapping[str, float]


def autoscaling_nodes(env: Mapping[str, str] | None = None) -> list[Node]:
    """The nodes an autoscaler may add, as declared in the environment."""
    env = os.environ if env is None else env
    shape = env.get("DMSWEEP_AUTOSCALING_NODE")
    if not shape:
        return []
    try:
        node = {str(k): float(v) for k, v in json.loads(shape).items()}
        count = int(env.get("DMSWEEP_AUTOSCALING_MAX_NODES") or 1)
    except (ValueError, TypeError, AttributeError):
        raise ValueError(
            "DMSWEEP_AUTOSCALING_NODE must be Ray resources as JSON, e.g. "
            f'{{"CPU": 8, "GPU": 1}}, and DMSWEEP_AUTOSCALING_MAX_NODES an integer; got {shape!r}'
        ) from None
    return [node] * count


def resource_problems(
    resources: Resources, nodes: list[Node], driver_memory: float = 0.0
) -> list[Problem]:
    """A problem for each way a trial of ``resources`` cannot fit ``nodes``.

    ``driver_memory``: the bytes of Ray's ``memory`` resource the sweep's driver declares (the
    service's jobs do; a local ``dmsweep run`` declares none); a sweep whose driver no node could
    start is refused rather than left pending. A node that does not say its memory (a declared
    autoscaling shape) is taken to have enough.
    """
    problems: list[Problem] = []
    per_trial_gpus = resources.workers_per_trial * resources.gpus_per_worker
    total_gpus = sum(n.get("GPU", 0) for n in nodes)
    if per_trial_gpus > total_gpus:
        problems.append(
            Problem(
                ("resources",),
                f"a trial asks for {per_trial_gpus:g} GPUs ({resources.workers_per_trial} "
                f"workers x {resources.gpus_per_worker:g}), the cluster has {total_gpus:g}; "
                "lower resources.gpus_per_worker or workers_per_trial",
            )
        )
    elif resources.gpus_per_worker > max((n.get("GPU", 0) for n in nodes), default=0):
        problems.append(
            Problem(
                ("resources", "gpus_per_worker"),
                f"{resources.gpus_per_worker:g} GPUs per worker, but no node of the cluster "
                "has that many",
            )
        )
    if driver_memory and not any(n.get("memory", driver_memory) >= driver_memory for n in nodes):
        largest = max(n.get("memory", 0) for n in nodes) if nodes else 0
        problems.append(
            Problem(
                ("resources",),
                f"the sweep's driver declares {driver_memory / 2**30:.1f} GiB of Ray's memory "
                f"resource, and the node with the most has {largest / 2**30:.1f} GiB; start a "
                "node with more (ray start --memory)",
            )
        )
    most_cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    if resources.cpus_per_worker > most_cpus:
        problems.append(
            Problem(
                ("resources", "cpus_per_worker"),
                f"{resources.cpus_per_worker:g} CPUs per worker, but the largest node has "
                f"{most_cpus:g}",
            )
        )
    return problems
