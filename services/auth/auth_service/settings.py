"""Settings of the auth service."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, Field, SecretStr, model_validator

from keelson.auth import DEFAULT_AUDIENCE, DEFAULT_ISSUER
from keelson.config import KeelsonSettings

__all__ = ["AuthSettings", "LoginThrottleSettings", "PasswordHashSettings", "Settings"]

DEFAULT_ROLE_SCOPES: dict[str, list[str]] = {
    "user": ["profile:read", "profile:write", "notifications:send", "payments:write"],
    "admin": [
        "profile:read",
        "profile:write",
        "users:read",
        "users:write",
        "logs:read",
        "notifications:send",
        "payments:read",
        "payments:write",
        "plugins:read",
    ],
    # Operators: read the logs and the gateway's plugin states, nothing about users.
    "ops": ["profile:read", "profile:write", "logs:read", "plugins:read"],
}


class PasswordHashSettings(BaseModel):
    """argon2id cost; hashes made with other values are redone at the next login.

    The default is OWASP's first argon2id recommendation (m=19 MiB, t=2, p=1).
    """

    time_cost: int = Field(2, ge=1, le=20)
    memory_cost: int = Field(19_456, ge=8, le=4 * 1024 * 1024, description="KiB")
    parallelism: int = Field(1, ge=1, le=64)
    hash_len: int = Field(32, ge=16, le=128)
    salt_len: int = Field(16, ge=16, le=64)
    # Hashes running at once per process (unset: one per core but one, at least one, so
    # the event loop keeps a core), and how many may wait for one (unset: four per slot);
    # beyond that a login is answered 503 with Retry-After.
    concurrency: int | None = Field(None, ge=1, le=256)
    max_waiting: int | None = Field(None, ge=0, le=10_000)


class LoginThrottleSettings(BaseModel):
    """Failed logins counted per account and per client IP within `window_seconds`."""

    max_account_failures: int = Field(5, ge=1)
    max_ip_failures: int = Field(50, ge=1)
    window_seconds: int = Field(900, ge=1)
    lockout_seconds: int = Field(900, ge=1)
    # Where the counters live in Redis; auth deployments sharing one Redis keep apart.
    key_prefix: str = Field("auth:login:", min_length=1, max_length=100)


class AuthSettings(BaseModel):
    issuer: str = DEFAULT_ISSUER
    # Where clients reach auth (the gateway's public URL), for the absolute URLs of the
    # RFC 8414 metadata; unset: the URL the request came in on.
    public_url: str | None = Field(None, max_length=300, pattern=r"^https?://[^\s]+$")
    audience: str = DEFAULT_AUDIENCE
    access_token_ttl_seconds: int = Field(900, ge=10)
    refresh_token_ttl_seconds: int = Field(30 * 24 * 3600, ge=60)
    # A spent refresh token presented again this soon (two tabs, a retry after a timeout)
    # gets the pair its first presentation got, while that pair's refresh token is unused;
    # later, or once that one is spent, it is reuse and revokes the family. 0: no grace.
    refresh_reuse_grace_seconds: float = Field(10.0, ge=0, le=60)
    password_reset_ttl_seconds: int = Field(3600, ge=60)
    email_verification_ttl_seconds: int = Field(48 * 3600, ge=60)
    # At most one emailed token per account and purpose in this period (0: no limit).
    email_token_cooldown_seconds: int = Field(60, ge=0)
    key_reload_seconds: float = Field(60.0, gt=0)
    # Longer than key_reload_seconds, so every replica publishes a rotated-in key before
    # any replica signs with it.
    key_activation_seconds: float = Field(120.0, ge=0)
    min_password_length: int = Field(12, ge=8)
    # Refuse logins until the address is verified (403, `rule: email_unverified`); when
    # false, logins work and the access token says `email_verified: false`.
    require_verified_email: bool = False
    default_roles: list[str] = ["user"]
    role_scopes: dict[str, list[str]] = DEFAULT_ROLE_SCOPES
    password: PasswordHashSettings = PasswordHashSettings()
    throttle: LoginThrottleSettings = LoginThrottleSettings()

    @model_validator(mode="after")
    def _roles_known(self) -> Self:
        unknown = set(self.default_roles) - set(self.role_scopes)
        if unknown:
            raise ValueError(f"default_roles not in role_scopes: {sorted(unknown)}")
        if "admin" not in self.role_scopes:
            raise ValueError("role_scopes must define the admin role")
        return self


class Settings(KeelsonSettings):
    service: str = "auth"
    port: int = 8001
    auth: AuthSettings = AuthSettings()
    admin_email: str | None = None
    admin_password: SecretStr | None = None
