"""What ``pip install .`` installs: the wheel's contents, and the dependencies the code imports.

The wheel is built from a copy of what the image's build copies (pyproject.toml, README.md and
the three top-level folders), installed into a folder of its own and imported there by a Python
that sees neither the checkout nor the venv's editable install (``-S``), as a container does:
``search_spaces`` has to come with it, as package data. The import scan reads every module of
``service/`` and ``trainers/`` and checks that each third-party package they import is a
dependency pyproject.toml names, not one that only happens to be installed by another.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
import zipfile
from functools import cache
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli that pip vendors
    from pip._vendor import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "service", "trainers", "search_spaces")
CODE = ("service", "trainers")
PIP = (sys.executable, "-m", "pip", "--quiet", "--no-input", "--disable-pip-version-check")
# offline: the build backend is the venv's setuptools, and nothing else is needed
PIP_OFFLINE = ("--no-index",)


@cache
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def build_wheel(folder: Path) -> Path:
    """The project's wheel, built offline from a copy of its sources under ``folder``."""
    source = folder / "src"
    source.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    out = folder / "wheel"
    result = subprocess.run(
        [
            *PIP,
            "wheel",
            *PIP_OFFLINE,
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("dmsweep-*.whl")
    return wheel


def test_the_wheel_ships_search_spaces_and_the_report_finds_it_installed(tmp_path):
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {
        path.relative_to(REPO).as_posix()
        for path in (REPO / "search_spaces").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert shipped, "no search_spaces/ in the checkout"
    assert shipped <= names, sorted(shipped - names)
    assert {"search_spaces/paper_results/table1.csv", "search_spaces/smoke.yaml"} <= names
    assert "service/results/package_data.py" in names and "service/results/paper.py" in names
    assert "service/plan/default_calibration.yaml" in names  # read by every plan
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]

    target = tmp_path / "site"
    install = subprocess.run(
        [*PIP, "install", *PIP_OFFLINE, "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    # -S: no site-packages, so no editable install of the checkout; the cwd has no sources
    check = (
        "from service.results.paper import PAPER_RESULTS, load_paper_results\n"
        "from service.results.package_data import search_spaces_folder\n"
        "print(PAPER_RESULTS)\n"
        "print(len(load_paper_results()))\n"
        "print(int((search_spaces_folder() / 'smoke.yaml').is_file()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", check],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    folder, rows, smoke = result.stdout.split()
    assert Path(folder) == target / "search_spaces" / "paper_results"
    assert int(rows) > 0 and smoke == "1"


def test_the_checkout_finds_search_spaces_too():
    """In the editable install (and a plain checkout) the folder is the repository's own."""
    from service.results.package_data import search_spaces_folder
    from service.results.paper import PAPER_RESULTS

    assert PAPER_RESULTS == REPO / "search_spaces" / "paper_results"
    assert search_spaces_folder("trials") == REPO / "search_spaces" / "trials"


# --- the imports ---------------------------------------------------------------------------------


def _optional(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Whether an import sits in a ``try`` that handles ImportError (an optional dependency)."""
    child, parent = node, parents.get(node)
    while parent is not None:
        if isinstance(parent, ast.Try) and child in parent.body:
            for handler in parent.handlers:
                caught = handler.type
                names = [caught] if not isinstance(caught, ast.Tuple) else list(caught.elts)
                if any(
                    isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError")
                    for n in names
                ):
                    return True
        child, parent = parent, parents.get(parent)
    return False


def imported_modules() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Top-level module -> the files importing it: (required imports, optional imports)."""
    required: dict[str, set[str]] = {}
    optional: dict[str, set[str]] = {}
    for folder in CODE:
        for path in sorted((REPO / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            parents = {
                child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)
            }
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                bucket = optional if _optional(node, parents) else required
                for module in modules:
                    top = module.split(".")[0]
                    bucket.setdefault(top, set()).add(path.relative_to(REPO).as_posix())
    return required, optional


def test_pyproject_names_every_package_the_code_imports():
    own = {
        pattern.rstrip("*")
        for pattern in pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    declared = {
        canonicalize_name(Requirement(text).name) for text in pyproject()["project"]["dependencies"]
    }
    providers = importlib.metadata.packages_distributions()
    required, optional = imported_modules()
    assert {"torch", "ray", "mlflow", "numpy", "PIL"} <= set(required), "the scan found nothing"
    missing = {}
    for module, files in sorted(required.items()):
        if module in sys.stdlib_module_names or module in own or module == "__future__":
            continue
        distributions = {canonicalize_name(d) for d in providers.get(module, [])}
        assert distributions, f"{module} (imported by {sorted(files)}) is not installed"
        if not distributions & declared:
            missing[module] = (sorted(distributions), sorted(files)[:3])
    assert not missing, f"imported but not in pyproject.toml's dependencies: {missing}"
    # what is imported only under `except ImportError` is optional: it need not be declared,
    # but the code must say what to install when it is missing
    for module, files in optional.items():
        if module in sys.stdlib_module_names or module in own or module in required:
            continue
        for name in files:
            assert re.search(rf"needs {module}\b|install {module}\b", (REPO / name).read_text()), (
                f"{name}: the optional import of {module} does not say what to install"
            )
