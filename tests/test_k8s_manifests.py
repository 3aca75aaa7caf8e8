"""The Kubernetes deployment (deploy/k8s), checked offline.

Every kustomization is rendered with `kubectl kustomize` (no cluster needed); each object is
validated against the Kubernetes schemas (kubernetes-validate, strict: unknown fields fail) or
the KubeRay ones in tests/data/kubernetes-schemas; then the fields the deployment relies on are
checked one by one, since a schema cannot say that a GPU worker has a GPU or that a
NetworkPolicy keeps Ray's ports inside the namespace.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import jsonschema
import kubernetes_validate
import pytest
import ray
import yaml
from ray.autoscaler._private.kuberay.autoscaling_config import (
    _get_ray_resources_from_group_spec,
)
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from service.server.ray_jobs import DRIVER_MEMORY_BYTES
from service.server.settings import ServiceSettings

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
README = REPO / "deploy" / "README.md"
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
SCHEMAS = REPO / "tests" / "data" / "kubernetes-schemas"

NAMESPACE = "dmsweep"
OPERATOR_NAMESPACE = "kuberay-system"
IMAGE = "ghcr.io/dmsweep/dmsweep"  # the Ray nodes (CUDA)
SERVER_IMAGE = "ghcr.io/dmsweep/dmsweep-server"  # the API and MLflow (CPU)
OURS = (IMAGE, SERVER_IMAGE)
RAY_TOKEN_SECRET = ("dmsweep-ray-token", "token")
RAY_PORTS = (6379, 8265, 10001)  # GCS, dashboard and job server, Ray client
DASHBOARD_PORT = 8265
# the first KubeRay with Ray token auth for RayJobs (authOptions), which sweep-job/ uses
MIN_KUBERAY = (1, 5, 1)
# the oldest Kubernetes minor still offered by GKE and EKS, and the newest schemas installed
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())
CLUSTER_SCOPED = {"Namespace", "StorageClass", "PersistentVolume", "ClusterRole", "PriorityClass"}
# the kinds whose pods the checks walk (spec.template); RayCluster and RayJob besides
POD_MAKERS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
# every kind the deployment may hold: another one needs its pods walked here first
KNOWN_KINDS = {
    *POD_MAKERS,
    *CLUSTER_SCOPED,
    "RayCluster",
    "RayJob",
    "Service",
    "ConfigMap",
    "Secret",
    "PersistentVolumeClaim",
    "NetworkPolicy",
    "Ingress",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "PodDisruptionBudget",
}

# What is rendered: name -> folder under deploy/k8s.
RENDERS = {
    "base": "base",
    "sweep-job": "sweep-job",
    "gke": "overlays/gke",
    "eks": "overlays/eks",
    "gke-sweep-job": "overlays/gke/sweep-job",
    "eks-sweep-job": "overlays/eks/sweep-job",
    # with the optional components gcs-ft (Redis for the GCS) and ingress
    "gke-full": "overlays/gke-full",
    "eks-full": "overlays/eks-full",
    # with the optional component object-storage (sweeps and artifacts in an S3 bucket)
    "eks-s3": "overlays/eks-s3",
}
# A RayJob runs beside the service's objects (the shared volume, MLflow, the policies).
BESIDE = {"sweep-job": "base", "gke-sweep-job": "gke", "eks-sweep-job": "eks"}
SERVICE_RENDERS = ("base", "gke", "eks", "gke-full", "eks-full")
FULL_RENDERS = ("gke-full", "eks-full")
# Each cloud's GPU node pools per worker group (the labels to select), the taint they carry
# and the storage classes.
CLOUDS = {
    "gke": {
        "node_selectors": {
            "gpu": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
            "gpu8": {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"},
        },
        "taint": {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
        "rwx_class": "standard-rwx",
        "rwo_class": "standard-rwo",
    },
    "eks": {
        "node_selectors": {
            "gpu": {"dmsweep.io/node-pool": "gpu"},
            "gpu8": {"dmsweep.io/node-pool": "gpu8"},
        },
        "taint": {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"},
        "rwx_class": "efs-sc",
        "rwo_class": "gp2",
    },
}
CLOUD_RENDERS = {name: name.split("-")[0] for name in RENDERS if name.split("-")[0] in CLOUDS}
# The Ray heads' protection (base/head-protection.yaml).
HEAD_PRIORITY_CLASS = "dmsweep-ray-head"
# Ray's health endpoints, public with token auth on (seen on Ray 2.60: deploy/README.md).
AGENT_PORT_PARAM = "dashboard-agent-listen-port"

KUBECTL_MISSING = (
    "kubectl is not on PATH. These tests render deploy/k8s with `kubectl kustomize`, which needs "
    "no cluster, only the client: install it from https://kubernetes.io/docs/tasks/tools/ (on "
    "Linux: curl -LO https://dl.k8s.io/release/v1.32.4/bin/linux/amd64/kubectl && sudo install "
    "-m 0755 kubectl /usr/local/bin/kubectl), or your distribution's kubectl package."
)


# --- rendering and walking the objects ---------------------------------------------------


def _kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail(KUBECTL_MISSING, pytrace=False)
    return path


def _schemas() -> Path:
    needed = [SCHEMAS / "ray.io" / f"{kind}_v1.json" for kind in ("raycluster", "rayjob")]
    missing = [str(path) for path in needed if not path.is_file()]
    if missing:
        pytest.fail(
            f"the KubeRay JSON schemas are missing: {', '.join(missing)}. They are part of the "
            f"repository, in {SCHEMAS} (see its README.md): restore them from version control.",
            pytrace=False,
        )
    return SCHEMAS


@functools.cache
def _render(folder: str) -> tuple[dict, ...]:
    result = subprocess.run(
        [_kubectl(), "kustomize", str(K8S / folder)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"kubectl kustomize deploy/k8s/{folder} failed:\n{result.stderr}", pytrace=False
        )
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def rendered(name: str) -> tuple[dict, ...]:
    """The objects of one render (shared between tests: do not modify them)."""
    return _render(RENDERS[name])


def with_beside(name: str) -> tuple[dict, ...]:
    """A render's objects plus those of the service it runs beside (for a RayJob)."""
    return rendered(name) + (rendered(BESIDE[name]) if name in BESIDE else ())


