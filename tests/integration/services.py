"""Real servers for the integration tests: PostgreSQL, the MLflow server, Ray nodes.

Each server is a plain process started in a new session (``start_new_session=True``), with its
output in a log file of the folder the test gives. It is ended through its process group, then
whatever is left of its session (Ray's workers leave the group but keep the session): never by
name, never with ``ray stop``. Every helper is a context manager that ends what it started, so
a failing test leaves nothing running.

    with postgres_server(folder) as pg, mlflow_server(folder, pg.url("mlflow")) as mlflow:
        mlflow.url            # http://127.0.0.1:<port>
        mlflow.stop(); mlflow.start()   # an outage: the same port, the same store

    with ray_head(folder) as head, ray_worker(folder, head) as node:
        head.address, head.dashboard_url
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from tests.support import REPO
from tests.support.ports import free_port
from tests.support.processes import end_session

BIN = Path(sys.executable).parent  # the virtual environment's scripts (mlflow, ray)
T = TypeVar("T")
SYSTEM_PACKAGES = "run `make system-packages`"
# psycopg 3, the one PostgreSQL driver the project installs, named in every SQLAlchemy URL.
SCHEME = "postgresql+psycopg"


# --- HTTP, processes ------------------------------------------------------------------------


@dataclass
class Service:
    """A process started by a test in its own session, and its log file."""

    name: str
    process: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        """The process id, which is also its process group and session id."""
        return self.process.pid

    def alive(self) -> bool:
        """Whether the process itself is still running."""
        return self.process.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the log, for failure messages."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError as error:
            return f"(log {self.log} not readable: {error})"

    def check_alive(self) -> None:
        """Raise with the log's end when the process has exited."""
        if not self.alive():
            raise RuntimeError(
                f"{self.name} exited with status {self.process.returncode}; "
                f"end of {self.log}:\n{self.log_tail()}"
            )

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30, group: bool = True) -> None:
        """End the process and all it started (waiting up to ``timeout_s`` + 20 s in all).

        ``sig`` goes to the process group (``group``) or to the process alone (a process that
        stops its children itself, in order), then SIGKILL to the group after ``timeout_s``;
        what is left of the session (processes that left the group) gets SIGTERM, then SIGKILL.
        """
        session = self.process.pid
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                if group:
                    os.killpg(session, sig)
                else:
                    self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(session, signal.SIGKILL)
                self.process.wait(10)
        end_session(session, wait_s=10)


def start_service(
    name: str,
    command: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> Service:
    """``command`` in a new session, stdout and stderr to ``log`` (appended), as ``user``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            list(command),
            cwd=cwd or REPO,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            user=user,
            group=user,
            extra_groups=[] if user is not None else None,
        )
    return Service(name, process, log)


def wait_for_http(
    url: str,
    *,
    timeout_s: float = 120,
    service: Service | None = None,
    headers: Mapping[str, str] | None = None,
    statuses: Sequence[int] = (200,),
) -> None:
    """Until ``url`` answers with one of ``statuses``; fails early when ``service`` exits."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        request = urllib.request.Request(url, headers=dict(headers or {}))
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                last = response.status
        except urllib.error.HTTPError as error:
            last = error.code
        except OSError as error:  # refused, reset, timed out
            last = error
        if last in statuses:
            return
        if service is not None:
            service.check_alive()
        if time.monotonic() > deadline:
            tail = f"\nend of {service.log}:\n{service.log_tail()}" if service else ""
            raise TimeoutError(
                f"{url} did not answer {list(statuses)} in {timeout_s} s: {last}{tail}"
            )
        time.sleep(0.25)


def wait_until(
    condition: Callable[[], T | None], what: str, timeout_s: float = 120, interval_s: float = 0.25
) -> T:
    """Poll ``condition`` until it returns something truthy, which is returned; a TimeoutError
    naming ``what`` after ``timeout_s``. ``condition`` may raise to stop waiting early."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s} s")
        time.sleep(interval_s)


def wait_for_log(service: Service, text: str, timeout_s: float = 90) -> None:
    """Until ``text`` appears in the service's log; fails early when the service exits."""
    deadline = time.monotonic() + timeout_s
    while text not in service.log_tail(chars=10**7):
        service.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{service.name}: no {text!r} in {timeout_s} s; end of {service.log}:\n"
                + service.log_tail()
            )
        time.sleep(0.25)


