import shutil
from pathlib import Path

import pytest

from keelson.config import ConfigError, Environment, KeelsonSettings, LogFormat, load_settings

REPO = Path(__file__).resolve().parents[3]

# Any raw 32-byte Ed25519 public key: staging and production need one (the gateway's).
PUBLIC_IDENTITY_KEY = "-OQo6M-nfgQy1bNSZD89XDaZTqtiET4SScftE7Kk05I"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(__import__("os").environ):
        if name.startswith("KEELSON_") or name == "SENTRY_DSN":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults_without_anything_set(clean_env: Path) -> None:
    settings = load_settings()
    assert settings.env is Environment.DEV
    assert settings.redis_enabled is False
    assert settings.monitoring_enabled is False
    assert settings.log_format is LogFormat.TEXT


def test_env_vars_with_prefix_and_nesting(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEELSON_PORT", "9100")
    monkeypatch.setenv("KEELSON_LOG__LEVEL", "debug")
    monkeypatch.setenv("KEELSON_REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("SENTRY_DSN", "https://key@sentry.example/1")
    settings = load_settings()
    assert settings.port == 9100
    assert settings.log.level == "DEBUG"
    assert settings.redis_enabled and settings.monitoring_enabled


def test_yaml_is_layered_under_dotenv_under_env(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean_env / "config").mkdir()
    (clean_env / "config" / "keelson.yaml").write_text(
        "port: 9001\nservice: from-yaml\nlog:\n  level: WARNING\n"
        "plugins:\n  rate_limiting:\n    enabled: false\n"
    )
    (clean_env / "config" / "keelson.staging.yaml").write_text("service: from-staging-yaml\n")
    (clean_env / ".env.staging").write_text(
        "KEELSON_PORT=9002\nKEELSON_MASTER_KEY=staging-key-0123456789abcdef0123456789\n"
        'KEELSON_IDENTITY__PUBLIC_KEYS=["' + PUBLIC_IDENTITY_KEY + '"]\n'
    )
    monkeypatch.setenv("KEELSON_ENV", "staging")
    monkeypatch.setenv("KEELSON_LOG__LEVEL", "ERROR")
    settings = load_settings()
    assert settings.port == 9002  # .env.staging beats YAML
    assert settings.service == "from-staging-yaml"  # env-specific YAML beats base YAML
    assert settings.log.level == "ERROR"  # env var beats everything
    assert settings.plugin("rate_limiting").enabled is False
    assert settings.plugin("unknown").enabled is True
    assert settings.log_format is LogFormat.JSON
    assert settings.identity.public_keys == [PUBLIC_IDENTITY_KEY]


def test_bad_value_fails_at_start_naming_the_setting(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEELSON_PORT", "not-a-port")
    monkeypatch.setenv("KEELSON_LOG__BUFFER_SIZE", "-1")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "KEELSON_PORT" in message
    assert "KEELSON_LOG__BUFFER_SIZE" in message


def test_development_master_key_refused_in_prod(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEELSON_ENV", "prod")
    with pytest.raises(ConfigError, match=r"KEELSON_MASTER_KEY: .*development key"):
        load_settings()


@pytest.mark.parametrize(
    ("name", "value", "setting"),
    [
        ("KEELSON_MASTER_KEY", "short", "KEELSON_MASTER_KEY"),
        ("KEELSON_DATABASE_URL", "mysql://x@h/d", "KEELSON_DATABASE_URL"),
        ("KEELSON_REDIS_URL", "http://h:6379", "KEELSON_REDIS_URL"),
        ("KEELSON_BUS__MAX_DELIVERIES", "0", "KEELSON_BUS__MAX_DELIVERIES"),
        ("KEELSON_PLUGINS__CACHE__ENABLED", "perhaps", "KEELSON_PLUGINS__CACHE__ENABLED"),
    ],
)
def test_each_bad_value_is_named_by_its_environment_variable(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, setting: str | None
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert f"  {setting}: " in str(caught.value)


def test_an_empty_optional_service_setting_means_off(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("KEELSON_DATABASE_URL", "KEELSON_REDIS_URL", "SENTRY_DSN"):
        monkeypatch.setenv(name, "")
    settings = load_settings()
    assert settings.database_url is None
    assert not settings.redis_enabled and not settings.monitoring_enabled


def test_urls_with_passwords_stay_out_of_repr(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEELSON_DATABASE_URL", "postgresql://app:pg-pass-42@db/keelson")
    monkeypatch.setenv("KEELSON_REDIS_URL", "redis://:redis-pass-42@cache:6379/0")
    monkeypatch.setenv("KEELSON_PREVIOUS_MASTER_KEYS", '["old-master-key-0123456789abcdef0123"]')
    settings = load_settings()
    text = f"{settings!r} {settings}"
    for secret in ("pg-pass-42", "redis-pass-42", "old-master-key", "dev-only-master"):
        assert secret not in text
    assert settings.database_url == "postgresql://app:pg-pass-42@db/keelson"
    [previous] = settings.previous_master_keys
    assert previous.get_secret_value() == "old-master-key-0123456789abcdef0123"


@pytest.mark.parametrize("env", ["dev", "staging", "prod"])
def test_the_committed_env_file_examples_load(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, env: str
) -> None:
    shutil.copy(REPO / f".env.{env}", clean_env / f".env.{env}")
    monkeypatch.setenv("KEELSON_ENV", env)
    if env != "dev":
        with pytest.raises(ConfigError, match="KEELSON_MASTER_KEY"):
            load_settings()  # the examples leave the secret out on purpose
        monkeypatch.setenv("KEELSON_MASTER_KEY", "a-real-secret-0123456789abcdef-0123")
        with pytest.raises(ConfigError, match=r"identity\.public_keys must be set"):
            load_settings()  # the deployment's own key pair, left out as the secret is
        monkeypatch.setenv("KEELSON_IDENTITY__PUBLIC_KEYS", '["' + PUBLIC_IDENTITY_KEY + '"]')
    settings = load_settings()
    assert settings.env.value == env
    assert settings.log_format is (LogFormat.TEXT if env == "dev" else LogFormat.JSON)
    if env == "prod":
        assert settings.db.pool_size == 10 and settings.bus.max_deliveries == 8


def test_the_committed_yaml_example_loads(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / "config").mkdir()
    shutil.copy(REPO / "config" / "keelson.example.yaml", clean_env / "config" / "keelson.yaml")
    settings = load_settings()
    assert settings.bus.claim_idle_ms == 30_000
    assert settings.plugin("outbox_relay").model_extra == {
        "batch_size": 100,
        "poll_interval_seconds": 1.0,
    }


def test_secret_from_mounted_file_and_never_in_repr(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = clean_env / "secrets"
    secrets.mkdir()
    (secrets / "keelson_master_key").write_text("mounted-secret-0123456789abcdef012345")
    monkeypatch.setenv("KEELSON_SECRETS_DIR", str(secrets))
    settings = load_settings()
    assert settings.master_key.get_secret_value() == "mounted-secret-0123456789abcdef012345"
    assert "mounted-secret" not in repr(settings)


def test_subclass_adds_its_section(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class ServiceSettings(KeelsonSettings):
        service: str = "demo"
        retention_days: int = 14

    monkeypatch.setenv("KEELSON_RETENTION_DAYS", "3")
    assert load_settings(ServiceSettings).retention_days == 3


def test_trusted_proxies_are_addresses_or_networks_and_none_by_default(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings().trusted_proxies == []
    monkeypatch.setenv("KEELSON_TRUSTED_PROXIES", '["172.30.57.10", "10.0.0.0/8", "::1"]')
    assert load_settings().trusted_proxies == ["172.30.57.10/32", "10.0.0.0/8", "::1/128"]
    for bad in ('["*"]', '["gateway"]', '["10.0.0.0/33"]'):
        monkeypatch.setenv("KEELSON_TRUSTED_PROXIES", bad)
        with pytest.raises(ConfigError, match="KEELSON_TRUSTED_PROXIES"):
            load_settings()


def test_nested_mappings_merge_at_every_layer_and_lists_replace(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean_env / "config").mkdir()
    (clean_env / "config" / "keelson.yaml").write_text(
        "log:\n  level: WARNING\n  batch_size: 7\n"
        "plugins:\n"
        "  rate_limiting:\n    enabled: false\n    default: 10/second\n"
        "  security:\n    leeway_seconds: 5\n    origins: [https://a.example, https://b.example]\n"
        "  routing:\n    upstreams:\n      auth: {url: 'http://auth:8001', timeout: 3}\n"
    )
    (clean_env / "config" / "keelson.staging.yaml").write_text(
        "log:\n  batch_size: 9\n"
        "plugins:\n"
        "  security:\n    origins: [https://c.example]\n    jwks_url: http://auth/jwks\n"
        "  routing:\n    upstreams:\n      auth: {timeout: 5}\n"
    )
    (clean_env / ".env.staging").write_text(
        "KEELSON_MASTER_KEY=staging-key-0123456789abcdef0123456789\n"
        'KEELSON_IDENTITY__PUBLIC_KEYS=["' + PUBLIC_IDENTITY_KEY + '"]\n'
        "KEELSON_PLUGINS__SECURITY__AUDIENCE=from-dotenv\n"
    )
    monkeypatch.setenv("KEELSON_ENV", "staging")
    monkeypatch.setenv("KEELSON_PLUGINS__ROUTING__UPSTREAMS__AUTH__RETRIES", "2")
    settings = load_settings()
    assert settings.log.level == "WARNING"  # base only
    assert settings.log.batch_size == 9  # environment file over base
    limits = settings.plugin("rate_limiting").model_dump()
    assert limits == {"enabled": False, "default": "10/second"}  # untouched by the env file
    security = settings.plugin("security").model_dump()
    assert security == {
        "enabled": True,
        "leeway_seconds": 5,  # base
        "origins": ["https://c.example"],  # a list is replaced, not merged
        "jwks_url": "http://auth/jwks",  # environment file
        "audience": "from-dotenv",  # .env file
    }
    routing = settings.plugin("routing").model_dump()
    assert routing["upstreams"]["auth"] == {
        "url": "http://auth:8001",  # base
        "timeout": 5,  # environment file
        "retries": 2,  # environment variable
    }
