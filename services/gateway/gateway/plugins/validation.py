"""The validation plugin: sizes, content types, JSON shape, paths, and upstream schemas."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from jsonschema.exceptions import ValidationError as SchemaError
from jsonschema.exceptions import best_match
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.context import (
    CLIENT_CLOSED_REQUEST,
    BodyTooLarge,
    ClientGone,
    RequestContext,
    context,
    read_body,
    replay_body,
)
from gateway.metrics import VALIDATION_REJECTIONS
from gateway.openapi import CATALOG, OpenApiCatalog, Operation
from gateway.pipeline import GatewayPlugin
from keelson.config import PluginSettings
from keelson.errors import (
    BadRequest,
    KeelsonError,
    PayloadTooLarge,
    RequestHeadersTooLarge,
    Unprocessable,
    UnsupportedMediaType,
)
from keelson.plugins import PluginMetadata, Priority

__all__ = ["ValidationConfig", "ValidationPlugin"]

# Encoded forms that a second decoding (here or upstream) would turn into path syntax.
# Encoded %, dot, slash, backslash and NUL: decoded twice, or by a later hop, they smuggle
# a path past the checks below.
_ENCODED_TRICK = re.compile(rb"%(?:25|2e|2f|5c|00)", re.IGNORECASE)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class ValidationConfig(BaseModel):
    max_body_bytes: int = Field(1024 * 1024, ge=0)
    max_json_bytes: int = Field(512 * 1024, ge=0)
    max_json_depth: int = Field(32, ge=1)
    max_header_bytes: int = Field(16 * 1024, ge=256)
    max_headers: int = Field(100, ge=1)
    allowed_content_types: list[str] = [
        "application/json",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "text/plain",
        "application/octet-stream",
    ]
    check_upstream_schemas: bool = True


def _refused(reason: str, error: KeelsonError) -> KeelsonError:
    """`error`, counted as a rejection for `reason` (the metric's label), to raise."""
    VALIDATION_REJECTIONS.labels(reason).inc()
    return error


class ValidationPlugin(GatewayPlugin):
    metadata = PluginMetadata(
        name="validation",
        priority=Priority.MIDDLEWARE,
        required=False,  # without it the gateway still serves, degraded
        description="Body and header limits, content types, JSON depth, paths, upstream schemas",
        depends_on=("routing",),
    )

    async def initialize(self) -> None:
        self.config = self.options(ValidationConfig)
        self.catalog = self.container.resolve(CATALOG)

    def prepare_reload(self, section: PluginSettings) -> Callable[[], None]:
        config = self.options(ValidationConfig, section)

        def apply() -> None:
            self.settings, self.config = section, config

        return apply

    def wrap(self, app: ASGIApp) -> ASGIApp:
        return _ValidationLayer(app, self.config, self.catalog)


class _ValidationLayer:
    def __init__(self, app: ASGIApp, config: ValidationConfig, catalog: OpenApiCatalog) -> None:
        self.app = app
        self.config = config
        self.catalog = catalog
        self.allowed = frozenset(t.lower() for t in config.allowed_content_types)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function (see GatewayPlugin.wrap) unless there is a body to read.
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        ctx = context(scope)
        try:
            self._check_path(scope)
            length, chunked, media_type = self._check_headers(scope)
            if chunked or length:
                return self._with_body(ctx, scope, receive, send, length, media_type)
            if scope["method"] in _BODY_METHODS:
                self._check_schema(ctx, None, absent=True)
        except KeelsonError as refused:
            return refused.send_to(send, scope["path"])
        return self.app(scope, receive, send)

    async def _with_body(
        self,
        ctx: RequestContext,
        scope: Scope,
        receive: Receive,
        send: Send,
        length: int | None,
        media_type: str,
    ) -> None:
        try:
            receive = await self._check_body(ctx, receive, length, media_type)
        except KeelsonError as refused:
            await refused.send_to(send, scope["path"])
            return
        except ClientGone:
            ctx.response.status = CLIENT_CLOSED_REQUEST  # and no answer: nobody would read it
            return
        await self.app(scope, receive, send)

    def _check_path(self, scope: Scope) -> None:
        raw = scope.get("raw_path") or scope["path"].encode()
        # The pattern alone: it begins with "%", a literal prefix the regex engine scans for
        # in C. (`b"%" in raw` first would try "%" as an integer, and build and drop a
        # TypeError, some 1,700 instructions, on every request.)
        if _ENCODED_TRICK.search(raw):
            raise _refused("path", BadRequest("The path contains encoded characters it may not."))
        path: str = scope["path"]
        if (
            not path.startswith("/")
            or "\\" in path
            or "\x00" in path
            or "//" in path
            or ("." in path and any(seg in (".", "..") for seg in path.split("/")))
        ):
            raise _refused("path", BadRequest("The path is not in normal form."))

    def _check_headers(self, scope: Scope) -> tuple[int | None, bool, str]:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        config = self.config
        if len(headers) > config.max_headers:
            raise _refused("headers", RequestHeadersTooLarge("Too many request headers."))
        total = 0
        length: int | None = None
        chunked = False
        media_type = ""
        for name, value in headers:
            total += len(name) + len(value) + 4
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    raise _refused(
                        "length", BadRequest("Content-Length is not a number.")
                    ) from None
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"content-type":
                media_type = value.split(b";", 1)[0].strip().lower().decode("latin-1")
        if total > config.max_header_bytes:
            raise _refused("headers", RequestHeadersTooLarge("The request headers are too large."))
        if length is not None and length > config.max_body_bytes:
            raise _refused(
                "size", PayloadTooLarge(f"The body may be at most {config.max_body_bytes} bytes.")
            )
        return length, chunked, media_type

    async def _check_body(
        self, ctx: RequestContext, receive: Receive, length: int | None, media_type: str
    ) -> Receive:
        if not media_type:
            raise _refused(
                "content_type", UnsupportedMediaType("A request body needs a Content-Type.")
            )
        is_json = media_type == "application/json" or media_type.endswith("+json")
        operation = self._operation(ctx)
        if operation is not None and operation.media_types is not None:
            # The upstream's document says what this operation takes; the global list is for
            # operations without one.
            if not operation.accepts(media_type):
                accepted = ", ".join(sorted(operation.media_types))
                raise _refused(
                    "content_type",
                    UnsupportedMediaType(
                        f"Content-Type {media_type} is not accepted here; this operation takes "
                        f"{accepted}."
                    ),
                )
        elif not is_json and media_type not in self.allowed:
            raise _refused(
                "content_type", UnsupportedMediaType(f"Content-Type {media_type} is not accepted.")
            )
        limit = self.config.max_json_bytes if is_json else self.config.max_body_bytes
        too_large = f"The body may be at most {limit} bytes."
        if length is not None and length > limit:
            raise _refused("size", PayloadTooLarge(too_large))
        if not is_json and length is not None:
            return receive  # known to be within the limit: streamed through untouched
        try:
            body = await read_body(receive, limit)
        except BodyTooLarge:
            raise _refused("size", PayloadTooLarge(too_large)) from None
        if is_json:
            document = self._parse_json(body)
            self._check_schema(ctx, document, absent=False)
        ctx.body = body
        return replay_body(body, receive)

    def _parse_json(self, body: bytes) -> Any:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _refused("json", BadRequest("The body is not valid JSON.")) from None
        if _depth_exceeds(document, self.config.max_json_depth):
            depth = self.config.max_json_depth
            raise _refused("json_depth", BadRequest(f"JSON nesting deeper than {depth}."))
        return document

    def _operation(self, ctx: RequestContext) -> Operation | None:
        """The upstream operation the request is for, when its document names it and
        upstream schemas are checked."""
        if not self.config.check_upstream_schemas:
            return None
        match = ctx.route
        return None if match is None else match.operation

    def _check_schema(self, ctx: RequestContext, document: Any, *, absent: bool) -> None:
        operation = self._operation(ctx)
        if operation is None:
            return
        if absent:
            if operation.body_required and operation.body_schema is not None:
                raise _refused(
                    "schema",
                    Unprocessable(
                        "body: a JSON body is required",
                        errors=[{"loc": ["body"], "msg": "Field required", "type": "missing"}],
                    ),
                )
            return
        validator = self.catalog.validator(operation)
        if validator is None:
            return
        error = best_match(validator.iter_errors(document))
        if error is not None:
            raise _refused("schema", _schema_rejection(error))


def _schema_rejection(error: SchemaError) -> Unprocessable:
    location = [str(part) for part in error.absolute_path]
    required = error.validator_value
    if error.validator == "required" and isinstance(error.instance, dict):
        assert isinstance(required, list)
        missing = [f for f in required if f not in error.instance]
        if missing:
            location.append(str(missing[0]))
    field = ".".join(location) or "body"
    # The message may quote the submitted value (perhaps a password): name the rule instead.
    message = _describe(error)
    return Unprocessable(
        f"{field}: {message}",
        errors=[{"loc": ["body", *location], "msg": message, "type": str(error.validator)}],
    )


def _describe(error: SchemaError) -> str:
    rule = str(error.validator)
    value = error.validator_value
    messages = {
        "required": "Field required",
        "type": f"must be of type {value}",
        "format": f"must be a valid {value}",
        "minLength": f"must have at least {value} characters",
        "maxLength": f"must have at most {value} characters",
        "minimum": f"must be at least {value}",
        "maximum": f"must be at most {value}",
        "exclusiveMinimum": f"must be greater than {value}",
        "exclusiveMaximum": f"must be less than {value}",
        "enum": "must be one of " + ", ".join(map(str, value)) if isinstance(value, list) else "",
        "pattern": "does not match the expected pattern",
        "additionalProperties": "has unexpected fields",
    }
    return messages.get(rule) or f"fails the {rule} rule"


def _depth_exceeds(document: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
