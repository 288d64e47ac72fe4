"""Stripe's webhook deliveries answered by a pure ASGI layer in front of FastAPI's stack.

The webhook is the service's hot path (every provider event of every payment), and its
work is small: read the raw body, verify the signature, hand the event to the group
commit, answer a fixed JSON body. Routed through FastAPI, the routing, dependency solving,
exception middleware and response model cost about as much CPU again as that work
(docs/benchmarks.md, "Payments"), so `StripeWebhookEndpoint` answers `POST` on
`WEBHOOK_PATH` itself and passes every other request on to the app. It sits where
`keelson.http.create_app` puts a front: behind `ServiceMiddleware` (request id, access
record, metrics, security headers) and `CancelOnDisconnect`, as the route did.
The FastAPI route (`api/webhooks.py`) stays the operation's OpenAPI declaration; its
handler shares `receive_event` with this layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from keelson.errors import BadRequest, KeelsonError, PayloadTooLarge
from keelson.payment import PaymentProvider
from keelson.plugins import PluginContainer
from payments_service.group_commit import GroupCommit
from payments_service.metrics import WEBHOOK_EVENTS
from payments_service.plugin import GROUP_COMMIT, PAYMENT_PROVIDER
from payments_service.settings import Settings
from payments_service.webhooks import Outcome

__all__ = ["WEBHOOK_PATH", "StripeWebhookEndpoint", "receive_event"]

WEBHOOK_PATH = "/api/v1/payments/webhooks/stripe"
_SIGNATURE = b"stripe-signature"
# The answer for each outcome, encoded once: `{"received": true, "outcome": ...}`.
_ANSWERS = {
    outcome: b'{"received":true,"outcome":"%s"}' % outcome.value.encode() for outcome in Outcome
}
_JSON = (b"content-type", b"application/json")


async def receive_event(
    provider: PaymentProvider, events: GroupCommit, payload: bytes, signature: str | None
) -> Outcome:
    """Verify a delivery and apply its event; the outcome once its transaction committed.

    `BadRequest` for a bad or stale signature (counted as rejected).
    """
    try:
        event = provider.verify_webhook(payload, signature)
    except BadRequest:
        WEBHOOK_EVENTS.labels("unverified", "rejected").inc()
        raise
    # Applied with the events of concurrent requests, answered after their commit.
    return await events.apply(event, source="webhook")


def answer_body(outcome: Outcome) -> bytes:
    """The JSON body of a 200 for `outcome`."""
    return _ANSWERS[outcome]


@dataclass(frozen=True, slots=True)
class _Route:
    """What `scope["route"]` names for the access record and the request metrics."""

    path: str


class StripeWebhookEndpoint:
    """Answers `POST WEBHOOK_PATH`; everything else goes on to `app`."""

    def __init__(self, app: ASGIApp, *, container: PluginContainer) -> None:
        settings = container.settings
        assert isinstance(settings, Settings)
        self.app = app
        self.container = container
        self.max_body = settings.payments.max_webhook_bytes
        self.route = _Route(WEBHOOK_PATH)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != WEBHOOK_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        signature = None
        for name, value in scope["headers"]:
            if name == _SIGNATURE:
                signature = value.decode("latin-1")
        try:
            payload = await _raw_body(receive, self.max_body)
            outcome = await receive_event(
                self.container.resolve(PAYMENT_PROVIDER),
                self.container.resolve(GROUP_COMMIT),
                payload,
                signature,
            )
        except KeelsonError as error:
            await error.send_to(send, WEBHOOK_PATH)
            return
        body = _ANSWERS[outcome]
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [_JSON, (b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def _raw_body(receive: Receive, limit: int) -> bytes:
    """The body exactly as sent (the signature covers its bytes), at most `limit` of them."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"a webhook body is at most {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
