"""Issue 12, items 1-3: what a spec may make a worker load, where the tracking URI's password
may appear, and how the service meets weak tokens and guessing.

Over real HTTP against the service on uvicorn (its Ray port closed: accepted sweeps stay
queued), as tests/test_api.py. The end-to-end check that the MLflow password reaches the trials
and nothing else is in tests/integration/test_service_stack.py (a real Ray and MLflow).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from dataclasses import replace
from ipaddress import ip_network
from pathlib import Path

import httpx
import pytest
import torch
from typer.testing import CliRunner

from service.cli.app import app as cli
from service.results.folder import SweepFolder
from service.results.records import SweepInfo, SweepStatus
from service.server.admission import SpecRejectedError
from service.server.app import FailedAuthentications
from service.server.ray_jobs import RayJobs, job_env, run_entrypoint
from service.server.store import SweepStore
from service.server.sweeps import SweepService
from service.sweep.ray_setup import ray_init_options
from service.tracking.uri import TRACKING_URI_ENV, redacted, with_credentials
from tests.support.api_server import AUTH, TOKEN, YAML, Served
from tests.support.ports import free_port
from tests.support.specs import tiny_spec_yaml
from trainers.backbones import BACKBONE_OPTIONS, build_backbone
from trainers.weights import read_state_dict

SECRET = "s3cret-Pa55"
MLFLOW_URI = f"http://alice:{SECRET}@mlflow.internal:5000"
PUBLIC_UI = "https://mlflow.example.org"
FAILURES = 3


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The service with a password in its MLflow URI, a public MLflow URL, 127.0.0.1 as its one
    trusted proxy and ``FAILURES`` wrong tokens per minute."""
    served = Served(
        tmp_path_factory.mktemp("security"),
        mlflow_uri=MLFLOW_URI,
        mlflow_public_url=PUBLIC_UI,
        trusted_proxies=(ip_network("127.0.0.1/32"),),
        auth_failures=FAILURES,
        auth_window_s=60.0,
    )
    served.start()
    yield served
    served.stop()


def client_from(served: Served, local_address: str = "127.0.0.1") -> httpx.Client:
    # Any 127.x address reaches the loopback: 127.0.0.2 is a peer the service does not trust.
    transport = httpx.HTTPTransport(local_address=local_address)
    return httpx.Client(base_url=served.url, timeout=60, transport=transport)


def spec(**changes) -> str:
    return tiny_spec_yaml(**{"name": "security", **changes})


def problems(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {d["loc"]: d["msg"] for d in response.json()["detail"]}


# --- 1. backbone options and weights -----------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"checkpoint_path": "/etc/passwd"},
        {"pretrained_cfg_overlay": {"file": "/tmp/evil.pth"}, "drop_rate": 0.1},
        {"pretrained_cfg": {"url": "https://example.org/evil.pth"}},
    ],
)
def test_backbone_options_outside_the_list_are_refused_by_name(guarded, options):
    text = spec(backbones={"smallnet": {"options": options}})
    before = guarded.created()
    with client_from(guarded) as client:
        found = problems(client.post("/sweeps", content=text, headers=YAML))
    message = found["backbones.smallnet.options"]
    refused = next(key for key in options if key not in BACKBONE_OPTIONS)
    assert repr(refused) in message and "not allowed" in message
    assert "drop_path_rate" in message and "global_pool" in message  # the allowed ones
    assert guarded.created() == before


def test_backbone_option_values_are_checked(guarded):
    text = spec(backbones={"smallnet": {"options": {"drop_rate": 2, "global_pool": "evil"}}})
    with client_from(guarded) as client:
        message = problems(client.post("/sweeps", content=text, headers=YAML))[
            "backbones.smallnet.options"
        ]
    assert "'drop_rate' must be a number in [0, 1)" in message
    assert "'global_pool' must be one of" in message


