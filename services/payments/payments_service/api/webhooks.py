"""The Stripe webhook endpoint: public, verified by signature, applied once.

`StripeWebhookEndpoint` (`payments_service.webhook_endpoint`) answers these POSTs in front
of FastAPI's stack, so in the service's app this handler is not reached: the route declares
the operation in the OpenAPI document (where the gateway's validation and the route-policy
test read it), and its handler, on the same `receive_event`, serves an app that includes
`payments_service.api.routers` without that layer.
"""

from __future__ import annotations

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel

from keelson.auth import PUBLIC
from keelson.errors import PayloadTooLarge
from payments_service.deps import Config, Events, Provider
from payments_service.webhook_endpoint import WEBHOOK_PATH, receive_event

__all__ = ["router"]

router = APIRouter(prefix=WEBHOOK_PATH.removesuffix("/stripe"), tags=["webhooks"])


class WebhookAnswer(BaseModel):
    received: bool
    outcome: str


async def _raw_body(request: Request, limit: int) -> bytes:
    """The body exactly as sent (the signature covers its bytes), at most `limit` of them."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"a webhook body is at most {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# Stripe signs its webhooks and sends no bearer token: the signature is the check.
@router.post("/stripe", openapi_extra=PUBLIC)
async def receive_stripe_webhook(
    request: Request,
    events: Events,
    provider: Provider,
    config: Config,
    stripe_signature: str | None = Header(None, alias="Stripe-Signature"),
) -> WebhookAnswer:
    """400 for a bad or stale signature; 200 for an event applied now or before."""
    payload = await _raw_body(request, config.max_webhook_bytes)
    outcome = await receive_event(provider, events, payload, stripe_signature)
    return WebhookAnswer(received=True, outcome=outcome.value)