def short_temp_dir(prefix: str) -> Path:
    """A new folder directly under /tmp (unix socket paths must stay under 108 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


# --- PostgreSQL --------------------------------------------------------------------------------


def postgres_bin() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` (Debian's layout)."""
    found = glob.glob("/usr/lib/postgresql/*/bin/postgres")
    if not found:
        raise RuntimeError(
            f"PostgreSQL is not installed (no /usr/lib/postgresql/*/bin): {SYSTEM_PACKAGES}"
        )
    newest = max(found, key=lambda path: int(Path(path).parts[-3].split(".")[0]))
    return Path(newest).parent


@dataclass(frozen=True)
class Postgres:
    """A running PostgreSQL: one database and one role (with a password) per name."""

    host: str
    port: int
    socket_dir: Path
    data_dir: Path
    urls: Mapping[str, str]
    service: Service = field(repr=False)

    def url(self, database: str) -> str:
        """``postgresql+psycopg://<role>:<password>@127.0.0.1:<port>/<database>``.

        A SQLAlchemy URL naming its driver (MLflow's ``--backend-store-uri``, the service's
        store): a bare ``postgresql://`` is psycopg2 in SQLAlchemy 2.0.
        """
        return self.urls[database]


@contextlib.contextmanager
def postgres_server(
    folder: Path, databases: Sequence[str] = ("mlflow", "dmsweep"), timeout_s: float = 60
) -> Iterator[Postgres]:
    """A fresh PostgreSQL on a free port of 127.0.0.1, a database and role per name.

    The log is ``folder/postgres.log``. Data and socket live in a new folder under /tmp (a short
    path the ``postgres`` user can reach: pytest's folders may be private to root), removed at
    the end. As root, initdb and postgres run as the ``postgres`` user (PostgreSQL refuses
    root). The server is stopped with SIGINT (a fast shutdown: clients such as MLflow's
    connection pool would hold off a smart one); the postmaster ends its backends, which run in
    sessions of their own.
    """
    import psycopg
    from psycopg import sql

    binaries = postgres_bin()
    user = "postgres" if os.geteuid() == 0 else None
    base = short_temp_dir("pg-")
    if user is not None:
        import pwd

        entry = pwd.getpwnam(user)
        os.chown(base, entry.pw_uid, entry.pw_gid)
    base.chmod(0o755)
    data = base / "data"
    log = folder / "postgres.log"
    superuser_password = secrets.token_hex(12)
    password_file = base / "superuser-password"
    password_file.write_text(superuser_password + "\n")
    if user is not None:
        os.chown(password_file, entry.pw_uid, entry.pw_gid)
    service = None
    try:
        init = start_service(
            "initdb",
            [
                str(binaries / "initdb"),
                "--pgdata",
                str(data),
                "--username",
                "postgres",
                f"--pwfile={password_file}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
            folder / "initdb.log",
            cwd=base,
            user=user,
        )
        if init.process.wait(timeout_s) != 0:
            raise RuntimeError(f"initdb failed; end of {init.log}:\n{init.log_tail()}")
        password_file.unlink()
        port = free_port()
        service = start_service(
            "postgres",
            [
                str(binaries / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-k",
                str(base),
                "-c",
                "listen_addresses=127.0.0.1",
                # A test database: speed over durability.
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ],
            log,
            cwd=base,
            user=user,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                admin = psycopg.connect(
                    host=str(base), port=port, user="postgres", dbname="postgres"
                )
                break
            except psycopg.OperationalError as error:
                service.check_alive()
                if time.monotonic() > deadline:
                    message = f"PostgreSQL did not start: {error}\n{service.log_tail()}"
                    raise TimeoutError(message) from None
                time.sleep(0.2)
        urls = {}
        try:
            admin.autocommit = True
            with admin.cursor() as cursor:
                for name in databases:
                    password = secrets.token_hex(12)
                    # utility statements take no server-side parameters: a literal, quoted
                    role = sql.Identifier(name)
                    cursor.execute(
                        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                            role, sql.Literal(password)
                        )
                    )
                    cursor.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(role, role))
                    urls[name] = f"{SCHEME}://{name}:{password}@127.0.0.1:{port}/{name}"
        finally:
            admin.close()
        for url in urls.values():  # over TCP with the password, as the clients will connect
            psycopg.connect(url.replace(SCHEME, "postgresql", 1)).close()
        yield Postgres("127.0.0.1", port, base, data, urls, service)
    finally:
        if service is not None:
            service.stop(signal.SIGINT)
        shutil.rmtree(base, ignore_errors=True)


# --- MLflow tracking server -------------------------------------------------------------------


class MlflowServer:
    """``mlflow server`` on a PostgreSQL store with proxied artifacts; stop and start it again.

    The port is chosen once: a restarted server answers at the same URL, on the same store and
    artifact folder (``folder/artifacts``). Each start logs to ``folder/mlflow-<n>.log``. One
    uvicorn worker and no job execution by default (``workers``, ``jobs``): what the tests need,
    started in the least time.
    """

    def __init__(
        self,
        folder: Path,
        backend_uri: str,
        *,
        port: int | None = None,
        workers: int = 1,
        jobs: bool = False,
        allowed_hosts: Sequence[str] = ("127.0.0.1:*", "localhost:*"),
        env: Mapping[str, str] | None = None,
        artifacts: str | None = None,
    ) -> None:
        self.folder = folder
        self.backend_uri = backend_uri
        self.port = port or free_port()
        self.workers = workers
        self.jobs = jobs
        self.allowed_hosts = tuple(allowed_hosts)
        self.env = dict(env or {})
        # A folder, or a bucket (``s3://...``: the server reaches it with ``env``'s settings).
        self.artifacts: Path | str = artifacts or folder / "artifacts"
        self.starts = 0
        self.service: Service | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: the tracking URI and the UI."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the server process is running."""
        return self.service is not None and self.service.alive()

    def command(self) -> list[str]:
        """The same flags as the compose service: PostgreSQL, artifacts served over HTTP."""
        return [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            self.backend_uri,
            "--artifacts-destination",
            str(self.artifacts),
            "--serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--allowed-hosts",
            ",".join(self.allowed_hosts),
        ]

    def start(self, timeout_s: float = 180) -> None:
        """Start the server and wait until ``/health`` answers."""
        if self.running:
            raise RuntimeError(f"the MLflow server at {self.url} is already running")
        self.starts += 1
        if isinstance(self.artifacts, Path):
            self.artifacts.mkdir(parents=True, exist_ok=True)
        self.service = start_service(
            "mlflow server",
            self.command(),
            self.folder / f"mlflow-{self.starts}.log",
            env={
                "PYTHONUNBUFFERED": "1",
                # Job execution (GenAI scorers) starts seven huey consumers and a folder in
                # /dev/shm per start: minutes of CPU on 2 cores, unused by the runs' pages.
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": str(self.jobs).lower(),
                **self.env,
            },
        )
        try:
            wait_for_http(f"{self.url}/health", timeout_s=timeout_s, service=self.service)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """End the server's process group and session (its workers and huey consumers)."""
        if self.service is not None:
            self.service.stop()
            self.service = None

    def __enter__(self) -> MlflowServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def mlflow_server(folder: Path, backend_uri: str, **options) -> Iterator[MlflowServer]:
    """A running ``MlflowServer`` (``.url``), stopped at the end; options as ``MlflowServer``."""
    with MlflowServer(folder, backend_uri, **options) as server:
        yield server


# --- an S3-compatible object store -----------------------------------------------------------


@dataclass(frozen=True)
class S3Server:
    """moto's S3 server on a port of 127.0.0.1, and the variables its clients need."""

    url: str
    service: Service = field(repr=False)

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables (pyarrow, Ray, boto3), and MLflow's own endpoint one."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": self.url,
        }

    def client(self):
        """A boto3 S3 client of the server (to check what landed, independently of dmsweep)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key of ``bucket`` under ``prefix``."""
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