def test_the_service_refuses_downloads_unless_its_operator_allows_them(guarded, tmp_path):
    grid = {
        "dataset": ["synthetic"],
        "backbone": ["resnet18"],
        "method": ["mixup"],
        "loss": ["mce"],
        "seeds": [0],
    }
    text = spec(grid=grid, backbones={"resnet18": {"pretrained": True}})
    with client_from(guarded) as client:
        found = problems(client.post("/sweeps", content=text, headers=YAML))
        assert "DMSWEEP_ALLOW_DOWNLOADS" in found["backbones.resnet18.pretrained"]
        hub = spec(grid={**grid, "backbone": ["hf-hub:timm/resnet18.a1_in1k"]})
        assert "grid.backbone.0" in problems(client.post("/sweeps", content=hub, headers=YAML))
    # DMSWEEP_ALLOW_DOWNLOADS=1: the same spec passes the service's checks.
    allowed = replace(guarded.settings, allow_downloads=True)
    service = SweepService(
        allowed, SweepStore(f"sqlite:///{tmp_path / 'db'}"), RayJobs(allowed.ray_address)
    )
    service.validate(text.encode(), "application/yaml")
    with pytest.raises(SpecRejectedError):
        SweepService(guarded.settings, service.store, service.jobs).validate(
            text.encode(), "application/yaml"
        )


