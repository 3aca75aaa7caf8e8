"""The capacity check on a KubeRay cluster: the RayCluster's worker groups are what it may add.

Checked on the rendered manifests of every overlay (``kubectl kustomize``, as
tests/test_k8s_manifests.py renders them), with the groups worked out as KubeRay's autoscaler
works them out, and a live cluster of nothing but the 0-CPU head, as right after
``kubectl apply``. The Kubernetes API the service reads the RayCluster from cannot run here: a
local HTTP server answers its one GET with the rendered object.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from ray.autoscaler._private.kuberay.autoscaling_config import (
    _generate_available_node_types_from_ray_cr_spec as ray_node_types,
)

from service.server.ray_jobs import DRIVER_MEMORY_BYTES
from service.spec.capacity import (
    HEAD_RESOURCE,
    NodeShape,
    cluster_shapes,
    live_nodes,
    resource_problems,
)
from service.spec.kuberay import (
    CLUSTER_ENV,
    KubeRayUnavailableError,
    autoscaling_groups,
    worker_groups,
)
from service.spec.model import Resources
from service.spec.reading import load_spec
from tests.support import REPO
from tests.test_k8s_manifests import CLOUD_RENDERS, RENDERS, ray_clusters, rendered

SHIPPED_SPECS = sorted((REPO / "search_spaces").glob("*.yaml"))


def clusters(render: str) -> list[tuple[str, dict]]:
    return [(where, spec) for doc in rendered(render) for where, _, spec in ray_clusters(doc)]


def head_only(cluster_spec: dict) -> list[NodeShape]:
    """The live cluster right after it is applied: its head, as Ray reports it."""
    head = dict(ray_node_types(cluster_spec)["headgroup"]["resources"])
    return live_nodes([{**head, HEAD_RESOURCE: 1.0}])


@pytest.mark.parametrize("render", RENDERS)
def test_a_spec_that_fits_a_group_at_zero_replicas_is_accepted(render):
    for where, spec in clusters(render):
        groups = worker_groups(spec)
        assert groups, where
        shapes = cluster_shapes(head_only(spec), groups)
        for group in groups:
            at_zero = next(
                g
                for g in spec["workerGroupSpecs"]
                if f"worker group {g['groupName']}" == group.name
            )
            assert at_zero["minReplicas"] == 0, f"{where}: {group.name} does not scale from 0"
            one_node = Resources(gpus_per_worker=group.get("GPU"), cpus_per_worker=group.get("CPU"))
            assert resource_problems(one_node, shapes, DRIVER_MEMORY_BYTES) == [], (where, group)


@pytest.mark.parametrize("render", RENDERS)
def test_a_spec_that_fits_no_group_is_refused_naming_the_largest(render):
    for where, spec in clusters(render):
        groups = worker_groups(spec)
        largest = max(groups, key=lambda g: (g.get("GPU"), g.get("CPU")))
        too_big = Resources(gpus_per_worker=largest.get("GPU") + 1)
        shapes = cluster_shapes(head_only(spec), groups)
        (problem,) = resource_problems(too_big, shapes, DRIVER_MEMORY_BYTES)
        assert problem.location == ("resources", "gpus_per_worker"), where
        assert f"the largest is {largest.describe()}" in problem.message, problem.message
        assert largest.name in problem.message


@pytest.mark.parametrize("render", CLOUD_RENDERS)
@pytest.mark.parametrize("path", SHIPPED_SPECS, ids=lambda p: p.stem)
def test_every_shipped_spec_fits_some_group_of_each_cloud(render, path: Path):
    """Within one group, where its workers can be packed onto the fewest nodes."""
    spec = load_spec(path)
    for where, cluster_spec in clusters(render):
        head = head_only(cluster_spec)
        fitting = [
            group.name
            for group in worker_groups(cluster_spec)
            if resource_problems(spec.resources, [*head, group], DRIVER_MEMORY_BYTES) == []
        ]
        assert fitting, f"{path.name} fits no group of {where} ({render})"


def test_live_workers_are_not_counted_twice_beside_their_groups():
    gpu = NodeShape("worker group gpu", {"CPU": 8.0, "GPU": 1.0}, count=2)
    head = {"CPU": 0.0, "trial_slot": 8.0, HEAD_RESOURCE: 1.0}
    live = live_nodes([head, {"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}])
    shapes = cluster_shapes(live, [gpu])
    assert [s.name for s in shapes] == ["the head", "worker group gpu"]
    three = Resources(workers_per_trial=3, gpus_per_worker=1, cpus_per_worker=8)
    (problem,) = resource_problems(three, shapes)
    assert "the cluster has 2" in problem.message
    # Without KubeRay groups, the live nodes are the cluster.
    assert cluster_shapes(live, []) == live


def test_workers_must_fit_a_node_in_cpus_and_gpus_together():
    nodes = [
        NodeShape("a", {"CPU": 32.0, "GPU": 0.0}),
        NodeShape("b", {"CPU": 4.0, "GPU": 4.0}),
    ]
    # 8 CPUs exist (on a) and a GPU exists (on b), but never both on one node.
    (problem,) = resource_problems(Resources(gpus_per_worker=1, cpus_per_worker=8), nodes)
    assert problem.location == ("resources",)
    assert "no node or worker group has that much" in problem.message
    # Four workers of 1 GPU and 1 CPU fit b; a fifth does not fit anywhere at once.
    assert resource_problems(Resources(workers_per_trial=4, gpus_per_worker=1), nodes) == []
    (problem,) = resource_problems(Resources(workers_per_trial=5, gpus_per_worker=0.8), nodes)
    assert problem.location == ("resources", "workers_per_trial")
    assert "holds at most 4 at once" in problem.message
    # Fractions pack: four quarter-GPU workers share b's GPUs four to one.
    quarter = Resources(workers_per_trial=16, gpus_per_worker=0.25, cpus_per_worker=0.25)
    assert resource_problems(quarter, nodes) == []


class _KubernetesAPI(BaseHTTPRequestHandler):
    """Answers GET .../rayclusters/<name> with the object, checking the bearer token."""

    objects: ClassVar[dict[str, dict]] = {}
    token = "service-account-token"

    def do_GET(self) -> None:
        found = self.objects.get(self.path)
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            self.send_response(401)
            self.end_headers()
            return
        body = json.dumps(found).encode() if found else b"{}"
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def kubernetes_api(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "namespace").write_text("dmsweep\n")
    (account / "token").write_text(_KubernetesAPI.token)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KubernetesAPI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", account
    finally:
        server.shutdown()
        server.server_close()


def test_the_groups_are_read_from_the_kubernetes_api(kubernetes_api):
    url, account = kubernetes_api
    (raycluster,) = [d for d in rendered("gke") if d["kind"] == "RayCluster"]
    _KubernetesAPI.objects = {"/apis/ray.io/v1/namespaces/dmsweep/rayclusters/dmsweep": raycluster}
    env = {CLUSTER_ENV: "dmsweep"}
    read = autoscaling_groups(env, api_url=url, service_account=account)
    assert read == worker_groups(raycluster)
    assert autoscaling_groups({}, api_url=url, service_account=account) == []
    with pytest.raises(KubeRayUnavailableError, match="rayclusters/elsewhere"):
        autoscaling_groups({CLUSTER_ENV: "elsewhere"}, api_url=url, service_account=account)
    with pytest.raises(KubeRayUnavailableError, match="no service account"):
        autoscaling_groups(env, api_url=url, service_account=account / "missing")


def test_a_cluster_of_its_head_alone_adds_nothing_and_a_malformed_one_is_unavailable():
    (raycluster,) = [d for d in rendered("gke") if d["kind"] == "RayCluster"]
    head_alone = {"spec": {"headGroupSpec": raycluster["spec"]["headGroupSpec"]}}
    assert worker_groups(head_alone) == []
    # a group whose Ray container states no CPUs anywhere: Ray's translation cannot size it
    group = dict(raycluster["spec"]["workerGroupSpecs"][0])
    group["rayStartParams"] = {}
    group["template"] = {"spec": {"containers": [{"name": "ray-worker"}]}}
    broken = {"spec": {**raycluster["spec"], "workerGroupSpecs": [group]}}
    with pytest.raises(KubeRayUnavailableError, match="could not be read"):
        worker_groups(broken)
