"""The layout's rules, read from the source: which package may import which."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import REPO

# service/'s packages and the ones each may import: cli -> server | sweep -> results ->
# tracking, spec -> storage, with plan (a spec's cost) beside results (and trainers underneath
# all of them).
ALLOWED = {
    "cli": {"server", "sweep", "results", "tracking", "spec", "storage", "plan"},
    "server": {"results", "tracking", "spec", "storage", "plan"},
    "plan": {"spec", "storage"},
    "sweep": {"results", "tracking", "spec", "storage"},
    "results": {"tracking", "spec", "storage"},
    "tracking": {"storage"},
    "spec": {"storage"},
    "storage": set(),
}
# What only service/sweep may import: Ray's runtime (the service's job client is not it).
RAY_RUNTIME = ("ray.tune", "ray.train", "ray.util", "ray.core", "ray._private", "ray._raylet")


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def is_ray_runtime(module: str) -> bool:
    """``import ray`` itself, or one of Ray's runtime packages."""
    return module == "ray" or any(
        module == name or module.startswith(name + ".") for name in RAY_RUNTIME
    )


def test_service_packages_import_one_way() -> None:
    packages = {p.name for p in (REPO / "service").iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(ALLOWED)
    wrong = []
    for package in sorted(packages):
        for path in sorted((REPO / "service" / package).rglob("*.py")):
            for module in imports(path):
                parts = module.split(".")
                other = parts[1] if parts[0] == "service" and len(parts) > 1 else package
                if other != package and other not in ALLOWED[package]:
                    wrong.append(f"{path.relative_to(REPO)} imports {module}")
    assert wrong == []


def test_only_the_sweep_package_imports_rays_runtime() -> None:
    wrong = [
        f"{path.relative_to(REPO)} imports {module}"
        for path in sorted((REPO / "service").rglob("*.py"))
        if path.relative_to(REPO / "service").parts[0] != "sweep"
        for module in imports(path)
        if is_ray_runtime(module)
    ]
    assert wrong == []
    assert is_ray_runtime("ray.tune.search") and not is_ray_runtime("ray.job_submission")


def test_trainers_import_neither_the_service_nor_ray_nor_mlflow() -> None:
    wrong = [
        f"{path.relative_to(REPO)} imports {module}"
        for path in sorted((REPO / "trainers").rglob("*.py"))
        for module in imports(path)
        if module.split(".")[0] in ("service", "ray", "mlflow", "optuna")
    ]
    assert wrong == []


def test_no_module_imports_a_private_name_of_another() -> None:
    wrong = []
    for root in ("service", "trainers"):
        for path in sorted((REPO / root).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
                    "service",
                    "trainers",
                ):
                    private = [a.name for a in node.names if a.name.startswith("_")]
                    if private:
                        wrong.append(f"{path.relative_to(REPO)}: {node.module} {private}")
    assert wrong == []
