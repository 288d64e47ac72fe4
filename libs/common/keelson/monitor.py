"""Error monitoring on sentry-sdk when `SENTRY_DSN` is set; otherwise a no-op that logs."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from keelson.config import KeelsonSettings
from keelson.logging import redact_text, redact_value

__all__ = [
    "add_breadcrumb",
    "capture_exception",
    "enabled",
    "init_monitoring",
    "isolated_scope",
    "set_user",
    "trace",
]

_log = logging.getLogger("keelson.monitor")
_enabled = False


def init_monitoring(settings: KeelsonSettings) -> bool:
    """Start sentry-sdk if a DSN is configured; returns whether monitoring is on."""
    global _enabled
    if settings.sentry_dsn is None:
        _enabled = False
        return False
    # Imported only when on: the SDK and what it pulls in cost each process about 7 MB.
    import sentry_sdk

    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        environment=settings.env.value,
        server_name=settings.service,
        traces_sample_rate=settings.sentry_traces_sample_rate,
        before_send=_scrub,
        # Frame locals routinely hold passwords and tokens; the stack itself is enough.
        include_local_variables=False,
    )
    sentry_sdk.set_tag("service", settings.service)
    _enabled = True
    return True


def enabled() -> bool:
    """Whether events go to Sentry (a DSN was configured at start)."""
    return _enabled


_OFF: AbstractContextManager[None] = nullcontext()


def isolated_scope(*, trace_id: str | None = None, **tags: str) -> AbstractContextManager[None]:
    """One request's (or one background job's) monitoring state, its user and its
    breadcrumbs, kept apart from every other's, tagged with `tags`. Its events are tied to
    `trace_id`, the request's W3C trace id: the one its log records carry and the gateway
    propagates to the services (`traceparent`), so the events of every service one request
    went through land in one Sentry trace. Nothing (a shared no-op) when monitoring is off."""
    return _OFF if not _enabled else _isolated(trace_id, tags)


@contextmanager
def _isolated(trace_id: str | None, tags: dict[str, str]) -> Iterator[None]:
    import sentry_sdk

    with sentry_sdk.isolation_scope() as scope:
        for key, value in tags.items():
            scope.set_tag(key, value)
        if trace_id is not None:
            scope.set_tag("trace_id", trace_id)
            scope.set_context("trace", {"trace_id": trace_id, "span_id": secrets.token_hex(8)})
        yield


def _scrub(event: Any, hint: Any) -> Any:
    """Redact what leaves for Sentry: request parts, exception messages, log breadcrumbs."""
    request = event.get("request")
    if isinstance(request, dict):
        for key in ("headers", "cookies", "data"):
            if isinstance(request.get(key), dict):
                request[key] = redact_value("", request[key])
    for exception in (event.get("exception") or {}).get("values") or ():
        if isinstance(exception.get("value"), str):
            exception["value"] = redact_text(exception["value"])
    for crumb in (event.get("breadcrumbs") or {}).get("values") or ():
        if isinstance(crumb.get("message"), str):
            crumb["message"] = redact_text(crumb["message"])
        if isinstance(crumb.get("data"), dict):
            crumb["data"] = redact_value("", crumb["data"])
    logentry = event.get("logentry")
    if isinstance(logentry, dict) and isinstance(logentry.get("message"), str):
        logentry["message"] = redact_text(logentry["message"])
    return event


def capture_exception(exc: BaseException, *, context: dict[str, Any] | None = None) -> None:
    """Report `exc` with `context` (redacted) to Sentry, or log it when monitoring is off."""
    safe = {key: redact_value(key, value) for key, value in (context or {}).items()}
    if _enabled:
        import sentry_sdk

        with sentry_sdk.new_scope() as scope:
            for key, value in safe.items():
                scope.set_extra(key, value)
            sentry_sdk.capture_exception(exc)
    else:
        _log.debug("exception captured (monitoring off): %r context=%s", exc, safe)


def set_user(user_id: str | None) -> None:
    """Attach the user id (never an email or name) to later events."""
    if _enabled:
        import sentry_sdk

        sentry_sdk.set_user({"id": user_id} if user_id else None)


def add_breadcrumb(message: str, *, category: str = "keelson", **data: Any) -> None:
    """Record a step that later events carry (redacted before they are sent)."""
    if _enabled:
        import sentry_sdk

        sentry_sdk.add_breadcrumb(message=message, category=category, data=data)
    elif _log.isEnabledFor(logging.DEBUG):
        _log.debug("breadcrumb %s: %s %s", category, message, redact_value("", data))


@contextmanager
def trace(name: str, *, op: str = "function") -> Iterator[None]:
    """A performance span when monitoring is on; nothing otherwise."""
    if not _enabled:
        yield
        return
    import sentry_sdk

    with sentry_sdk.start_span(op=op, name=name):
        yield
