"""The container images and the docker-compose cluster, checked without Docker.

No Docker engine runs where the tests run, so the pieces are proven statically:
``docker-compose.yml`` is parsed (and interpolated the way ``docker compose --env-file
deploy/docker/dmsweep.env`` would, from the committed example) and checked against the contract
(services, images, volumes, ports, healthchecks, environment, secrets, GPU profile); every
program a container runs is traced to what ``deploy/docker/Dockerfile`` installs (its ``pip
install .`` of pyproject's dependencies and console scripts, its apt-get lines) or to the base
image; the command lines are parsed by the programs' own click parsers (``ray start``, ``mlflow
server``, ``dmsweep serve``), so an unknown flag or a bad value fails here rather than in a
container. The shell wrappers that read a database password into a program's environment are
run, with ``/run/secrets`` mapped to a folder of test secrets and the program replaced by a
stub that records its arguments and environment. (``docker compose config`` would be a further
check, but the Docker client here has no compose plugin; the processes themselves are started
by tests/integration/stack.py, which also runs the Ray healthchecks of this file.)
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata
import json
import re
import shlex
import shutil
import stat
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import ray
import typer.main
import yaml
from packaging.requirements import Requirement
from packaging.version import Version
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
LOCK = REPO / "deploy/docker/constraints.txt"
LOCK_SCRIPT = REPO / "deploy/docker/lock.py"
MAKE_SECRETS = REPO / "deploy/docker/make-secrets.sh"
ENV_EXAMPLE = REPO / "deploy/docker/dmsweep.env.example"
ENV_FILE = "deploy/docker/dmsweep.env"
SECRETS_DIR = "deploy/docker/secrets"
DOCKERIGNORE = REPO / ".dockerignore"
PYPROJECT = REPO / "pyproject.toml"
K8S_POSTGRES = REPO / "deploy/k8s/base/postgres.yaml"

# The two images: the Ray nodes' (CUDA unless TORCH_VARIANT=cpu), the api's and MLflow's (CPU).
RAY_IMAGE = "ghcr.io/dmsweep/dmsweep"
SERVER_IMAGE = "ghcr.io/dmsweep/dmsweep-server"
POSTGRES_IMAGE = "postgres:16.8-bookworm"
DMSWEEP_SERVICES = {"mlflow", "ray-head", "ray-worker", "ray-worker-gpu", "api"}
RAY_NODES = {"ray-head", "ray-worker", "ray-worker-gpu"}
SERVERS = {"api", "mlflow"}
SHARED = RAY_NODES | {"api"}  # the services that see the data and the storage path
# The compose secrets (files of deploy/docker/secrets/) and the services that mount each.
SECRETS = {
    "postgres_password": {"postgres"},
    "dmsweep_db_password": {"postgres", "api"},
    "mlflow_db_password": {"postgres", "mlflow"},
    "optuna_db_password": {"postgres"},
    "optuna_storage": {"ray-head"},  # where the sweep drivers run
    "api_token": {"api"},
    "ray_token": RAY_NODES | {"api"},
}
# A variable or key that holds a secret when it is not a *_FILE / *_PATH naming a file.
SECRET_WORD = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|CREDENTIAL|PRIVATE|_KEY\b", re.IGNORECASE)

# What the base images bring (not installed by the Dockerfile's own lines).
BASE_PROGRAMS = {
    "dmsweep": {"python", "pip", "sh", "bash", "cat"},  # python:3.11-slim-bookworm
    "postgres": {"pg_isready", "psql", "postgres", "initdb", "sh", "bash", "cat"},
}
# Debian packages the Dockerfile may install, and the programs each provides.
APT_PROGRAMS = {"curl": {"curl"}, "ca-certificates": set(), "tini": {"tini"}}
# The click command behind each console script (ray's script is a wrapper around this group).
CLICK_COMMANDS = {"ray": "ray.scripts.scripts:cli", "mlflow": "mlflow.cli:cli"}
# Shell builtins a wrapper may use besides programs.
SHELL_BUILTINS = {"export", "exec", "set", "cd", "test", "["}

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


def split_commands(text: str) -> list[list[str]]:
    """The simple commands of a shell command line, as argv (split on ``&& || ; | &`` outside
    quotes; ``$(...)`` inside double quotes stays in its word). Leading ``VAR=value`` words stay."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    out, argv = [], []
    for token in [*lexer, ";"]:
        if token in ("&&", "||", ";", "|", "&"):
            if argv:
                out.append(argv)
            argv = []
        elif token not in ("(", ")"):
            argv.append(token)
    return out


