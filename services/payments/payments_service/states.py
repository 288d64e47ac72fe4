"""The intent state machine: every status and every allowed move, in one place.

    requires_payment_method ─→ processing ─→ succeeded ─→ partially_refunded ─→ refunded
            │        ╲             │    ╲          ╲_____________________________↗
            │         ╲──→ failed ←╯     ╲
            ╰──────────────→ canceled ←──╯
A failed payment may still be paid with another method (Stripe keeps the intent open),
so `failed` leads on to `processing`, `succeeded` or `canceled`. Nothing leaves
`canceled` or `refunded`, and nothing goes back from `succeeded`: a late event that
says otherwise is out of date.
"""

from __future__ import annotations

from enum import StrEnum

from keelson.payment import ProviderIntent

__all__ = ["REFUNDABLE", "IntentStatus", "can_move", "refund_status", "status_of"]


class IntentStatus(StrEnum):
    REQUIRES_PAYMENT_METHOD = "requires_payment_method"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"


_S = IntentStatus
_MOVES: dict[IntentStatus, frozenset[IntentStatus]] = {
    _S.REQUIRES_PAYMENT_METHOD: frozenset({_S.PROCESSING, _S.SUCCEEDED, _S.FAILED, _S.CANCELED}),
    _S.PROCESSING: frozenset({_S.SUCCEEDED, _S.FAILED, _S.CANCELED}),
    _S.FAILED: frozenset({_S.PROCESSING, _S.SUCCEEDED, _S.CANCELED}),
    _S.SUCCEEDED: frozenset({_S.PARTIALLY_REFUNDED, _S.REFUNDED}),
    _S.PARTIALLY_REFUNDED: frozenset({_S.REFUNDED}),
    _S.CANCELED: frozenset(),
    _S.REFUNDED: frozenset(),
}
REFUNDABLE = frozenset({_S.SUCCEEDED, _S.PARTIALLY_REFUNDED})

# Stripe's statuses of a payment intent, as ours.
_PROVIDER = {
    "requires_payment_method": _S.REQUIRES_PAYMENT_METHOD,
    "requires_confirmation": _S.REQUIRES_PAYMENT_METHOD,
    "requires_action": _S.REQUIRES_PAYMENT_METHOD,
    "requires_capture": _S.PROCESSING,
    "processing": _S.PROCESSING,
    "succeeded": _S.SUCCEEDED,
    "canceled": _S.CANCELED,
}


def can_move(current: IntentStatus, target: IntentStatus) -> bool:
    return target in _MOVES[current]


def status_of(intent: ProviderIntent) -> IntentStatus:
    """Our status for the provider's view; an open intent with a decline on it has failed."""
    status = _PROVIDER.get(intent.status, _S.REQUIRES_PAYMENT_METHOD)
    if status is _S.REQUIRES_PAYMENT_METHOD and intent.decline_code:
        return _S.FAILED
    return status


def refund_status(*, received: int, refunded: int) -> IntentStatus:
    return _S.REFUNDED if refunded >= received else _S.PARTIALLY_REFUNDED
