"""The container image and the docker-compose cluster, checked without Docker.

No Docker engine runs where the tests run, so the pieces are proven statically:
``docker-compose.yml`` is parsed (and interpolated the way ``docker compose --env-file
deploy/docker/dmsweep.env`` would, from the committed example) and checked against the contract
(services, image, volumes, ports, healthchecks, environment, GPU profile); every program a
container runs is traced to what ``deploy/docker/Dockerfile`` installs (its ``pip install .`` of
pyproject's dependencies and console scripts, its apt-get lines) or to the base image; the
command lines are parsed by the programs' own click parsers (``ray start``, ``mlflow server``,
``dmsweep serve``), so an unknown flag or a bad value fails here rather than in a container.
(``docker compose config`` would be a further check, but the Docker client here has no compose
plugin; the processes themselves are started by tests/integration/stack.py.)
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata
import json
import re
import shlex
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import ray
import typer.main
import yaml
from sqlalchemy.engine import make_url

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli that pip vendors
    from pip._vendor import tomli as tomllib

# Importing the command lines of ray and mlflow warns of their own deprecated uses.
pytestmark = [
    pytest.mark.filterwarnings(r"ignore::DeprecationWarning:ray\..*"),
    pytest.mark.filterwarnings(r"ignore::DeprecationWarning:mlflow\..*"),
]

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "deploy/docker/Dockerfile"
ENV_EXAMPLE = REPO / "deploy/docker/dmsweep.env.example"
ENV_FILE = "deploy/docker/dmsweep.env"
DOCKERIGNORE = REPO / ".dockerignore"
PYPROJECT = REPO / "pyproject.toml"

IMAGE = "dmsweep:0.1.0"
DMSWEEP_SERVICES = {"mlflow", "ray-head", "ray-worker", "ray-worker-gpu", "api"}
RAY_NODES = {"ray-head", "ray-worker", "ray-worker-gpu"}
SHARED = RAY_NODES | {"api"}  # the services that see the data and the storage path
SECRETS = ("POSTGRES_PASSWORD", "DMSWEEP_API_TOKEN", "RAY_AUTH_TOKEN")

# What the base images bring (not installed by the Dockerfile's own lines).
BASE_PROGRAMS = {
    "dmsweep": {"python", "pip", "sh", "bash"},  # python:3.11-slim and pytorch/pytorch alike
    "postgres": {"pg_isready", "psql", "postgres", "initdb", "sh", "bash"},  # postgres:15
}
# Debian / Ubuntu packages the Dockerfile may install, and the programs each provides.
APT_PROGRAMS = {"curl": {"curl"}, "ca-certificates": set(), "tini": {"tini"}}
# The click command behind each console script (ray's script is a wrapper around this group).
CLICK_COMMANDS = {"ray": "ray.scripts.scripts:cli", "mlflow": "mlflow.cli:cli"}


# --- compose interpolation ---------------------------------------------------------------------

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<invalid>))"
)


class MissingVariableError(ValueError):
    """A ``${VAR:?message}`` whose variable is unset (compose stops with the message)."""


def interpolate(text: str, env: dict[str, str]) -> str:
    """``text`` with compose's ``$VAR``, ``${VAR}``, ``${VAR:-default}``... substituted."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["invalid"] is not None:
            raise ValueError(f"invalid interpolation in {text!r} at {match.start()}")
        name = match["braced"] or match["plain"]
        op, arg = match["op"], match["arg"]
        value = env.get(name)
        is_set = value is not None and (value != "" or not (op or "").startswith(":"))
        if op in ("-", ":-"):
            return value if is_set else arg
        if op in ("?", ":?"):
            if not is_set:
                raise MissingVariableError(f"{name}: {arg}")
            return value
        if op in ("+", ":+"):
            return arg if is_set else ""
        return value or ""

    return _VARIABLE.sub(substitute, text)


def interpolate_all(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_all(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_all(value, env) for key, value in node.items()}
    return node


def strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [s for item in node for s in strings(item)]
    if isinstance(node, dict):
        return [s for value in node.values() for s in strings(value)]
    return []


def variables_used(node: Any) -> dict[str, set[str | None]]:
    """Every variable the compose file interpolates, with the operators it is used with."""
    used: dict[str, set[str | None]] = {}
    for text in strings(node):
        for match in _VARIABLE.finditer(text):
            name = match["braced"] or match["plain"]
            if name:
                used.setdefault(name, set()).add(match["op"])
    return used


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name), f"{path}:{number}: {line!r}"
        env[name] = value
    return env