def is_assignment(word: str) -> bool:
    return re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", word, re.DOTALL) is not None


def wrapper(name: str) -> str | None:
    """The script of a service whose command is ``sh -c SCRIPT``; None for a plain command."""
    argv = command(name)
    if argv[:2] != ["sh", "-c"]:
        return None
    assert len(argv) == 3, f"{name}: sh -c takes one script, got {argv}"
    return argv[2]


def program_argv(name: str) -> list[str]:
    """The program a service runs: its command, or what its ``sh -c`` wrapper execs at the end."""
    script = wrapper(name)
    if script is None:
        return command(name)
    last = split_commands(script)[-1]
    assert last[0] == "exec", f"{name}: the wrapper must end by exec-ing the program: {script}"
    return last[1:]


def wrapper_assignments(name: str) -> dict[str, str]:
    """NAME -> value, as written, of the wrapper's ``NAME=...`` and ``export NAME=...``."""
    out = {}
    for argv in split_commands(wrapper(name) or ""):
        words = argv[1:] if argv[0] == "export" else argv
        for word in words:
            if is_assignment(word):
                key, _, value = word.partition("=")
                out[key] = value
    return out


def service_secrets(name: str) -> set[str]:
    """The secrets a service mounts (short syntax: at /run/secrets/<name>)."""
    entries = service(name).get("secrets") or []
    assert all(isinstance(entry, str) for entry in entries), f"{name}: short syntax, please"
    return set(entries)


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
    """Every simple command of every RUN line, as argv (``VAR=value`` words before it dropped)."""
    out = []
    for instruction, arguments in dockerfile():
        if instruction != "RUN":
            continue
        for argv in split_commands(arguments):
            while argv and is_assignment(argv[0]):
                argv = argv[1:]
            if argv:
                out.append(argv)
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


def stage(name: str) -> list[tuple[str, str]]:
    """The instructions of the stage ``name``, its FROM line first."""
    lines = dockerfile()
    start = next(
        index
        for index, (instruction, arguments) in enumerate(lines)
        if instruction == "FROM" and arguments.split()[-1] == name
    )
    end = next(
        (index for index in range(start + 1, len(lines)) if lines[index][0] == "FROM"), len(lines)
    )
    return lines[start:end]


def line_index(instruction: str, pattern: str) -> int:
    """Index of the first Dockerfile line of ``instruction`` whose arguments match ``pattern``."""
    return next(
        index
        for index, (name, arguments) in enumerate(dockerfile())
        if name == instruction and re.search(pattern, arguments)
    )


