"""One error vocabulary, one security-header policy, one typed gateway request context.

Read with `ast` from every runtime module (libraries and services, not their tests):
- `keelson.errors` alone maps HTTP statuses to titles or problem types: no other module
  holds a table keyed by statuses, reads `http.HTTPStatus`, or writes a problem+json body;
- `keelson.security_headers` alone names the security headers an answer carries;
- the gateway's layers share the request's `RequestContext`, not `scope["state"]` keys,
  and read typed settings (no `getattr(settings, ...)`) and their options through
  `Plugin.options`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ERRORS = ROOT / "libs" / "common" / "keelson" / "errors.py"
SECURITY_HEADERS = ROOT / "libs" / "common" / "keelson" / "security_headers.py"
GATEWAY = ROOT / "services" / "gateway" / "gateway"
# The headers of the policy; a module naming one sets it (or strips it) on its own.
POLICY_HEADERS = {
    "x-content-type-options",
    "x-frame-options",
    "referrer-policy",
    "cross-origin-opener-policy",
    "content-security-policy",
    "strict-transport-security",
}


def runtime_modules() -> Iterator[Path]:
    for tree in (ROOT / "libs", ROOT / "services"):
        for path in sorted(tree.rglob("*.py")):
            parts = path.relative_to(ROOT).parts
            if "tests" in parts or ".venv" in parts or "migrations" in parts:
                continue
            yield path


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _is_status(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int and 100 <= node.value <= 599


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"


def test_only_keelson_errors_knows_statuses_titles_and_problem_types() -> None:
    found = []
    for path in runtime_modules():
        if path == ERRORS:
            continue
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.Dict):
                statuses = [k for k in node.keys if _is_status(k)]
                texts = [v for v in node.values if isinstance(v, ast.Constant | ast.JoinedStr)]
                if len(statuses) >= 2 and texts:
                    found.append(f"{_where(path, node)}: a table keyed by statuses")
            elif isinstance(node, ast.ImportFrom) and node.module == "http":
                if any(alias.name == "HTTPStatus" for alias in node.names):
                    found.append(f"{_where(path, node)}: HTTPStatus (titles by status)")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str | bytes):
                text = node.value.decode("latin-1") if isinstance(node.value, bytes) else node.value
                if text == "application/problem+json" or text.startswith("https://keelson.dev/"):
                    found.append(f"{_where(path, node)}: a problem body made by hand")
    assert not found, "\n".join(found)


def test_only_keelson_security_headers_names_the_security_headers() -> None:
    found = []
    for path in runtime_modules():
        if path == SECURITY_HEADERS:
            continue
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str | bytes):
                text = node.value.decode("latin-1") if isinstance(node.value, bytes) else node.value
                if text.lower() in POLICY_HEADERS:
                    found.append(f"{_where(path, node)}: {text}")
    assert not found, "\n".join(found)


def test_the_gateways_layers_share_a_typed_context_and_typed_settings() -> None:
    found = []
    for path in sorted(GATEWAY.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        for node in ast.walk(parsed(path)):
            if (
                isinstance(node, ast.Subscript)
                and isinstance(node.slice, ast.Constant)
                and node.slice.value == "state"
            ):
                found.append(f"{_where(path, node)}: scope['state']")
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "getattr"
                and node.args
                and "settings" in ast.unparse(node.args[0])
            ):
                found.append(f"{_where(path, node)}: settings read untyped")
            elif (
                "plugins" in path.parts
                and isinstance(node, ast.Call)
                and ast.unparse(node.func).endswith(".model_validate")
            ) and ("settings" in ast.unparse(node) or "section" in ast.unparse(node)):
                found.append(f"{_where(path, node)}: options read around Plugin.options")
    assert not found, "\n".join(found)
