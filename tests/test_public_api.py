"""Keelson reaches its dependencies through their documented public surface only.

Every module of the project (libraries, services, their tests, the benchmarks) is read with
`ast`. A third-party import of a private name or module (a leading underscore anywhere in
it, or a module its project's documentation does not expose), a subclass of a third-party
class that is not a documented extension point, and a `._name` read from a third-party
object each fail, named by file and line.

A `._name` read is taken for a third-party one unless the attribute is one Keelson's own
code defines (a method, an assignment to `self._name`, a slot, a class attribute): an
attribute nobody here defines can only belong to someone else's object.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREES = [ROOT / "libs", ROOT / "services", ROOT / "tests", ROOT / "bench", ROOT / "loadtests"]

# Modules the projects' documentation does not expose (their reference pages list none of
# them), beyond those with an underscore in their name.
UNDOCUMENTED = (
    "aiohttp.client_proto",
    "aiohttp.client_reqrep",
    "aiohttp.connector",
    "aiohttp.http",
    "aiohttp.http_parser",
    "aiohttp.http_writer",
    "aiohttp.base_protocol",
    "aiohttp.streams",
    "limits.aio.storage.redis.bridge",
    "limits.resources",
    "limits.storage.redis",
    "uvicorn.protocols",
    "uvicorn.lifespan",
    "uvicorn.loops",
    "uvicorn.supervisors",
    "uvicorn.server",
    "starlette.middleware.base",
)

# Third-party classes their projects document as meant to be subclassed, by the name
# imported from the module that documents them.
EXTENSION_POINTS = {
    "pydantic.BaseModel",  # docs.pydantic.dev: models
    "pydantic.RootModel",
    "pydantic_settings.BaseSettings",  # docs.pydantic.dev/latest/concepts/pydantic_settings
    "pydantic_settings.PydanticBaseSettingsSource",  # custom settings sources
    "sqlalchemy.orm.DeclarativeBase",  # docs.sqlalchemy.org: declarative mapping
    "sqlalchemy.types.TypeDecorator",  # docs.sqlalchemy.org: augmenting existing types
    "fastapi.HTTPException",  # fastapi.tiangolo.com: handling errors
    "starlette.exceptions.HTTPException",
    "starlette.responses.Response",  # starlette.io/responses: custom response classes
    "starlette.responses.JSONResponse",
    "fastapi.responses.JSONResponse",
    "fastapi.FastAPI",  # an application class is documented as subclassable (starlette apps)
    "starlette.applications.Starlette",
    "locust.HttpUser",  # docs.locust.io: writing a locustfile
    "locust.FastHttpUser",
    "locust.TaskSet",
    "locust.LoadTestShape",
    "aiosmtpd.handlers.Message",  # aiosmtpd.readthedocs.io: handlers
    "aiosmtpd.handlers.AsyncMessage",
    "prometheus_client.registry.Collector",  # prometheus client docs: custom collectors
    "sentry_sdk.integrations.Integration",
    # twilio.com/docs/libraries/reference/twilio-python: "custom HTTP clients" subclass the
    # abstract HttpClient / AsyncHttpClient and implement `request`.
    "twilio.http.HttpClient",
    "twilio.http.AsyncHttpClient",
}


def modules() -> Iterator[Path]:
    for tree in TREES:
        for path in sorted(tree.rglob("*.py")):
            if ".venv" not in path.parts and "migrations" not in path.parts:
                yield path


@cache
def first_party_roots() -> frozenset[str]:
    """Top-level names importable from this repository rather than from site-packages."""
    names = {"keelson", "keelson_dev", "gateway", "auth_service", "logs_service"}
    names |= {"notifications_service", "payments_service", "conftest"}
    for path in modules():  # helpers imported by their file name (tests, benchmarks)
        names.add(path.stem)
    return frozenset(names)


@cache
def is_third_party(module: str) -> bool:
    root = module.split(".")[0]
    if not root or root in sys.stdlib_module_names or root in first_party_roots():
        return False
    try:
        spec = importlib.util.find_spec(root)
    except (ImportError, ValueError):
        return False
    return spec is not None


def private_part(dotted: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in dotted.split("."))


def undocumented(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in UNDOCUMENTED)


@cache
def own_attributes() -> frozenset[str]:
    """Underscore names Keelson's own code defines: functions, classes, attributes, slots."""
    names: set[str] = set()
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.add(node.value)  # __slots__ entries, dataclass field names
            elif isinstance(node, ast.alias):
                names.add(node.asname or node.name.split(".")[-1])
    return frozenset(n for n in names if n.startswith("_"))


def violations(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(), str(path))
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    imported: dict[str, str] = {}  # local name -> dotted third-party origin
    standard: set[str] = set()  # local names of standard-library modules (not checked)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in sys.stdlib_module_names:
                    standard.add(alias.asname or alias.name.split(".")[0])
                if not is_third_party(alias.name):
                    continue
                if private_part(alias.name) or undocumented(alias.name):
                    yield f"{where}:{node.lineno}: imports non-public module {alias.name}"
                local = alias.asname or alias.name.split(".")[0]
                imported[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not is_third_party(node.module):
                continue
            if private_part(node.module) or undocumented(node.module):
                yield f"{where}:{node.lineno}: imports from non-public module {node.module}"
            for alias in node.names:
                if private_part(alias.name):
                    yield f"{where}:{node.lineno}: imports private {node.module}.{alias.name}"
                imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                origin = _origin(base, imported)
                if origin is not None and origin not in EXTENSION_POINTS:
                    yield f"{where}:{node.lineno}: {node.name} subclasses {origin}"
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            name = node.attr
            if not name.startswith("_") or name.startswith("__"):
                continue
            if _root_name(node.value) in standard:
                continue  # the standard library's own (os._exit is documented)
            owner = _origin(node.value, imported)
            if owner is not None or name not in own_attributes():
                yield f"{where}:{node.lineno}: reads {name} of a third-party object"


def _root_name(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _origin(node: ast.expr, imported: dict[str, str]) -> str | None:
    """The dotted third-party name `node` stands for (a name or attribute chain), or None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Subscript):  # Generic[T]-style bases
        return _origin(node.value, imported)
    if not isinstance(node, ast.Name) or node.id not in imported:
        return None
    return ".".join([imported[node.id], *reversed(parts)])


def test_every_module_uses_only_public_third_party_apis() -> None:
    found = [line for path in modules() for line in violations(path)]
    assert found == [], "\n".join(found)


def test_the_check_finds_what_it_is_for(tmp_path: Path) -> None:
    """Each rule fires on a sample of what it forbids (a check that finds nothing proves
    nothing)."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from aiohttp.client_proto import ResponseHandler\n"
        "from limits.aio.storage import _x\n"
        "import uvicorn.protocols.http.httptools_impl\n"
        "from redis.asyncio import Redis\n"
        "class Sub(Redis): pass\n"
        "def f(r: Redis) -> object:\n"
        "    return r._never_defined_in_keelson\n"
    )
    found = list(violations(sample))
    assert len(found) == 5, found
    assert any("subclasses redis.asyncio.Redis" in line for line in found)
    assert any("reads _never_defined_in_keelson" in line for line in found)
