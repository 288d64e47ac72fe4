"""Reconciliation repairs missed webhooks; one replica at a time runs it (advisory lock)."""

from collections.abc import Callable

import httpx
from fastapi import FastAPI
from payments_testkit import new_intent
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from keelson.payment import SandboxProvider
from keelson_dev.testing import eventually
from payments_service.app import create_app
from payments_service.plugin import PAYMENT_PROVIDER, RECONCILER
from payments_service.reconcile import RECONCILE_LOCK
from payments_service.settings import PaymentsSettings


async def test_a_missed_webhook_is_repaired(
    client: httpx.AsyncClient, user: Callable, payments_app: FastAPI, outbox: Callable
) -> None:
    me, admin = user(), user("admin")
    intent = await new_intent(client, me, 5100)
    sandbox = payments_app.state.container.resolve(PAYMENT_PROVIDER)
    assert isinstance(sandbox, SandboxProvider)
    await sandbox.complete_intent(intent["provider_id"], succeed=True)  # its event is lost
    before = REGISTRY.get_sample_value("payments_reconcile_repairs_total") or 0.0
    repaired = await payments_app.state.container.resolve(RECONCILER).reconcile_once()
    assert repaired is not None and repaired >= 1
    assert REGISTRY.get_sample_value("payments_reconcile_repairs_total") >= before + 1
    state = (await client.get(f"/api/v1/payments/intents/{intent['id']}", headers=me)).json()
    assert (state["status"], state["amount_received"]) == ("succeeded", 5100)
    ledger = (
        await client.get(f"/api/v1/payments/intents/{intent['id']}/events", headers=admin)
    ).json()
    assert ledger[-1]["source"] == "reconciliation" and ledger[-1]["to_status"] == "succeeded"
    assert len(await outbox("payments.payment_succeeded", intent["id"])) == 1
    assert await payments_app.state.container.resolve(RECONCILER).reconcile_once() == 0


async def test_only_the_lock_holder_reconciles(
    payments_app: FastAPI, payments_engine: AsyncEngine
) -> None:
    reconciler = payments_app.state.container.resolve(RECONCILER)
    async with payments_engine.begin() as other_replica:
        await other_replica.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:lock))"), {"lock": RECONCILE_LOCK}
        )
        assert await reconciler.reconcile_once() is None
    assert await reconciler.reconcile_once() is not None


async def test_the_service_runs_passes_in_the_background(
    payments_settings_factory: Callable,
) -> None:
    settings = payments_settings_factory(payments=PaymentsSettings(reconcile_interval_seconds=0.05))
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        reconciler = app.state.container.resolve(RECONCILER)
        await eventually(lambda: reconciler.passes >= 2)
        assert reconciler.last_error is None
