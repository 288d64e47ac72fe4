"""The state machine: what may follow what, and the provider's statuses as ours."""

import pytest

from keelson.payment import ProviderIntent
from payments_service.states import IntentStatus, can_move, refund_status, status_of

S = IntentStatus


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.REQUIRES_PAYMENT_METHOD, S.PROCESSING),
        (S.PROCESSING, S.SUCCEEDED),
        (S.PROCESSING, S.FAILED),
        (S.FAILED, S.SUCCEEDED),  # paid with another card after a decline
        (S.SUCCEEDED, S.PARTIALLY_REFUNDED),
        (S.PARTIALLY_REFUNDED, S.REFUNDED),
    ],
)
def test_forward_moves_are_allowed(current: IntentStatus, target: IntentStatus) -> None:
    assert can_move(current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.SUCCEEDED, S.FAILED),
        (S.SUCCEEDED, S.PROCESSING),
        (S.SUCCEEDED, S.CANCELED),
        (S.CANCELED, S.SUCCEEDED),
        (S.REFUNDED, S.PARTIALLY_REFUNDED),
        (S.PROCESSING, S.REQUIRES_PAYMENT_METHOD),
        (S.REQUIRES_PAYMENT_METHOD, S.REFUNDED),
    ],
)
def test_nothing_goes_back(current: IntentStatus, target: IntentStatus) -> None:
    assert not can_move(current, target)


def intent(status: str, decline: str | None = None) -> ProviderIntent:
    return ProviderIntent(
        id="pi_1", status=status, amount=1, currency="usd", client_secret=None,
        customer=None, livemode=False, created=0, decline_code=decline,
    )  # fmt: skip


def test_provider_statuses() -> None:
    assert status_of(intent("requires_action")) is S.REQUIRES_PAYMENT_METHOD
    assert status_of(intent("requires_payment_method", "card_declined")) is S.FAILED
    assert status_of(intent("requires_capture")) is S.PROCESSING
    assert status_of(intent("succeeded")) is S.SUCCEEDED
    assert status_of(intent("canceled")) is S.CANCELED
    assert refund_status(received=100, refunded=40) is S.PARTIALLY_REFUNDED
    assert refund_status(received=100, refunded=100) is S.REFUNDED
