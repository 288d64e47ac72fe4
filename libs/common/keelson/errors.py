"""Keelson's one error vocabulary: each error knows its status, title and problem type,
and renders itself as RFC 9457 problem details, to a FastAPI handler (`response`) and to a
raw ASGI layer (`send_to`) alike. No other module maps a status to a title or a type.

KeelsonError (500)
├── BadRequest (400)
│   └── PaymentInvalid (400, a payment provider refused the request)
├── Unauthorized (401, WWW-Authenticate)
├── PaymentDeclined (402, decline_code)
├── Forbidden (403)
├── NotFound (404)
├── MethodNotAllowed (405)
├── NotAcceptable (406)
├── RequestTimeout (408)
├── Conflict (409)
│   └── IdempotencyConflict (409, an Idempotency-Key reused with another request)
├── PayloadTooLarge (413)
├── UnsupportedMediaType (415)
├── Unprocessable (422)
├── PreconditionRequired (428)
├── TooManyRequests (429, Retry-After)
├── RequestHeadersTooLarge (431)
├── BadGateway (502)
├── ServiceUnavailable (503, Retry-After)
│   └── PaymentProviderUnavailable (503, Retry-After)
└── GatewayTimeout (504)

`KeelsonError.for_status` gives the error for any other status (a Starlette
`HTTPException`'s): the class above when there is one, else the status's standard phrase
as title and the generic type.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from http import HTTPStatus
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Send

from keelson.logging import request_id_var

__all__ = [
    "PROBLEM_BASE",
    "PROBLEM_JSON",
    "BadGateway",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "GatewayTimeout",
    "IdempotencyConflict",
    "KeelsonError",
    "MethodNotAllowed",
    "NotAcceptable",
    "NotFound",
    "PayloadTooLarge",
    "PaymentDeclined",
    "PaymentInvalid",
    "PaymentProviderUnavailable",
    "PreconditionRequired",
    "RequestHeadersTooLarge",
    "RequestTimeout",
    "ServiceUnavailable",
    "TooManyRequests",
    "Unauthorized",
    "Unprocessable",
    "UnsupportedMediaType",
]

PROBLEM_BASE = "https://keelson.dev/problems/"
PROBLEM_JSON = "application/problem+json"
_PROBLEM_JSON_HEADER = (b"content-type", PROBLEM_JSON.encode())
# The class that answers each status, the first one declared for it (`for_status`).
_BY_STATUS: dict[int, type[KeelsonError]] = {}


class KeelsonError(Exception):
    """A domain error with an HTTP status; `detail` is shown to the client, so keep it safe.

    `headers` go out with the answer; `extensions` are further members of the problem body.
    """

    status: int = 500
    title: str = "Internal Server Error"
    slug: str = "internal"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "status" in cls.__dict__:
            _BY_STATUS.setdefault(cls.status, cls)

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = dict(headers or {})
        self.extensions = extensions

    @classmethod
    def for_status(
        cls,
        status: int,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> KeelsonError:
        """The error that answers `status`: its class's, or a generic one titled with the
        status's standard phrase."""
        known = _BY_STATUS.get(status)
        if known is not None:
            error = known.__new__(known)
            KeelsonError.__init__(error, detail, headers=headers)
            return error
        error = KeelsonError(None, headers=headers)
        error.status = status
        try:
            error.title = HTTPStatus(status).phrase
        except ValueError:
            error.title = "Error"
        error.slug = "error"
        error.detail = detail or error.title
        return error

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.slug

    def problem(self, instance: str | None = None) -> dict[str, Any]:
        """The RFC 9457 body: type, title, status, detail, then `instance`, the request id
        bound to the logging context, and the extensions."""
        body: dict[str, Any] = {
            "type": self.type_uri,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        if request_id := request_id_var.get():
            body["request_id"] = request_id
        body.update(self.extensions)
        return body

    def response(self, instance: str | None = None) -> Response:
        """The answer as a Starlette response, for an exception handler."""
        return Response(
            orjson.dumps(self.problem(instance)),
            status_code=self.status,
            headers=self.headers,
            media_type=PROBLEM_JSON,
        )

    def send_to(self, send: Send, instance: str | None = None) -> Awaitable[None]:
        """Answer with this error through an ASGI `send`, as `response` would."""
        body = orjson.dumps(self.problem(instance))
        headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()
        ]
        headers.append((b"content-length", b"%d" % len(body)))
        headers.append(_PROBLEM_JSON_HEADER)
        return _answer(send, self.status, headers, body)


