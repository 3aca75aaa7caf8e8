"""Can the cluster ever place a trial? Checked before a sweep is created (CLI and service).

A trial that asks for more than the cluster can ever give would wait in PENDING forever; it is
refused up front instead. What the cluster can give is its live nodes and, on a KubeRay cluster
that autoscales, every node its worker groups may still add (``service.spec.kuberay``): there
the worker groups at their ``maxReplicas`` stand for every worker node, live or not, and of the
live nodes only the head is added.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from service.spec.model import Resources
from trainers.validation import Problem

# The resource Ray gives the head node only (Ray 2.60): how a live head is told from a worker.
HEAD_RESOURCE = "node:__internal_head__"


@dataclass(frozen=True)
class NodeShape:
    """``count`` nodes of the same Ray resources: a live node (count 1) or a worker group."""

    name: str
    resources: Mapping[str, float]
    count: int = 1

    def get(self, resource: str, default: float = 0.0) -> float:
        """One node's amount of ``resource``."""
        return float(self.resources.get(resource, default))

    def describe(self) -> str:
        """``worker group gpu8 (96 CPUs, 8 GPUs, 1080.0 GiB, up to 2 nodes)``."""
        amounts = [f"{self.get('CPU'):g} CPUs", f"{self.get('GPU'):g} GPUs"]
        if "memory" in self.resources:
            amounts.append(f"{self.get('memory') / 2**30:.1f} GiB")
        up_to = f", up to {self.count} nodes" if self.count > 1 else ""
        return f"{self.name} ({', '.join(amounts)}{up_to})"


def live_nodes(resources_of_each: Sequence[Mapping[str, float]]) -> list[NodeShape]:
    """The live nodes, from each node's total Ray resources."""
    return [
        NodeShape("the head" if HEAD_RESOURCE in r else "a live node", dict(r))
        for r in resources_of_each
    ]


def cluster_shapes(live: list[NodeShape], groups: list[NodeShape]) -> list[NodeShape]:
    """What the cluster can ever hold: the live nodes, or the head plus every worker group.

    A live worker of a KubeRay cluster belongs to one of its groups, which already count it.
    """
    if not groups:
        return live
    return [n for n in live if HEAD_RESOURCE in n.resources] + groups


def _workers_per_node(node: NodeShape, cpus: float, gpus: float) -> int:
    """How many workers of ``cpus`` CPUs and ``gpus`` GPUs one node of ``node`` holds."""
    fits = [node.get("CPU") / cpus]
    if gpus > 0:
        fits.append(node.get("GPU") / gpus)
    # A small tolerance: 0.1 + 0.2 GPUs of Ray's fixed-point resources still fit in 0.3.
    return math.floor(min(fits) + 1e-9)


def _largest(shapes: list[NodeShape]) -> NodeShape:
    return max(shapes, key=lambda n: (n.get("GPU"), n.get("CPU"), n.get("memory")))


def resource_problems(
    resources: Resources, shapes: list[NodeShape], driver_memory: float = 0.0
) -> list[Problem]:
    """A problem for each way a trial of ``resources`` cannot fit ``shapes``, ever.

    A worker needs its CPUs and GPUs on one node; a trial's workers may spread over nodes.
    ``driver_memory``: the bytes of Ray's ``memory`` resource the sweep's driver declares on the
    head (the service's jobs do; a local ``dmsweep run`` declares none); a sweep whose driver
    the head could never start is refused rather than left pending. A shape that does not say
    its memory is taken to have enough.
    """
    problems: list[Problem] = []
    cpus, gpus, workers = (
        resources.cpus_per_worker,
        resources.gpus_per_worker,
        resources.workers_per_trial,
    )
    total_gpus = sum(n.get("GPU") * n.count for n in shapes)
    largest = _largest(shapes).describe() if shapes else "none"
    holding = [(n, _workers_per_node(n, cpus, gpus)) for n in shapes]
    if workers * gpus > total_gpus:
        problems.append(
            Problem(
                ("resources",),
                f"a trial asks for {workers * gpus:g} GPUs ({workers} workers x {gpus:g}), "
                f"the cluster has {total_gpus:g}; lower resources.gpus_per_worker or "
                f"workers_per_trial (the largest node: {largest})",
            )
        )
    elif not any(held for _, held in holding):
        if gpus > max((n.get("GPU") for n in shapes), default=0):
            location: tuple[str, ...] = ("resources", "gpus_per_worker")
        elif cpus > max((n.get("CPU") for n in shapes), default=0):
            location = ("resources", "cpus_per_worker")
        else:
            location = ("resources",)
        problems.append(
            Problem(
                location,
                f"a worker asks for {cpus:g} CPUs and {gpus:g} GPUs on one node, and no node "
                f"or worker group has that much; the largest is {largest}",
            )
        )
    elif sum(held * n.count for n, held in holding) < workers:
        most = sum(held * n.count for n, held in holding)
        problems.append(
            Problem(
                ("resources", "workers_per_trial"),
                f"a trial asks for {workers} workers of {cpus:g} CPUs and {gpus:g} GPUs, and "
                f"the cluster holds at most {most} at once; the largest node is {largest}",
            )
        )
    heads = [n for n in shapes if HEAD_RESOURCE in n.resources] or shapes
    if driver_memory and not any(n.get("memory", driver_memory) >= driver_memory for n in heads):
        most_memory = max((n.get("memory") for n in heads), default=0)
        problems.append(
            Problem(
                ("resources",),
                f"the sweep's driver runs on the head and declares {driver_memory / 2**30:.1f} "
                f"GiB of Ray's memory resource, and the head has {most_memory / 2**30:.1f} GiB; "
                "start the head with more (ray start --memory)",
            )
        )
    return problems