def ident(doc: dict) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def of_kind(docs, kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def named(docs, kind: str, name: str) -> dict:
    found = [doc for doc in of_kind(docs, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def ray_clusters(doc: dict) -> Iterator[tuple[str, str, dict]]:
    """(where, cluster name, RayCluster spec) of a RayCluster, or of a RayJob's own cluster."""
    if doc["kind"] == "RayCluster":
        yield ident(doc), doc["metadata"]["name"], doc["spec"]
    elif doc["kind"] == "RayJob" and "rayClusterSpec" in doc["spec"]:
        # KubeRay names a RayJob's cluster <rayjob>-<random suffix>
        yield ident(doc), doc["metadata"]["name"] + "-x7k2q", doc["spec"]["rayClusterSpec"]


def kuberay_labels(cluster: str, node_type: str, group: str, template: dict) -> dict:
    """The labels KubeRay gives a Ray pod: its own, overridable by the template's but for three."""
    labels = {
        "ray.io/is-ray-node": "yes",
        "app.kubernetes.io/name": "kuberay",
        "app.kubernetes.io/created-by": "kuberay-operator",
        "ray.io/identifier": f"{cluster}-{node_type}",
    }
    labels |= (template.get("metadata") or {}).get("labels") or {}
    labels |= {"ray.io/cluster": cluster, "ray.io/node-type": node_type, "ray.io/group": group}
    return labels


@dataclass
class PodTemplate:
    where: str
    labels: dict
    spec: dict
    ray: str | None = None  # "head" or "worker" for Ray pods
    cluster: dict | None = field(default=None, repr=False)  # the RayCluster spec of a Ray pod
    group: dict | None = field(default=None, repr=False)  # its head or worker group spec


def pod_templates(doc: dict) -> Iterator[PodTemplate]:
    """Every pod an object makes, with the labels the pod will carry."""
    if doc["kind"] in POD_MAKERS:
        template = doc["spec"]["template"]
        labels = (template.get("metadata") or {}).get("labels") or {}
        yield PodTemplate(ident(doc), labels, template["spec"])
    for where, cluster, spec in ray_clusters(doc):
        head_group = spec["headGroupSpec"]
        head = head_group["template"]
        labels = kuberay_labels(cluster, "head", "headgroup", head)
        yield PodTemplate(f"{where} head", labels, head["spec"], "head", spec, head_group)
        for group in spec.get("workerGroupSpecs") or []:
            template = group["template"]
            labels = kuberay_labels(cluster, "worker", group["groupName"], template)
            where_group = f"{where} worker group {group['groupName']}"
            yield PodTemplate(where_group, labels, template["spec"], "worker", spec, group)


def all_pods(docs) -> list[PodTemplate]:
    return [pod for doc in docs for pod in pod_templates(doc)]


def containers(spec: dict) -> list[dict]:
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def env_of(container: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in container.get("env") or []}


def secret_ref(entry: dict) -> tuple[str, str] | None:
    ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
    return (ref["name"], ref["key"]) if ref else None


def command_line(container: dict) -> list[str]:
    return list(container.get("command") or []) + list(container.get("args") or [])


def option(argv: list[str], name: str) -> str:
    assert name in argv, f"{name} missing from {argv}"
    return argv[argv.index(name) + 1]


def the_api(docs) -> dict:
    return named(docs, "Deployment", "dmsweep-api")["spec"]["template"]["spec"]["containers"][0]


def the_raycluster(docs) -> dict:
    clusters = of_kind(docs, "RayCluster")
    assert len(clusters) == 1, f"expected one RayCluster, found {len(clusters)}"
    return clusters[0]


def project_version() -> str:
    text = (REPO / "pyproject.toml").read_text()
    project = text.split("[project]", 1)[1].split("\n[", 1)[0]
    match = re.search(r'^version\s*=\s*"([^"]+)"', project, re.MULTILINE)
    assert match, "no version in pyproject.toml's [project] table"
    return match.group(1)


def readme_commands(text: str) -> list[str]:
    """The README's shell lines, with backslash continuations joined."""
    return [" ".join(line.split()) for line in text.replace("\\\n", " ").splitlines()]


def tolerates(tolerations: list[dict], taint: dict) -> bool:
    """Kubernetes' rule: does one of the tolerations tolerate the taint?"""
    for toleration in tolerations:
        if toleration.get("effect") and toleration["effect"] != taint["effect"]:
            continue
        operator = toleration.get("operator", "Equal")
        if not toleration.get("key"):
            if operator == "Exists":
                return True
            continue
        if toleration["key"] != taint["key"]:
            continue
        if operator == "Exists" or toleration.get("value", "") == taint["value"]:
            return True
    return False


def has_ray_clusters(name: str) -> bool:
    return any(True for doc in rendered(name) for _ in ray_clusters(doc))


# --- prerequisites and coverage ----------------------------------------------------------


def test_prerequisites_kubectl_and_the_kuberay_schemas():
    kubectl = _kubectl()
    result = subprocess.run(
        [kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "kustomizeVersion" in json.loads(result.stdout), "this kubectl has no kustomize"
    schemas = _schemas()
    for kind in ("raycluster", "rayjob"):
        schema = json.loads((schemas / "ray.io" / f"{kind}_v1.json").read_text())
        assert schema["properties"]["apiVersion"]["enum"] == ["ray.io/v1"]


def test_every_kustomization_is_rendered_and_every_component_used():
    kustomizations = {
        path.parent.relative_to(K8S).as_posix(): yaml.safe_load(path.read_text())
        for path in K8S.rglob("kustomization.yaml")
    }
    components = {d for d, k in kustomizations.items() if k.get("kind") == "Component"}
    assert set(kustomizations) - components == set(RENDERS.values())
    used = {
        (K8S / folder / ref).resolve().relative_to(K8S.resolve()).as_posix()
        for folder, k in kustomizations.items()
        for ref in k.get("components") or []
    }
    assert components <= used, f"components no render uses: {components - used}"
    assert set(CLOUDS) <= {Path(c).name for c in components}


# --- schemas -----------------------------------------------------------------------------


@functools.cache
def ray_validator(kind: str) -> jsonschema.Draft7Validator:
    """A draft-07 validator of a KubeRay kind, $refs resolved relative to each schema file."""
    path = _schemas() / "ray.io" / f"{kind.lower()}_v1.json"
    schema = json.loads(path.read_text()) | {"$id": path.as_uri()}

    def retrieve(uri: str) -> Resource:
        file = Path(url2pathname(urlparse(uri).path))
        return Resource.from_contents(json.loads(file.read_text()), default_specification=DRAFT7)

    return jsonschema.Draft7Validator(schema, registry=Registry(retrieve=retrieve))


@pytest.mark.parametrize("name", RENDERS)
def test_manifests_match_the_kubernetes_and_kuberay_schemas(name):
    errors = []
    for doc in rendered(name):
        if doc["kind"] not in KNOWN_KINDS:
            errors.append(f"{ident(doc)}: a kind these checks do not know (KNOWN_KINDS)")
        if doc["apiVersion"].startswith("ray.io/"):
            if doc["kind"] not in ("RayCluster", "RayJob"):
                errors.append(f"{ident(doc)}: no schema for this KubeRay kind")
                continue
            for error in ray_validator(doc["kind"]).iter_errors(doc):
                path = ".".join(str(p) for p in error.absolute_path)
                errors.append(f"{ident(doc)} {path}: {error.message}")
        else:
            for version in KUBERNETES_VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as error:
                    path = ".".join(str(p) for p in error.path)
                    errors.append(f"{ident(doc)} (Kubernetes {version}) {path}: {error.message}")
                except kubernetes_validate.SchemaNotFoundError as error:
                    errors.append(f"{ident(doc)}: {error.message}")
        if doc["kind"] not in CLUSTER_SCOPED and doc["metadata"].get("namespace") != NAMESPACE:
            errors.append(f"{ident(doc)}: namespace {doc['metadata'].get('namespace')!r}")
    assert not errors, "\n".join(errors)


def test_the_kuberay_schemas_catch_a_wrong_field():
    doc = json.loads(json.dumps(the_raycluster(rendered("base"))))
    doc["spec"]["workerGroupSpecs"][0]["minReplicas"] = "none"
    assert any(True for _ in ray_validator("RayCluster").iter_errors(doc))


# --- Ray: the cluster, GPU workers, node pools, versions -----------------------------------


@pytest.mark.parametrize("name", RENDERS)
def test_ray_clusters_head_and_gpu_workers(name):
    clusters = [c for doc in rendered(name) for c in ray_clusters(doc)]
    assert clusters, f"{name} renders no Ray cluster"
    for where, _, spec in clusters:
        assert spec["rayVersion"] == ray.__version__, f"{where}: rayVersion"
        assert spec.get("enableInTreeAutoscaling") is True, f"{where}: no autoscaler"

        head = spec["headGroupSpec"]
        params = head["rayStartParams"]
        assert params.get("num-cpus") == "0", f"{where}: the head must not run training"
        # KubeRay passes the value through a shell: a quoted JSON object
        resources = json.loads(json.loads(params["resources"]))
        assert resources == {"trial_slot": 8}, f"{where}: head resources {resources}"
        assert params.get("dashboard-host") == "0.0.0.0"
        head_spec = head["template"]["spec"]
        if where.startswith("RayCluster"):  # the service's cluster: its jobs may wait to start
            env = {e["name"]: e.get("value") for e in head_spec["containers"][0].get("env", [])}
            assert int(env["RAY_JOB_START_TIMEOUT_SECONDS"]) >= 86400, where
        for container in containers(head_spec):
            limits = (container.get("resources") or {}).get("limits") or {}
            assert "nvidia.com/gpu" not in limits, f"{where}: a GPU on the head"
        for cloud in CLOUDS.values():  # the head stays off the GPU pools
            assert not tolerates(head_spec.get("tolerations") or [], cloud["taint"])
            selector = head_spec.get("nodeSelector") or {}
            for pool in cloud["node_selectors"].values():
                assert not set(selector.items()) & set(pool.items())

        groups = spec.get("workerGroupSpecs") or []
        assert groups, f"{where}: no worker group"
        for group in groups:
            what = f"{where} worker group {group['groupName']}"
            ray_container = group["template"]["spec"]["containers"][0]
            resources = ray_container.get("resources") or {}
            gpus = (resources.get("limits") or {}).get("nvidia.com/gpu")
            assert isinstance(gpus, int) and gpus >= 1, f"{what}: nvidia.com/gpu limit {gpus!r}"
            requested = (resources.get("requests") or {}).get("nvidia.com/gpu", gpus)
            assert requested == gpus, f"{what}: GPU request {requested} != limit {gpus}"
            # autoscaling from zero: nothing runs (and no GPU node is paid for) until asked
            assert group["minReplicas"] == 0, f"{what}: minReplicas"
            assert group.get("replicas", 0) == 0, f"{what}: replicas"
            assert group["maxReplicas"] >= 1, f"{what}: maxReplicas"


@pytest.mark.parametrize("name", list(CLOUD_RENDERS))
def test_gpu_workers_select_and_tolerate_their_clouds_node_pool(name):
    cloud = CLOUDS[CLOUD_RENDERS[name]]
    workers = [pod for pod in all_pods(rendered(name)) if pod.ray == "worker"]
    assert workers, f"{name}: no Ray worker"
    for doc in rendered(name):
        for where, _, spec in ray_clusters(doc):
            groups = {g["groupName"] for g in spec.get("workerGroupSpecs") or []}
            assert groups == set(cloud["node_selectors"]), f"{where}: worker groups {groups}"
    for pod in workers:
        selector = pod.spec.get("nodeSelector") or {}
        expected = cloud["node_selectors"][pod.group["groupName"]]
        assert selector == expected, f"{pod.where}: nodeSelector {selector}"
        tolerations = pod.spec.get("tolerations") or []
        assert tolerates(tolerations, cloud["taint"]), (
            f"{pod.where}: {cloud['taint']} not tolerated"
        )
        for other in CLOUDS.values():
            if other is not cloud:
                for pool in other["node_selectors"].values():
                    assert not set(selector) & set(pool), pod.where


@pytest.mark.parametrize("name", ["base", "sweep-job"])
def test_the_base_names_no_node_pool(name):
    for pod in all_pods(rendered(name)):
        assert not pod.spec.get("nodeSelector"), f"{pod.where}: a cloud's nodeSelector in the base"


def dockerfile() -> str:
    if not DOCKERFILE.is_file():
        pytest.fail(
            f"{DOCKERFILE.relative_to(REPO)} is missing: the manifests run the image built from it",
            pytrace=False,
        )
    return DOCKERFILE.read_text()


def test_the_image_holds_the_installed_ray():
    """The image's Ray (its base image, or a pin in the Dockerfile or a constraints file it
    copies in) is the venv's."""
    text = dockerfile()
    args = dict(re.findall(r"^\s*ARG\s+(\w+)=\"?([^\s\"]+)\"?", text, re.MULTILINE))
    text = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)
    for source in re.findall(r"^\s*COPY\s+(\S+\.txt)\s", text, re.MULTILINE):
        if (REPO / source).is_file():
            text += "\n" + (REPO / source).read_text()
    versions = re.findall(r"rayproject/ray(?:-ml)?:(\d+\.\d+\.\d+)", text)
    versions += re.findall(r"\bray(?:\[[\w,]+\])?==(\d+\.\d+\.\d+)", text)
    assert versions, "the Dockerfile neither builds on rayproject/ray:<version> nor pins ray=="
    assert set(versions) == {ray.__version__}, (
        f"Ray {versions} in the image, {ray.__version__} here"
    )


def image_user() -> int:
    """The uid of the image's user (APP_UID of deploy/docker/Dockerfile); its gid is the same."""
    match = re.search(r"^ARG APP_UID=(\d+)", dockerfile(), re.MULTILINE)
    assert match, "no ARG APP_UID in the Dockerfile"
    return int(match.group(1))


@pytest.mark.parametrize("name", RENDERS)
def test_pods_of_the_image_run_as_its_user_and_only_init_containers_as_root(name):
    uid = image_user()
    for pod in all_pods(rendered(name)):
        images = {c["image"].rpartition(":")[0] for c in containers(pod.spec)}
        if not images or not images <= set(OURS):
            continue
        context = pod.spec.get("securityContext") or {}
        # the same ids as the image, so files on the shared volume are the service's own
        assert (context.get("runAsUser"), context.get("runAsGroup")) == (uid, uid), pod.where
        assert context.get("fsGroup") == uid, pod.where
        for container in pod.spec["containers"]:
            assert (container.get("securityContext") or {}).get("runAsUser") in (None, uid)
        for container in pod.spec.get("initContainers") or []:
            if (container.get("securityContext") or {}).get("runAsUser") == 0:
                # root only to hand the shared folders to the image's user
                assert f"chown {uid}:{uid} " in " ".join(command_line(container)), pod.where


# --- images and resources ------------------------------------------------------------------


@pytest.mark.parametrize("name", RENDERS)
def test_images_are_pinned_and_ours_carry_the_project_version(name):
    version = project_version()
    docs = rendered(name)
    ours = []
    for pod in all_pods(docs):
        for container in containers(pod.spec):
            image = container["image"]
            repository, _, tag = image.rpartition(":")
            assert repository and "/" not in tag, (
                f"{pod.where} {container['name']}: untagged {image}"
            )
            assert tag != "latest", f"{pod.where} {container['name']}: {image}"
            if repository in OURS:
                ours.append((pod.where, container["name"], tag))
            if pod.ray:  # every Ray container runs the project's image
                assert repository == IMAGE, f"{pod.where} {container['name']}: {image}"
    for _, _, spec in (c for doc in docs for c in ray_clusters(doc)):
        if "image" in (spec.get("autoscalerOptions") or {}):
            ours.append(("autoscaler", "autoscaler", spec["autoscalerOptions"]["image"]))
    if name in SERVICE_RENDERS:
        for deployment in ("dmsweep-api", "mlflow"):
            spec = named(docs, "Deployment", deployment)["spec"]["template"]["spec"]
            images = {c["image"].rpartition(":")[0] for c in containers(spec)}
            assert images == {SERVER_IMAGE}, deployment
    wrong = [entry for entry in ours if entry[2] != version]
    assert ours and not wrong, f"tags other than the project version {version}: {wrong}"


@pytest.mark.parametrize("name", RENDERS)
def test_every_container_requests_cpu_and_memory(name):
    missing = []
    docs = rendered(name)
    for pod in all_pods(docs):
        for container in containers(pod.spec):
            requests = (container.get("resources") or {}).get("requests") or {}
            if not (requests.get("cpu") and requests.get("memory")):
                missing.append(f"{pod.where} {container['name']}: requests {requests}")
    for where, _, spec in (c for doc in docs for c in ray_clusters(doc)):
        if spec.get("enableInTreeAutoscaling"):  # KubeRay adds the autoscaler to the head pod
            resources = (spec.get("autoscalerOptions") or {}).get("resources") or {}
            requests = resources.get("requests") or {}
            if not (requests.get("cpu") and requests.get("memory")):
                missing.append(f"{where} autoscaler: requests {requests}")
    assert not missing, "\n".join(missing)


# --- secrets, config maps, volumes -----------------------------------------------------------


def documented_objects(kind: str) -> dict[str, set[str]]:
    """`kubectl create secret generic` / `create configmap` commands of deploy/README.md."""
    found: dict[str, set[str]] = {}
    words = {"secret": r"create secret generic", "configmap": r"create configmap"}[kind]
    for line in readme_commands(README.read_text()):
        match = re.search(rf"kubectl .*{words} ([\w.-]+)(.*)", line)
        if not match:
            continue
        keys = found.setdefault(match.group(1), set())
        for key, value in re.findall(r"--from-(?:literal|file)=([\w.-]+)=(\S+)", match.group(2)):
            keys.add(key)
            if kind == "secret":
                assert value.startswith(('"$', "$", "<", '"<')), (
                    f"README: a literal value for secret {match.group(1)} key {key}: {value}"
                )
    return found


def references(docs) -> Iterator[tuple[str, str, str, str | None]]:
    """(where, kind, name, key or None) of every Secret, ConfigMap and PVC the pods use."""
    for pod in all_pods(docs):
        for container in containers(pod.spec):
            for entry in container.get("env") or []:
                value_from = entry.get("valueFrom") or {}
                for kind, ref_key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                    if ref_key in value_from:
                        ref = value_from[ref_key]
                        yield pod.where, kind, ref["name"], ref["key"]
            for source in container.get("envFrom") or []:
                for kind, ref_key in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                    if ref_key in source:
                        yield pod.where, kind, source[ref_key]["name"], None
        for volume in pod.spec.get("volumes") or []:
            if "secret" in volume:
                items = volume["secret"].get("items") or [{"key": None}]
                for item in items:
                    yield pod.where, "Secret", volume["secret"]["secretName"], item["key"]
            if "configMap" in volume:
                items = volume["configMap"].get("items") or [{"key": None}]
                for item in items:
                    yield pod.where, "ConfigMap", volume["configMap"]["name"], item["key"]
            if "persistentVolumeClaim" in volume:
                yield pod.where, "PVC", volume["persistentVolumeClaim"]["claimName"], None
        for ref in pod.spec.get("imagePullSecrets") or []:
            yield pod.where, "Secret", ref["name"], None
        if pod.ray == "head":
            autoscaler = pod.cluster.get("autoscalerOptions") or {}
            for entry in autoscaler.get("env") or []:
                if secret_ref(entry):
                    yield f"{pod.where} autoscaler", "Secret", *secret_ref(entry)
            password = (pod.cluster.get("gcsFaultToleranceOptions") or {}).get("redisPassword")
            if password and secret_ref(password):
                yield f"{pod.where} GCS fault tolerance", "Secret", *secret_ref(password)
    for ingress in of_kind(docs, "Ingress"):
        annotations = ingress["metadata"].get("annotations") or {}
        if "nginx.ingress.kubernetes.io/auth-secret" in annotations:
            # ingress-nginx reads the users from the key `auth` (auth-secret-type: auth-file)
            name = annotations["nginx.ingress.kubernetes.io/auth-secret"]
            yield ident(ingress), "Secret", name, "auth"


@pytest.mark.parametrize("name", RENDERS)
def test_no_secret_value_is_committed_and_every_reference_resolves(name):
    docs = with_beside(name)
    secrets = of_kind(docs, "Secret")
    committed = [ident(s) for s in secrets if s.get("data") or s.get("stringData")]
    assert not committed, f"secret values in the manifests: {committed}"
    available = {
        "Secret": {s["metadata"]["name"]: None for s in secrets} | documented_objects("secret"),
        "ConfigMap": {
            c["metadata"]["name"]: set(c.get("data") or {}) for c in of_kind(docs, "ConfigMap")
        }
        | documented_objects("configmap"),
        "PVC": {p["metadata"]["name"]: None for p in of_kind(docs, "PersistentVolumeClaim")},
    }
    unresolved = []
    refs = list(references(rendered(name)))
    assert refs
    for where, kind, ref_name, key in refs:
        if ref_name not in available[kind]:
            unresolved.append(f"{where}: {kind} {ref_name} neither rendered nor created in README")
        elif key is not None and key not in (available[kind][ref_name] or {key}):
            unresolved.append(f"{where}: {kind} {ref_name} has no key {key}")
    assert not unresolved, "\n".join(unresolved)


@pytest.mark.parametrize("name", RENDERS)
def test_variable_references_resolve(name):
    """$(VAR) in env values expands only variables listed before; in commands, any of them."""
    bad = []
    for pod in all_pods(rendered(name)):
        for container in containers(pod.spec):
            seen: set[str] = set()
            for entry in container.get("env") or []:
                for var in re.findall(r"\$\((\w+)\)", entry.get("value", "")):
                    if var not in seen:
                        bad.append(
                            f"{pod.where} {container['name']}: {entry['name']} uses $({var})"
                        )
                seen.add(entry["name"])
            for word in command_line(container):
                for var in re.findall(r"\$\((\w+)\)", word):
                    if var not in seen:
                        bad.append(f"{pod.where} {container['name']}: command uses $({var})")
    assert not bad, "\n".join(bad)


# --- the contract between the pieces ---------------------------------------------------------


@pytest.mark.parametrize("name", RENDERS)
def test_ray_token_auth_everywhere(name):
    docs = rendered(name)
    for _, _, spec in (c for doc in docs for c in ray_clusters(doc)):
        assert "authOptions" not in spec or spec["authOptions"] == {"mode": "token"}
    for pod in all_pods(docs):
        if not pod.ray:
            continue
        managed = pod.cluster.get("authOptions", {}).get("mode") == "token"
        envs = [env_of(c) for c in pod.spec["containers"]]
        if pod.ray == "head":
            envs.append(env_of(pod.cluster.get("autoscalerOptions") or {}))
        for env in envs:
            if managed:  # KubeRay makes the token and sets both variables itself
                assert "RAY_AUTH_TOKEN" not in env, f"{pod.where}: token set beside authOptions"
            else:
                assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", pod.where
                assert secret_ref(env.get("RAY_AUTH_TOKEN", {})) == RAY_TOKEN_SECRET, pod.where
    if name in SERVICE_RENDERS:
        env = env_of(the_api(docs))
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert secret_ref(env["RAY_AUTH_TOKEN"]) == RAY_TOKEN_SECRET


@pytest.mark.parametrize("name", SERVICE_RENDERS)
def test_api_settings(name):
    docs = rendered(name)
    api = the_api(docs)
    assert command_line(api) == ["dmsweep", "serve", "--host", "0.0.0.0", "--port", "8000"]
    env = env_of(api)
    values = {key: entry.get("value") for key, entry in env.items()}
    cluster = the_raycluster(docs)["metadata"]["name"]
    assert values["DMSWEEP_RAY_ADDRESS"] == f"http://{cluster}-head-svc:{DASHBOARD_PORT}"
    assert values["DMSWEEP_MLFLOW_URI"] == "http://mlflow:5000"
    assert values["DMSWEEP_DATA_ROOTS"] == "/data"
    assert values["DMSWEEP_STORAGE_ROOT"] == "/storage"
    assert values["DMSWEEP_DATABASE_URL"] == (
        "postgresql+psycopg://dmsweep:$(POSTGRES_PASSWORD)@postgres:5432/dmsweep"
    )
    assert secret_ref(env["POSTGRES_PASSWORD"]) == ("dmsweep-postgres", "password")
    assert "DMSWEEP_API_TOKEN" not in env, "the API token belongs in a file, not the pod spec"
    # DMSWEEP_API_TOKEN_FILE is the key `token` of dmsweep-api-token, mounted as that file
    token_file = Path(values["DMSWEEP_API_TOKEN_FILE"])
    pod = named(docs, "Deployment", "dmsweep-api")["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in api["volumeMounts"]}
    mount = mounts[str(token_file.parent)]
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "dmsweep-api-token"
    assert {"key": "token", "path": token_file.name} in volume["secret"]["items"]
    assert api["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert named(docs, "Service", "dmsweep-api")["spec"]["ports"][0]["port"] == 8000


@pytest.mark.parametrize("name", SERVICE_RENDERS)
def test_mlflow_and_postgres_settings(name):
    docs = rendered(name)
    mlflow = named(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    argv = command_line(mlflow)
    assert argv[:2] == ["mlflow", "server"]
    assert "--serve-artifacts" in argv
    # options in the environment (`mlflow server` reads MLFLOW_BACKEND_STORE_URI and
    # MLFLOW_SERVER_ALLOWED_HOSTS): the database password stays out of the arguments
    env = env_of(mlflow)
    assert "--backend-store-uri" not in argv and "--allowed-hosts" not in argv
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"] == (
        "postgresql+psycopg://mlflow:$(MLFLOW_DB_PASSWORD)@postgres:5432/mlflow"
    )
    assert secret_ref(env["MLFLOW_DB_PASSWORD"]) == ("dmsweep-postgres", "mlflow-password")
    artifacts = option(argv, "--artifacts-destination")
    assert artifacts in {m["mountPath"] for m in mlflow["volumeMounts"]}, "artifacts not mounted"
    hosts = env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
    assert {"mlflow:*", f"mlflow.{NAMESPACE}.svc:*", "localhost:*", "127.0.0.1:*"} <= set(hosts)
    assert (option(argv, "--host"), option(argv, "--port")) == ("0.0.0.0", "5000")
    assert mlflow["readinessProbe"]["httpGet"]["path"] == "/health"

    postgres = named(docs, "StatefulSet", "postgres")
    assert postgres["spec"]["volumeClaimTemplates"], "PostgreSQL without a volume"
    container = postgres["spec"]["template"]["spec"]["containers"][0]
    # the major version compose runs too
    assert container["image"] == "postgres:16.8-bookworm"
    env = env_of(container)
    # the superuser is the image's own (postgres), for administration only; each client has
    # a role of its own that owns its database, as in docker-compose
    assert env.get("POSTGRES_USER", {}).get("value", "postgres") == "postgres"
    assert "POSTGRES_DB" not in env
    assert secret_ref(env["POSTGRES_PASSWORD"]) == ("dmsweep-postgres", "postgres-password")
    assert secret_ref(env["DMSWEEP_DB_PASSWORD"]) == ("dmsweep-postgres", "password")
    assert secret_ref(env["MLFLOW_DB_PASSWORD"]) == ("dmsweep-postgres", "mlflow-password")
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    init = next(
        v["configMap"]["name"]
        for v in postgres["spec"]["template"]["spec"]["volumes"]
        if v["name"] == mounts["/docker-entrypoint-initdb.d"]
    )
    script = "".join(named(docs, "ConfigMap", init)["data"].values())
    for role, variable in (("dmsweep", "DMSWEEP_DB_PASSWORD"), ("mlflow", "MLFLOW_DB_PASSWORD")):
        assert f"CREATE ROLE {role} LOGIN PASSWORD :'{role}_password'" in script
        assert f"CREATE DATABASE {role} OWNER {role}" in script
        # psql reads the password from its environment, not from its arguments
        assert f"\\getenv {role}_password {variable}" in script
    assert "SUPERUSER" not in script.upper().replace("NOSUPERUSER", "")
    assert not re.search(r"(--set|-v)[ =]\w+=\S*\$", script), "a password in psql's arguments"
    # the API logs in as the role dmsweep, MLflow as mlflow
    api_env = env_of(the_api(docs))
    assert api_env["DMSWEEP_DATABASE_URL"]["value"].startswith("postgresql+psycopg://dmsweep:")
    assert secret_ref(api_env["POSTGRES_PASSWORD"]) == secret_ref(env["DMSWEEP_DB_PASSWORD"])


@pytest.mark.parametrize("name", SERVICE_RENDERS)
def test_services_route_to_pods_and_ports(name):
    docs = rendered(name)
    pods = all_pods(docs)
    for service in of_kind(docs, "Service"):
        selector = service["spec"]["selector"]
        targets = [p for p in pods if selector.items() <= p.labels.items()]
        assert targets, f"{ident(service)} selects no pod"
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for pod in targets:
                ports = [p for c in pod.spec["containers"] for p in c.get("ports") or []]
                assert any(target in (p.get("name"), p["containerPort"]) for p in ports), (
                    f"{ident(service)} port {target} is not a port of {pod.where}"
                )
    for statefulset in of_kind(docs, "StatefulSet"):
        governing = named(docs, "Service", statefulset["spec"]["serviceName"])
        assert governing["spec"].get("clusterIP") == "None"


@pytest.mark.parametrize("name", RENDERS)
def test_shared_storage_is_the_same_on_the_api_and_every_ray_node(name):
    docs = rendered(name)
    pods = [p for p in all_pods(docs) if p.ray or p.where == "Deployment/dmsweep-api"]
    assert pods
    sources = {"/storage": set(), "/data": set()}
    for pod in pods:
        volumes = {v["name"]: v for v in pod.spec.get("volumes") or []}
        mounts = {m["mountPath"]: m for m in pod.spec["containers"][0].get("volumeMounts") or []}
        for path, seen in sources.items():
            assert path in mounts, f"{pod.where}: nothing at {path}"
            volume = volumes[mounts[path]["name"]]
            assert "persistentVolumeClaim" in volume, f"{pod.where}: {path} is not a volume"
            seen.add((volume["persistentVolumeClaim"]["claimName"], mounts[path].get("subPath")))
        assert not mounts["/storage"].get("readOnly"), f"{pod.where}: /storage read-only"
    for path, seen in sources.items():
        assert len(seen) == 1, f"{path} differs between pods: {seen}"
    claims = {p["metadata"]["name"]: p for p in of_kind(with_beside(name), "PersistentVolumeClaim")}
    for claim, _ in sources["/storage"] | sources["/data"]:
        assert "ReadWriteMany" in claims[claim]["spec"]["accessModes"], claim
        if name in CLOUD_RENDERS:
            expected = CLOUDS[CLOUD_RENDERS[name]]["rwx_class"]
            assert claims[claim]["spec"].get("storageClassName") == expected, claim
    if name in CLOUD_RENDERS and name not in BESIDE:
        for statefulset in of_kind(docs, "StatefulSet"):  # PostgreSQL, Redis
            template = statefulset["spec"]["volumeClaimTemplates"][0]
            expected = CLOUDS[CLOUD_RENDERS[name]]["rwo_class"]
            assert template["spec"].get("storageClassName") == expected, ident(statefulset)


# --- network policies --------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Who opens a connection: a pod (namespace and labels) or an address outside the cluster."""

    namespace: str | None
    namespace_labels: tuple = ()
    labels: tuple = ()
    ip: str = "10.4.0.9"


def in_namespace(namespace: str, **labels: str) -> Source:
    return Source(namespace, (("kubernetes.io/metadata.name", namespace),), tuple(labels.items()))


def selects(selector: dict, labels: dict) -> bool:
    """Kubernetes label selector semantics ({} selects everything)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        present = key in labels
        if (
            (operator == "In" and not (present and labels[key] in values))
            or (operator == "NotIn" and present and labels[key] in values)
            or (operator == "Exists" and not present)
            or (operator == "DoesNotExist" and present)
        ):
            return False
    return True


def peer_matches(peer: dict, source: Source, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        address = ipaddress.ip_address(source.ip)
        block = peer["ipBlock"]
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(e) for e in block.get("except") or []
        )
    if source.namespace is None:
        return False
    if "namespaceSelector" in peer:
        namespace_ok = selects(peer["namespaceSelector"], dict(source.namespace_labels))
    else:
        namespace_ok = source.namespace == policy_namespace
    return namespace_ok and selects(peer.get("podSelector") or {}, dict(source.labels))


def port_matches(rule_ports: list[dict], port: int, named_ports: dict[str, int]) -> bool:
    if not rule_ports:
        return True
    for rule in rule_ports:
        if rule.get("protocol", "TCP") != "TCP":
            continue
        if "port" not in rule:
            return True
        start = rule["port"]
        start = named_ports.get(start, -1) if isinstance(start, str) else start
        if start <= port <= rule.get("endPort", start):
            return True
    return False


def ingress_allowed(policies: list[dict], pod: PodTemplate, source: Source, port: int) -> bool:
    """Would the NetworkPolicies let `source` open `port` on a pod of `pod`'s template?"""
    named_ports = {
        p["name"]: p["containerPort"]
        for c in pod.spec["containers"]
        for p in c.get("ports") or []
        if "name" in p
    }
    isolating = [
        policy
        for policy in policies
        if policy["metadata"]["namespace"] == NAMESPACE
        and "Ingress" in policy["spec"].get("policyTypes", ["Ingress"])
        and selects(policy["spec"]["podSelector"], pod.labels)
    ]
    if not isolating:
        return True
    for policy in isolating:
        for rule in policy["spec"].get("ingress") or []:
            peers = rule.get("from") or []
            if (not peers or any(peer_matches(p, source, NAMESPACE) for p in peers)) and (
                port_matches(rule.get("ports") or [], port, named_ports)
            ):
                return True
    return False


OUTSIDERS = {
    "another namespace": in_namespace("default", app="anything"),
    "kube-system": in_namespace("kube-system", k8s_app="kube-dns"),
    "an ingress controller": in_namespace("ingress-nginx", **{"app.kubernetes.io/name": "x"}),
    "outside the cluster": Source(None, ip="203.0.113.7"),
}
OPERATOR = in_namespace(OPERATOR_NAMESPACE, **{"app.kubernetes.io/name": "kuberay-operator"})


@pytest.mark.parametrize("name", RENDERS)
def test_the_heads_keep_optuna_studies_in_postgres_with_a_password_from_the_secret(name):
    from service.sweep.searcher import STORAGE_VAR

    for pod in all_pods(rendered(name)):
        for container in containers(pod.spec):
            env = env_of(container)
            if pod.ray != "head" or container["name"] != pod.spec["containers"][0]["name"]:
                assert STORAGE_VAR not in env, f"{pod.where} {container['name']}"
                continue
            names = [e["name"] for e in container["env"]]
            # Kubernetes expands $(VAR) only from variables listed before it
            assert names.index("OPTUNA_DB_PASSWORD") < names.index(STORAGE_VAR), pod.where
            assert secret_ref(env["OPTUNA_DB_PASSWORD"]) == ("dmsweep-postgres", "optuna-password")
            url = env[STORAGE_VAR]["value"]
            assert url == "postgresql+psycopg://optuna:$(OPTUNA_DB_PASSWORD)@postgres:5432/optuna"
    if name in SERVICE_RENDERS:
        postgres = named(rendered(name), "StatefulSet", "postgres")["spec"]["template"]["spec"]
        (container,) = postgres["containers"]
        assert secret_ref(env_of(container)["OPTUNA_DB_PASSWORD"]) == (
            "dmsweep-postgres",
            "optuna-password",
        )
        script = "".join(named(rendered(name), "ConfigMap", "postgres-init")["data"].values())
        assert "\\getenv optuna_password OPTUNA_DB_PASSWORD" in script
        assert "CREATE ROLE optuna LOGIN PASSWORD :'optuna_password'" in script
        assert "CREATE DATABASE optuna OWNER optuna" in script


@pytest.mark.parametrize("name", SERVICE_RENDERS)
def test_network_policies_keep_ray_inside_the_namespace(name):
    policies = of_kind(rendered(name), "NetworkPolicy")
    job = f"{CLOUD_RENDERS[name]}-sweep-job" if name in CLOUD_RENDERS else "sweep-job"
    ray_pods = [p for p in all_pods(rendered(name) + rendered(job)) if p.ray]
    assert {p.where.split()[0].split("/")[0] for p in ray_pods} == {"RayCluster", "RayJob"}
    api = in_namespace(NAMESPACE, **{"app.kubernetes.io/name": "dmsweep-api"})
    for pod in ray_pods:
        for port in RAY_PORTS:
            for who, source in OUTSIDERS.items():
                assert not ingress_allowed(policies, pod, source, port), (
                    f"{who} -> {pod.where}:{port}"
                )
            # the operator polls the dashboard for RayJob status; nothing else of Ray's
            assert ingress_allowed(policies, pod, OPERATOR, port) == (port == DASHBOARD_PORT), (
                f"operator -> {pod.where}:{port}"
            )
            assert ingress_allowed(policies, pod, api, port), f"API -> {pod.where}:{port}"
    # Ray nodes talk to each other on any port (raylets, object managers, workers)
    head = next(p for p in ray_pods if p.ray == "head")
    worker_labels = next(p for p in ray_pods if p.ray == "worker").labels
    assert ingress_allowed(policies, head, in_namespace(NAMESPACE, **worker_labels), 12345)

    services = {p.where: p for p in all_pods(rendered(name)) if not p.ray}
    postgres = services["StatefulSet/postgres"]
    mlflow = in_namespace(NAMESPACE, **{"app.kubernetes.io/name": "mlflow"})
    assert ingress_allowed(policies, postgres, api, 5432)
    assert ingress_allowed(policies, postgres, mlflow, 5432)
    # the heads' sweep drivers keep Optuna studies there (a worker has no business there)
    for pod in ray_pods:
        source = in_namespace(NAMESPACE, **pod.labels)
        assert ingress_allowed(policies, postgres, source, 5432) == (pod.ray == "head"), pod.where
    for who, source in OUTSIDERS.items():
        # with components/ingress, the controller's namespace reaches MLflow (test_ingress_*)
        if not (who == "an ingress controller" and name in FULL_RENDERS):
            assert not ingress_allowed(policies, services["Deployment/mlflow"], source, 5000), who
        assert not ingress_allowed(policies, postgres, source, 5432), who
    assert ingress_allowed(policies, services["Deployment/mlflow"], in_namespace(NAMESPACE), 5000)


def test_the_operator_is_installed_where_the_policy_expects_it_and_pinned():
    installs = [
        line
        for line in readme_commands(README.read_text())
        if "helm install" in line and "kuberay" in line
    ]
    assert len(installs) == 1, installs
    command = installs[0].split()
    assert "kuberay/kuberay-operator" in command
    assert option(command, "--namespace") == OPERATOR_NAMESPACE
    for name in SERVICE_RENDERS:
        if name != "base":
            assert overlay_settings(name)["kuberay-namespace"] == OPERATOR_NAMESPACE, name
    version = tuple(int(part) for part in option(command, "--version").split("."))
    assert len(version) == 3 and version >= MIN_KUBERAY, f"chart {version}"


def test_readme_commands_name_existing_kustomizations():
    lines = readme_commands(README.read_text())
    targets = [m for line in lines for m in re.findall(r"kubectl (?:apply|create) -k (\S+)", line)]
    assert "deploy/k8s/overlays/gke" in targets
    for target in targets:
        assert (REPO / target / "kustomization.yaml").is_file(), target
        assert Path(target).relative_to("deploy/k8s").as_posix() in RENDERS.values()
    assert any("dmsweep submit search_spaces/smoke.yaml --server" in line for line in lines)


# --- probes --------------------------------------------------------------------------------


def ray_containers(docs) -> Iterator[tuple[PodTemplate, dict]]:
    """Every Ray pod with its Ray container (KubeRay's rule: the first container)."""
    for pod in all_pods(docs):
        if pod.ray:
            yield pod, pod.spec["containers"][0]


@pytest.mark.parametrize("name", RENDERS)
def test_every_ray_container_has_http_probes(name):
    """KubeRay injects exec probes running `wget` (absent from the image) into a Ray container
    without probes of its own: every Ray container declares httpGet probes on Ray's public
    health endpoints, the head's liveness patient enough for a busy head."""
    seen = 0
    for pod, container in ray_containers(rendered(name)):
        seen += 1
        agent_port = int(pod.group["rayStartParams"][AGENT_PORT_PARAM])
        for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
            probe = container.get(kind)
            if probe is None and kind == "startupProbe":
                continue
            assert probe and "httpGet" in probe, f"{pod.where}: {kind} is not httpGet: {probe}"
            assert "exec" not in probe and "tcpSocket" not in probe, f"{pod.where}: {kind}"
        ready = container["readinessProbe"]["httpGet"]
        alive = container["livenessProbe"]["httpGet"]
        if pod.ray == "head":
            assert (ready["path"], ready["port"]) == ("/api/gcs_healthz", DASHBOARD_PORT)
            assert (alive["path"], alive["port"]) == ("/api/healthz", agent_port)
        else:
            assert (ready["path"], ready["port"]) == ("/api/local_raylet_healthz", agent_port)
            assert (alive["path"], alive["port"]) == ("/api/local_raylet_healthz", agent_port)
        liveness = container["livenessProbe"]
        # a restart ends the sweeps: minutes of failures, each given time, before one
        patience = liveness.get("periodSeconds", 10) * liveness.get("failureThreshold", 3)
        assert patience >= 300, f"{pod.where}: liveness gives up after {patience} s"
        assert liveness.get("timeoutSeconds", 1) >= 5, f"{pod.where}: liveness timeout"
        assert liveness.get("initialDelaySeconds", 0) >= 30, f"{pod.where}: liveness delay"
    assert seen, f"{name}: no Ray container"


# --- Ray resources of each group, the head's size ------------------------------------------

QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
UNITS = {
    None: 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}
GiB = 2**30


def quantity(value) -> float:
    """A Kubernetes quantity ("36Gi", "500m", 8) as a number."""
    match = QUANTITY.match(str(value))
    assert match, f"not a quantity: {value!r}"
    return float(match.group(1)) * UNITS[match.group(2)]


def shm_size(pod: PodTemplate, container: dict) -> float:
    """The size of the memory-backed volume at /dev/shm (0 without one)."""
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts") or []}
    if "/dev/shm" not in mounts:
        return 0
    volume = next(v for v in pod.spec["volumes"] if v["name"] == mounts["/dev/shm"])
    assert volume["emptyDir"].get("medium") == "Memory", f"{pod.where}: /dev/shm on disk"
    return quantity(volume["emptyDir"]["sizeLimit"])


def autoscaler_view(pod: PodTemplate) -> dict[str, float]:
    """A group's Ray resources as KubeRay's autoscaler in the installed Ray works them out."""
    return _get_ray_resources_from_group_spec(pod.group, is_head=pod.ray == "head")


@pytest.mark.parametrize("name", RENDERS)
def test_every_group_states_its_ray_resources_and_they_fit_the_container(name):
    """num-cpus, num-gpus, memory and object-store-memory in rayStartParams (what the autoscaler
    plans with and what `ray start` gets), consistent with the container's limits: Ray's
    `memory` is the limit less /dev/shm, which the same limit is charged for."""
    for pod, container in ray_containers(rendered(name)):
        params = pod.group["rayStartParams"]
        for key in ("num-cpus", "num-gpus", "memory", "object-store-memory"):
            assert key in params, f"{pod.where}: {key} not in rayStartParams"
        limits = container["resources"]["limits"]
        view = autoscaler_view(pod)
        assert view["CPU"] == int(params["num-cpus"]), pod.where
        assert view.get("GPU", 0) == int(params["num-gpus"]) == limits.get("nvidia.com/gpu", 0)
        assert view["memory"] == int(params["memory"]), pod.where
        shm = shm_size(pod, container)
        store = int(params["object-store-memory"])
        assert store < shm, f"{pod.where}: the object store does not fit /dev/shm"
        assert int(params["memory"]) + shm <= quantity(limits["memory"]), pod.where
        if pod.ray == "worker":
            assert view["CPU"] == quantity(limits["cpu"]), f"{pod.where}: num-cpus != CPU limit"
            assert int(params["memory"]) + shm == quantity(limits["memory"]), pod.where
        else:
            assert view["CPU"] == 0 and view.get("GPU", 0) == 0, f"{pod.where}: trains"


def table2_worker() -> tuple[int, dict[str, float]]:
    """Workers per trial and each one's {CPU, GPU} of search_spaces/imagenet_table2.yaml."""
    spec = yaml.safe_load((REPO / "search_spaces" / "imagenet_table2.yaml").read_text())
    resources = spec["resources"]
    worker = {"CPU": resources["cpus_per_worker"], "GPU": resources["gpus_per_worker"]}
    return resources["workers_per_trial"], worker


@pytest.mark.parametrize("name", list(CLOUD_RENDERS))
def test_a_trial_of_eight_gpu_workers_fits_one_node_of_a_group(name):
    """Ray Train packs a trial's workers (placement strategy PACK, its default): the 8-GPU
    group holds all of imagenet_table2's 8 workers on one node, the 1-GPU group none of them
    (8 CPUs each), so the autoscaler can only start 8-GPU nodes for them."""
    workers, worker = table2_worker()
    for doc in rendered(name):
        for where, _, spec in ray_clusters(doc):
            views = {
                g["groupName"]: _get_ray_resources_from_group_spec(g, is_head=False)
                for g in spec["workerGroupSpecs"]
            }
            whole = [
                group
                for group, view in views.items()
                if all(view.get(k, 0) >= workers * v for k, v in worker.items())
            ]
            assert whole == ["gpu8"], f"{where}: {views}"
            assert not all(views["gpu"].get(k, 0) >= v for k, v in worker.items())


# What the head holds at once (deploy/README.md, "The head's size"): the per-process figures.
RAY_HEAD_PROCESSES = 3 * GiB  # GCS, raylet, dashboard and agents: 1.8 GiB idle, measured
JOB_SUPERVISOR = GiB // 4  # a Ray job's supervisor actor, one per sweep
TRIAL_DRIVER = GiB  # a several-worker trial's Tune process: 0.9 GiB after its imports
TRAIN_CONTROLLER = GiB // 2  # its Ray Train controller actor, on the same node


def head_memory_needed(max_sweeps: int, trial_slots: int, object_store: int) -> int:
    return (
        RAY_HEAD_PROCESSES
        + object_store
        + max_sweeps * (DRIVER_MEMORY_BYTES + JOB_SUPERVISOR)
        + trial_slots * (TRIAL_DRIVER + TRAIN_CONTROLLER)
    )


@pytest.mark.parametrize("name", RENDERS)
def test_the_head_is_sized_for_its_drivers_guaranteed_and_protected(name):
    docs = with_beside(name)
    service = BESIDE.get(name, name)
    if name in BESIDE:  # a RayJob: one sweep
        max_sweeps = 1
    else:
        default = next(f.default for f in fields(ServiceSettings) if f.name == "max_active_sweeps")
        env = env_of(the_api(docs))
        max_sweeps = int(env.get("DMSWEEP_MAX_ACTIVE_SWEEPS", {}).get("value", default))
    priority = named(rendered(service), "PriorityClass", HEAD_PRIORITY_CLASS)
    assert priority["value"] >= 1_000_000 and not priority.get("globalDefault")
    # a pending head waits for a node; it never evicts running pods
    assert priority.get("preemptionPolicy") == "Never"
    budgets = of_kind(rendered(service), "PodDisruptionBudget")
    heads = [pod for pod in all_pods(rendered(name)) if pod.ray == "head"]
    assert heads
    for pod in heads:
        params = pod.group["rayStartParams"]
        slots = json.loads(json.loads(params["resources"]))["trial_slot"]
        # Ray admits as many sweep drivers as may be active, by their declared memory
        assert int(params["memory"]) == max_sweeps * DRIVER_MEMORY_BYTES, pod.where
        container = pod.spec["containers"][0]
        needed = head_memory_needed(max_sweeps, slots, int(params["object-store-memory"]))
        limit = quantity(container["resources"]["limits"]["memory"])
        assert limit >= needed, f"{pod.where}: {limit / GiB} GiB < {needed / GiB} GiB"
        assert limit <= needed + 2 * GiB, f"{pod.where}: {limit / GiB} GiB, {needed / GiB} needed"
        # Guaranteed QoS: requests == limits for CPU and memory in every container of the pod,
        # the autoscaler KubeRay adds to it included
        resources = [(c["name"], c.get("resources") or {}) for c in containers(pod.spec)]
        resources.append(("autoscaler", pod.cluster["autoscalerOptions"]["resources"]))
        for what, res in resources:
            for key in ("cpu", "memory"):
                request = (res.get("requests") or {}).get(key)
                assert request is not None and request == (res.get("limits") or {}).get(key), (
                    f"{pod.where} {what}: {key} request {request} != limit"
                )
        assert pod.spec.get("priorityClassName") == HEAD_PRIORITY_CLASS, pod.where
        template = pod.group["template"]["metadata"]
        annotations = template.get("annotations") or {}
        assert annotations.get("cluster-autoscaler.kubernetes.io/safe-to-evict") == "false"
        covering = [b for b in budgets if selects(b["spec"]["selector"], pod.labels)]
        assert covering and all(b["spec"].get("maxUnavailable") == 0 for b in covering), pod.where
    for budget in budgets:  # no budget holds anything but heads
        for pod in all_pods(rendered(service)):
            if selects(budget["spec"]["selector"], pod.labels):
                assert pod.ray == "head", f"{ident(budget)} selects {pod.where}"


# --- access to the Kubernetes API ---------------------------------------------------------

RETIRED_ENV = ("DMSWEEP_AUTOSCALING_NODE", "DMSWEEP_AUTOSCALING_MAX_NODES")


@pytest.mark.parametrize("name", RENDERS)
def test_the_api_and_the_heads_may_read_their_raycluster_and_nothing_else_mounts_a_token(name):
    docs = rendered(name)
    pods = all_pods(docs)
    for pod in pods:
        for container in containers(pod.spec):
            env = env_of(container)
            assert not set(RETIRED_ENV) & set(env), f"{pod.where}: {set(RETIRED_ENV) & set(env)}"
        if pod.ray == "head":
            # KubeRay's autoscaler service account (named after the cluster, its Role may get
            # rayclusters) runs the head: no other may replace it, and its token is mounted
            assert pod.cluster.get("enableInTreeAutoscaling") is True
            assert "serviceAccountName" not in pod.spec, pod.where
            assert pod.spec.get("automountServiceAccountToken", True) is True, pod.where
            env = env_of(pod.spec["containers"][0])
            field_ref = env["DMSWEEP_KUBERAY_CLUSTER"]["valueFrom"]["fieldRef"]
            assert field_ref["fieldPath"] == "metadata.labels['ray.io/cluster']", pod.where
            assert "ray.io/cluster" in pod.labels  # KubeRay's label, whatever the template says
        elif pod.where != "Deployment/dmsweep-api":
            assert pod.spec.get("automountServiceAccountToken") is False, pod.where
    if name not in SERVICE_RENDERS:
        return
    cluster = the_raycluster(docs)["metadata"]["name"]
    deployment = named(docs, "Deployment", "dmsweep-api")["spec"]["template"]["spec"]
    account = deployment["serviceAccountName"]
    assert named(docs, "ServiceAccount", account)
    assert deployment.get("automountServiceAccountToken") is True
    assert env_of(the_api(docs))["DMSWEEP_KUBERAY_CLUSTER"]["value"] == cluster
    role = named(docs, "Role", "dmsweep-raycluster-reader")
    assert role["rules"] == [
        {
            "apiGroups": ["ray.io"],
            "resources": ["rayclusters"],
            "resourceNames": [cluster],
            "verbs": ["get"],
        }
    ]
    bindings = [
        b
        for b in of_kind(docs, "RoleBinding")
        if b["roleRef"]
        == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": ident(role).split("/")[1],
        }
    ]
    assert [b["subjects"] for b in bindings] == [
        [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    ]
    # no other Role or binding: nothing else of this namespace talks to the Kubernetes API
    assert len(of_kind(docs, "Role")) == len(of_kind(docs, "RoleBinding")) == 1


def test_both_heads_resolve_data_sets_under_the_apis_data_root():
    roots = set()
    for name in ("gke", "gke-sweep-job"):
        for pod in all_pods(rendered(name)):
            if pod.ray == "head":
                roots.add(env_of(pod.spec["containers"][0])["DMSWEEP_DATA_ROOT"]["value"])
    api_roots = env_of(the_api(rendered("gke")))["DMSWEEP_DATA_ROOTS"]["value"].split(":")
    assert roots == {api_roots[0]}


@pytest.mark.parametrize("name", SERVICE_RENDERS)
def test_no_egress_policy_keeps_the_api_from_the_kubernetes_api(name):
    docs = rendered(name)
    api_labels = named(docs, "Deployment", "dmsweep-api")["spec"]["template"]["metadata"]["labels"]
    for policy in of_kind(docs, "NetworkPolicy"):
        if "Egress" not in policy["spec"].get("policyTypes", []):
            continue
        if not selects(policy["spec"]["podSelector"], api_labels):
            continue
        # the API server's port on GKE and EKS (443), to any address
        allowed = any(
            not rule.get("to") and port_matches(rule.get("ports") or [], 443, {})
            for rule in policy["spec"].get("egress") or []
        )
        assert allowed, f"{ident(policy)} keeps the API from the Kubernetes API server"


# --- the API, secrets in arguments ---------------------------------------------------------


@pytest.mark.parametrize("name", SERVICE_RENDERS)
def test_the_api_is_a_single_writer(name):
    """One replica, and a rollout stops the old pod before the new one starts."""
    deployment = named(rendered(name), "Deployment", "dmsweep-api")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


CREDENTIALS_IN_URL = re.compile(r"\w+://[^/\s:@]+:[^/\s@]+@")
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|PASSWD|CREDENTIAL", re.IGNORECASE)


@pytest.mark.parametrize("name", RENDERS)
def test_no_secret_in_process_arguments(name):
    """A process's arguments are readable by every process of its pod (ps, /proc/*/cmdline)
    and land in logs: no secret goes in a command or args, neither written there nor put
    there by the kubelet ($(VAR)); secrets reach processes through the environment or files."""
    docs = rendered(name)
    bad = []
    for pod in all_pods(docs):
        secret_vars = {
            entry["name"]
            for container in containers(pod.spec)
            for entry in container.get("env") or []
            if secret_ref(entry) or SECRET_NAME.search(entry["name"])
        }
        for container in containers(pod.spec):
            # variables whose values hold a secret, directly or composed ($(VAR))
            holding = set(secret_vars)
            for entry in container.get("env") or []:
                if any(v in holding for v in re.findall(r"\$\((\w+)\)", entry.get("value", ""))):
                    holding.add(entry["name"])
            for word in command_line(container):
                for var in re.findall(r"\$\((\w+)\)", word):
                    if var in holding or SECRET_NAME.search(var):
                        bad.append(f"{pod.where} {container['name']}: $({var}) in its arguments")
                if CREDENTIALS_IN_URL.search(word):
                    bad.append(f"{pod.where} {container['name']}: credentials in a URL argument")
    # the scripts the pods run (ConfigMaps): no password handed to a program as an argument
    for config in of_kind(docs, "ConfigMap"):
        for key, text in (config.get("data") or {}).items():
            if re.search(r"(--set|-v)[ =]\w+=\S*\$", text):
                bad.append(f"{ident(config)} {key}: a variable passed on a command line")
    assert not bad, "\n".join(bad)


# --- GCS fault tolerance -------------------------------------------------------------------


@pytest.mark.parametrize("name", FULL_RENDERS)
def test_gcs_fault_tolerance_component(name):
    docs = rendered(name)
    options = the_raycluster(docs)["spec"]["gcsFaultToleranceOptions"]
    host, _, port = options["redisAddress"].partition(":")
    service = named(docs, "Service", host)
    assert int(port) in [p["port"] for p in service["spec"]["ports"]]
    assert secret_ref(options["redisPassword"]) == ("dmsweep-redis", "password")
    assert "value" not in options["redisPassword"]
    redis = named(docs, "StatefulSet", "redis")
    pod = next(p for p in all_pods(docs) if p.where == "StatefulSet/redis")
    container = pod.spec["containers"][0]
    repository, _, tag = container["image"].partition(":")
    assert repository == "redis" and re.fullmatch(r"7\.\d+\.\d+(-\w+)?", tag), container["image"]
    assert secret_ref(env_of(container)["REDIS_PASSWORD"]) == ("dmsweep-redis", "password")
    script = " ".join(command_line(container))
    assert "requirepass" in script and "appendonly yes" in script
    assert redis["spec"]["volumeClaimTemplates"], "Redis without a volume: a restart loses all"
    # only the Ray pods reach Redis (the head's GCS, KubeRay's cleanup job made from it)
    policies = of_kind(docs, "NetworkPolicy")
    ray_pods = [p for p in all_pods(docs) if p.ray]
    head = next(p for p in ray_pods if p.ray == "head")
    cleanup = {**head.labels, "ray.io/node-type": "redis-cleanup"}
    assert ingress_allowed(policies, pod, in_namespace(NAMESPACE, **head.labels), 6379)
    assert ingress_allowed(policies, pod, in_namespace(NAMESPACE, **cleanup), 6379)
    api = in_namespace(NAMESPACE, **{"app.kubernetes.io/name": "dmsweep-api"})
    assert not ingress_allowed(policies, pod, api, 6379)
    for who, source in OUTSIDERS.items():
        assert not ingress_allowed(policies, pod, source, 6379), who
    # the RayJob keeps its own cluster without Redis; the plain overlays have none
    assert "gcsFaultToleranceOptions" not in the_raycluster(rendered(CLOUD_RENDERS[name]))["spec"]


# --- the Ingress, the settings -------------------------------------------------------------


def overlay_settings(name: str) -> dict[str, str]:
    """The data of an overlay's settings.yaml (ConfigMap dmsweep-settings)."""
    settings = yaml.safe_load((K8S / RENDERS[name] / "settings.yaml").read_text())
    assert settings["metadata"]["name"] == "dmsweep-settings"
    annotations = settings["metadata"].get("annotations") or {}
    assert annotations.get("config.kubernetes.io/local-config") == "true"
    return settings["data"]


@pytest.mark.parametrize("name", FULL_RENDERS)
def test_ingress_component_serves_the_api_and_mlflow_over_tls_mlflow_behind_a_login(name):
    docs = rendered(name)
    settings = overlay_settings(name)
    ingresses = {i["metadata"]["name"]: i for i in of_kind(docs, "Ingress")}
    assert set(ingresses) == {"dmsweep-api", "mlflow"}
    hosts = {"dmsweep-api": settings["api-host"], "mlflow": settings["mlflow-host"]}
    services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    for service_name, ingress in ingresses.items():
        spec = ingress["spec"]
        assert spec["ingressClassName"] == "nginx"
        (rule,) = spec["rules"]
        assert rule["host"] == hosts[service_name]
        (tls,) = spec["tls"]
        assert tls["hosts"] == [rule["host"]] and tls["secretName"], ident(ingress)
        annotations = ingress["metadata"]["annotations"]
        assert annotations["cert-manager.io/cluster-issuer"] == settings["tls-cluster-issuer"]
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            port_names = [p["name"] for p in services[backend["name"]]["spec"]["ports"]]
            assert backend["name"] == service_name and backend["port"]["name"] in port_names
    mlflow_annotations = ingresses["mlflow"]["metadata"]["annotations"]
    assert mlflow_annotations["nginx.ingress.kubernetes.io/auth-type"] == "basic"
    assert mlflow_annotations["nginx.ingress.kubernetes.io/auth-secret"] == "mlflow-basic-auth"
    # the API checks its own bearer token: a proxy login would take the Authorization header
    api_annotations = ingresses["dmsweep-api"]["metadata"]["annotations"]
    assert not any(key.startswith("nginx.ingress.kubernetes.io/auth-") for key in api_annotations)
    # MLflow answers the Ingress's Host header; the API links runs to the public URL
    mlflow = named(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    allowed = env_of(mlflow)["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
    assert settings["mlflow-host"] in allowed
    api_env = env_of(the_api(docs))
    assert api_env["DMSWEEP_MLFLOW_PUBLIC_URL"]["value"] == f"https://{settings['mlflow-host']}"
    assert api_env["DMSWEEP_TRUSTED_PROXIES"]["value"] == settings["trusted-proxies"]
    # the controller's namespace reaches the API and MLflow, and nothing else
    policies = of_kind(docs, "NetworkPolicy")
    controller = in_namespace(settings["ingress-namespace"], **{"app.kubernetes.io/name": "x"})
    pods = {p.where: p for p in all_pods(docs)}
    assert ingress_allowed(policies, pods["Deployment/dmsweep-api"], controller, 8000)
    assert ingress_allowed(policies, pods["Deployment/mlflow"], controller, 5000)
    assert not ingress_allowed(policies, pods["StatefulSet/postgres"], controller, 5432)
    for pod in pods.values():
        if pod.ray:
            for port in RAY_PORTS:
                assert not ingress_allowed(policies, pod, controller, port), pod.where
    assert not ingress_allowed(
        policies, pods["Deployment/mlflow"], OUTSIDERS["another namespace"], 5000
    )


PLACEHOLDERS = (
    "api-host",
    "mlflow-host",
    "ingress-namespace",
    "tls-cluster-issuer",
    "trusted-proxies",
)


@pytest.mark.parametrize("name", [n for n in SERVICE_RENDERS if n != "base"])
def test_settings_leave_no_placeholder_and_are_not_applied(name):
    text = yaml.safe_dump_all(rendered(name))
    assert not [d for d in rendered(name) if d["metadata"]["name"] == "dmsweep-settings"]
    for placeholder in PLACEHOLDERS:
        assert not re.search(rf"(?<![\w.-]){placeholder}(?![\w.-])", text), placeholder


def test_the_settings_are_the_one_place_for_namespaces_and_hosts(tmp_path):
    """An overlay like gke-full with other settings: each value lands where it is used."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    kustomization = yaml.safe_load((K8S / RENDERS["gke-full"] / "kustomization.yaml").read_text())
    here = K8S / RENDERS["gke-full"]
    relative = Path(os.path.relpath(here, overlay))
    kustomization["resources"] = [
        str(relative / r) if r != "settings.yaml" else r for r in kustomization["resources"]
    ]
    kustomization["components"] = [str(relative / c) for c in kustomization["components"]]
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    values = {
        "kuberay-namespace": "ops-kuberay",
        "ingress-namespace": "edge",
        "api-host": "sweeps.lab.test",
        "mlflow-host": "runs.lab.test",
        "tls-cluster-issuer": "lab-ca",
        "trusted-proxies": "10.8.0.0/14",
    }
    settings = yaml.safe_load((here / "settings.yaml").read_text())
    assert set(settings["data"]) == set(values)
    settings["data"] = values
    (overlay / "settings.yaml").write_text(yaml.safe_dump(settings))
    result = subprocess.run(
        [_kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    policies = of_kind(docs, "NetworkPolicy")
    pods = {p.where: p for p in all_pods(docs)}
    head = next(p for p in pods.values() if p.ray == "head")
    operator = in_namespace("ops-kuberay", **{"app.kubernetes.io/name": "kuberay-operator"})
    assert ingress_allowed(policies, head, operator, DASHBOARD_PORT)
    assert not ingress_allowed(policies, head, OPERATOR, DASHBOARD_PORT)
    edge = in_namespace("edge", app="controller")
    assert ingress_allowed(policies, pods["Deployment/mlflow"], edge, 5000)
    assert not ingress_allowed(
        policies, pods["Deployment/mlflow"], in_namespace("ingress-nginx", app="x"), 5000
    )
    ingresses = {i["metadata"]["name"]: i for i in of_kind(docs, "Ingress")}
    assert ingresses["dmsweep-api"]["spec"]["rules"][0]["host"] == "sweeps.lab.test"
    assert ingresses["mlflow"]["spec"]["tls"][0]["hosts"] == ["runs.lab.test"]
    assert {
        i["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] for i in ingresses.values()
    } == {"lab-ca"}
    mlflow = named(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert "runs.lab.test" in env_of(mlflow)["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
    api_env = env_of(the_api(docs))
    assert api_env["DMSWEEP_MLFLOW_PUBLIC_URL"]["value"] == "https://runs.lab.test"
    assert api_env["DMSWEEP_TRUSTED_PROXIES"]["value"] == "10.8.0.0/14"
    # the component holds a placeholder, not a namespace to edit
    component = yaml.safe_load_all((K8S / "components" / "ingress" / "ingress.yaml").read_text())
    (policy,) = [d for d in component if d["kind"] == "NetworkPolicy"]
    selector = policy["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]
    assert selector == {"kubernetes.io/metadata.name": "ingress-namespace"}


# --- the README's node pools ---------------------------------------------------------------


def test_readme_creates_the_node_pools_the_overlays_select():
    """The gcloud node pools and eksctl node groups of deploy/README.md carry the labels each
    worker group selects and as many GPUs as it asks for."""
    text = README.read_text()
    lines = readme_commands(text)
    groups = {
        g["groupName"]: g for g in the_raycluster(rendered("gke"))["spec"]["workerGroupSpecs"]
    }
    gpus = {
        name: g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
        for name, g in groups.items()
    }
    pools = [line for line in lines if "gcloud container node-pools create" in line]
    accelerators = {
        match.group(1): int(match.group(2))
        for line in pools
        for match in [re.search(r"--accelerator type=([\w-]+),count=(\d+)", line)]
        if match
    }
    for group, selector in CLOUDS["gke"]["node_selectors"].items():
        accelerator = selector["cloud.google.com/gke-accelerator"]
        assert accelerators.get(accelerator) == gpus[group], (group, accelerators)
    labels = re.findall(r"labels: \{dmsweep\.io/node-pool: ([\w-]+)\}", text)
    for group, selector in CLOUDS["eks"]["node_selectors"].items():
        assert selector["dmsweep.io/node-pool"] in labels, (group, labels)


def test_object_storage_puts_sweeps_data_and_artifacts_in_the_bucket():
    docs = rendered("eks-s3")
    settings = overlay_settings("eks-s3")
    api = the_api(docs)
    env = {k: v.get("value") for k, v in env_of(api).items()}
    assert env["DMSWEEP_STORAGE_ROOT"] == settings["bucket-storage-root"].rstrip("/")
    assert env["DMSWEEP_DATA_ROOTS"] == settings["bucket-data-roots"]
    mlflow = named(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert option(command_line(mlflow), "--artifacts-destination") == settings["bucket-artifacts"]
    # every pod that reads or writes the bucket has its region and may have the credentials
    touching = [("api", api), ("mlflow", mlflow)] + [
        (pod.where, pod.spec["containers"][0]) for pod in all_pods(docs) if pod.ray
    ]
    assert len(touching) == 5  # the API, MLflow, the head, two worker groups
    for where, container in touching:
        assert env_of(container)["AWS_REGION"]["value"] == settings["aws-region"], where
        assert {"secretRef": {"name": "dmsweep-s3", "optional": True}} in container["envFrom"]
    # the service takes these settings as they are rendered
    from service.server.settings import ServiceSettings

    # (the token file is the mounted Secret's: here, the variable instead)
    given = {k: v for k, v in env.items() if v is not None and k != "DMSWEEP_API_TOKEN_FILE"}
    taken = ServiceSettings.from_env({**given, "DMSWEEP_API_TOKEN": "t" * 32})
    assert str(taken.storage_root) == "s3://dmsweep-example/sweeps"
    assert [str(root) for root in taken.data_roots] == ["s3://dmsweep-example/data", "/data"]