@contextlib.contextmanager
def s3_server(folder: Path, buckets: Sequence[str] = ("dmsweep",)) -> Iterator[S3Server]:
    """``moto_server`` (moto[server], in memory) with ``buckets`` made; ended at the end."""
    if not (BIN / "moto_server").is_file():
        raise RuntimeError(
            f"moto's S3 server is not installed ({BIN / 'moto_server'} is missing): install the "
            "dev extra, pip install -e '.[dev]' (it holds moto[server])"
        )
    port = free_port()
    service = start_service(
        "moto_server", [str(BIN / "moto_server"), "-p", str(port)], folder / "moto.log"
    )
    try:
        server = S3Server(f"http://127.0.0.1:{port}", service)
        wait_for_http(f"{server.url}/", service=service, timeout_s=60)
        for bucket in buckets:
            server.client().create_bucket(Bucket=bucket)
        yield server
    finally:
        service.stop()


# --- Ray nodes ---------------------------------------------------------------------------------


def ray_auth_env(auth_token: str | None) -> dict[str, str]:
    """What every process of a test cluster needs, its clients included.

    No token: authentication off (``RAY_AUTH_MODE=disabled``). A token: token authentication
    with that token (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN``).
    """
    if auth_token is None:
        return {"RAY_AUTH_MODE": "disabled"}
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": auth_token}