_BY_STATUS[500] = KeelsonError


async def _answer(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BadRequest(KeelsonError):
    status, title, slug = 400, "Bad Request", "bad-request"


class Unauthorized(KeelsonError):
    """`challenge` is the WWW-Authenticate value (None: none, for a 401 that is about
    something other than the caller's credentials, which `headers` then explain)."""

    status, title, slug = 401, "Unauthorized", "unauthorized"

    def __init__(
        self,
        detail: str | None = None,
        *,
        challenge: str | None = "Bearer",
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        given = dict(headers or {})
        if challenge is not None:
            given["WWW-Authenticate"] = challenge
        super().__init__(detail, headers=given, **extensions)


class Forbidden(KeelsonError):
    status, title, slug = 403, "Forbidden", "forbidden"


class NotFound(KeelsonError):
    status, title, slug = 404, "Not Found", "not-found"


class MethodNotAllowed(KeelsonError):
    status, title, slug = 405, "Method Not Allowed", "method-not-allowed"


class NotAcceptable(KeelsonError):
    status, title, slug = 406, "Not Acceptable", "not-acceptable"


class RequestTimeout(KeelsonError):
    status, title, slug = 408, "Request Timeout", "request-timeout"


class Conflict(KeelsonError):
    status, title, slug = 409, "Conflict", "conflict"


class PayloadTooLarge(KeelsonError):
    status, title, slug = 413, "Payload Too Large", "payload-too-large"


class UnsupportedMediaType(KeelsonError):
    status, title, slug = 415, "Unsupported Media Type", "unsupported-media-type"


class Unprocessable(KeelsonError):
    status, title, slug = 422, "Unprocessable Content", "validation"


class _RetryAfter(KeelsonError):
    def __init__(
        self,
        detail: str | None = None,
        *,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        given = {"Retry-After": str(max(1, int(retry_after)))} if retry_after else {}
        super().__init__(detail, headers={**given, **(headers or {})}, **extensions)


class TooManyRequests(_RetryAfter):
    status, title, slug = 429, "Too Many Requests", "rate-limited"


class RequestHeadersTooLarge(KeelsonError):
    status, title, slug = 431, "Request Header Fields Too Large", "headers-too-large"


class BadGateway(KeelsonError):
    status, title, slug = 502, "Bad Gateway", "bad-gateway"


class ServiceUnavailable(_RetryAfter):
    status, title, slug = 503, "Service Unavailable", "unavailable"


class GatewayTimeout(KeelsonError):
    status, title, slug = 504, "Gateway Timeout", "gateway-timeout"


class PreconditionRequired(KeelsonError):
    status, title, slug = 428, "Precondition Required", "precondition-required"


class IdempotencyConflict(Conflict):
    """The Idempotency-Key was already used for a request with another body."""

    title, slug = "Idempotency Key Reused", "idempotency-conflict"


class PaymentDeclined(KeelsonError):
    """The card or payment method was declined; `decline_code` says why (issuer's code)."""

    status, title, slug = 402, "Payment Declined", "payment-declined"

    def __init__(self, detail: str | None = None, *, decline_code: str | None = None) -> None:
        super().__init__(detail, decline_code=decline_code or "generic_decline")
        self.decline_code = decline_code or "generic_decline"


class PaymentInvalid(BadRequest):
    """The payment provider refused the request as invalid."""

    title, slug = "Invalid Payment Request", "payment-invalid"


class PaymentProviderUnavailable(ServiceUnavailable):
    """The payment provider did not answer, or answered with a server error."""

    title, slug = "Payment Provider Unavailable", "payment-provider-unavailable"
