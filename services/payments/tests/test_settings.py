"""The provider is chosen from the settings: Stripe with a key, the sandbox without."""

import pytest

from keelson.config import ConfigError, load_settings
from payments_service.settings import Settings


def test_no_key_is_the_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEELSON_STRIPE_API_KEY", "")
    assert not load_settings(Settings).payment.stripe_enabled


def test_a_key_needs_a_webhook_secret_and_stays_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEELSON_STRIPE_API_KEY", "sk_test_secret_value")
    with pytest.raises(ConfigError, match="KEELSON_STRIPE_WEBHOOK_SECRET"):
        load_settings(Settings)
    monkeypatch.setenv("KEELSON_STRIPE_WEBHOOK_SECRET", "whsec_value")
    settings = load_settings(Settings)
    assert settings.payment.stripe_enabled
    assert "sk_test_secret_value" not in repr(settings)
    assert "whsec_value" not in repr(settings)


def test_currencies_are_iso_codes() -> None:
    with pytest.raises(ValueError, match="ISO 4217"):
        Settings(payments={"currencies": ["dollars"]})
