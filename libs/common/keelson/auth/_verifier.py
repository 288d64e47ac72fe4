"""Access-token verification: ES256 only, known `kid`, `iss`, `aud`, `exp`, `nbf`, not revoked."""

from __future__ import annotations

from typing import Any

from jose import jwt
from jose.exceptions import ExpiredSignatureError, JOSEError

from keelson.auth._jwks import ALGORITHM, KeySource
from keelson.auth._principal import Principal
from keelson.auth._revocation import RevocationList
from keelson.errors import Unauthorized

__all__ = ["DEFAULT_AUDIENCE", "DEFAULT_ISSUER", "InvalidToken", "TokenVerifier"]

DEFAULT_ISSUER = "keelson-auth"
DEFAULT_AUDIENCE = "keelson"


class InvalidToken(Unauthorized):
    """The bearer token was refused; `detail` says only as much as a client may know."""


class TokenVerifier:
    """Turns a bearer token into a `Principal`, or raises `InvalidToken` (401)."""

    def __init__(
        self,
        keys: KeySource,
        *,
        issuer: str = DEFAULT_ISSUER,
        audience: str = DEFAULT_AUDIENCE,
        revocations: RevocationList | None = None,
        leeway: int = 10,
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.revocations = revocations
        self._options = {
            "require_exp": True,
            "require_iat": True,
            "require_nbf": True,
            "require_sub": True,
            "require_jti": True,
            "require_iss": True,
            "require_aud": True,
            "leeway": leeway,
        }

    async def verify(self, token: str) -> Principal:
        claims = await self.decode(token)
        principal = Principal.from_claims(claims)
        if (
            self.revocations is not None
            and principal.jti is not None
            and await self.revocations.is_revoked(principal.jti)
        ):
            raise InvalidToken("token revoked")
        return principal

    async def decode(self, token: str) -> dict[str, Any]:
        """The verified claims, without the revocation check."""
        try:
            header = jwt.get_unverified_header(token)
        except JOSEError:
            raise InvalidToken("malformed token") from None
        # The algorithm is pinned before any key is looked up: `none`, HS256 keyed with
        # the public key and every other substitution stop here.
        kid = header.get("kid")
        if header.get("alg") != ALGORITHM or not isinstance(kid, str):
            raise InvalidToken("invalid token")
        key = await self.keys.get(kid)
        if key is None:
            raise InvalidToken("unknown signing key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                options=self._options,
            )
        except ExpiredSignatureError:
            raise InvalidToken("token expired") from None
        except JOSEError:
            raise InvalidToken("invalid token") from None
        if not isinstance(claims.get("sub"), str) or not isinstance(claims.get("jti"), str):
            raise InvalidToken("invalid token")
        return claims
