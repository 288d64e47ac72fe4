"""The exception hierarchy that `keelson.http` renders as RFC 9457 problem details.

KeelsonError (500)
├── BadRequest (400)
│   └── PaymentInvalid (400, a payment provider refused the request)
├── Unauthorized (401)
├── PaymentDeclined (402, decline_code)
├── Forbidden (403)
├── NotFound (404)
├── Conflict (409)
│   └── IdempotencyConflict (409, an Idempotency-Key reused with another request)
├── PayloadTooLarge (413)
├── UnsupportedMediaType (415)
├── Unprocessable (422)
├── PreconditionRequired (428)
├── TooManyRequests (429, Retry-After)
├── BadGateway (502)
├── ServiceUnavailable (503, Retry-After)
│   └── PaymentProviderUnavailable (503, Retry-After)
└── GatewayTimeout (504)
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BadGateway",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "GatewayTimeout",
    "IdempotencyConflict",
    "KeelsonError",
    "NotFound",
    "PayloadTooLarge",
    "PaymentDeclined",
    "PaymentInvalid",
    "PaymentProviderUnavailable",
    "PreconditionRequired",
    "ServiceUnavailable",
    "TooManyRequests",
    "Unauthorized",
    "Unprocessable",
    "UnsupportedMediaType",
]

PROBLEM_BASE = "https://keelson.dev/problems/"


class KeelsonError(Exception):
    """A domain error with an HTTP status; `detail` is shown to the client, so keep it safe."""

    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal Server Error"
    slug: ClassVar[str] = "internal"

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = dict(headers or {})
        self.extensions = extensions

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.slug

    def problem(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.type_uri,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extensions)
        return body


class BadRequest(KeelsonError):
    status, title, slug = 400, "Bad Request", "bad-request"


class Unauthorized(KeelsonError):
    status, title, slug = 401, "Unauthorized", "unauthorized"

    def __init__(self, detail: str | None = None, **extensions: Any) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"}, **extensions)


class Forbidden(KeelsonError):
    status, title, slug = 403, "Forbidden", "forbidden"


class NotFound(KeelsonError):
    status, title, slug = 404, "Not Found", "not-found"


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
        self, detail: str | None = None, *, retry_after: int | None = None, **extensions: Any
    ) -> None:
        headers = {"Retry-After": str(max(1, int(retry_after)))} if retry_after else None
        super().__init__(detail, headers=headers, **extensions)


class TooManyRequests(_RetryAfter):
    status, title, slug = 429, "Too Many Requests", "rate-limited"


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
