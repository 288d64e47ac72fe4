"""Locust scenarios against the gateway. `make load` runs them through loadtests/run.py,
which provisions the accounts and their tokens before the clock starts, picks a scenario,
writes the reports and judges the error rate; by hand:

    locust -f loadtests/locustfile.py --headless -u 50 -r 10 -t 60s --host http://127.0.0.1:8000

Scenarios (user classes; run.py names them): `mixed` = account holders (/me, refresh, log
out and in), payers (a payment, paid in the sandbox by the admin, and its refund),
notification senders (an email to themselves, its retry, reading it back), operators (an
admin querying and tailing logs, reading plugin states) and probes (health); `payments` and
`notifications` = the payers or the senders alone (Locust's `--tags payments
notifications logs tail` pick tasks across the classes); `rate-limit` = RateLimitUser, the only
one for which a 429 is an expected answer (reported as `... [429]`, not a failure).
Anywhere else a 429 is a failure: run the mixed scenario against `make up-load`
(loadtests/profile/keelson.yaml lifts the per-client limits). What the gateway offers is
read from its merged OpenAPI document (again every 30 s): a scenario whose endpoint is not
there is left out, so the file runs against a suite still being built.

Environment: KEELSON_LOAD_ACCOUNTS (a JSON file of provisioned accounts and the admin's
token, written by run.py; without it each user registers and logs in as it starts),
KEELSON_LOAD_ADMIN_EMAIL / KEELSON_LOAD_ADMIN_PASSWORD (an admin, when no file names
one), KEELSON_LOAD_PASSWORD (the users' password).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from locust import HttpUser, between, constant_pacing, tag, task
from locust.clients import ResponseContextManager
from locust.exception import StopUser

__all__ = [
    "AccountUser",
    "AdminUser",
    "Api",
    "HealthUser",
    "NotificationUser",
    "PaymentUser",
    "RateLimitUser",
    "discover",
]

ADMIN_EMAIL = os.environ.get("KEELSON_LOAD_ADMIN_EMAIL", "admin@example.com")
ADMIN_PASSWORD = os.environ.get(
    "KEELSON_LOAD_ADMIN_PASSWORD", "keelson-compose-operator-pw-change-me"
)
USER_PASSWORD = os.environ.get("KEELSON_LOAD_PASSWORD", "load-test-password-0123")


def _provisioned() -> dict[str, Any]:
    """run.py's accounts file: {"accounts": [{email, access_token, refresh_token}], "admin"}."""
    path = os.environ.get("KEELSON_LOAD_ACCOUNTS")
    if not path:
        return {}
    with open(path) as source:
        loaded: dict[str, Any] = json.load(source)
    return loaded


_PROVISIONED = _provisioned()
_accounts = itertools.cycle(_PROVISIONED.get("accounts") or [None])
_accounts_lock = threading.Lock()


def _next_account() -> dict[str, str] | None:
    with _accounts_lock:
        account: dict[str, str] | None = next(_accounts)
        return account


AUTH = "/api/v1/auth"
PAYMENTS = "/api/v1/payments"
SANDBOX = f"{PAYMENTS}/sandbox/intents"
NOTIFICATIONS = "/api/v1/notifications"
TAIL_SECONDS = 2.0
# Where a payment may be created, in order of preference; the first the gateway serves wins.
_PAYMENT_COLLECTIONS = (f"{PAYMENTS}/intents", f"{PAYMENTS}/payment-intents", PAYMENTS)


@dataclass(frozen=True)
class Api:
    """The operations (`"POST /path/{id}"`) the gateway's OpenAPI document lists."""

    operations: frozenset[str]

    def has(self, method: str, path: str) -> bool:
        return f"{method.upper()} {path}" in self.operations

    def item_path(self, collection: str) -> str | None:
        """`collection/{x}` as the document spells the parameter, if it is there."""
        prefix = f"GET {collection}/{{"
        for operation in sorted(self.operations):
            if operation.startswith(prefix) and operation.count("/") == prefix.count("/"):
                return operation.split(" ", 1)[1]
        return None

    def payment_collection(self) -> str | None:
        return next((c for c in _PAYMENT_COLLECTIONS if self.has("POST", c)), None)

    def refund_path(self, item: str) -> str | None:
        for path in (f"{item}/refunds", f"{item}/refund", f"{PAYMENTS}/refunds"):
            if self.has("POST", path):
                return path
        return None


