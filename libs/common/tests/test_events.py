from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from keelson.events import (
    AuditRecorded,
    Envelope,
    Event,
    PasswordResetRequested,
    PaymentSucceeded,
    UnknownEventError,
    UserRegistered,
    event_class,
    parse_event,
)
from keelson.logging import bind


def test_envelope_round_trips_through_json_and_parses_back_by_type() -> None:
    event = PaymentSucceeded(payment_id="pay_1", amount=1250, currency="eur", user_id="u1")
    envelope = event.envelope(producer="payments")

    again = Envelope.from_json(envelope.to_json())

    assert again == envelope
    assert again.type == "payments.payment_succeeded"
    assert again.version == 1
    assert again.occurred_at.tzinfo is not None
    parsed = parse_event(again)
    assert isinstance(parsed, PaymentSucceeded)
    assert parsed.currency == "EUR"
    assert parsed.amount == 1250
    assert PaymentSucceeded.from_envelope(again) == parsed


def test_each_envelope_has_its_own_id_and_the_bound_trace_id() -> None:
    event = UserRegistered(user_id="u1", email="ada@example.com")
    with bind(trace_id="trace-123"):
        first = event.envelope(producer="auth")
    second = event.envelope(producer="auth", trace_id="explicit")

    assert first.id != second.id
    assert first.trace_id == "trace-123"
    assert second.trace_id == "explicit"


def test_from_envelope_refuses_another_type() -> None:
    envelope = UserRegistered(user_id="u1", email="a@example.com").envelope(producer="auth")
    with pytest.raises(UnknownEventError):
        PaymentSucceeded.from_envelope(envelope)


def test_unknown_type_or_version_is_refused() -> None:
    with pytest.raises(UnknownEventError):
        parse_event(Envelope(type="nobody.heard_of_it", producer="x", data={}))
    with pytest.raises(UnknownEventError):
        event_class("auth.user_registered", 99)


def test_a_new_version_is_a_new_class_and_both_parse() -> None:
    class UserRegisteredV2(Event):
        type = "auth.user_registered"
        version = 2

        user_id: str
        emails: list[str]

    old = UserRegistered(user_id="u1", email="a@example.com").envelope(producer="auth")
    new = UserRegisteredV2(user_id="u1", emails=["a@example.com"]).envelope(producer="auth")

    assert isinstance(parse_event(old), UserRegistered)
    assert isinstance(parse_event(new), UserRegisteredV2)
    assert event_class("auth.user_registered", 1) is UserRegistered


def test_contracts_validate_their_fields() -> None:
    with pytest.raises(ValidationError):
        PaymentSucceeded(payment_id="p", amount=-1, currency="EUR")
    with pytest.raises(ValidationError):
        PaymentSucceeded(payment_id="p", amount=1, currency="E1R")
    expires = datetime.now(UTC) + timedelta(hours=1)
    reset = PasswordResetRequested(
        user_id="u", email="a@example.com", token="t", expires_at=expires
    )
    assert parse_event(reset.envelope(producer="auth")) == reset
    audit = AuditRecorded(actor="admin", action="user.disable", target="u2", attrs={"why": "spam"})
    assert parse_event(audit.envelope(producer="auth")) == audit


def test_event_types_must_name_service_and_event() -> None:
    with pytest.raises(ValueError, match=r"service\.event_name"):

        class _Bad(Event):
            type = "NoDots"