def ray_auth_headers(auth_token: str | None) -> dict[str, str]:
    """Headers for the dashboard's HTTP API (and the jobs client) of such a cluster."""
    return {"Authorization": f"Bearer {auth_token}"} if auth_token else {}


@dataclass
class RayNode:
    """A ``ray start --block`` process and its node's temp folder."""

    service: Service
    address: str  # the GCS address of the cluster, host:port
    temp_dir: Path
    auth_token: str | None
    dashboard_url: str | None = None  # the head only

    def stop(self) -> None:
        """SIGTERM to ``ray start --block``, which drains and stops its node; then the rest.

        Only to that process: with the whole group signalled, the GCS is gone before the head
        drains, and ``ray start`` waits 30 s for it.
        """
        self.service.stop(signal.SIGTERM, timeout_s=60, group=False)

    def wait_ready(self, timeout_s: float = 120) -> None:
        """Until the head has started and its dashboard answers (the head only)."""
        if self.dashboard_url is None:
            raise ValueError("only the head node serves the dashboard")
        wait_for_log(self.service, "Ray runtime started", timeout_s)
        wait_for_http(
            f"{self.dashboard_url}/api/version",
            timeout_s=timeout_s,
            service=self.service,
            headers=ray_auth_headers(self.auth_token),
        )

    def nodes(self) -> list[dict]:
        """The cluster's nodes as the dashboard lists them (the head only)."""
        if self.dashboard_url is None:
            raise ValueError("only the head node serves the dashboard")
        request = urllib.request.Request(
            f"{self.dashboard_url}/nodes?view=summary", headers=ray_auth_headers(self.auth_token)
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)["data"]["summary"]

    def alive_nodes(self) -> int:
        """How many nodes of the cluster are alive (the head only)."""
        return sum(1 for node in self.nodes() if node.get("raylet", {}).get("state") == "ALIVE")