@cache
def raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@cache
def example_env() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@cache
def compose() -> dict[str, Any]:
    """The compose file as ``docker compose --env-file <the example>`` resolves it."""
    return interpolate_all(raw_compose(), example_env())


def service(name: str) -> dict[str, Any]:
    return compose()["services"][name]


def env_of(name: str) -> dict[str, str]:
    env = service(name).get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def mounts(name: str) -> dict[str, tuple[str, bool]]:
    """Target -> (source, read-only) of a service's volumes (short syntax)."""
    out = {}
    for entry in service(name).get("volumes") or []:
        assert isinstance(entry, str), f"{name}: use the short volume syntax, got {entry!r}"
        source, target, *mode = entry.split(":")
        out[target] = (source, "ro" in (mode[0].split(",") if mode else []))
    return out


def published(name: str) -> dict[int, str]:
    """Container port -> host port of a service's published ports (short syntax)."""
    out = {}
    for entry in service(name).get("ports") or []:
        parts = str(entry).split(":")
        assert len(parts) in (2, 3), f"{name}: publish as [ip:]host:container, got {entry!r}"
        out[int(parts[-1])] = parts[-2]
    return out


def command(name: str) -> list[str]:
    cmd = service(name)["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def healthcheck_argv(name: str) -> list[str]:
    test = service(name)["healthcheck"]["test"]
    if isinstance(test, str):
        return shlex.split(test)
    kind, *rest = test
    assert kind in ("CMD", "CMD-SHELL"), f"{name}: healthcheck test {test!r}"
    return rest if kind == "CMD" else shlex.split(rest[0])


def option(argv: list[str], name: str) -> str:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in ``argv``."""
    for index, arg in enumerate(argv):
        if arg == name:
            return argv[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} missing from {argv}")


# --- the Dockerfile ----------------------------------------------------------------------------


@cache
def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of every line, continuations joined, comments dropped."""
    lines, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    parsed = []
    for line in lines:
        instruction, _, arguments = line.strip().partition(" ")
        parsed.append((instruction.upper(), arguments.strip()))
    return parsed


def run_commands() -> list[list[str]]:
    """Every simple command of every RUN line, as argv (split on ``&& || ; | &`` outside quotes)."""
    out = []
    for instruction, arguments in dockerfile():
        if instruction != "RUN":
            continue
        lexer = shlex.shlex(arguments, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        argv: list[str] = []
        for token in [*lexer, ";"]:
            if token in ("&&", "||", ";", "|", "&"):
                while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", argv[0]):
                    argv = argv[1:]  # VAR=value before the command
                if argv:
                    out.append(argv)
                argv = []
            elif token not in ("(", ")"):
                argv.append(token)
    return out


def global_args() -> dict[str, str]:
    out = {}
    for instruction, arguments in dockerfile():
        if instruction == "FROM":
            break
        if instruction == "ARG":
            name, _, default = arguments.partition("=")
            out[name] = default
    return out


def stages() -> dict[str, str]:
    """Stage name -> the image (or stage) it starts from."""
    out = {}
    for instruction, arguments in dockerfile():
        if instruction == "FROM":
            words = arguments.split()
            assert len(words) == 3 and words[1].upper() == "AS", f"FROM {arguments}: name it"
            out[words[2]] = words[0]
    return out


def pip_installs() -> list[list[str]]:
    return [argv for argv in run_commands() if argv[:2] == ["pip", "install"]]


def apt_packages() -> set[str]:
    packages = set()
    for argv in run_commands():
        if argv[:2] in (["apt-get", "install"], ["apt", "install"]):
            packages |= {arg for arg in argv[2:] if not arg.startswith("-")}
    return packages


def copied_sources(before: int) -> set[str]:
    """What the COPY lines above line ``before`` bring into the image."""
    out = set()
    for instruction, arguments in dockerfile()[:before]:
        if instruction == "COPY":
            words = [w for w in arguments.split() if not w.startswith("--")]
            out |= {w.rstrip("/") for w in words[:-1]}
    return out


# --- pyproject and what pip installs -----------------------------------------------------------


@cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text())


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dependency_names() -> dict[str, str]:
    """Canonical name -> requirement of every dependency in pyproject.toml."""
    out = {}
    for requirement in pyproject()["project"]["dependencies"]:
        out[canonical(re.match(r"[A-Za-z0-9_.-]+", requirement)[0])] = requirement
    return out


@cache
def console_scripts() -> dict[str, set[str]]:
    """Script name -> the installed distributions that provide it (mlflow: also mlflow-skinny)."""
    out: dict[str, set[str]] = {}
    for dist in importlib.metadata.distributions():
        for entry in dist.entry_points.select(group="console_scripts"):
            out.setdefault(entry.name, set()).add(canonical(dist.metadata["Name"]))
    return out


def load(target: str) -> Any:
    module, _, attribute = target.partition(":")
    obj = importlib.import_module(module)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


def click_command(program: str) -> Any:
    scripts = pyproject()["project"]["scripts"]
    if program in scripts:
        app = load(scripts[program])
        return typer.main.get_command(app) if isinstance(app, typer.Typer) else app
    return load(CLICK_COMMANDS[program])


def parse_with_click(argv: list[str]) -> Any:
    """Parse ``argv`` as the program's own command line would (no command is run).

    Typer brings its own copy of click, so groups are recognised by their ``get_command``.
    """
    program, *args = argv
    command_ = click_command(program)
    ctx = None
    name = program
    while hasattr(command_, "get_command"):
        ctx = command_.context_class(command_, info_name=name, parent=ctx)
        assert args, f"{argv}: no subcommand"
        name, *args = args
        sub = command_.get_command(ctx, name)
        assert sub is not None, f"{argv}: {name!r} is not a command of {program}"
        command_ = sub
    return command_.make_context(name, list(args), parent=ctx)


def project_install_line() -> int:
    """Index of the RUN line whose ``pip install .`` installs the project for good."""
    lines = dockerfile()
    installs = [
        index
        for index, (instruction, arguments) in enumerate(lines)
        if instruction == "RUN"
        and re.search(r"(^|&&|;)\s*pip install (\S+ )*\.(\s|$)", arguments)
        and "pip uninstall" not in arguments
    ]
    assert installs, "the Dockerfile never runs `pip install .` (and keeps what it installed)"
    index = installs[-1]
    later = " ".join(arguments for _, arguments in lines[index:])
    assert not re.search(r"pip uninstall \S* *dmsweep", later), "the project is uninstalled"
    return index


def programs_of_image() -> dict[str, str]:
    """Program -> where the dmsweep image gets it from."""
    provided = dict.fromkeys(BASE_PROGRAMS["dmsweep"], "the base image")
    for package in apt_packages():
        assert package in APT_PROGRAMS, f"apt package {package!r}: add what it provides"
        provided |= dict.fromkeys(APT_PROGRAMS[package], f"apt-get install {package}")
    project_install_line()
    for script in pyproject()["project"]["scripts"]:
        provided[script] = "[project.scripts] (pip install .)"
    dependencies = dependency_names()
    for script, dists in console_scripts().items():
        for dist in sorted(dists & set(dependencies)):
            provided.setdefault(script, f"{dependencies[dist]} (pip install .)")
    return provided


# --- the tests ---------------------------------------------------------------------------------


def test_the_services_and_their_images():
    services = compose()["services"]
    assert set(services) == {"postgres"} | DMSWEEP_SERVICES
    assert services["postgres"]["image"] == "postgres:15"
    args = global_args()
    for name in DMSWEEP_SERVICES:
        spec = services[name]
        assert spec["image"] == IMAGE, name
        assert raw_compose()["services"][name]["image"] == "dmsweep:${DMSWEEP_VERSION:-0.1.0}"
        build = spec["build"]
        assert build["context"] == "."
        assert (REPO / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        for arg in build.get("args") or {}:
            assert arg in args, f"build arg {arg} is not an ARG of the Dockerfile"
        assert build["args"]["TORCH_VARIANT"] in ("cuda", "cpu")
        assert "container_name" not in spec, f"{name}: a fixed name cannot be scaled"
    assert raw_compose()["name"] == "dmsweep"  # volume names: dmsweep_data, dmsweep_storage...


def test_the_dockerfile_has_a_cuda_and_a_cpu_variant():
    args, named = global_args(), stages()
    assert args["TORCH_VARIANT"] == "cuda"
    assert named["runtime"] == "torch-${TORCH_VARIANT}"
    assert named["torch-cuda"] == "${CUDA_BASE_IMAGE}"
    assert args["CUDA_BASE_IMAGE"].startswith("pytorch/pytorch:")
    assert "cuda" in args["CUDA_BASE_IMAGE"] and "runtime" in args["CUDA_BASE_IMAGE"]
    assert named["torch-cpu"] == "${CPU_BASE_IMAGE}"
    assert args["CPU_BASE_IMAGE"].startswith("python:3.11-slim")
    cpu_stage = dockerfile()[dockerfile().index(("FROM", "${CPU_BASE_IMAGE} AS torch-cpu")) + 1 :]
    cpu_run = cpu_stage[0]
    assert cpu_run[0] == "RUN"
    assert "torch torchvision --index-url https://download.pytorch.org/whl/cpu" in cpu_run[1]


def test_the_image_pins_the_ray_of_this_environment():
    pins = re.findall(r"ray\[([^\]]*)\]==([0-9][^\s\"']*)", DOCKERFILE.read_text())
    assert pins, "the Dockerfile does not pin ray[...]==VERSION"
    for extras, version in pins:
        assert version == ray.__version__, f"image pins ray {version}, tests run {ray.__version__}"
        wanted = re.search(r"\[([^\]]*)\]", dependency_names()["ray"])[1]
        assert {e.strip() for e in extras.split(",")} >= {e.strip() for e in wanted.split(",")}
    asserted = re.findall(r"ray\.__version__ == '([^']+)'", DOCKERFILE.read_text())
    assert all(version == ray.__version__ for version in asserted)
    pinned_in_pip = [arg for argv in pip_installs() for arg in argv if arg.startswith("ray[")]
    assert pinned_in_pip, "the ray pin is not an argument of a pip install"


def test_the_image_holds_the_project_and_runs_as_a_user():
    sources = copied_sources(before=project_install_line())
    includes = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in {pattern.rstrip("*") for pattern in includes}:
        assert package in sources, f"the Dockerfile does not COPY {package}/"
    # pip install . reads the readme; the report reads search_spaces/paper_results
    assert {"pyproject.toml", pyproject()["project"]["readme"], "search_spaces"} <= sources
    users = [arguments for instruction, arguments in dockerfile() if instruction == "USER"]
    assert users, "the image runs as root"
    uid = users[-1].split(":")[0]
    argument = re.fullmatch(r"\$\{?(\w+)\}?", uid)
    if argument:  # USER ${APP_UID}: the ARG's default (shared with deploy/k8s's runAsUser)
        default = re.search(rf"^ARG {argument[1]}=(\d+)", DOCKERFILE.read_text(), re.MULTILINE)
        assert default, f"USER names {uid} but no ARG gives it a default"
        uid = default[1]
        assert re.search(rf"useradd [^\n]*--uid \$\{{?{argument[1]}\}}? ", DOCKERFILE.read_text())
    else:
        assert re.search(rf"useradd [^\n]*--uid {uid} ", DOCKERFILE.read_text()), f"no user {uid}"
    assert uid.isdigit() and uid != "0", "USER must be a numeric uid other than 0"
    text = DOCKERFILE.read_text()
    for folder in ("/data", "/storage", "/mlartifacts"):
        assert re.search(rf"chown \S+ [^\n]*{folder}\b", text), f"{folder} not owned by the user"


def test_every_program_a_container_runs_is_in_its_image():
    provided = programs_of_image()
    for name, spec in compose()["services"].items():
        argvs = []
        if "command" in spec:
            argvs.append(command(name))
        if "healthcheck" in spec:
            argvs.append(healthcheck_argv(name))
        assert argvs, f"{name} runs nothing of its own"
        for argv in argvs:
            program = argv[0]
            if spec["image"] == IMAGE:
                assert program in provided, f"{name}: {program!r} is not installed in {IMAGE}"
            else:
                image = spec["image"].split(":")[0]
                assert program in BASE_PROGRAMS[image], f"{name}: {program!r} not in {image}"
    # the console scripts come from the distributions pyproject depends on
    scripts = console_scripts()
    assert "ray" in scripts["ray"] and "mlflow" in scripts["mlflow"]
    assert {"ray", "mlflow"} <= set(dependency_names())
    assert pyproject()["project"]["scripts"]["dmsweep"] == "service.cli:app"
    # the postgres init script runs psql, which the postgres image has
    init = (REPO / "deploy/docker/postgres-init.sh").read_text()
    assert re.search(r"^psql ", init, re.MULTILINE)


@pytest.mark.parametrize(
    "name", ["mlflow", "ray-head", "ray-worker", "ray-worker-gpu", "api"], ids=str
)
def test_each_command_line_parses_with_the_programs_own_parser(name):
    ctx = parse_with_click(command(name))
    assert ctx.command.name in ("server", "start", "serve")


def test_the_typer_app_has_the_serve_command():
    group = click_command("dmsweep")
    assert "serve" in group.commands, "service.cli:app has no `serve` command"
    options = {opt for param in group.commands["serve"].params for opt in param.opts}
    assert {"--host", "--port"} <= options


def test_the_ray_head_hosts_the_drivers_and_the_workers_join_it():
    head = command("ray-head")
    assert head[:3] == ["ray", "start", "--head"] and head[-1] == "--block"
    assert option(head, "--port") == "6379"
    assert option(head, "--dashboard-host") == "0.0.0.0"
    assert option(head, "--dashboard-port") == "8265"
    assert option(head, "--num-cpus") == "0"
    assert json.loads(option(head, "--resources")) == {"trial_slot": 4}
    assert (
        '--resources={"trial_slot": ${RAY_TRIAL_SLOTS:-4}}'
        in raw_compose()["services"]["ray-head"]["command"]
    )
    for worker in ("ray-worker", "ray-worker-gpu"):
        argv = command(worker)
        assert argv[:2] == ["ray", "start"] and argv[-1] == "--block"
        assert "--head" not in argv
        assert option(argv, "--address") == "ray-head:6379"
        assert "trial_slot" not in " ".join(argv), "trial slots live on the head only"
    assert option(command("ray-worker"), "--num-gpus") == "0"
    assert int(option(command("ray-worker"), "--num-cpus")) > 0


def test_the_mlflow_server_proxies_artifacts_and_lists_the_hosts_clients_use():
    argv = command("mlflow")
    assert argv[:2] == ["mlflow", "server"]
    backend = urlsplit(option(argv, "--backend-store-uri"))
    assert backend.scheme == "postgresql" and backend.hostname == "postgres"
    assert (backend.username, backend.path, backend.port) == ("mlflow", "/mlflow", 5432)
    assert backend.password == example_env()["POSTGRES_PASSWORD"]
    assert "--serve-artifacts" in argv
    destination = option(argv, "--artifacts-destination")
    assert mounts("mlflow")[destination] == ("mlartifacts", False)
    assert option(argv, "--host") == "0.0.0.0" and option(argv, "--port") == "5000"
    allowed = option(argv, "--allowed-hosts").split(",")
    client = urlsplit(env_of("api")["DMSWEEP_MLFLOW_URI"])
    for host in (client.netloc, f"localhost:{published('mlflow')[5000]}", "127.0.0.1:5000"):
        assert any(fnmatch.fnmatchcase(host, pattern) for pattern in allowed), host


def test_published_ports():
    expected = {"mlflow": {5000: "5000"}, "ray-head": {8265: "8265"}, "api": {8000: "8000"}}
    for name in compose()["services"]:
        assert published(name) == expected.get(name, {}), name
    for name in expected:  # on this machine only, unless PUBLISH_ADDRESS says otherwise
        for entry in service(name)["ports"]:
            assert entry.startswith(example_env()["PUBLISH_ADDRESS"] + ":")


def test_volumes_are_shared_at_the_same_paths():
    declared = set(compose()["volumes"])
    assert declared == {"data", "storage", "mlartifacts", "pgdata"}
    used = set()
    for name in compose()["services"]:
        for source, _ in mounts(name).values():
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert used == declared
    for name in SHARED:
        assert mounts(name)["/data"] == ("data", True), f"{name}: /data read-only"
        assert mounts(name)["/storage"] == ("storage", False), f"{name}: /storage read-write"
    assert mounts("mlflow") == {"/mlartifacts": ("mlartifacts", False)}
    assert mounts("postgres")["/var/lib/postgresql/data"] == ("pgdata", False)


def test_postgres_creates_both_databases():
    (source, read_only), target = next(
        (value, target)
        for target, value in mounts("postgres").items()
        if target.startswith("/docker-entrypoint-initdb.d/")
    )
    script = (REPO / source).resolve()
    assert read_only and script == REPO / "deploy/docker/postgres-init.sh"
    assert target.endswith(".sh") and script.stat().st_mode & 0o111
    text = script.read_text()
    assert set(re.findall(r"CREATE DATABASE (\w+) OWNER (\w+)", text)) == {
        ("dmsweep", "dmsweep"),
        ("mlflow", "mlflow"),
    }
    assert set(re.findall(r"CREATE ROLE (\w+) LOGIN PASSWORD :'password'", text)) == {
        "dmsweep",
        "mlflow",
    }
    assert '-v password="$POSTGRES_PASSWORD"' in text
    assert env_of("postgres") == {"POSTGRES_PASSWORD": example_env()["POSTGRES_PASSWORD"]}


def test_healthchecks_and_start_order():
    checks = {
        "postgres": ["pg_isready", "-h", "127.0.0.1"],
        "mlflow": ["curl", "-fsS", "http://127.0.0.1:5000/health"],
        "ray-head": ["curl", "-fsS", "http://127.0.0.1:8265/api/gcs_healthz"],
        "api": ["curl", "-fsS", "http://127.0.0.1:8000/healthz"],
        "ray-worker": ["curl", "-fsS", "http://127.0.0.1:52365/api/healthz"],
    }
    for name, start in checks.items():
        argv = healthcheck_argv(name)
        assert argv[: len(start)] == start, f"{name}: {argv}"
    # the worker's check asks its dashboard agent, on the port its command sets
    assert option(command("ray-worker"), "--dashboard-agent-listen-port") == "52365"
    assert option(command("ray-worker-gpu"), "--dashboard-agent-listen-port") == "52365"
    # each check asks the port the service's own command listens on
    assert option(command("mlflow"), "--port") == "5000"
    assert option(command("api"), "--port") == "8000"
    expected = {
        "mlflow": {"postgres"},
        "ray-worker": {"ray-head"},
        "ray-worker-gpu": {"ray-head"},
        "api": {"postgres", "mlflow", "ray-head"},
    }
    for name, spec in compose()["services"].items():
        depends = spec.get("depends_on") or {}
        assert set(depends) == expected.get(name, set()), name
        for target, condition in depends.items():
            assert condition == {"condition": "service_healthy"}, f"{name} -> {target}"
            assert "healthcheck" in service(target), f"{name} waits on {target}: no check"


def test_the_api_and_ray_environment():
    password = example_env()["POSTGRES_PASSWORD"]
    api = env_of("api")
    assert api == {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": example_env()["RAY_AUTH_TOKEN"],
        "DMSWEEP_DATABASE_URL": f"postgresql://dmsweep:{password}@postgres:5432/dmsweep",
        "DMSWEEP_RAY_ADDRESS": "http://ray-head:8265",
        "DMSWEEP_MLFLOW_URI": "http://mlflow:5000",
        "DMSWEEP_MLFLOW_PUBLIC_URL": f"http://localhost:{example_env()['MLFLOW_PORT']}",
        "DMSWEEP_DATA_ROOTS": "/data",
        "DMSWEEP_STORAGE_ROOT": "/storage",
        "DMSWEEP_API_TOKEN": example_env()["DMSWEEP_API_TOKEN"],
    }
    assert command("api") == ["dmsweep", "serve", "--host", "0.0.0.0", "--port", "8000"]
    for name in RAY_NODES:
        env = env_of(name)
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN"] == example_env()["RAY_AUTH_TOKEN"], name
        # sweep drivers queued for memory are not failed by Ray after its default 15 min
        assert int(env["RAY_JOB_START_TIMEOUT_SECONDS"]) >= 86400, name
    # the api's addresses are services of this file, on the ports they listen on
    assert urlsplit(api["DMSWEEP_RAY_ADDRESS"]).port == int(
        option(command("ray-head"), "--dashboard-port")
    )
    assert urlsplit(api["DMSWEEP_MLFLOW_URI"]).port == int(option(command("mlflow"), "--port"))


def test_the_database_drivers_are_installed_by_the_project():
    """The driver SQLAlchemy picks for each URL (2.1 reads a bare postgresql:// as psycopg 3)
    is installed by a dependency of pyproject.toml."""
    urls = [option(command("mlflow"), "--backend-store-uri"), env_of("api")["DMSWEEP_DATABASE_URL"]]
    providers = importlib.metadata.packages_distributions()
    for url in urls:
        dbapi = make_url(url).get_dialect().import_dbapi()
        distributions = {canonical(name) for name in providers[dbapi.__name__.split(".")[0]]}
        assert distributions & set(dependency_names()), f"{url}: {dbapi.__name__} not installed"


def test_secrets_have_no_defaults():
    used = variables_used(raw_compose())
    for secret in SECRETS:
        assert used[secret] == {":?"}, f"{secret} must be required (${{{secret}:?...}})"
        with pytest.raises(MissingVariableError, match=secret):
            interpolate_all(raw_compose(), {k: v for k, v in example_env().items() if k != secret})
    for secret in SECRETS:
        assert example_env()[secret] == "change-me"


def test_the_gpu_worker_is_a_profile_with_nvidia_devices():
    gpu = service("ray-worker-gpu")
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    assert devices[0]["count"] == "all"
    for name in set(compose()["services"]) - {"ray-worker-gpu"}:
        assert "profiles" not in service(name), f"{name} must start without a profile"
        assert "deploy" not in service(name), name
    # the CPU worker scales: no fixed name, no published port to collide on
    assert "ports" not in service("ray-worker") and "container_name" not in service("ray-worker")


def test_every_variable_is_in_the_env_example():
    used = set(variables_used(raw_compose()))
    defined = set(example_env())
    assert used - defined == set(), "used in docker-compose.yml, missing from the example"
    assert defined - used == set(), "in the example, never used by docker-compose.yml"
    leftovers = [s for s in strings(compose()) if "${" in s]
    assert not leftovers


def dockerignore_excludes(path: str) -> bool:
    """Whether ``.dockerignore`` leaves ``path`` (or a folder above it) out of the context."""
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            pattern = line.lstrip("!").strip("/")
            regex = ""
            for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
                regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                    token, re.escape(token).replace(r"\[", "[").replace(r"\]", "]")
                )
            patterns.append((re.compile(regex + r"\Z"), negated))
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for regex, negated in patterns:
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def test_the_dockerignore():
    for path in (".venv/bin/python", "runs/x/trials/t.json", ".git/HEAD", ENV_FILE, "mlruns/0"):
        assert dockerignore_excludes(path), path
    assert dockerignore_excludes("service/__pycache__/cli.cpython-311.pyc")
    needed = ["pyproject.toml", "README.md", "service/cli/app.py", "trainers/loop.py"]
    needed += ["search_spaces/smoke.yaml", "search_spaces/paper_results/table1.csv"]
    for path in needed:
        assert not dockerignore_excludes(path), path


def test_the_env_file_is_not_committed():
    assert ENV_EXAMPLE.is_file()
    git = shutil.which("git")
    assert git, "git is needed to check .gitignore"
    ignored = subprocess.run([git, "check-ignore", "-q", ENV_FILE], cwd=REPO, check=False)
    assert ignored.returncode == 0, f"{ENV_FILE} is not ignored by git: add it to .gitignore"
    example = subprocess.run([git, "check-ignore", "-q", str(ENV_EXAMPLE)], cwd=REPO, check=False)
    assert example.returncode == 1, "the example must be committed"


def test_interpolation_follows_compose():
    env = {"A": "a", "EMPTY": ""}
    assert interpolate("${A}-$A-${B:-b}-${EMPTY:-e}-${EMPTY-e}-$$A", env) == "a-a-b-e--$A"
    assert interpolate("${A:+yes}${B:+no}", env) == "yes"
    with pytest.raises(MissingVariableError, match="B: say so"):
        interpolate("${B:?say so}", env)
    with pytest.raises(ValueError, match="invalid"):
        interpolate("${1}", env)
