"""After the whole run (this module's name sorts last in `tests/system/`): nothing secret
reached the log store, the suite's output, or any file under its `logs/` folder.

docs/security.md lists the case with the command that reproduces it.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest

from .conftest import ADMIN_PASSWORD, RunningSuite

pytestmark = pytest.mark.timeout(300)
# A test card number, planted in requests below (grouped as people type it).
PLANTED_CARD = "4242 4242 4242 4242"
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.")
_PROVIDER_KEY = re.compile(r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{8,}|\bwhsec_[A-Za-z0-9+/=]{16,}")
# 13 to 19 digits, grouped or not, standing alone (not inside an id, a hex string or a
# decimal number); a candidate is a card number if its Luhn sum holds.
_CARD_CANDIDATE = re.compile(r"(?<![\w.:/-])(?:\d[ -]?){12,18}\d(?![\w.:/-])")


def test_the_token_endpoint_is_limited_by_address_whatever_token_is_sent(
    suite: RunningSuite,
) -> None:
    """Sent: wrong-password logins through `/api/v1/auth/token`, each with a valid bearer
    token of the admin. Holds: 429 within the login rule's 10 a minute for this address
    (before: no rule, and a token re-keyed the login bucket to the account). Runs late:
    it spends this address's login budget for a minute, so it runs after every other
    login of the run (this module sorts last; the grep below logs no one in)."""
    statuses = []
    with suite.client() as client:
        for _ in range(12):
            answer = client.post(
                "/api/v1/auth/token",
                data={"grant_type": "password", "username": "x@example.com", "password": "no"},
                headers=suite.admin(),
            )
            statuses.append(answer.status_code)
    assert 429 in statuses, statuses
    assert statuses.index(429) <= 10, statuses


def _luhn(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card_numbers(text: str) -> list[str]:
    found = []
    for match in _CARD_CANDIDATE.finditer(text):
        digits = re.sub(r"\D", "", match.group())
        if 13 <= len(digits) <= 19 and _luhn(digits):
            found.append(match.group())
    return found


def _plant_secrets(suite: RunningSuite) -> None:
    """Requests that carry a card number and a password where they should not: in a
    payment's description, in a refused (422) body, and in a wrong login."""
    user = suite.admin()  # logged in before: this address's login budget is spent by now
    with suite.client() as client:
        client.post(
            "/api/v1/payments/intents",
            headers={**user, "Idempotency-Key": uuid.uuid4().hex},
            json={"amount": 500, "currency": "eur", "description": f"card {PLANTED_CARD}"},
        )
        client.post(
            "/api/v1/payments/intents",
            headers={**user, "Idempotency-Key": uuid.uuid4().hex},
            json={"amount": -1, "currency": "eur", "description": f"card {PLANTED_CARD}\x00"},
        )
        client.patch("/api/v1/auth/me", headers=user, json={"name": f"{PLANTED_CARD}\x00"})


def _log_store(suite: RunningSuite) -> list[dict[str, Any]]:
    admin = suite.admin()
    records: list[dict[str, Any]] = []
    with suite.client() as client:
        cursor = None
        for _ in range(100):
            params: dict[str, Any] = {"limit": 1000}
            if cursor:
                params["cursor"] = cursor
            page = client.get("/api/v1/logs", params=params, headers=admin).json()
            records += page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                break
    return records


def test_zz_no_secret_reached_the_log_store_or_any_output(suite: RunningSuite) -> None:
    """After every other case (and the planted requests above): every record in the log
    store, the suite's whole output and every file in its `logs/` folder hold no password,
    argon2 hash, JWT, master or identity key, provider key or webhook secret, and no
    number that passes as a payment card (the planted one included)."""
    _plant_secrets(suite)
    state = suite.root / ".keelson"
    secrets = {
        "admin password": ADMIN_PASSWORD,
        "master key": (state / "master.key").read_text().strip(),
        "identity signing key": (state / "identity.key").read_text().strip(),
    }
    records = _log_store(suite)
    sources = {"log store": json.dumps(records), "suite output": suite.output.read_text("utf-8")}
    for path in sorted((state / "logs").glob("*")):
        sources[f"logs/{path.name}"] = path.read_text("utf-8", errors="replace")
    for where, text in sources.items():
        for what, value in secrets.items():
            assert value not in text, (where, what)
        assert "$argon2" not in text, where
        assert not _JWT.search(text), (where, _JWT.search(text))
        assert not _PROVIDER_KEY.search(text), (where, _PROVIDER_KEY.search(text))
        assert not _card_numbers(text), (where, _card_numbers(text)[:3])
    assert len(records) > 10  # the store was really read


def test_the_card_check_finds_what_it_looks_for() -> None:
    """The grep's own pattern, so that the case above cannot pass by matching nothing."""
    assert _card_numbers(f'"paid with {PLANTED_CARD}", it said') == [PLANTED_CARD]
    assert _card_numbers("4111111111111111")
    assert not _card_numbers("4111111111111112")  # Luhn fails
    assert not _card_numbers("ts 1733529000123456 id 7c9e6679-7425-40de-944b-e07fc1f90ae7")
    assert not _card_numbers("took 0.4242424242424242 s")
