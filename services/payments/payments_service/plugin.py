"""The payments service's plugin: the provider chosen at start, reconciliation, group commit."""

from __future__ import annotations

from keelson.db import DB_ENGINE, DB_SESSIONS, create_engine, schema_for
from keelson.payment import PaymentProvider, create_provider
from keelson.plugins import Health, Key, Plugin, PluginMetadata, Priority
from payments_service.group_commit import GroupCommit
from payments_service.metrics import IntentCounter
from payments_service.reconcile import Reconciler
from payments_service.settings import Settings

__all__ = ["GROUP_COMMIT", "INTENT_COUNTER", "PAYMENT_PROVIDER", "RECONCILER", "PaymentsPlugin"]

PAYMENT_PROVIDER: Key[PaymentProvider] = Key("payments.provider")
RECONCILER: Key[Reconciler] = Key("payments.reconciler")
INTENT_COUNTER: Key[IntentCounter] = Key("payments.intent_counter")
GROUP_COMMIT: Key[GroupCommit] = Key("payments.group_commit")


class PaymentsPlugin(Plugin):
    """Stripe when `KEELSON_STRIPE_API_KEY` is set, the in-database sandbox otherwise."""

    metadata = PluginMetadata(
        name="payments",
        priority=Priority.BUSINESS,
        depends_on=("database",),
        description="Payment provider and reconciliation",
    )

    async def initialize(self) -> None:
        settings = self.container.settings
        assert isinstance(settings, Settings)
        # The sandbox's own pool: intents are created at the provider while the request
        # holds a connection of the service's pool (and an idempotency lock in it).
        self.sandbox_engine = (
            None
            if settings.payment.stripe_enabled
            else create_engine(settings, schema=schema_for(settings.service))
        )
        self.provider = create_provider(settings.payment, engine=self.sandbox_engine)
        sessions = self.container.resolve(DB_SESSIONS)
        self.reconciler = Reconciler(sessions, self.provider, settings.payments)
        self.counter = IntentCounter(sessions, settings.payments.intent_count_interval_seconds)
        self.container.provide(PAYMENT_PROVIDER, self.provider)
        self.container.provide(RECONCILER, self.reconciler)
        self.group_commit = GroupCommit(
            self.container.resolve(DB_ENGINE),
            sessions,
            max_batch=settings.payments.webhook_batch_max,
        )
        self.container.provide(INTENT_COUNTER, self.counter)
        self.container.provide(GROUP_COMMIT, self.group_commit)

    async def start(self) -> None:
        self.reconciler.start()
        self.counter.start()

    async def stop(self) -> None:
        await self.group_commit.stop()
        await self.counter.stop()
        await self.reconciler.stop()
        await self.provider.aclose()
        if self.sandbox_engine is not None:
            await self.sandbox_engine.dispose()

    async def health(self) -> Health:
        mode = "sandbox (test mode)" if self.provider.sandbox else "stripe"
        if self.reconciler.last_error:
            return Health(ok=False, detail=f"{mode}; {self.reconciler.last_error}", critical=False)
        return Health(ok=True, detail=mode)