@cache
def lock() -> dict[str, str]:
    """Canonical name -> pinned version of deploy/docker/constraints.txt."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and re.fullmatch(r"[a-z0-9-]+", name), f"{LOCK.name}: {line!r}"
        assert name not in pins, f"{LOCK.name}: {name} twice"
        pins[name] = version
    return pins


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
    """Program -> where the dmsweep images (both variants) get it from."""
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


# --- the tests: images and the Dockerfile -------------------------------------------------------


def test_the_services_and_their_images():
    services = compose()["services"]
    assert set(services) == {"postgres"} | DMSWEEP_SERVICES
    version = pyproject()["project"]["version"]
    assert example_env()["DMSWEEP_VERSION"] == version
    args = global_args()
    for name in DMSWEEP_SERVICES:
        spec = services[name]
        image, variant = (SERVER_IMAGE, "cpu") if name in SERVERS else (RAY_IMAGE, "cuda")
        assert spec["image"] == f"{image}:{version}", name
        build = spec["build"]
        assert build["context"] == "."
        assert (REPO / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        for arg in build.get("args") or {}:
            assert arg in args, f"build arg {arg} is not an ARG of the Dockerfile"
        assert build["args"]["TORCH_VARIANT"] == variant, name
        assert "container_name" not in spec, f"{name}: a fixed name cannot be scaled"
    # each image is named once, in its x- anchor, with the one tag variable
    text = COMPOSE_FILE.read_text()
    for image in (RAY_IMAGE, SERVER_IMAGE):
        assert len(re.findall(rf"^\s*image: {re.escape(image)}:", text, re.MULTILINE)) == 1
    assert (
        raw_compose()["x-dmsweep-image"]["image"] == f"{RAY_IMAGE}:${{DMSWEEP_VERSION:-{version}}}"
    )
    assert (
        raw_compose()["x-server-image"]["image"]
        == f"{SERVER_IMAGE}:${{DMSWEEP_VERSION:-{version}}}"
    )
    assert raw_compose()["services"]["ray-head"]["build"]["args"]["TORCH_VARIANT"] == (
        "${TORCH_VARIANT:-cuda}"
    )
    assert raw_compose()["name"] == "dmsweep"  # volume names: dmsweep_data, dmsweep_storage...


def test_postgres_is_the_version_kubernetes_runs():
    assert service("postgres")["image"] == POSTGRES_IMAGE
    k8s = re.findall(r"image: (postgres:\S+)", K8S_POSTGRES.read_text())
    assert k8s and {image.split(":")[1].split(".")[0] for image in k8s} == {"16"}, k8s


def test_the_dockerfile_has_a_cuda_and_a_cpu_variant_on_one_python():
    args, named = global_args(), stages()
    assert args["TORCH_VARIANT"] == "cuda"
    # one Python for both variants, the one the lock was taken on (deploy/docker/lock.py)
    assert re.fullmatch(r"python:3\.11-slim-bookworm", args["PYTHON_IMAGE"])
    assert named == {
        "base": "${PYTHON_IMAGE}",
        "torch-cuda": "base",
        "torch-cpu": "base",
        "runtime": "torch-${TORCH_VARIANT}",
    }
    cuda, cpu = stage("torch-cuda")[1:], stage("torch-cpu")[1:]
    # PyPI's wheel (the CUDA build, its CUDA libraries as wheels), versions from the lock
    assert ("RUN", "pip install torch torchvision") in cuda
    assert any(i == "ENV" and "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in a for i, a in cuda)
    # the CPU build from PyTorch's index; its dependencies from PyPI with the rest
    assert cpu == [
        (
            "RUN",
            "pip install --no-deps --index-url https://download.pytorch.org/whl/cpu "
            "torch torchvision",
        )
    ]


def test_every_pip_install_is_constrained_by_the_lock():
    lines = dockerfile()
    env = line_index("ENV", r"\bPIP_CONSTRAINT=")
    path = re.search(r"\bPIP_CONSTRAINT=(\S+)", lines[env][1])[1]
    copy = line_index("COPY", r"^deploy/docker/constraints\.txt ")
    assert lines[copy][1].split()[-1] == path
    first_pip = min(
        index for index, (i, a) in enumerate(lines) if i == "RUN" and "pip install" in a
    )
    assert max(env, copy) < first_pip, "the lock is in force before the first pip install"
    assert env < line_index("FROM", r"AS torch-cuda$"), "set in the stage both variants start from"
    # the versions are the lock's: no pin of its own in a pip install
    for argv in pip_installs():
        assert not [arg for arg in argv if re.search(r"[=<>~]=|[<>]", arg)], argv
        assert "-c" not in argv and "--constraint" not in argv, "one lock, through PIP_CONSTRAINT"


def test_the_lock_pins_what_pip_install_brings_at_the_tested_ray():
    pins = lock()
    header = [line for line in LOCK.read_text().splitlines() if line.startswith("#")]
    assert any(
        "`.venv/bin/python deploy/docker/lock.py > deploy/docker/constraints.txt`" in line
        for line in header
    ), "the lock says how it was generated"
    # every node of a cluster runs the Ray the tests run
    assert pins["ray"] == ray.__version__
    # each of pyproject's dependencies, at a version its range admits (torch included: the image's
    # torch, the range in pyproject.toml)
    for name, text in dependency_names().items():
        requirement = Requirement(text)
        assert name in pins, f"{name} is not in the lock"
        assert requirement.specifier.contains(Version(pins[name]), prereleases=True), (name, text)
    build_requirement = Requirement(pyproject()["build-system"]["requires"][0])
    assert build_requirement.specifier.contains(Version(pins[canonical(build_requirement.name)]))
    # the CUDA libraries of the cuda variant's torch; not the project, not the dev tools
    assert "cuda-toolkit" in pins and "triton" in pins
    assert {"nvidia-cudnn-cu13", "nvidia-nccl-cu13"} <= set(pins)
    dev = {
        canonical(Requirement(r).name)
        for r in pyproject()["project"]["optional-dependencies"]["dev"]
    }
    assert not dev & set(pins) and "dmsweep" not in pins
    assert "psycopg2-binary" not in pins and "psycopg2" not in pins


def test_the_lock_script_runs_here():
    """The documented command works in this venv (its output is the lock of this venv)."""
    result = subprocess.run(
        [sys.executable, str(LOCK_SCRIPT)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    printed = [line for line in result.stdout.splitlines() if not line.startswith("#")]
    names = {line.partition("==")[0] for line in printed}
    assert set(dependency_names()) <= names and "ray" in names


def test_the_dependency_layer_is_fed_by_pyproject_and_the_lock_only():
    lines = dockerfile()
    deps = line_index("RUN", r"pip install -r ")
    assert deps < project_install_line()
    sources = copied_sources(before=deps) - copied_sources(
        before=line_index("FROM", r"AS runtime$")
    )
    assert sources == {"pyproject.toml"}, "a change to README.md must not rebuild the dependencies"
    assert copied_sources(before=deps) == {"pyproject.toml", "deploy/docker/constraints.txt"}
    # it installs pyproject's list and its build requirement, which the project's install uses
    assert "['build-system']['requires']" in lines[deps][1]
    assert "['project']['dependencies']" in lines[deps][1]
    project = lines[project_install_line()][1]
    assert "pip install --no-deps --no-build-isolation ." in project
    assert "pip check" in project


def test_the_image_holds_the_project_and_its_data_and_runs_as_a_user():
    sources = copied_sources(before=project_install_line())
    includes = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in {pattern.rstrip("*") for pattern in includes}:
        assert package in sources, f"the Dockerfile does not COPY {package}/"
    assert {"pyproject.toml", pyproject()["project"]["readme"]} <= sources
    # search_spaces is package data of the wheel, not a link into site-packages
    text = DOCKERFILE.read_text()
    assert not [argv for argv in run_commands() if argv[0] == "ln"]
    assert "site-packages" not in text and "purelib" not in text
    assert "load_paper_results()" in dockerfile()[project_install_line()][1]
    users = [arguments for instruction, arguments in dockerfile() if instruction == "USER"]
    assert users, "the image runs as root"
    uid = users[-1].split(":")[0]
    argument = re.fullmatch(r"\$\{?(\w+)\}?", uid)
    if argument:  # USER ${APP_UID}: the ARG's default (shared with deploy/k8s's runAsUser)
        default = re.search(rf"^ARG {argument[1]}=(\d+)", text, re.MULTILINE)
        assert default, f"USER names {uid} but no ARG gives it a default"
        uid = default[1]
        assert re.search(rf"useradd [^\n]*--uid \$\{{?{argument[1]}\}}? ", text)
    else:
        assert re.search(rf"useradd [^\n]*--uid {uid} ", text), f"no user {uid}"
    assert uid.isdigit() and uid != "0", "USER must be a numeric uid other than 0"
    for folder in ("/data", "/storage", "/mlartifacts"):
        assert re.search(rf"chown \S+ [^\n]*{folder}\b", text), f"{folder} not owned by the user"


# --- the tests: what the containers run ---------------------------------------------------------


def test_every_program_a_container_runs_is_in_its_image():
    provided = programs_of_image()
    for name, spec in compose()["services"].items():
        argvs = []
        if "command" in spec:
            argvs.append(command(name))
            script = wrapper(name)
            if script is not None:
                argvs += [
                    argv[1:] if argv[0] == "exec" else argv
                    for argv in split_commands(script)
                    if argv[0] not in SHELL_BUILTINS - {"exec"} and not is_assignment(argv[0])
                ]
                argvs += [
                    match.split()
                    for match in re.findall(r"\$\(([^)]*)\)", script)  # $(cat /run/secrets/x)
                ]
        if "healthcheck" in spec:
            argvs.append(healthcheck_argv(name))
        assert argvs, f"{name} runs nothing of its own"
        for argv in argvs:
            program = argv[0]
            if name in DMSWEEP_SERVICES:
                assert program in provided, f"{name}: {program!r} is not installed in its image"
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
    ctx = parse_with_click(program_argv(name))
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


def database_url(name: str, variable: str, secret: str) -> str:
    """The URL a wrapper exports in ``variable``, its password read from ``secret``."""
    assigned = wrapper_assignments(name)
    assert assigned["password"] == f"$(cat /run/secrets/{secret})", name
    url = assigned[variable]
    assert urlsplit(url).password == "${password}", f"{name}: the password comes from the file"
    return url


def test_the_mlflow_server_proxies_artifacts_and_lists_the_hosts_clients_use():
    argv = program_argv("mlflow")
    assert argv[:2] == ["mlflow", "server"]
    # the backend store from MLflow's own variable, set by the wrapper: not in the command line
    assert "--backend-store-uri" not in argv
    server = click_command("mlflow").commands["server"]
    envvars = {param.name: param.envvar for param in server.params}
    assert envvars["backend_store_uri"] == "MLFLOW_BACKEND_STORE_URI"
    url = database_url("mlflow", "MLFLOW_BACKEND_STORE_URI", "mlflow_db_password")
    backend = urlsplit(url)
    assert backend.scheme == "postgresql+psycopg" and backend.hostname == "postgres"
    assert (backend.username, backend.path, backend.port) == ("mlflow", "/mlflow", 5432)
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


def test_postgres_creates_the_databases_with_passwords_from_files():
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
        ("optuna", "optuna"),
    }
    assert set(re.findall(r"CREATE ROLE (\w+) LOGIN PASSWORD :'(\w+)'", text)) == {
        ("dmsweep", "dmsweep_password"),
        ("mlflow", "mlflow_password"),
        ("optuna", "optuna_password"),
    }
    # psql reads each file itself: the passwords are in no argument and no SQL text
    env = env_of("postgres")
    assert set(re.findall(r'^\\set (\w+) `cat "\$(\w+)"`$', text, re.MULTILINE)) == {
        ("dmsweep_password", "DMSWEEP_DB_PASSWORD_FILE"),
        ("mlflow_password", "MLFLOW_DB_PASSWORD_FILE"),
        ("optuna_password", "OPTUNA_DB_PASSWORD_FILE"),
    }
    assert "-v password" not in text and "$POSTGRES_PASSWORD" not in text
    assert env == {
        "POSTGRES_PASSWORD_FILE": "/run/secrets/postgres_password",
        "DMSWEEP_DB_PASSWORD_FILE": "/run/secrets/dmsweep_db_password",
        "MLFLOW_DB_PASSWORD_FILE": "/run/secrets/mlflow_db_password",
        "OPTUNA_DB_PASSWORD_FILE": "/run/secrets/optuna_db_password",
    }


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
    assert option(program_argv("mlflow"), "--port") == "5000"
    assert option(program_argv("api"), "--port") == "8000"
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
    api = env_of("api")
    assert api == {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": "/run/secrets/ray_token",
        "DMSWEEP_API_TOKEN_FILE": "/run/secrets/api_token",
        "DMSWEEP_RAY_ADDRESS": "http://ray-head:8265",
        "DMSWEEP_MLFLOW_URI": "http://mlflow:5000",
        "DMSWEEP_MLFLOW_PUBLIC_URL": f"http://localhost:{example_env()['MLFLOW_PORT']}",
        "DMSWEEP_DATA_ROOTS": "/data",
        "DMSWEEP_STORAGE_ROOT": "/storage",
    }
    assert program_argv("api") == ["dmsweep", "serve", "--host", "0.0.0.0", "--port", "8000"]
    url = database_url("api", "DMSWEEP_DATABASE_URL", "dmsweep_db_password")
    store = urlsplit(url)
    assert store.scheme == "postgresql+psycopg" and store.hostname == "postgres"
    assert (store.username, store.path, store.port) == ("dmsweep", "/dmsweep", 5432)
    # the service reads the variable the wrapper sets
    from service.server.settings import ServiceSettings

    settings = ServiceSettings.from_env({"DMSWEEP_DATABASE_URL": url})
    assert settings.database_url == url
    # the sweep drivers, on the head, keep Optuna studies in PostgreSQL; nothing else reads that
    assert env_of("ray-head")["DMSWEEP_OPTUNA_STORAGE_FILE"] == "/run/secrets/optuna_storage"
    for name in RAY_NODES:
        env = env_of(name)
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN_PATH"] == "/run/secrets/ray_token", name
        # sweep drivers queued for memory are not failed by Ray after its default 15 min
        assert int(env["RAY_JOB_START_TIMEOUT_SECONDS"]) >= 86400, name
    # the api's addresses are services of this file, on the ports they listen on
    assert urlsplit(api["DMSWEEP_RAY_ADDRESS"]).port == int(
        option(command("ray-head"), "--dashboard-port")
    )
    assert urlsplit(api["DMSWEEP_MLFLOW_URI"]).port == int(option(program_argv("mlflow"), "--port"))


def test_the_database_urls_name_the_one_driver_the_project_installs():
    """postgresql+psycopg://: psycopg 3, a dependency of pyproject.toml (and no psycopg2)."""
    urls = [
        database_url("mlflow", "MLFLOW_BACKEND_STORE_URI", "mlflow_db_password"),
        database_url("api", "DMSWEEP_DATABASE_URL", "dmsweep_db_password"),
    ]
    providers = importlib.metadata.packages_distributions()
    for url in urls:
        parsed = make_url(url.replace("${password}", "x"))
        assert parsed.get_driver_name() == "psycopg", url
        dbapi = parsed.get_dialect().import_dbapi()
        distributions = {canonical(name) for name in providers[dbapi.__name__.split(".")[0]]}
        assert distributions & set(dependency_names()), f"{url}: {dbapi.__name__} not installed"
    assert not {"psycopg2", "psycopg2-binary"} & set(dependency_names())