def discover(document: dict[str, Any]) -> Api:
    """The operations of an OpenAPI document."""
    operations = {
        f"{method.upper()} {path}"
        for path, item in (document.get("paths") or {}).items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }
    return Api(frozenset(operations))


_API_MAX_AGE_SECONDS = 30.0
_api: Api | None = None
_api_read_at = 0.0
_api_lock = threading.Lock()


def _gateway_api(user: HttpUser) -> Api:
    """Re-read every 30 s, as upstreams join the gateway's merged document while a run goes."""
    global _api, _api_read_at
    with _api_lock:
        if _api is None or time.monotonic() - _api_read_at > _API_MAX_AGE_SECONDS:
            _api_read_at = time.monotonic()
            with user.client.get(
                "/openapi.json", name="setup: openapi", catch_response=True
            ) as response:
                if response.status_code == 200:
                    _api = discover(response.json())
                else:
                    response.failure(f"no OpenAPI document ({response.status_code})")
                    _api = _api or Api(frozenset())
        return _api


def _settle(
    response: ResponseContextManager, expected: Iterable[int], *, limited_ok: bool = False
) -> bool:
    """Mark the outcome; True when the status was one of `expected`. A 429 is a failure
    unless the scenario expects it (`limited_ok`), then counted apart as `... [429]`."""
    status = response.status_code
    if status in expected:
        response.success()
        return True
    if status == 429 and limited_ok:
        response.request_meta["name"] = f"{response.request_meta['name']} [429]"
        response.success()
        return False
    detail = response.text[:200] if response.text else ""
    response.failure(f"{status}: {detail}")
    return False


def _idempotency_key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


class _Authenticated(HttpUser):
    """A user with a token pair: a provisioned account (refreshed, never re-created), or
    without run.py's file a fresh account it registers and logs in to."""

    abstract = True
    access_token: str | None = None
    refresh_token: str | None = None

    @property
    def api(self) -> Api:
        return _gateway_api(self)

    def on_start(self) -> None:
        account = _next_account()
        if account is not None:
            self.email = account["email"]
            self.access_token = account["access_token"]
            self.refresh_token = account["refresh_token"]
            return
        if not (self.api.has("POST", f"{AUTH}/register") and self.api.has("POST", f"{AUTH}/login")):
            raise StopUser
        self.email = f"load-{uuid.uuid4().hex[:16]}@example.com"
        self.register()
        self.log_in()

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"} if self.access_token else {}

    def register(self) -> None:
        body = {"email": self.email, "password": USER_PASSWORD, "name": "Load Test"}
        with self.client.post(f"{AUTH}/register", json=body, catch_response=True) as response:
            _settle(response, {202})  # the same answer whether or not the email is taken

    def log_in(self, email: str | None = None, password: str = USER_PASSWORD) -> None:
        body = {"email": email or self.email, "password": password}
        with self.client.post(f"{AUTH}/login", json=body, catch_response=True) as response:
            if _settle(response, {200}):
                tokens = response.json()
                self.access_token = tokens["access_token"]
                self.refresh_token = tokens["refresh_token"]


class AccountUser(_Authenticated):
    """Registers, logs in, reads /me, refreshes its tokens, sometimes logs out and back in."""

    weight = 6
    wait_time = between(0.5, 2)

    @task(6)
    def read_me(self) -> None:
        if self.access_token is None:
            self.log_in()
            return
        with self.client.get(
            f"{AUTH}/me", headers=self.auth_headers(), catch_response=True
        ) as response:
            if _settle(response, {200}) and response.json().get("email") != self.email:
                response.failure("/me answered with another account")

    @task(2)
    def refresh(self) -> None:
        if self.refresh_token is None or not self.api.has("POST", f"{AUTH}/refresh"):
            return
        body = {"refresh_token": self.refresh_token}
        with self.client.post(f"{AUTH}/refresh", json=body, catch_response=True) as response:
            if _settle(response, {200}):
                tokens = response.json()
                self.access_token = tokens["access_token"]
                self.refresh_token = tokens["refresh_token"]

    @task(1)
    def log_out_and_in(self) -> None:
        if self.access_token is None or not self.api.has("POST", f"{AUTH}/logout"):
            return
        with self.client.post(
            f"{AUTH}/logout", headers=self.auth_headers(), catch_response=True
        ) as response:
            _settle(response, {204})
        self.access_token = self.refresh_token = None
        self.log_in()