class _RunsCode:
    """A pickle that runs code when loaded: what ``weights:`` and ``checkpoint_path`` were."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_weights_are_never_unpickled(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"state_dict": _RunsCode(marker)}, protocol=2))
    with pytest.raises(ValueError, match=r"could not read weights .* as tensors only"):
        build_backbone("smallnet", 10, 32, weights=evil)
    assert not marker.exists()
    with pytest.raises(ValueError, match="'checkpoint_path' not allowed"):
        build_backbone("resnet18", 10, 64, checkpoint_path=str(evil))
    # A plain state dict and a safetensors file still load.
    from safetensors.torch import save_file

    state = build_backbone("smallnet", 10, 32).state_dict()
    torch.save(state, tmp_path / "ok.pth")
    save_file(state, str(tmp_path / "ok.safetensors"))
    for name in ("ok.pth", "ok.safetensors"):
        assert read_state_dict(tmp_path / name).keys() == state.keys()
        build_backbone("smallnet", 10, 32, weights=tmp_path / name)


# --- 2. the tracking URI's credentials -------------------------------------------------------


def test_the_tracking_uri_is_redacted_and_restored_from_the_environment():
    assert redacted(MLFLOW_URI) == "http://mlflow.internal:5000"
    assert redacted("postgresql://u:pw@db:5432/mlflow") == "postgresql://db:5432/mlflow"
    assert redacted("https://h/api?token=abc&x=1") == "https://h/api?x=1"
    assert redacted("sqlite:////runs/mlflow.db") == "sqlite:////runs/mlflow.db"
    env = {TRACKING_URI_ENV: MLFLOW_URI}
    assert with_credentials("http://mlflow.internal:5000", env) == MLFLOW_URI
    assert with_credentials("http://other:5000", env) == "http://other:5000"


def test_the_tracking_uri_goes_to_the_job_in_its_environment_only(monkeypatch):
    entrypoint = run_entrypoint("/s/spec.yaml", "sweep-1", "/storage")
    assert "mlflow" not in entrypoint and SECRET not in entrypoint
    assert job_env(MLFLOW_URI) == {TRACKING_URI_ENV: MLFLOW_URI}
    # Outside a Ray job, ray.init hands it to the workers; inside one, the job's env does (Ray
    # refuses a variable that both name).
    monkeypatch.setenv(TRACKING_URI_ENV, MLFLOW_URI)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    env_vars = ray_init_options("127.0.0.1:6379")["runtime_env"]["env_vars"]
    assert env_vars[TRACKING_URI_ENV] == MLFLOW_URI
    job = {"runtime_env": {"env_vars": {TRACKING_URI_ENV: MLFLOW_URI}}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    assert TRACKING_URI_ENV not in ray_init_options("auto")["runtime_env"]["env_vars"]


def test_the_api_never_shows_the_tracking_password(guarded):
    with client_from(guarded) as client:
        created = client.post("/sweeps", content=spec(name="tracked"), headers=YAML)
        assert created.status_code == 201, created.text
        sweep_id = created.json()["id"]
        # A sweep.json of a driver from before the fix: the URI with its password.
        SweepFolder(guarded.storage / sweep_id).write_state(
            SweepInfo(
                sweep_id,
                "tracked",
                SweepStatus.CREATED,
                tracking={
                    "uri": MLFLOW_URI,
                    "experiment_id": "7",
                    "parent_run_id": "abc",
                    "sweep_id": sweep_id,
                },
            )
        )
        view = client.get(f"/sweeps/{sweep_id}", headers=AUTH)
        assert view.json()["mlflow_run_url"] == f"{PUBLIC_UI}/#/experiments/7/runs/abc"
        listed = client.get("/sweeps", headers=AUTH)
        bad_uri = spec(tracking_uri="http://elsewhere:5000")
        refused = client.post("/sweeps", content=bad_uri, headers=YAML)
        assert refused.status_code == 422
    for response in (created, view, listed, refused):
        assert SECRET not in response.text
    assert SECRET not in repr(guarded.settings)


# --- 3. weak tokens and guessing -------------------------------------------------------------


def test_repeated_wrong_tokens_get_429_per_client_address(guarded):
    def forwarded(address: str, token: str) -> dict[str, str]:
        # what a proxy in front adds: the client's claim, then the address the proxy saw
        return {"Authorization": f"Bearer {token}", "X-Forwarded-For": f"10.9.9.9, {address}"}

    with client_from(guarded) as client:
        for _ in range(FAILURES):
            response = client.get("/sweeps", headers=forwarded("203.0.113.7", "guess"))
            assert response.status_code == 403
        blocked = client.get("/sweeps", headers=forwarded("203.0.113.7", TOKEN))
        assert blocked.status_code == 429
        assert 1 <= int(blocked.headers["Retry-After"]) <= 60
        assert "203.0.113.7" in blocked.json()["detail"]
        # Another client behind the same proxy, and the open path, are not held up.
        assert client.get("/sweeps", headers=forwarded("203.0.113.8", TOKEN)).status_code == 200
        assert client.get("/healthz").status_code == 200

    # From a peer that is not a listed proxy, X-Forwarded-For is the client's own claim: each
    # guess counts against the peer, whatever address it names.
    with client_from(guarded, "127.0.0.2") as client:
        for index in range(FAILURES):
            response = client.get("/sweeps", headers=forwarded(f"198.51.100.{index}", "guess"))
            assert response.status_code == 403
        blocked = client.get("/sweeps", headers=forwarded("198.51.100.99", TOKEN))
        assert blocked.status_code == 429 and "127.0.0.2" in blocked.json()["detail"]


def test_the_failure_table_is_bounded_and_forgets():
    table = FailedAuthentications(limit=2, window_s=10, max_addresses=3)
    for index in range(5):
        table.failed(f"192.0.2.{index}", now=0)
    assert len(table) == 3  # the two seen first were dropped
    table.failed("192.0.2.4", now=1)
    assert table.retry_after("192.0.2.4", now=2) == pytest.approx(8)
    assert table.retry_after("192.0.2.3", now=2) is None  # one failure: not blocked
    assert table.retry_after("192.0.2.4", now=10.5) is None  # the first left the window
    assert table.retry_after("192.0.2.4", now=11) is None
    assert len(table) == 2


@pytest.mark.parametrize(
    ("arguments", "env", "words"),
    [
        ([], {"DMSWEEP_API_TOKEN": "change-me"}, "has 9 characters; it needs at least 32"),
        (
            ["--insecure-no-auth", "--host", "0.0.0.0"],
            {},
            "only on a loopback address",
        ),
        (
            ["--insecure-no-auth", "--host", "my-host.example"],
            {},
            "only on a loopback address",
        ),
    ],
)
def test_serve_refuses_weak_tokens_and_open_insecure_binds(
    tmp_path, monkeypatch, arguments, env, words
):
    monkeypatch.delenv("DMSWEEP_API_TOKEN", raising=False)
    monkeypatch.delenv("DMSWEEP_API_TOKEN_FILE", raising=False)
    env = {
        **env,
        "DMSWEEP_STORAGE_ROOT": str(tmp_path),
        "DMSWEEP_RAY_ADDRESS": f"http://127.0.0.1:{free_port()}",
    }
    result = CliRunner().invoke(cli, ["serve", *arguments], env=env)
    assert result.exit_code == 2, result.output
    assert words in " ".join(result.output.split())
    assert not (tmp_path / "service.db").exists()  # refused before anything was made
