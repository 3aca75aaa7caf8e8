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
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import jsonschema
import kubernetes_validate
import pytest
import ray
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
README = REPO / "deploy" / "README.md"
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
SCHEMAS = REPO / "tests" / "data" / "kubernetes-schemas"

NAMESPACE = "dmsweep"
OPERATOR_NAMESPACE = "kuberay-system"
IMAGE = "ghcr.io/dmsweep/dmsweep"
RAY_TOKEN_SECRET = ("dmsweep-ray-token", "token")
RAY_PORTS = (6379, 8265, 10001)  # GCS, dashboard and job server, Ray client
DASHBOARD_PORT = 8265
# the first KubeRay with Ray token auth for RayJobs (authOptions), which sweep-job/ uses
MIN_KUBERAY = (1, 5, 1)
# the oldest Kubernetes minor still offered by GKE and EKS, and the newest schemas installed
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())
CLUSTER_SCOPED = {"Namespace", "StorageClass", "PersistentVolume", "ClusterRole"}
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
}

# What is rendered: name -> folder under deploy/k8s.
RENDERS = {
    "base": "base",
    "sweep-job": "sweep-job",
    "gke": "overlays/gke",
    "eks": "overlays/eks",
    "gke-sweep-job": "overlays/gke/sweep-job",
    "eks-sweep-job": "overlays/eks/sweep-job",
}
# A RayJob runs beside the service's objects (the shared volume, MLflow, the policies).
BESIDE = {"sweep-job": "base", "gke-sweep-job": "gke", "eks-sweep-job": "eks"}
SERVICE_RENDERS = ("base", "gke", "eks")
# Each cloud's GPU node pool (the labels to select, the taint to tolerate) and storage classes.
CLOUDS = {
    "gke": {
        "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
        "taint": {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
        "rwx_class": "standard-rwx",
        "rwo_class": "standard-rwo",
    },
    "eks": {
        "node_selector": {"dmsweep.io/node-pool": "gpu"},
        "taint": {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"},
        "rwx_class": "efs-sc",
        "rwo_class": "gp2",
    },
}
CLOUD_RENDERS = {name: name.split("-")[0] for name in RENDERS if name.split("-")[0] in CLOUDS}

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


def pod_templates(doc: dict) -> Iterator[PodTemplate]:
    """Every pod an object makes, with the labels the pod will carry."""
    if doc["kind"] in POD_MAKERS:
        template = doc["spec"]["template"]
        labels = (template.get("metadata") or {}).get("labels") or {}
        yield PodTemplate(ident(doc), labels, template["spec"])
    for where, cluster, spec in ray_clusters(doc):
        head = spec["headGroupSpec"]["template"]
        labels = kuberay_labels(cluster, "head", "headgroup", head)
        yield PodTemplate(f"{where} head", labels, head["spec"], "head", spec)
        for group in spec.get("workerGroupSpecs") or []:
            template = group["template"]
            labels = kuberay_labels(cluster, "worker", group["groupName"], template)
            where_group = f"{where} worker group {group['groupName']}"
            yield PodTemplate(where_group, labels, template["spec"], "worker", spec)


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
    assert set(CLOUDS) == {Path(c).name for c in components}


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
            assert not set(selector.items()) & set(cloud["node_selector"].items())

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
    for pod in workers:
        selector = pod.spec.get("nodeSelector") or {}
        assert selector == cloud["node_selector"], f"{pod.where}: nodeSelector {selector}"
        tolerations = pod.spec.get("tolerations") or []
        assert tolerates(tolerations, cloud["taint"]), (
            f"{pod.where}: {cloud['taint']} not tolerated"
        )
        for other in CLOUDS.values():
            if other is not cloud:
                assert not set(selector) & set(other["node_selector"]), pod.where


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
    """The image's Ray (its base image or pin in deploy/docker/Dockerfile) is the venv's."""
    text = dockerfile()
    args = dict(re.findall(r"^\s*ARG\s+(\w+)=\"?([^\s\"]+)\"?", text, re.MULTILINE))
    text = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)
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
        if images != {IMAGE}:
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
            if repository == IMAGE:
                ours.append((pod.where, container["name"], tag))
            if pod.ray:  # every Ray container runs the project's image
                assert repository == IMAGE, f"{pod.where} {container['name']}: {image}"
    for _, _, spec in (c for doc in docs for c in ray_clusters(doc)):
        if "image" in (spec.get("autoscalerOptions") or {}):
            ours.append(("autoscaler", "autoscaler", spec["autoscalerOptions"]["image"]))
    if name in SERVICE_RENDERS:
        for deployment in ("dmsweep-api", "mlflow"):
            spec = named(docs, "Deployment", deployment)["spec"]["template"]["spec"]
            assert all(c["image"].startswith(IMAGE + ":") for c in containers(spec)), deployment
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
                assert value.startswith(('"$(', "$(", "$", "<", '"<')), (
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
        "postgresql://dmsweep:$(POSTGRES_PASSWORD)@postgres:5432/dmsweep"
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
    assert option(argv, "--backend-store-uri") == (
        "postgresql://mlflow:$(MLFLOW_DB_PASSWORD)@postgres:5432/mlflow"
    )
    assert secret_ref(env_of(mlflow)["MLFLOW_DB_PASSWORD"]) == (
        "dmsweep-postgres",
        "mlflow-password",
    )
    artifacts = option(argv, "--artifacts-destination")
    assert artifacts in {m["mountPath"] for m in mlflow["volumeMounts"]}, "artifacts not mounted"
    hosts = option(argv, "--allowed-hosts").split(",")
    assert {"mlflow:*", f"mlflow.{NAMESPACE}.svc:*", "localhost:*", "127.0.0.1:*"} <= set(hosts)
    assert (option(argv, "--host"), option(argv, "--port")) == ("0.0.0.0", "5000")
    assert mlflow["readinessProbe"]["httpGet"]["path"] == "/health"

    postgres = named(docs, "StatefulSet", "postgres")
    assert postgres["spec"]["volumeClaimTemplates"], "PostgreSQL without a volume"
    container = postgres["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    assert env["POSTGRES_DB"]["value"] == env["POSTGRES_USER"]["value"] == "dmsweep"
    assert secret_ref(env["POSTGRES_PASSWORD"]) == ("dmsweep-postgres", "password")
    assert secret_ref(env["MLFLOW_DB_PASSWORD"]) == ("dmsweep-postgres", "mlflow-password")
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    init = next(
        v["configMap"]["name"]
        for v in postgres["spec"]["template"]["spec"]["volumes"]
        if v["name"] == mounts["/docker-entrypoint-initdb.d"]
    )
    script = "".join(named(docs, "ConfigMap", init)["data"].values())
    assert "CREATE DATABASE mlflow OWNER mlflow" in script
    assert "$MLFLOW_DB_PASSWORD" in script


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
    if name in CLOUDS:
        template = named(docs, "StatefulSet", "postgres")["spec"]["volumeClaimTemplates"][0]
        assert template["spec"].get("storageClassName") == CLOUDS[name]["rwo_class"]


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


@pytest.mark.parametrize("name", SERVICE_RENDERS)
def test_network_policies_keep_ray_inside_the_namespace(name):
    policies = of_kind(rendered(name), "NetworkPolicy")
    job = {"base": "sweep-job"}.get(name, f"{name}-sweep-job")
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
    assert not ingress_allowed(policies, postgres, in_namespace(NAMESPACE, **head.labels), 5432)
    for who, source in OUTSIDERS.items():
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