def _provisioned_admin_token() -> str | None:
    """The admin's token run.py provisioned; none without its file (no login is tried)."""
    admin = _PROVISIONED.get("admin")
    return str(admin["access_token"]) if admin else None


class PaymentUser(_Authenticated):
    """Pays (an intent with an idempotency key), has it paid in the sandbox, reads it back
    and refunds it."""

    weight = 2
    wait_time = between(1, 3)

    @tag("payments")
    @task
    def pay_and_refund(self) -> None:
        collection = self.api.payment_collection()
        if collection is None or self.access_token is None:
            return
        body = {"amount": 1999, "currency": "usd", "description": "load test"}
        headers = {**self.auth_headers(), **_idempotency_key()}
        with self.client.post(
            collection,
            json=body,
            headers=headers,
            name=f"{collection} (create)",
            catch_response=True,
        ) as response:
            if not _settle(response, {200, 201}):
                return
            payment_id = response.json().get("id")
        item = self.api.item_path(collection)
        if item is None or payment_id is None:
            return
        path = item.replace(item[item.rindex("{") :], str(payment_id))
        self.pay_in_the_sandbox(str(payment_id))
        with self.client.get(
            path, headers=self.auth_headers(), name=item, catch_response=True
        ) as response:
            if not _settle(response, {200}):
                return
            # Only a paid payment can be refunded.
            paid = response.json().get("status") == "succeeded"
        refund = self.api.refund_path(item)
        if refund is None or not paid:
            return
        target = refund.replace(item, path)
        refund_body = {"amount": 1999}
        with self.client.post(
            target,
            json=refund_body,
            headers={**self.auth_headers(), **_idempotency_key()},
            name=refund,
            catch_response=True,
        ) as response:
            _settle(response, {200, 201, 202})

    def pay_in_the_sandbox(self, payment_id: str) -> None:
        """In test mode no card is charged: an admin marks the intent paid, as the
        provider's webhook would. Left out without a provisioned admin or a sandbox."""
        admin = _provisioned_admin_token()
        succeed = f"{SANDBOX}/{{intent_id}}/succeed"
        if admin is None or not self.api.has("POST", succeed):
            return
        with self.client.post(
            succeed.replace("{intent_id}", payment_id),
            headers={"Authorization": f"Bearer {admin}"},
            name=f"{succeed} (admin)",
            catch_response=True,
        ) as response:
            _settle(response, {200})


class NotificationUser(_Authenticated):
    """Sends itself an email (with an idempotency key, retried once with the same key) and
    reads it back, as an app mailing its own user does."""

    weight = 1
    wait_time = between(1, 3)

    @tag("notifications")
    @task
    def send_and_read(self) -> None:
        if self.access_token is None or not self.api.has("POST", NOTIFICATIONS):
            return
        body = {
            "channel": "email",
            "to": self.email,
            "subject": "Your receipt",
            "body": "Thank you for your order.",
            "idempotency_key": uuid.uuid4().hex,
        }
        with self.client.post(
            NOTIFICATIONS, json=body, headers=self.auth_headers(), catch_response=True
        ) as response:
            if not _settle(response, {202}):
                return
            notification = response.json()["id"]
        # A client retrying after a timeout: the same notification, not a second email.
        with self.client.post(
            NOTIFICATIONS,
            json=body,
            headers=self.auth_headers(),
            name=f"{NOTIFICATIONS} (retried)",
            catch_response=True,
        ) as response:
            if _settle(response, {200, 202}) and response.json()["id"] != notification:
                response.failure("a retried request queued a second notification")
        item = f"{NOTIFICATIONS}/{{notification_id}}"
        if not self.api.has("GET", item):
            return
        with self.client.get(
            item.replace("{notification_id}", notification),
            headers=self.auth_headers(),
            name=item,
            catch_response=True,
        ) as response:
            _settle(response, {200})


