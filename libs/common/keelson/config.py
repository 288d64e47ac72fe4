"""Typed settings: `KEELSON_` env vars over `.env.<env>` over `config/*.yaml`."""

from __future__ import annotations

import ipaddress
import os
from enum import StrEnum
from pathlib import Path
from typing import Any, Self, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from keelson.encoding import b64url_decode

__all__ = [
    "BusSettings",
    "ConfigError",
    "DatabaseSettings",
    "Environment",
    "IdentitySettings",
    "KeelsonSettings",
    "LogFormat",
    "LogSettings",
    "PluginSettings",
    "describe_errors",
    "load_settings",
]

_DEV_MASTER_KEY = "dev-only-master-key-change-me-0123456789abcdef"


class Environment(StrEnum):
    DEV = "dev"
    TEST = "test"
    STAGING = "staging"
    PROD = "prod"


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class ConfigError(RuntimeError):
    """Raised at start-up when a setting is missing or invalid; names each setting."""


class LogSettings(BaseModel):
    level: str = "INFO"
    format: LogFormat | None = None  # None: text in dev, JSON elsewhere
    ship_endpoint: str | None = "tcp://127.0.0.1:5557"
    buffer_size: int = Field(10_000, gt=0)
    spill_dir: Path = Path(".keelson/spill")
    spill_max_bytes: int = Field(64 * 1024 * 1024, gt=0)
    batch_size: int = Field(500, gt=0)
    ack_timeout_seconds: float = Field(2.0, gt=0)
    # Authenticate to the log intake with CURVE keys derived from the master key; off only
    # to ship to a receiver of one's own that speaks plain ZMTP.
    ship_curve: bool = True

    @model_validator(mode="after")
    def _known_level(self) -> Self:
        self.level = self.level.upper()
        if self.level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"unknown log level {self.level!r}")
        return self


class IdentitySettings(BaseModel):
    """`identity.*`: the Ed25519 keys of the gateway-signed identity header.

    Only the gateway gets the private key (`signing_key`, or a file holding it); every
    service gets `public_keys` (unpadded base64url of raw 32-byte keys; the first is the
    current one, the others still verify during a rotation). Neither set: a pair derived
    from the master key, for tests and bare development runs only (any holder of the
    master key could sign); staging and production refuse to start without `public_keys`.
    """

    signing_key: SecretStr | None = None
    signing_key_file: Path | None = None
    public_keys: list[str] = Field([], max_length=8)

    @field_validator("public_keys")
    @classmethod
    def _raw_keys(cls, value: list[str]) -> list[str]:
        for key in value:
            try:
                raw = b64url_decode(key.strip())
            except ValueError:
                raise ValueError("each must be unpadded base64url") from None
            if len(raw) != 32:
                raise ValueError("each must be a raw 32-byte Ed25519 public key")
        return [key.strip() for key in value]


class DatabaseSettings(BaseModel):
    pool_size: int = Field(5, ge=1)
    max_overflow: int = Field(10, ge=0)
    # Under the gateway's 10 s upstream timeout: a request that waited this long for a
    # connection answers 503 before the gateway gives up on it, never commits after.
    pool_timeout: float = Field(3.0, gt=0)
    pool_recycle: int = Field(1800, gt=0)
    pool_pre_ping: bool = True
    echo: bool = False


class BusSettings(BaseModel):
    zmq_xsub_endpoint: str = "tcp://127.0.0.1:5555"
    zmq_xpub_endpoint: str = "tcp://127.0.0.1:5556"
    max_deliveries: int = Field(5, ge=1)
    claim_idle_ms: int = Field(30_000, ge=100)
    stream_maxlen: int = Field(1_000_000, ge=1000)
    block_ms: int = Field(1000, ge=1)
    batch_size: int = Field(100, ge=1)


class PluginSettings(BaseModel):
    model_config = {"extra": "allow"}

    enabled: bool = True


