"""The upstreams' OpenAPI documents: route templates, request schemas, the merged document."""

from __future__ import annotations

import asyncio
import copy
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.protocols import Validator

from gateway.paths import PerPath
from gateway.upstreams import RouteTable, Upstream
from keelson.plugins import Key

__all__ = ["CATALOG", "OpenApiCatalog", "Operation", "RouteMatch"]

_log = logging.getLogger("gateway.openapi")
_PARAM = re.compile(r"\{([^}:]+)(:path)?\}")
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_SCHEMA_REF = "#/components/schemas/"

Fetch = Callable[[Upstream], Awaitable[dict[str, Any]]]
CATALOG: Key[OpenApiCatalog] = Key("gateway.openapi_catalog")


@dataclass(frozen=True, eq=False)
class Operation:
    upstream: str
    method: str
    template: str
    body_schema: dict[str, Any] | None
    body_required: bool
    # The media types (or ranges: text/*, */*) its request body may have, lower-case; None
    # when its document declares no request body.
    media_types: frozenset[str] | None = None

    def accepts(self, media_type: str) -> bool:
        """Whether a body of `media_type` (lower-case, no parameters) is one this takes."""
        types = self.media_types
        if types is None:
            return True
        major = media_type.split("/", 1)[0]
        return media_type in types or f"{major}/*" in types or "*/*" in types


@dataclass(frozen=True)
class RouteMatch:
    """Which upstream serves a request and, when its document knows it, which operation.

    `path` is the route template, under the name the metrics middleware reads.
    """

    upstream: Upstream
    path: str
    operation: Operation | None


@dataclass
class _Document:
    raw: dict[str, Any]
    fetched_at: float
    routes: list[tuple[re.Pattern[str], str, dict[str, Operation]]] = field(default_factory=list)


class OpenApiCatalog:
    """Fetched from each upstream, kept when a later fetch fails, refreshed in the background."""

    def __init__(self, table: RouteTable, fetch: Fetch, *, refresh_seconds: float) -> None:
        self.table = table
        self._fetch = fetch
        self.refresh_seconds = refresh_seconds
        self._docs: dict[str, _Document] = {}
        self._validators: dict[Operation, Validator] = {}
        self._last_attempt: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        # Matching a path against the routes and documents, once per method and path.
        self._matched = PerPath(self._match)
        self.version = 0

    async def refresh(self, names: list[str] | None = None) -> None:
        targets = [self.table.upstreams[n] for n in names or list(self.table.upstreams)]
        await asyncio.gather(*(self._refresh_one(u) for u in targets))

    async def _refresh_one(self, upstream: Upstream) -> None:
        self._last_attempt[upstream.name] = time.monotonic()
        try:
            raw = await self._fetch(upstream)
        except Exception as exc:
            _log.info("openapi of %s unavailable: %s", upstream.name, type(exc).__name__)
            return
        if not isinstance(raw.get("paths"), dict):
            return
        old = self._docs.get(upstream.name)
        if old is not None and old.raw == raw:
            old.fetched_at = time.monotonic()
            return
        self._docs[upstream.name] = _Document(raw, time.monotonic(), _compile(upstream.name, raw))
        self._validators = {
            op: v for op, v in self._validators.items() if op.upstream != upstream.name
        }
        self._matched.cache_clear()
        self.version += 1

    def start(self) -> None:
        self._task = asyncio.create_task(self._refresh_forever(), name="openapi-refresh")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._pending) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _refresh_forever(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.refresh_seconds)

    def _refresh_soon(self, upstream: Upstream) -> None:
        """An upstream without a document is asked again, at most every few seconds."""
        last = self._last_attempt.get(upstream.name, 0.0)
        if time.monotonic() - last < 5.0:
            return
        self._last_attempt[upstream.name] = time.monotonic()
        task = asyncio.get_running_loop().create_task(self._refresh_one(upstream))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def match(self, method: str, path: str) -> RouteMatch | None:
        """The upstream and operation a request is for (the pipeline asks once a request)."""
        match = self._matched(method, path)
        if match is not None and match.upstream.name not in self._docs:
            self._refresh_soon(match.upstream)  # asked for its document while traffic comes
        return match

    def _match(self, method: str, path: str) -> RouteMatch | None:
        upstream = self.table.match(path)
        if upstream is None:
            return None
        if upstream.name not in self._docs:
            return self._by_prefix(upstream, path)
        return self._in_document(upstream.name, method, path)

    def _in_document(self, name: str, method: str, path: str) -> RouteMatch:
        upstream = self.table.upstreams[name]
        for pattern, template, operations in self._docs[name].routes:
            if pattern.fullmatch(path):
                return RouteMatch(upstream, template, operations.get(method.lower()))
        return self._by_prefix(upstream, path)

    @staticmethod
    def _by_prefix(upstream: Upstream, path: str) -> RouteMatch:
        prefix = next(p for p in upstream.config.prefixes if path.startswith(p))
        template = prefix if len(path) == len(prefix) else prefix + "/{path}"
        return RouteMatch(upstream, template, None)

    def validator(self, operation: Operation) -> Validator | None:
        if operation.body_schema is None:
            return None
        cached = self._validators.get(operation)
        if cached is None:
            components = self._docs[operation.upstream].raw.get("components", {})
            schema = {**operation.body_schema, "components": components}
            cached = Draft202012Validator(schema, format_checker=FormatChecker())
            self._validators[operation] = cached
        return cached

    def available(self) -> dict[str, bool]:
        return {name: name in self._docs for name in self.table.upstreams}

    def merged(self, own: dict[str, Any]) -> dict[str, Any]:
        """The gateway's own document with every upstream's paths and schemas added."""
        merged = copy.deepcopy(own)
        paths: dict[str, Any] = merged.setdefault("paths", {})
        components: dict[str, Any] = merged.setdefault("components", {})
        schemas: dict[str, Any] = components.setdefault("schemas", {})
        security: dict[str, Any] = components.setdefault("securitySchemes", {})
        tags: list[dict[str, Any]] = merged.setdefault("tags", [])
        for name, doc in sorted(self._docs.items()):
            raw_components = doc.raw.get("components", {})
            theirs: dict[str, Any] = raw_components.get("schemas", {})
            renames = {
                s: f"{name}__{s}"
                for s, body in theirs.items()
                if s in schemas and schemas[s] != body
            }
            for schema_name, body in theirs.items():
                schemas[renames.get(schema_name, schema_name)] = _rewrite_refs(body, renames)
            for path, item in doc.raw.get("paths", {}).items():
                if any(path.startswith(p) for p in self.table.upstreams[name].config.prefixes):
                    paths[path] = _rewrite_refs(item, renames)
            security.update(raw_components.get("securitySchemes", {}))
            tags.append({"name": name, "description": f"Served by the {name} service"})
        if not security:
            components.pop("securitySchemes")
        return merged


