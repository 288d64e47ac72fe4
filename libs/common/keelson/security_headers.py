"""The security-header policy: the one place that says which headers an answer carries.

Every service's `ServiceMiddleware` adds the default policy's headers an answer lacks;
the gateway's security plugin enforces its configured policy (`plugins.security`) on
everything it serves, the upstreams' answers included. Both read it from here.
"""

from __future__ import annotations

from keelson.docs import DOCS_CSP

__all__ = ["API_CSP", "DEFAULT_HSTS_MAX_AGE", "SERVER", "SecurityHeaders"]

# An API answer needs no script, style, frame or fetch of anything.
API_CSP = "default-src 'none'; frame-ancestors 'none'"
DEFAULT_HSTS_MAX_AGE = 63_072_000  # two years
# What an answer says its server is: a name, no implementation or version to look up.
SERVER = "keelson"


class SecurityHeaders:
    """The headers for API answers and for the docs pages (Swagger UI and ReDoc load
    their assets from the service's own origin, `keelson.docs`); lower-case names."""

    __slots__ = ("api", "docs", "docs_prefixes")

    def __init__(
        self,
        *,
        content_security_policy: str = API_CSP,
        referrer_policy: str = "no-referrer",
        hsts_max_age: int | None = None,
        docs_prefixes: tuple[str, ...] = ("/docs", "/redoc"),
        server: str | None = None,
    ) -> None:
        """`hsts_max_age`: seconds of Strict-Transport-Security, None for none (a service
        behind the gateway is not what browsers reach). `server`: the `server` header
        every answer carries in place of the HTTP server's banner (granian adds `server:
        granian` to an answer without one, and keeps the one an application sends); what
        a server names itself tells an attacker which flaws to try (RFC 9110, 10.2.4)."""
        api = {
            b"x-content-type-options": b"nosniff",
            b"x-frame-options": b"DENY",
            b"referrer-policy": referrer_policy.encode(),
            b"cross-origin-opener-policy": b"same-origin",
            b"content-security-policy": content_security_policy.encode(),
        }
        if hsts_max_age is not None:
            api[b"strict-transport-security"] = (
                f"max-age={hsts_max_age}; includeSubDomains".encode()
            )
        if server is not None:
            api[b"server"] = server.encode("latin-1")
        self.api = api
        self.docs = {**api, b"content-security-policy": DOCS_CSP.encode()}
        self.docs_prefixes = docs_prefixes

    def for_path(self, path: str) -> dict[bytes, bytes]:
        return self.docs if path.startswith(self.docs_prefixes) else self.api