# --- the tests: secrets -------------------------------------------------------------------------


def test_the_secrets_are_files_mounted_only_where_needed():
    declared = compose()["secrets"]
    assert set(declared) == set(SECRETS)
    for name, spec in declared.items():
        assert spec == {"file": f"./{SECRETS_DIR}/{name}.txt"}, name
    for name in compose()["services"]:
        mounted = service_secrets(name)
        assert mounted == {s for s, users in SECRETS.items() if name in users}, name
        # every /run/secrets path a service names is a secret it mounts, and each is used
        named = {m for s in strings(service(name)) for m in re.findall(r"/run/secrets/(\w+)", s)}
        assert named == mounted, name


def test_no_secret_is_a_variable_a_value_or_an_argument():
    # compose interpolates no secret: no ${...PASSWORD...}, ${...TOKEN...} anywhere
    assert not [v for v in variables_used(raw_compose()) if SECRET_WORD.search(v)]
    assert not [v for v in example_env() if SECRET_WORD.search(v)], "secrets are files"
    for name in compose()["services"]:
        # the environment names files, never holds the secret itself
        for key, value in env_of(name).items():
            if SECRET_WORD.search(key):
                assert key.endswith(("_FILE", "_PATH")), f"{name}: {key} holds a secret"
                assert value.startswith("/run/secrets/"), f"{name}: {key}={value}"
        # no URL in a command line carries a password (the wrappers' ${password} is read from
        # the file by the shell and lands in the program's environment, not its argv)
        if "command" not in service(name):
            continue
        argvs = [command(name), program_argv(name)]
        for argv in argvs:
            for arg in argv:
                for url in re.findall(r"[a-z][\w+.-]*://[^\s\"']+", arg):
                    assert urlsplit(url).password in (None, "${password}"), f"{name}: {url}"
        for argv in argvs[1:]:
            assert not [arg for arg in argv if "password" in arg.lower()], f"{name}: {argv}"


