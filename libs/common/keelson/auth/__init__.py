"""Access-token verification and FastAPI auth dependencies shared by every service.

TokenVerifier ── KeySource (JwksClient over HTTP, StaticKeys) + RevocationList (Redis)
CurrentUser ──── gateway-signed identity header, else a bearer token
require_role / require_scope ── 403 for a caller without them; PUBLIC marks an open route
"""

from keelson.auth._deps import (
    PUBLIC,
    PUBLIC_ACCESS_KEY,
    CurrentUser,
    get_current_user,
    require_role,
    require_scope,
)
from keelson.auth._identity import (
    DEFAULT_IDENTITY_MAX_AGE,
    IDENTITY_HEADER,
    IdentityKey,
    IdentityVerifier,
    InvalidIdentity,
    identity_key,
    identity_signer,
    identity_verifier,
    sign_identity,
    verify_identity_headers,
)
from keelson.auth._jwks import ALGORITHM, JwksClient, KeySource, StaticKeys, parse_jwks
from keelson.auth._plugin import (
    IDENTITY_KEY,
    IDENTITY_MAX_AGE,
    REVOCATIONS,
    TOKEN_VERIFIER,
    AuthPlugin,
    AuthSettings,
)
from keelson.auth._principal import Principal
from keelson.auth._revocation import REVOCATIONS_CHANNEL, RevocationList
from keelson.auth._verifier import DEFAULT_AUDIENCE, DEFAULT_ISSUER, InvalidToken, TokenVerifier

__all__ = [
    "ALGORITHM",
    "DEFAULT_AUDIENCE",
    "DEFAULT_IDENTITY_MAX_AGE",
    "DEFAULT_ISSUER",
    "IDENTITY_HEADER",
    "IDENTITY_KEY",
    "IDENTITY_MAX_AGE",
    "PUBLIC",
    "PUBLIC_ACCESS_KEY",
    "REVOCATIONS",
    "REVOCATIONS_CHANNEL",
    "TOKEN_VERIFIER",
    "AuthPlugin",
    "AuthSettings",
    "CurrentUser",
    "IdentityKey",
    "IdentityVerifier",
    "InvalidIdentity",
    "InvalidToken",
    "JwksClient",
    "KeySource",
    "Principal",
    "RevocationList",
    "StaticKeys",
    "TokenVerifier",
    "get_current_user",
    "identity_key",
    "identity_signer",
    "identity_verifier",
    "parse_jwks",
    "require_role",
    "require_scope",
    "sign_identity",
    "verify_identity_headers",
]