class KeelsonSettings(BaseSettings):
    """Settings every service shares; a service subclasses it to add its own section."""

    model_config = SettingsConfigDict(
        env_prefix="KEELSON_",
        env_nested_delimiter="__",
        extra="ignore",
        validate_default=True,
    )

    env: Environment = Environment.DEV
    service: str = "keelson"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # URLs may carry a password: kept out of repr() so that logging the settings is safe.
    database_url: str | None = Field(None, repr=False)
    redis_url: str | None = Field(None, repr=False)
    master_key: SecretStr = SecretStr(_DEV_MASTER_KEY)
    previous_master_keys: list[SecretStr] = []  # still decrypt, never encrypt (rotation)
    # Addresses or CIDRs (the gateway's) whose X-Forwarded-For/-Proto a service believes;
    # from anyone else those headers are ignored. Empty: the socket peer is the client.
    trusted_proxies: list[str] = Field([], max_length=64)
    sentry_dsn: SecretStr | None = Field(
        None, validation_alias=AliasChoices("KEELSON_SENTRY_DSN", "SENTRY_DSN")
    )
    sentry_traces_sample_rate: float = Field(0.0, ge=0.0, le=1.0)
    shutdown_grace_seconds: float = Field(10.0, ge=0)
    # On SIGTERM, readiness answers 503 at once and the listener stays open this long
    # before the server stops accepting (keelson.draining); Kubernetes' preStop sleep
    # does the same there, so 0 by default. `keelson up` sets it.
    drain_pause_seconds: float = Field(0.0, ge=0, le=60)
    # One "keelson.access" record per request (probes and /metrics excepted).
    access_log: bool = True
    log: LogSettings = LogSettings()
    identity: IdentitySettings = IdentitySettings()
    db: DatabaseSettings = DatabaseSettings()
    bus: BusSettings = BusSettings()
    plugins: dict[str, PluginSettings] = {}

    @field_validator("database_url", "redis_url", "sentry_dsn", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `KEELSON_REDIS_URL=` (as compose writes `${KEELSON_REDIS_URL:-}`) means "off".
        return None if value == "" else value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, value: list[str]) -> list[str]:
        # ip_network raises ValueError naming the entry; "*" (trust anyone) is refused.
        return [str(ipaddress.ip_network(entry.strip(), strict=False)) for entry in value]

    @field_validator("master_key")
    @classmethod
    def _strong_master_key(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        secret = value.get_secret_value()
        if len(secret) < 32:
            raise ValueError("must be at least 32 characters")
        env = info.data.get("env")
        if secret == _DEV_MASTER_KEY and env in (Environment.STAGING, Environment.PROD):
            raise ValueError(f"the development key must not be used in {env}")
        return value

    @model_validator(mode="after")
    def _identity_keys_outside_development(self) -> Self:
        if self.env in (Environment.STAGING, Environment.PROD) and not self.identity.public_keys:
            raise ValueError(
                f"identity.public_keys must be set in {self.env} (the gateway's identity key)"
            )
        return self

    @property
    def uses_development_master_key(self) -> bool:
        """Whether no master key was configured (the public development constant is used)."""
        return self.master_key.get_secret_value() == _DEV_MASTER_KEY

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("postgresql", "postgres")):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @property
    def log_format(self) -> LogFormat:
        if self.log.format is not None:
            return self.log.format
        return LogFormat.TEXT if self.env is Environment.DEV else LogFormat.JSON

    @property
    def redis_enabled(self) -> bool:
        return self.redis_url is not None

    @property
    def monitoring_enabled(self) -> bool:
        return self.sentry_dsn is not None

    def plugin(self, name: str) -> PluginSettings:
        return self.plugins.get(name, PluginSettings())

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_files = _yaml_files()
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            env_settings,
            dotenv_settings,
            file_secret_settings,
        ]
        if yaml_files:
            # The environment's file is merged into the base one key by key (lists replace),
            # so setting `plugins.security` there keeps the base file's other plugins.
            sources.append(
                YamlConfigSettingsSource(settings_cls, yaml_file=yaml_files, deep_merge=True)
            )
        return tuple(sources)


_S = TypeVar("_S", bound=KeelsonSettings)


def _env_name() -> str:
    return os.environ.get("KEELSON_ENV", Environment.DEV.value)


def _yaml_files() -> list[Path]:
    config_dir = Path(os.environ.get("KEELSON_CONFIG_DIR", "config"))
    names = ("keelson.yaml", f"keelson.{_env_name()}.yaml")
    return [config_dir / name for name in names if (config_dir / name).is_file()]


def load_settings(cls: type[_S] = KeelsonSettings, **overrides: Any) -> _S:  # type: ignore[assignment]
    """Build settings once at start-up; any invalid value raises `ConfigError` naming it."""
    env_file = Path(f".env.{_env_name()}")
    secrets_dir = os.environ.get("KEELSON_SECRETS_DIR")
    try:
        return cls(
            _env_file=env_file if env_file.is_file() else None,
            _secrets_dir=secrets_dir,
            **overrides,
        )
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc)) from None


def describe_errors(exc: ValidationError, *, within: str = "") -> str:
    """One line per error, naming the environment variable that sets the value.

    `within` is the path of the section that was validated (`plugins__outbox_relay`).
    """
    lines = ["invalid configuration:"]
    for error in exc.errors():
        path = "__".join(str(part) for part in (*filter(None, [within]), *error["loc"]))
        if not path:
            setting = "settings"
        elif path.isupper():  # already an environment variable name (an alias)
            setting = path
        else:
            setting = f"KEELSON_{path.upper()}"
        lines.append(f"  {setting}: {error['msg']}")
    return "\n".join(lines)
