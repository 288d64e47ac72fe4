"""The security plugin: bearer JWTs, route policies, signed identity upstream, headers, CORS."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from pydantic import BaseModel, Field, field_validator
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.context import RequestContext, context
from gateway.pipeline import GatewayPlugin
from gateway.policies import (
    DEFAULT_POLICIES,
    Access,
    Policy,
    PolicyTable,
    RoutePolicy,
    Verdict,
)
from keelson.auth import (
    DEFAULT_IDENTITY_MAX_AGE,
    IDENTITY_MAX_AGE,
    REVOCATIONS,
    REVOCATIONS_CHANNEL,
    TOKEN_VERIFIER,
    InvalidToken,
    Principal,
    RevocationList,
    identity_signer,
)
from keelson.bus import BUS
from keelson.config import PluginSettings
from keelson.errors import BadRequest, Forbidden, ServiceUnavailable, Unauthorized
from keelson.logging import user_id_var
from keelson.monitor import set_user
from keelson.plugins import PluginMetadata, Priority
from keelson.security_headers import API_CSP, DEFAULT_HSTS_MAX_AGE, SERVER, SecurityHeaders

__all__ = ["CorsConfig", "SecurityConfig", "SecurityPlugin"]

_INTERNAL_PREFIX = b"x-keelson-"

# An upstream accepts an identity header for the identity max age from its signing (60 s by
# default) and verifies each header text once: a principal's header is signed again once it
# is a sixth of that old (10 s), not every second, which spares the gateway most of its
# Ed25519 signatures and every upstream as many verifications, and leaves five sixths of the
# max age for clock skew and queueing.
_RESIGN_FRACTION = 6


class CorsConfig(BaseModel):
    allow_origins: list[str] = []  # exact origins, or ["*"] (never with credentials)
    allow_methods: list[str] = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    allow_headers: list[str] = ["authorization", "content-type", "x-request-id", "traceparent"]
    expose_headers: list[str] = [
        "x-request-id",
        "retry-after",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
    ]
    allow_credentials: bool = False
    max_age_seconds: int = Field(600, ge=0)


class SecurityConfig(BaseModel):
    policies: list[RoutePolicy] = DEFAULT_POLICIES
    default_policy: str = "user"
    hsts: bool = True
    hsts_max_age_seconds: int = Field(DEFAULT_HSTS_MAX_AGE, ge=0)
    content_security_policy: str = API_CSP
    referrer_policy: str = "no-referrer"
    cors: CorsConfig = CorsConfig()
    token_cache_size: int = Field(10_000, ge=0)
    # How long a "not revoked" answer from Redis stands for a token this gateway has
    # verified; broadcast revocations apply at once regardless. 0: ask Redis every time.
    revocation_recheck_seconds: float = Field(1.0, ge=0)

    @field_validator("default_policy")
    @classmethod
    def _parses(cls, value: str) -> str:
        Policy.parse(value)
        return value


class SecurityPlugin(GatewayPlugin):
    metadata = PluginMetadata(
        name="security",
        priority=Priority.SECURITY,
        description="JWT verification, route policies, signed identity, security headers, CORS",
        depends_on=("auth",),
    )

    async def initialize(self) -> None:
        self._adopt(self.options(SecurityConfig))
        self.verifier = self.container.resolve(TOKEN_VERIFIER)
        # The only holder of the identity key's private half (see keelson.auth._identity).
        self.identity_key = identity_signer(self.container.settings)
        max_age = self.container.resolve_optional(IDENTITY_MAX_AGE) or DEFAULT_IDENTITY_MAX_AGE
        self.resign_seconds = max(1, max_age // _RESIGN_FRACTION)
        self.shared_revocations = self.container.resolve_optional(REVOCATIONS)
        # Revocations announced by auth land here at once, without a Redis round trip;
        # the shared list (Redis) is asked again only after `revocation_recheck_seconds`.
        self.announced = RevocationList()
        self._checked: dict[str, float] = {}
        bus = self.container.resolve_optional(BUS)
        if bus is not None:
            bus.on_broadcast(REVOCATIONS_CHANNEL, self.announced.on_announcement)
            if self.shared_revocations is not None:
                bus.on_broadcast(REVOCATIONS_CHANNEL, self.shared_revocations.on_announcement)
        self._cache: dict[str, Principal] = {}
        # By the principal's id(), not its value: a frozen dataclass hashes all its fields in
        # Python on every lookup. Each entry holds its principal (so the id is not reused
        # while it lives) and is taken only for that very object; a verified token's
        # principal is one object for as long as the token is cached.
        self._signed: dict[int, tuple[Principal, int, list[tuple[bytes, bytes]]]] = {}

    def _adopt(self, config: SecurityConfig) -> None:
        self.config = config
        self.policies = PolicyTable(config.policies, config.default_policy)

    def prepare_reload(self, section: PluginSettings) -> Callable[[], None]:
        config = self.options(SecurityConfig, section)

        def apply() -> None:
            self.settings = section
            self._adopt(config)

        return apply

    def wrap(self, app: ASGIApp) -> ASGIApp:
        return _SecurityLayer(app, self)

    def cached(self, token: str) -> Principal | None:
        """The token's principal if nothing needs asking: verified before, unexpired, not
        announced revoked, and its shared revocation check still fresh; else None (then
        `authenticate` decides)."""
        cached = self._cache.get(token)  # `_unexpired`, inline: once a request
        if cached is None or (cached.expires_at is not None and cached.expires_at <= time.time()):
            return None
        jti = cached.jti
        if jti and (self.announced.revoked_here(jti) or self._recheck_due(jti)):
            return None
        return cached

    async def authenticate(self, token: str) -> Principal:
        """Verify once, then serve from cache until expiry; revocation is checked each time."""
        cached = self._unexpired(token)
        if cached is None:
            principal = await self.verifier.verify(token)
            self._remember(token, principal)
            return principal
        if cached.jti and await self._revoked(cached.jti):
            self._cache.pop(token, None)
            raise InvalidToken("token revoked")
        return cached

    def _unexpired(self, token: str) -> Principal | None:
        cached = self._cache.get(token)
        if cached is None or (cached.expires_at is not None and cached.expires_at <= time.time()):
            return None
        return cached

    def _recheck_due(self, jti: str) -> bool:
        """Whether the shared list (Redis) must be asked about `jti` again."""
        if self.shared_revocations is None:
            return False
        return (
            time.monotonic() - self._checked.get(jti, -1e9)
            >= self.config.revocation_recheck_seconds
        )

    async def _revoked(self, jti: str) -> bool:
        if self.announced.revoked_here(jti):
            return True
        shared = self.shared_revocations
        if shared is None or not self._recheck_due(jti):
            return False
        if len(self._checked) >= 100_000:
            self._checked.clear()
        self._checked[jti] = time.monotonic()
        return await shared.is_revoked(jti)

    def identity_headers(
        self, principal: Principal, *, now: float | None = None
    ) -> list[tuple[bytes, bytes]]:
        """The signed identity headers, as the proxy sends them: a principal's signature is
        sent again until it is `resign_seconds` old (see `_RESIGN_FRACTION`)."""
        second = int(time.time() if now is None else now)
        cached = self._signed.get(id(principal))
        if (
            cached is not None
            and cached[0] is principal
            and 0 <= second - cached[1] < self.resign_seconds
        ):
            return cached[2]
        signed = self.identity_key.sign(principal, now=second)
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in signed.items()]
        if len(self._signed) >= 10_000:
            self._signed.clear()
        self._signed[id(principal)] = (principal, second, headers)
        return headers

    def _remember(self, token: str, principal: Principal) -> None:
        size = self.config.token_cache_size
        if not size:
            return
        if len(self._cache) >= size:
            self._cache.pop(next(iter(self._cache)))
        self._cache[token] = principal


class _SecurityLayer:
    def __init__(self, app: ASGIApp, plugin: SecurityPlugin) -> None:
        self.app = app
        self.plugin = plugin
        config = plugin.config
        self.headers = SecurityHeaders(
            content_security_policy=config.content_security_policy,
            referrer_policy=config.referrer_policy,
            hsts_max_age=config.hsts_max_age_seconds if config.hsts else None,
            server=SERVER,
        )
        self.cors = _Cors(config.cors)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function (see GatewayPlugin.wrap) unless the token needs verifying.
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        origin = None
        token = None
        ours = False
        for name, value in headers:
            if name.startswith(_INTERNAL_PREFIX):
                ours = True  # identity headers only ever come from the gateway itself
            elif name == b"authorization" and value[:7].lower() == b"bearer ":
                token = value[7:].strip().decode("latin-1")
            elif name == b"origin":
                origin = value.decode("latin-1")
        if ours:  # a new list only then: the usual request keeps its own
            scope["headers"] = [h for h in headers if not h[0].startswith(_INTERNAL_PREFIX)]
        path: str = scope["path"]
        # The response gets these whatever the upstream said (the outermost layer applies them).
        ctx = context(scope)
        ex = ctx.response
        ex.enforce_policy(self.headers, path)
        if origin:
            if scope["method"] == "OPTIONS" and self.cors.is_preflight(scope):
                return self.cors.preflight(origin, scope, send)
            ex.add_headers(self.cors.response_headers(origin))
        policy = self.plugin.policies.for_request(scope["method"], path)
        principal = None
        if token:
            principal = self.plugin.cached(token)
            if principal is None:
                return self._authenticate(ctx, scope, receive, send, policy, token)
        return self._admit(ctx, scope, receive, send, policy, principal)

    async def _authenticate(
        self,
        ctx: RequestContext,
        scope: Scope,
        receive: Receive,
        send: Send,
        policy: Policy,
        token: str,
    ) -> None:
        try:
            principal: Principal | None = await self.plugin.authenticate(token)
        except InvalidToken as exc:
            # A public route serves a caller whose token is stale as anonymous.
            if policy.access is not Access.PUBLIC:
                await Unauthorized(exc.detail).send_to(send)
                return
            principal = None
        except ServiceUnavailable as exc:
            # Whether the token was revoked cannot be known now (Redis away, no mirror yet).
            await exc.send_to(send)
            return
        await self._admit(ctx, scope, receive, send, policy, principal)

    def _admit(
        self,
        ctx: RequestContext,
        scope: Scope,
        receive: Receive,
        send: Send,
        policy: Policy,
        principal: Principal | None,
    ) -> Awaitable[None]:
        verdict = policy.judge(principal)
        if verdict is Verdict.UNAUTHENTICATED:
            return Unauthorized("A valid bearer token is required.").send_to(send)
        if verdict is Verdict.FORBIDDEN:
            return Forbidden(f"This needs {policy}.").send_to(send)
        if principal is not None:
            ctx.principal = principal
            ctx.forward_headers = self.plugin.identity_headers(principal)
            # For the rest of the request's lines; ServiceMiddleware unbinds it at the end.
            user_id_var.set(principal.user_id)
            set_user(principal.user_id)  # Sentry: the id only, in this request's scope
        return self.app(scope, receive, send)


class _Cors:
    """CORS per the Fetch standard; header sets are built once here."""

    def __init__(self, config: CorsConfig) -> None:
        self.any_origin = "*" in config.allow_origins and not config.allow_credentials
        self.origins = frozenset(config.allow_origins)
        self.methods = frozenset(m.upper() for m in config.allow_methods)
        self.allow_headers = frozenset(h.lower() for h in config.allow_headers)
        self.credentials = config.allow_credentials
        self.expose = ", ".join(config.expose_headers).encode()
        self.preflight_headers = [
            (b"access-control-allow-methods", ", ".join(sorted(self.methods)).encode()),
            (b"access-control-allow-headers", ", ".join(sorted(self.allow_headers)).encode()),
            (b"access-control-max-age", str(config.max_age_seconds).encode()),
        ]

    def allowed(self, origin: str) -> bool:
        return self.any_origin or origin in self.origins

    def response_headers(self, origin: str) -> list[tuple[bytes, bytes]]:
        if not self.allowed(origin):
            return [(b"vary", b"Origin")]
        headers = [
            (b"access-control-allow-origin", b"*" if self.any_origin else origin.encode()),
            (b"vary", b"Origin"),
        ]
        if self.expose:
            headers.append((b"access-control-expose-headers", self.expose))
        if self.credentials:
            headers.append((b"access-control-allow-credentials", b"true"))
        return headers

    @staticmethod
    def is_preflight(scope: Scope) -> bool:
        return any(name == b"access-control-request-method" for name, _ in scope["headers"])

    async def preflight(self, origin: str, scope: Scope, send: Send) -> None:
        method = b""
        requested: set[str] = set()
        for name, value in scope["headers"]:
            if name == b"access-control-request-method":
                method = value.upper()
            elif name == b"access-control-request-headers":
                requested = {h.strip().lower() for h in value.decode("latin-1").split(",") if h}
        ok = (
            self.allowed(origin)
            and method.decode("latin-1") in self.methods
            and requested <= self.allow_headers
        )
        if not ok:
            # Not one CORS header, even for an allowed origin: the browser blocks the call.
            await BadRequest(
                "The origin, method or headers of this cross-origin request are not allowed.",
                headers={"Vary": "Origin"},
            ).send_to(send)
            return
        headers = [*self.response_headers(origin), *self.preflight_headers]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
