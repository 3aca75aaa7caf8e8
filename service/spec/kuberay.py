"""The worker groups of a KubeRay RayCluster: every node its autoscaler may add.

The RayCluster object is the one source of what a cluster can grow to: its worker groups
(``workerGroupSpecs``: the Ray resources of a node, up to ``maxReplicas`` nodes each) are what
KubeRay's autoscaler scales from 0. The API and a sweep's driver read that object from the
Kubernetes API when they check a spec (``DMSWEEP_KUBERAY_CLUSTER`` names it; the pod's service
account may ``get`` it: ``deploy/k8s``), so a group added or resized with ``kubectl`` counts at
once, and nothing repeats the groups' shapes elsewhere.

A group's Ray resources are worked out by the very function KubeRay's autoscaler uses (Ray
2.60's ``ray.autoscaler._private.kuberay.autoscaling_config``: ``rayStartParams`` first, then
the Ray container's limits), so the check and the autoscaler cannot disagree. It is private
to Ray, hence kept to this module; ``pyproject.toml`` bounds Ray below 2.61 and
``tests/test_kuberay_groups.py`` checks it on the shipped manifests.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray.autoscaler._private.kuberay.autoscaling_config import (
    _generate_available_node_types_from_ray_cr_spec as ray_node_types,
)

from service.spec.capacity import NodeShape

CLUSTER_ENV = "DMSWEEP_KUBERAY_CLUSTER"
# Where Kubernetes mounts a pod's service account (token, CA, namespace).
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TIMEOUT_S = 10.0
# What Ray's translation calls the head's group, which adds no node.
_HEAD_GROUP = "headgroup"


class KubeRayUnavailableError(RuntimeError):
    """The RayCluster object could not be read."""


def worker_groups(raycluster: Mapping[str, Any]) -> list[NodeShape]:
    """The worker groups of a RayCluster (or a RayJob's ``rayClusterSpec``) at their maximum.

    ``raycluster``: the object as the Kubernetes API returns it, or its ``spec``. A group with
    ``maxReplicas: 0`` can add nothing and is left out. An object Ray's translation cannot read
    is ``KubeRayUnavailableError``, as an unreachable one is: the check is then skipped.
    """
    spec = raycluster.get("spec", raycluster)
    spec = dict(spec.get("rayClusterSpec", spec))
    spec.setdefault("workerGroupSpecs", [])  # a cluster of its head alone
    try:
        node_types = ray_node_types(spec)
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise KubeRayUnavailableError(
            f"the RayCluster's groups could not be read as KubeRay's autoscaler reads them: "
            f"{type(error).__name__}: {error}"
        ) from None
    groups = []
    for name, node_type in node_types.items():
        if name == _HEAD_GROUP or node_type["max_workers"] <= 0:
            continue
        resources = {k: float(v) for k, v in node_type["resources"].items()}
        groups.append(NodeShape(f"worker group {name}", resources, node_type["max_workers"]))
    return groups


def read_raycluster(
    name: str,
    *,
    api_url: str | None = None,
    service_account: Path = SERVICE_ACCOUNT,
    timeout: float = TIMEOUT_S,
) -> dict[str, Any]:
    """The RayCluster ``name`` of the pod's own namespace, from the Kubernetes API.

    ``api_url`` defaults to the in-cluster address (``KUBERNETES_SERVICE_HOST`` and ``_PORT``);
    the request carries the service account's token and is verified with its CA.
    """
    folder = service_account
    try:
        namespace = (folder / "namespace").read_text().strip()
        token = (folder / "token").read_text().strip()
    except OSError as error:
        raise KubeRayUnavailableError(
            f"{CLUSTER_ENV} is set, but this pod has no service account to read the RayCluster "
            f"with ({error.strerror}: {error.filename})"
        ) from None
    if api_url is None:
        host = os.environ.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        api_url = f"https://{host}:{port}"
    url = f"{api_url}/apis/ray.io/v1/namespaces/{namespace}/rayclusters/{name}"
    context = None
    if url.startswith("https:"):
        context = ssl.create_default_context(cafile=str(folder / "ca.crt"))
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise KubeRayUnavailableError(f"reading the RayCluster at {url} failed: {error}") from None


def autoscaling_groups(env: Mapping[str, str] | None = None, **read: Any) -> list[NodeShape]:
    """The worker groups of the RayCluster ``$DMSWEEP_KUBERAY_CLUSTER``; none when it is unset."""
    env = os.environ if env is None else env
    name = env.get(CLUSTER_ENV)
    if not name:
        return []
    return worker_groups(read_raycluster(name, **read))
