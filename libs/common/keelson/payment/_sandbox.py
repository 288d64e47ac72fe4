"""`SandboxProvider`: Stripe's objects kept in the service's own database, for test mode.

Ids start with `sandbox_` and every object says `"livemode": false, "sandbox": true`, so a
sandbox payment can never be taken for a real one. Nothing leaves the process: a payment
succeeds or fails when someone calls `complete_intent`, which answers the webhook event
Stripe would have sent.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keelson.errors import NotFound, PaymentInvalid
from keelson.payment._provider import (
    ProviderBase,
    ProviderCustomer,
    ProviderEvent,
    ProviderIntent,
    ProviderRefund,
    check_replay,
    request_digest,
)

__all__ = ["SANDBOX_PREFIX", "SandboxProvider", "create_sandbox_tables", "drop_sandbox_tables"]

SANDBOX_PREFIX = "sandbox_"
_TABLE = "sandbox_objects"
_CANCELABLE = {"requires_payment_method", "requires_confirmation", "requires_action"}


def _columns() -> list[Any]:
    return [
        Column("id", String(64), primary_key=True),
        Column("kind", String(32), nullable=False),
        Column("idempotency_key", String(300), nullable=True),
        Column("request_hash", String(64), nullable=True),
        Column("body", JSONB, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        UniqueConstraint("kind", "idempotency_key", name="uq_sandbox_objects_key"),
    ]


_OBJECTS = Table(_TABLE, MetaData(), *_columns())


def create_sandbox_tables(schema: str) -> None:
    """Alembic `upgrade()` body: the sandbox's one table in `schema`."""
    from alembic import op

    op.create_table(_TABLE, *_columns(), schema=schema)


def drop_sandbox_tables(schema: str) -> None:
    from alembic import op

    op.drop_table(_TABLE, schema=schema)


def _new_id(kind: str) -> str:
    return f"{SANDBOX_PREFIX}{kind}_{secrets.token_hex(12)}"


def _intent(body: Mapping[str, Any]) -> ProviderIntent:
    return ProviderIntent.from_object(body)