def _compile(
    upstream: str, raw: dict[str, Any]
) -> list[tuple[re.Pattern[str], str, dict[str, Operation]]]:
    routes = []
    for template, item in raw.get("paths", {}).items():
        if not isinstance(item, dict):
            continue
        operations = {
            method: _operation(upstream, method, template, item[method])
            for method in _METHODS
            if isinstance(item.get(method), dict)
        }
        routes.append((_template_pattern(template), template, operations))
    # Literal routes before parameterised ones: `/users/me` must not match `/users/{id}`.
    routes.sort(key=lambda r: (r[1].count("{"), -len(r[1])))
    return routes


def _template_pattern(template: str) -> re.Pattern[str]:
    parts, last = [], 0
    for m in _PARAM.finditer(template):
        parts.append(re.escape(template[last : m.start()]))
        parts.append(".+" if m.group(2) else "[^/]+")
        last = m.end()
    parts.append(re.escape(template[last:]))
    return re.compile("".join(parts))


def _operation(upstream: str, method: str, template: str, op: dict[str, Any]) -> Operation:
    body = op.get("requestBody") or {}
    content = body.get("content") or {}
    schema = (content.get("application/json") or {}).get("schema")
    return Operation(
        upstream=upstream,
        method=method,
        template=template,
        body_schema=schema if isinstance(schema, dict) else None,
        body_required=bool(body.get("required")),
        media_types=(
            frozenset(t.split(";", 1)[0].strip().lower() for t in content if isinstance(t, str))
            if isinstance(content, dict) and content
            else None
        ),
    )


def _rewrite_refs(node: Any, renames: dict[str, str]) -> Any:
    if not renames:
        return node
    if isinstance(node, dict):
        out = {k: _rewrite_refs(v, renames) for k, v in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith(_SCHEMA_REF):
            target = ref[len(_SCHEMA_REF) :]
            out["$ref"] = _SCHEMA_REF + renames.get(target, target)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v, renames) for v in node]
    return node