def _ray_start(
    name: str,
    folder: Path,
    arguments: list[str],
    *,
    num_cpus: int,
    resources: Mapping[str, float] | None,
    auth_token: str | None,
    env: Mapping[str, str] | None,
) -> tuple[Service, Path]:
    temp_dir = short_temp_dir("r")  # Ray's sockets live under <temp dir>/session_<long name>/
    command = [
        str(BIN / "ray"),
        "start",
        *arguments,
        "--node-ip-address",
        "127.0.0.1",
        "--num-cpus",
        str(num_cpus),
        "--temp-dir",
        str(temp_dir),
        "--dashboard-agent-listen-port",
        str(free_port()),  # its default, 52365, is one port for every node of the machine
        "--disable-usage-stats",
        "--block",
    ]
    if resources:
        command += ["--resources", json.dumps(dict(resources))]
    service = start_service(
        name,
        command,
        folder / f"{name}.log",
        env={**ray_auth_env(auth_token), "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    return service, temp_dir


def _end_node(node: RayNode, folder: Path) -> None:
    node.stop()
    logs = node.temp_dir / "session_latest" / "logs"
    if logs.is_dir():  # kept beside the test's other logs; the temp folder goes
        shutil.copytree(
            logs,
            folder / f"{node.service.name}-logs",
            ignore=lambda _, names: [n for n in names if n.endswith((".sock", ".lock"))],
            ignore_dangling_symlinks=True,
            dirs_exist_ok=True,
        )
    shutil.rmtree(node.temp_dir, ignore_errors=True)


@contextlib.contextmanager
def ray_head(
    folder: Path,
    *,
    num_cpus: int = 2,
    resources: Mapping[str, float] | None = None,
    auth_token: str | None = None,
    env: Mapping[str, str] | None = None,
    memory_bytes: int | None = None,
    timeout_s: float = 120,
    wait: bool = True,
) -> Iterator[RayNode]:
    """A Ray head node (GCS, dashboard with the Jobs API) on free ports of 127.0.0.1.

    ``auth_token`` None turns authentication off; clients need ``ray_auth_env(auth_token)``.
    ``env`` reaches the node's processes (e.g. ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``). Logs:
    ``folder/ray-head.log`` and, at the end, ``folder/ray-head-logs/``. ``wait`` False yields
    as soon as ``ray start`` runs, so that other servers start meanwhile; ``wait_ready`` then
    waits for it.
    """
    port, dashboard_port = free_port(), free_port()
    service, temp_dir = _ray_start(
        "ray-head",
        folder,
        [
            "--head",
            "--port",
            str(port),
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dashboard_port),
            "--include-dashboard",
            "true",
            "--ray-client-server-port",
            str(free_port()),
            *(["--memory", str(memory_bytes)] if memory_bytes else []),
        ],
        num_cpus=num_cpus,
        resources=resources,
        auth_token=auth_token,
        env=env,
    )
    node = RayNode(
        service, f"127.0.0.1:{port}", temp_dir, auth_token, f"http://127.0.0.1:{dashboard_port}"
    )
    try:
        if wait:
            node.wait_ready(timeout_s)
        yield node
    finally:
        _end_node(node, folder)


@contextlib.contextmanager
def ray_worker(
    folder: Path,
    head: RayNode,
    *,
    name: str = "ray-worker",
    num_cpus: int = 1,
    resources: Mapping[str, float] | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 120,
) -> Iterator[RayNode]:
    """A Ray worker node joining ``head`` (its token too); yields once the head counts it alive.

    ``name`` tells several workers' logs apart: ``folder/<name>.log``, ``folder/<name>-logs/``.
    """
    before = head.alive_nodes()
    service, temp_dir = _ray_start(
        name,
        folder,
        ["--address", head.address],
        num_cpus=num_cpus,
        resources=resources,
        auth_token=head.auth_token,
        env=env,
    )
    node = RayNode(service, head.address, temp_dir, head.auth_token)
    try:
        wait_for_log(service, "Ray runtime started", timeout_s)
        deadline = time.monotonic() + timeout_s
        while head.alive_nodes() <= before:
            service.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not join {head.address}:\n{service.log_tail()}")
            time.sleep(0.5)
        yield node
    finally:
        _end_node(node, folder)