class SandboxProvider(ProviderBase):
    """The provider protocol on a table in the caller's schema (through its search path)."""

    name = "sandbox"
    sandbox = True

    def __init__(self, engine: AsyncEngine, *, webhook_secret: str, webhook_tolerance: int = 300):
        super().__init__(webhook_secret=webhook_secret, webhook_tolerance=webhook_tolerance)
        self._engine = engine

    @staticmethod
    async def _replayed(
        conn: AsyncConnection, kind: str, idempotency_key: str, digest: str
    ) -> dict[str, Any] | None:
        """The object first made under `idempotency_key`, if any (its parameters checked)."""
        first = (
            await conn.execute(
                select(_OBJECTS.c.body, _OBJECTS.c.request_hash).where(
                    _OBJECTS.c.kind == kind, _OBJECTS.c.idempotency_key == idempotency_key
                )
            )
        ).first()
        if first is None:
            return None
        check_replay(first.request_hash, digest)
        return dict(first.body)

    async def _create(
        self, kind: str, idempotency_key: str, params: Mapping[str, Any], body: dict[str, Any]
    ) -> dict[str, Any]:
        digest = request_digest(params)
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    insert(_OBJECTS)
                    .values(
                        id=body["id"],
                        kind=kind,
                        idempotency_key=idempotency_key,
                        request_hash=digest,
                        body=body,
                    )
                    .on_conflict_do_nothing(index_elements=["kind", "idempotency_key"])
                    .returning(_OBJECTS.c.body)
                )
            ).first()
            if row is not None:
                return dict(row.body)
            first = await self._replayed(conn, kind, idempotency_key, digest)
        assert first is not None  # the INSERT met it
        return first

    async def create_customer(
        self, *, email: str | None, metadata: Mapping[str, str], idempotency_key: str
    ) -> ProviderCustomer:
        params = {"email": email, "metadata": dict(metadata)}
        body = {
            "id": _new_id("cus"),
            "object": "customer",
            "created": int(time.time()),
            "livemode": False,
            "sandbox": True,
            **params,
        }
        stored = await self._call(
            "create_customer",
            lambda: self._create("customer", idempotency_key, params, body),
        )
        return ProviderCustomer(id=stored["id"], email=stored["email"], livemode=False)

    async def create_intent(
        self,
        *,
        amount: int,
        currency: str,
        customer: str | None,
        description: str | None,
        metadata: Mapping[str, str],
        idempotency_key: str,
    ) -> ProviderIntent:
        params = {
            "amount": amount,
            "currency": currency.lower(),
            "customer": customer,
            "description": description,
            "metadata": dict(metadata),
        }
        intent_id = _new_id("pi")
        body = {
            "id": intent_id,
            "object": "payment_intent",
            "status": "requires_payment_method",
            "client_secret": f"{intent_id}_secret_{secrets.token_hex(12)}",
            "created": int(time.time()),
            "amount_received": 0,
            "amount_refunded": 0,
            "last_payment_error": None,
            "livemode": False,
            "sandbox": True,
            **params,
        }
        stored = await self._call(
            "create_intent",
            lambda: self._create("payment_intent", idempotency_key, params, body),
        )
        return _intent(stored)

    async def _locked(self, conn: AsyncConnection, intent_id: str) -> dict[str, Any]:
        row = (
            await conn.execute(
                select(_OBJECTS.c.body)
                .where(_OBJECTS.c.id == intent_id, _OBJECTS.c.kind == "payment_intent")
                .with_for_update()
            )
        ).first()
        if row is None:
            raise NotFound("no such sandbox payment intent")
        return dict(row.body)

    @staticmethod
    async def _save(conn: AsyncConnection, body: dict[str, Any]) -> None:
        await conn.execute(update(_OBJECTS).where(_OBJECTS.c.id == body["id"]).values(body=body))

    async def retrieve_intent(self, intent_id: str) -> ProviderIntent:
        async def retrieve() -> ProviderIntent:
            async with self._engine.connect() as conn:
                row = (
                    await conn.execute(
                        select(_OBJECTS.c.body).where(
                            _OBJECTS.c.id == intent_id, _OBJECTS.c.kind == "payment_intent"
                        )
                    )
                ).first()
            if row is None:
                raise NotFound("no such sandbox payment intent")
            return _intent(row.body)

        return await self._call("retrieve_intent", retrieve)

    async def cancel_intent(self, intent_id: str, *, idempotency_key: str) -> ProviderIntent:
        async def cancel() -> ProviderIntent:
            async with self._engine.begin() as conn:
                body = await self._locked(conn, intent_id)
                if body["status"] == "canceled":
                    return _intent(body)
                if body["status"] not in _CANCELABLE:
                    raise PaymentInvalid(
                        f"a payment intent in status {body['status']} can't be canceled"
                    )
                body["status"] = "canceled"
                body["canceled_at"] = int(time.time())
                await self._save(conn, body)
            return _intent(body)

        return await self._call("cancel_intent", cancel)

    async def create_refund(
        self,
        *,
        intent_id: str,
        amount: int,
        reason: str | None,
        metadata: Mapping[str, str],
        idempotency_key: str,
    ) -> ProviderRefund:
        params = {
            "payment_intent": intent_id,
            "amount": amount,
            "reason": reason,
            "metadata": dict(metadata),
        }

        async def refund() -> dict[str, Any]:
            async with self._engine.begin() as conn:
                intent = await self._locked(conn, intent_id)  # refunds of one intent in turn
                digest = request_digest(params)
                first = await self._replayed(conn, "refund", idempotency_key, digest)
                if first is not None:
                    return first
                if intent["status"] != "succeeded":
                    raise PaymentInvalid("only a succeeded payment can be refunded")
                if intent["amount_refunded"] + amount > intent["amount_received"]:
                    raise PaymentInvalid("the refund exceeds the amount left to refund")
                body = {
                    "id": _new_id("re"),
                    "object": "refund",
                    "status": "succeeded",
                    "currency": intent["currency"],
                    "created": int(time.time()),
                    "livemode": False,
                    "sandbox": True,
                    **params,
                }
                await conn.execute(
                    insert(_OBJECTS).values(
                        id=body["id"],
                        kind="refund",
                        idempotency_key=idempotency_key,
                        request_hash=digest,
                        body=body,
                    )
                )
                intent["amount_refunded"] += amount
                await self._save(conn, intent)
            return body

        body = await self._call("create_refund", refund)
        return ProviderRefund(
            id=body["id"],
            payment_intent=intent_id,
            amount=int(body["amount"]),
            currency=body["currency"],
            status=body["status"],
            livemode=False,
        )

    async def list_intents(self, *, since: int, limit: int) -> list[ProviderIntent]:
        async def listed() -> list[ProviderIntent]:
            async with self._engine.connect() as conn:
                rows = await conn.execute(
                    select(_OBJECTS.c.body)
                    .where(
                        _OBJECTS.c.kind == "payment_intent",
                        _OBJECTS.c.body["created"].as_integer() >= since,
                    )
                    .order_by(_OBJECTS.c.created_at.desc())
                    .limit(limit)
                )
                return [_intent(row.body) for row in rows]

        return await self._call("list_intents", listed)

    async def complete_intent(
        self, intent_id: str, *, succeed: bool, decline_code: str = "generic_decline"
    ) -> ProviderEvent:
        """Pay (or decline) a sandbox intent; answers the webhook event Stripe would send."""
        async with self._engine.begin() as conn:
            body = await self._locked(conn, intent_id)
            if body["status"] not in ("requires_payment_method", "processing"):
                raise PaymentInvalid(f"a payment intent in status {body['status']} can't be paid")
            if succeed:
                body.update(
                    status="succeeded", amount_received=body["amount"], last_payment_error=None
                )
            else:
                body.update(
                    status="requires_payment_method",
                    last_payment_error={"code": "card_declined", "decline_code": decline_code},
                )
            await self._save(conn, body)
            # The event's time is the database's, as every replica's clock may differ.
            created = (
                await conn.execute(text("SELECT floor(extract(epoch FROM now()))::bigint"))
            ).scalar_one()
        kind = "succeeded" if succeed else "payment_failed"
        return ProviderEvent(
            id=_new_id("evt"),
            type=f"payment_intent.{kind}",
            created=int(created),
            object=body,
            livemode=False,
        )

    async def aclose(self) -> None:
        """Nothing to close: the engine belongs to the caller."""