class AdminUser(HttpUser):
    """An operator: searches and tails the logs, reads log stats, plugin states and the
    user list."""

    weight = 1
    wait_time = between(2, 5)
    access_token: str | None = None

    @property
    def api(self) -> Api:
        return _gateway_api(self)

    def on_start(self) -> None:
        admin = _PROVISIONED.get("admin")
        if admin:
            self.access_token = admin["access_token"]
            return
        if not self.api.has("POST", f"{AUTH}/login"):
            raise StopUser
        body = {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
        with self.client.post(
            f"{AUTH}/login", json=body, name=f"{AUTH}/login (admin)", catch_response=True
        ) as response:
            if _settle(response, {200}):
                self.access_token = response.json()["access_token"]

    def _get(self, path: str, *, name: str | None = None, **params: Any) -> None:
        if self.access_token is None:
            return
        headers = {"Authorization": f"Bearer {self.access_token}"}
        with self.client.get(
            path, params=params, headers=headers, name=name or path, catch_response=True
        ) as response:
            _settle(response, {200})

    @tag("logs")
    @task(4)
    def search_logs(self) -> None:
        if self.api.has("GET", "/api/v1/logs"):
            self._get("/api/v1/logs", limit=50)
            self._get("/api/v1/logs", name="/api/v1/logs?level=ERROR", level="ERROR", limit=50)
            self._get("/api/v1/logs", name="/api/v1/logs?service=auth", service="auth", limit=50)

    @tag("logs", "tail")
    @task(1)
    def tail_logs(self) -> None:
        """Follow the live tail for a moment (the stream's first line says it subscribed),
        as an operator watching a deploy does, then hang up."""
        path = "/api/v1/logs/tail"
        if self.access_token is None or not self.api.has("GET", path):
            return
        headers = {"Authorization": f"Bearer {self.access_token}"}
        # A quiet log sends a keep-alive only every 15 s: a read waits at most 5 s.
        with self.client.get(
            path, headers=headers, stream=True, timeout=(10, 5), catch_response=True
        ) as response:
            if not _settle(response, {200}):
                return
            deadline = time.monotonic() + TAIL_SECONDS
            lines = response.iter_lines(decode_unicode=True)
            first = next(lines, None)
            if first != ": tail started":
                response.failure(f"the tail did not start: {first!r}")
                return
            # A read timed out in a quiet moment (requests' errors are OSErrors).
            with contextlib.suppress(OSError):
                for _ in lines:  # records (or keep-alives) until the moment is over
                    if time.monotonic() > deadline:
                        break
            response.close()

    @task(1)
    def log_stats(self) -> None:
        if self.api.has("GET", "/api/v1/logs/stats"):
            self._get("/api/v1/logs/stats")

    @task(1)
    def plugin_states(self) -> None:
        if self.api.has("GET", "/api/v1/admin/plugins"):
            self._get("/api/v1/admin/plugins")

    @task(1)
    def list_users(self) -> None:
        if self.api.has("GET", f"{AUTH}/users"):
            self._get(f"{AUTH}/users", limit=20)


class HealthUser(HttpUser):
    """What a load balancer and Kubernetes do: liveness and readiness, once a second."""

    weight = 1
    wait_time = constant_pacing(1)

    @task(3)
    def live(self) -> None:
        with self.client.get("/health/live", catch_response=True) as response:
            _settle(response, {200})

    @task(2)
    def ready(self) -> None:
        # 503 is a correct answer while a dependency is out: count it apart, not as an error.
        with self.client.get("/health/ready", catch_response=True) as response:
            if response.status_code == 503:
                response.request_meta["name"] = "/health/ready [503]"
            _settle(response, {200, 503})

    @task(1)
    def summary(self) -> None:
        with self.client.get("/health", catch_response=True) as response:
            _settle(response, {200, 503})


class RateLimitUser(HttpUser):
    """The rate-limit scenario: asks for password resets faster than the gateway allows
    (5 a minute per client under `make up-load`); 429s are the expected answers."""

    weight = 1
    wait_time = constant_pacing(0.5)

    def on_start(self) -> None:
        if not _gateway_api(self).has("POST", f"{AUTH}/password-reset/request"):
            raise StopUser

    @task
    def ask_for_a_reset(self) -> None:
        body = {"email": f"nobody-{uuid.uuid4().hex[:12]}@example.com"}
        with self.client.post(
            f"{AUTH}/password-reset/request", json=body, catch_response=True
        ) as response:
            _settle(response, {202}, limited_ok=True)
