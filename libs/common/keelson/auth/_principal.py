"""The authenticated caller as every service sees it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Principal"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a user id with roles, scopes and the token that proved it."""

    user_id: str
    roles: frozenset[str] = field(default_factory=frozenset)
    scopes: frozenset[str] = field(default_factory=frozenset)
    jti: str | None = None
    session_id: str | None = None
    expires_at: int | None = None

    def has_role(self, role: str) -> bool:
        return role in self.roles

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes

    @classmethod
    def from_claims(cls, claims: dict[str, Any]) -> Principal:
        """From verified access-token claims (`sub`, `roles`, `scope`, `jti`, `sid`, `exp`)."""
        roles = claims.get("roles") or ()
        scope = claims.get("scope") or ""
        exp = claims.get("exp")
        return cls(
            user_id=str(claims["sub"]),
            roles=frozenset(str(role) for role in roles),
            scopes=frozenset(scope.split()) if isinstance(scope, str) else frozenset(),
            jti=str(claims["jti"]) if claims.get("jti") else None,
            session_id=str(claims["sid"]) if claims.get("sid") else None,
            expires_at=int(exp) if isinstance(exp, int | float) else None,
        )
