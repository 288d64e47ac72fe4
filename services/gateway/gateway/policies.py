"""Route policies: who may call a path (public, any signed-in user, a role, a scope)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, field_validator

from gateway.paths import PathPattern, PerPath
from keelson.auth import Principal

__all__ = ["Access", "Policy", "PolicyTable", "RoutePolicy", "Verdict"]


class Access(StrEnum):
    PUBLIC = "public"  # no token needed; a valid one still identifies the caller
    USER = "user"
    ROLE = "role"
    SCOPE = "scope"


class Verdict(StrEnum):
    ALLOW = "allow"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"


@dataclass(frozen=True)
class Policy:
    access: Access
    value: str = ""

    @classmethod
    def parse(cls, text: str) -> Policy:
        """`public`, `user`, `role:admin` or `scope:payments:write`."""
        kind, _, value = text.partition(":")
        access = Access(kind)
        if (access in (Access.ROLE, Access.SCOPE)) != bool(value):
            raise ValueError(f"policy {text!r}: role and scope need a name, others take none")
        return cls(access, value)

    def judge(self, principal: Principal | None) -> Verdict:
        if self.access is Access.PUBLIC:
            return Verdict.ALLOW
        if principal is None:
            return Verdict.UNAUTHENTICATED
        if self.access is Access.ROLE and self.value not in principal.roles:
            return Verdict.FORBIDDEN
        if self.access is Access.SCOPE and self.value not in principal.scopes:
            return Verdict.FORBIDDEN
        return Verdict.ALLOW

    def __str__(self) -> str:
        return f"{self.access}:{self.value}" if self.value else str(self.access)


class RoutePolicy(BaseModel):
    """`path` is exact, or a prefix when it ends with `*`; no `methods` means all."""

    path: str
    allow: str
    methods: list[str] = []

    @field_validator("allow")
    @classmethod
    def _parses(cls, value: str) -> str:
        Policy.parse(value)
        return value


DEFAULT_POLICIES = [
    RoutePolicy(path="/health*", allow="public"),
    RoutePolicy(path="/metrics", allow="public"),
    RoutePolicy(path="/docs*", allow="public"),
    RoutePolicy(path="/redoc*", allow="public"),
    RoutePolicy(path="/openapi.json", allow="public"),
    RoutePolicy(path="/.well-known/jwks.json", allow="public"),
    RoutePolicy(path="/.well-known/oauth-authorization-server", allow="public"),
    RoutePolicy(path="/api/v1/handshake", allow="public"),
    RoutePolicy(path="/api/v1/admin*", allow="role:admin"),
    # Auth guards its own routes (login and register are public, /me is not).
    RoutePolicy(path="/api/v1/auth*", allow="public"),
    # Stripe signs its webhooks; it carries no bearer token.
    RoutePolicy(path="/api/v1/payments/webhooks*", allow="public"),
]


class PolicyTable:
    """First matching rule wins; unmatched paths get the default policy."""

    def __init__(self, rules: list[RoutePolicy], default: str) -> None:
        self._rules = [(PathPattern.parse(r.path, r.methods), Policy.parse(r.allow)) for r in rules]
        self.default = Policy.parse(default)
        # Every request asks again for the same few paths.
        self.for_request: PerPath[Policy] = PerPath(self._first)

    def _first(self, method: str, path: str) -> Policy:
        for pattern, policy in self._rules:
            if pattern.matches(method, path):
                return policy
        return self.default