STUB = """#!/bin/sh
printf '%s\\n' "$0" "$@" > "$RECORD/argv"
env > "$RECORD/env"
"""


@pytest.mark.parametrize(
    ("name", "variable"),
    [("mlflow", "MLFLOW_BACKEND_STORE_URI"), ("api", "DMSWEEP_DATABASE_URL")],
    ids=str,
)
def test_a_wrapper_puts_the_password_in_the_programs_environment_only(name, variable, tmp_path):
    """The service's ``sh -c`` script, run with /run/secrets mapped to test files and the
    program it execs replaced by a stub that records its argv and environment."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    passwords = {}
    for secret in service_secrets(name):
        passwords[secret] = f"{secret}-0123abcd"
        (secrets / secret).write_text(passwords[secret] + "\n")
    stubs = tmp_path / "bin"
    stubs.mkdir()
    program = program_argv(name)[0]
    (stubs / program).write_text(STUB)
    (stubs / program).chmod(0o755)
    script = wrapper(name).replace("/run/secrets/", f"{secrets}/")

    def run_wrapper() -> subprocess.CompletedProcess:
        return subprocess.run(
            ["sh", "-c", script],
            env={"PATH": f"{stubs}:/usr/bin:/bin", "RECORD": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=30,
        )

    result = run_wrapper()
    assert result.returncode == 0, result.stderr
    argv = (tmp_path / "argv").read_text().splitlines()
    env = dict(
        line.split("=", 1) for line in (tmp_path / "env").read_text().splitlines() if "=" in line
    )
    password = passwords["mlflow_db_password" if name == "mlflow" else "dmsweep_db_password"]
    url = make_url(env[variable])
    assert url.password == password and url.drivername == "postgresql+psycopg"
    assert argv[1:] == program_argv(name)[1:]
    assert not [arg for arg in argv if password in arg]
    assert "password" not in env, "the shell's variable is not exported"
    # a missing secret stops the wrapper before the program starts
    (secrets / next(iter(service_secrets(name) - {"api_token", "ray_token"}))).unlink()
    (tmp_path / "argv").unlink()
    failed = run_wrapper()
    assert failed.returncode != 0 and not (tmp_path / "argv").exists()


def test_make_secrets_writes_every_secret_once(tmp_path):
    folder = tmp_path / "secrets"
    first = subprocess.run(
        ["sh", str(MAKE_SECRETS), str(folder)], capture_output=True, text=True, timeout=30
    )
    assert first.returncode == 0, first.stderr
    files = {path.name: path for path in folder.iterdir()}
    assert set(files) == {f"{name}.txt" for name in SECRETS}
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    values = {}
    for name, path in files.items():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, name  # the containers' users read it
        values[name] = path.read_text()
        if name != "optuna_storage.txt":
            assert re.fullmatch(r"[0-9a-f]{64}\n", values[name]), name  # URL-safe, >= 32 chars
    assert len(set(values.values())) == len(values)
    # the studies' URL: the role optuna with its password, which the sweep drivers accept
    from service.sweep.searcher import STORAGE_FILE_VAR, url_from_env

    url = url_from_env({STORAGE_FILE_VAR: str(files["optuna_storage.txt"])})
    assert url is not None and make_url(url).password == values["optuna_db_password.txt"].strip()
    assert make_url(url).set(password="x") == make_url(
        "postgresql+psycopg://optuna:x@postgres:5432/optuna"
    )
    again = subprocess.run(
        ["sh", str(MAKE_SECRETS), str(folder)], capture_output=True, text=True, timeout=30
    )
    assert again.returncode == 0 and {n: p.read_text() for n, p in files.items()} == values
    # its default folder is the one compose reads
    assert 'dir="${1:-$(dirname "$0")/secrets}"' in MAKE_SECRETS.read_text()
    assert MAKE_SECRETS.parent / "secrets" == REPO / SECRETS_DIR


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
    leftovers = [s for s in strings(compose()) if "${" in s and "${password}" not in s]
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
    for path in (f"{SECRETS_DIR}/api_token.txt", "tests/test_compose.py", "bench/losses.py"):
        assert dockerignore_excludes(path), path
    assert dockerignore_excludes("service/__pycache__/cli.cpython-311.pyc")
    needed = ["pyproject.toml", "README.md", "service/cli/app.py", "trainers/loop.py"]
    needed += ["search_spaces/smoke.yaml", "search_spaces/paper_results/table1.csv"]
    # and every source the Dockerfile copies
    for instruction, arguments in dockerfile():
        if instruction == "COPY":
            needed += [w for w in arguments.split()[:-1] if not w.startswith("--")]
    for path in needed:
        assert not dockerignore_excludes(path), path


def test_the_env_file_and_the_secrets_are_not_committed():
    assert ENV_EXAMPLE.is_file()
    git = shutil.which("git")
    assert git, "git is needed to check .gitignore"

    def ignored(path: str) -> bool:
        result = subprocess.run([git, "check-ignore", "-q", path], cwd=REPO, check=False)
        assert result.returncode in (0, 1), result
        return result.returncode == 0

    assert ignored(ENV_FILE), f"{ENV_FILE} is not ignored by git: add it to .gitignore"
    assert not ignored(str(ENV_EXAMPLE.relative_to(REPO))), "the example must be committed"
    for name in SECRETS:
        assert ignored(f"{SECRETS_DIR}/{name}.txt"), name
    assert not ignored(f"{SECRETS_DIR}/.gitignore"), "the folder's .gitignore is committed"


def test_interpolation_follows_compose():
    env = {"A": "a", "EMPTY": ""}
    assert interpolate("${A}-$A-${B:-b}-${EMPTY:-e}-${EMPTY-e}-$$A", env) == "a-a-b-e--$A"
    assert interpolate("${A:+yes}${B:+no}", env) == "yes"
    with pytest.raises(MissingVariableError, match="B: say so"):
        interpolate("${B:?say so}", env)
    with pytest.raises(ValueError, match="invalid"):
        interpolate("${1}", env)
