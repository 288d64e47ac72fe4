import time

from gateway_testkit import (
    ServerThread,
    gateway_settings,
    running_gateway,
    upstreams_config,
)
from gateway_upstream import TokenMint

from keelson.auth import (
    DEFAULT_IDENTITY_MAX_AGE,
    IDENTITY_HEADER,
    Principal,
    identity_key,
    identity_verifier,
    sign_identity,
)
from keelson.keys import KeyManager
from keelson_dev.testing import eventually


def secured(upstream: ServerThread, auth_upstream: ServerThread, **security: object):
    return gateway_settings(
        routing=upstreams_config(logs=upstream.url, auth=auth_upstream.url),
        security={
            "policies": [
                {"path": "/api/v1/logs/items*", "methods": ["POST"], "allow": "scope:items:write"},
                {"path": "/api/v1/logs/slow", "allow": "role:ops"},
                {"path": "/api/v1/logs/stream", "allow": "public"},
                {"path": "/api/v1/auth*", "allow": "public"},
                {"path": "/api/v1/admin*", "allow": "role:admin"},
            ],
            "default_policy": "user",
            **security,
        },
        rate_limiting={"storage": "memory"},
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_policies_give_401_and_403(
    upstream: ServerThread, auth_upstream: ServerThread, mint: TokenMint
) -> None:
    async with running_gateway(secured(upstream, auth_upstream)) as (_, client):
        anonymous = await client.get("/api/v1/logs/echo")
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"] == "Bearer"
        assert anonymous.headers["content-type"] == "application/problem+json"

        user = bearer(mint.mint(roles=("user",)))
        assert (await client.get("/api/v1/logs/echo", headers=user)).status_code == 200
        assert (await client.get("/api/v1/logs/slow?seconds=0", headers=user)).status_code == 403
        ops = bearer(mint.mint(roles=("ops",)))
        assert (await client.get("/api/v1/logs/slow?seconds=0", headers=ops)).status_code == 200

        body = {"name": "a", "count": 1}
        denied = await client.post("/api/v1/logs/items", json=body, headers=user)
        assert denied.status_code == 403
        writer = bearer(mint.mint(scope="items:write items:read"))
        assert (
            await client.post("/api/v1/logs/items", json=body, headers=writer)
        ).status_code == 201

        assert (await client.get("/api/v1/logs/stream?chunks=1&size=1")).status_code == 200

        expired = bearer(mint.mint(expires_in=-60))
        refused = await client.get("/api/v1/logs/echo", headers=expired)
        assert refused.status_code == 401 and refused.json()["detail"] == "token expired"
        other_key = bearer(TokenMint().mint())
        assert (await client.get("/api/v1/logs/echo", headers=other_key)).status_code == 401
        assert (await client.get("/api/v1/logs/echo", headers=bearer("x.y.z"))).status_code == 401


async def test_of_repeated_authorization_headers_the_last_bearer_token_counts(
    upstream: ServerThread, auth_upstream: ServerThread, mint: TokenMint
) -> None:
    token = mint.mint(roles=("user",))
    async with running_gateway(secured(upstream, auth_upstream)) as (_, client):
        after = [("Authorization", f"Bearer {token}"), ("Authorization", "Basic dTpw")]
        assert (await client.get("/api/v1/logs/echo", headers=after)).status_code == 200
        before = [("Authorization", "Bearer x.y.z"), ("Authorization", f"Bearer {token}")]
        assert (await client.get("/api/v1/logs/echo", headers=before)).status_code == 200
        last_bad = [("Authorization", f"Bearer {token}"), ("Authorization", "Bearer x.y.z")]
        assert (await client.get("/api/v1/logs/echo", headers=last_bad)).status_code == 401


async def test_identity_is_forwarded_signed_and_forgeries_are_stripped(
    upstream: ServerThread, auth_upstream: ServerThread, mint: TokenMint
) -> None:
    settings = secured(upstream, auth_upstream)
    key = identity_key(KeyManager(settings.master_key.get_secret_value()))
    admin = Principal(user_id="admin", roles=frozenset({"admin"}))
    forged = {
        # Even a correctly signed identity (a replayed one, say) never comes from a client.
        "X-Keelson-Identity": sign_identity(admin, key)[IDENTITY_HEADER],
        "X-Keelson-User": "admin",
        "X-Keelson-Roles": "admin",
        "X-Keelson-Identity-Signature": "forged",
    }
    async with running_gateway(settings) as (_, client):
        anonymous = await client.get("/api/v1/auth/whoami", headers=forged)
        assert anonymous.status_code == 200
        assert anonymous.json() == {"user_id": None, "roles": [], "forwarded": {}}

        token = mint.mint("user-42", roles=("user", "ops"))
        signed = await client.get("/api/v1/auth/whoami", headers={**forged, **bearer(token)})
        assert signed.status_code == 200
        assert signed.json()["user_id"] == "user-42"
        assert signed.json()["roles"] == ["ops", "user"]
        assert list(signed.json()["forwarded"]) == [IDENTITY_HEADER]


async def test_an_identity_header_is_signed_again_only_once_a_sixth_of_its_max_age_old(
    upstream: ServerThread, auth_upstream: ServerThread
) -> None:
    from gateway.plugins.security import SecurityPlugin

    settings = secured(upstream, auth_upstream)
    verifier = identity_verifier(settings)
    user = Principal(user_id="user-42", roles=frozenset({"user"}))
    async with running_gateway(settings) as (app, _):
        plugin = app.state.container.get(SecurityPlugin)
        first = plugin.identity_headers(user, now=1_000_000)
        # The default max age is 60 s: the same signature serves for 10 s, then a new one.
        assert plugin.identity_headers(user, now=1_000_009.9) is first
        renewed = plugin.identity_headers(user, now=1_000_010)
        assert renewed != first
        for headers, now in ((first, 1_000_000 + DEFAULT_IDENTITY_MAX_AGE), (renewed, 1_000_011)):
            text = {name.decode(): value.decode() for name, value in headers}
            assert verifier.verify(text, now=now) == user
        # A clock that went back gets a signature of its own time, not a future one.
        assert plugin.identity_headers(user, now=999_990) not in (first, renewed)


async def test_revoked_token_is_refused_even_when_cached(
    upstream: ServerThread, auth_upstream: ServerThread, mint: TokenMint
) -> None:
    from keelson.auth import REVOCATIONS

    async with running_gateway(secured(upstream, auth_upstream)) as (app, client):
        token = mint.mint(jti="jti-to-revoke")
        assert (await client.get("/api/v1/logs/echo", headers=bearer(token))).status_code == 200
        revocations = app.state.container.resolve(REVOCATIONS)
        await revocations.on_announcement({"jti": "jti-to-revoke", "exp": 2**31})
        refused = await client.get("/api/v1/logs/echo", headers=bearer(token))
        assert refused.status_code == 401 and refused.json()["detail"] == "token revoked"


async def test_admin_api_lists_plugins_for_admins_only(
    upstream: ServerThread, auth_upstream: ServerThread, mint: TokenMint
) -> None:
    async with running_gateway(secured(upstream, auth_upstream)) as (_, client):
        assert (await client.get("/api/v1/admin/plugins")).status_code == 401
        user = bearer(mint.mint(roles=("user",)))
        assert (await client.get("/api/v1/admin/plugins", headers=user)).status_code == 403
        admin = bearer(mint.mint(roles=("admin",)))
        response = await client.get("/api/v1/admin/plugins", headers=admin)
        assert response.status_code == 200
        report = response.json()
        assert report["pipeline"] == [
            "access_log",
            "encryption",
            "security",
            "rate_limiting",
            "validation",
            "routing",
        ]
        assert report["plugins"]["message_bus"]["state"] == "running"
        assert report["plugins"]["security"]["state"] == "running"
        assert report["plugins"]["routing"]["healthy"] is False  # payments etc. are not up


async def test_security_headers_and_cors(
    upstream: ServerThread, auth_upstream: ServerThread, mint: TokenMint
) -> None:
    cors = {"allow_origins": ["https://app.example"], "allow_credentials": True}
    async with running_gateway(secured(upstream, auth_upstream, cors=cors)) as (_, client):
        response = await client.get(
            "/api/v1/logs/echo",
            headers={**bearer(mint.mint()), "Origin": "https://app.example"},
        )
        assert response.headers["strict-transport-security"].startswith("max-age=")
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["content-security-policy"] == (
            "default-src 'none'; frame-ancestors 'none'"
        )
        assert len(response.headers.get_list("x-frame-options")) == 1
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        assert response.headers["access-control-allow-credentials"] == "true"
        assert "ratelimit-remaining" in response.headers["access-control-expose-headers"]

        preflight = await client.options(
            "/api/v1/logs/items",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, authorization",
            },
        )
        assert preflight.status_code == 204
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert preflight.headers["access-control-allow-credentials"] == "true"
        evil = await client.options(
            "/api/v1/logs/items",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert evil.status_code == 400
        assert "access-control-allow-origin" not in evil.headers

        docs = await client.get("/docs")
        policy = docs.headers["content-security-policy"]
        assert "script-src 'self' 'unsafe-inline';" in policy
        assert "http" not in policy, "no other origin: the docs' assets are the gateway's own"


async def test_a_refused_preflight_from_an_allowed_origin_has_no_cors_headers(
    upstream: ServerThread, auth_upstream: ServerThread
) -> None:
    cors = {"allow_origins": ["https://app.example"], "allow_credentials": True}
    asks = [
        {"Access-Control-Request-Method": "TRACE"},
        {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-other"},
    ]
    async with running_gateway(secured(upstream, auth_upstream, cors=cors)) as (_, client):
        for ask in asks:
            refused = await client.options(
                "/api/v1/logs/items", headers={"Origin": "https://app.example", **ask}
            )
            assert refused.status_code == 400
            assert [n for n in refused.headers if n.startswith("access-control-")] == []
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.headers["vary"] == "Origin"


async def test_revocation_in_redis_reaches_the_gateway(
    upstream: ServerThread, auth_upstream: ServerThread, mint: TokenMint, redis_url: str
) -> None:
    from redis.asyncio import Redis

    from keelson.auth import RevocationList

    settings = secured(upstream, auth_upstream, revocation_recheck_seconds=0)
    settings.redis_url = redis_url
    async with running_gateway(settings) as (_, client):
        token = mint.mint(jti="revoked-in-redis")
        assert (await client.get("/api/v1/logs/echo", headers=bearer(token))).status_code == 200
        redis = Redis.from_url(redis_url)
        try:
            await RevocationList(redis).revoke("revoked-in-redis", time.time() + 300)
        finally:
            await redis.aclose()
        refused = await client.get("/api/v1/logs/echo", headers=bearer(token))
        assert refused.status_code == 401 and refused.json()["detail"] == "token revoked"


async def test_revocation_broadcast_applies_at_once(
    upstream: ServerThread, auth_upstream: ServerThread, mint: TokenMint, redis_url: str
) -> None:
    from redis.asyncio import Redis

    from keelson.auth import REVOCATIONS_CHANNEL
    from keelson.bus import RedisBus

    settings = secured(upstream, auth_upstream, revocation_recheck_seconds=3600)
    settings.redis_url = redis_url
    async with running_gateway(settings) as (_, client):
        token = mint.mint(jti="revoked-by-broadcast")
        assert (await client.get("/api/v1/logs/echo", headers=bearer(token))).status_code == 200
        assert (await client.get("/api/v1/logs/echo", headers=bearer(token))).status_code == 200
        redis = Redis.from_url(redis_url)
        bus = RedisBus(redis, producer="auth")
        try:

            async def refused() -> bool:
                await bus.broadcast(
                    REVOCATIONS_CHANNEL, {"jti": "revoked-by-broadcast", "exp": time.time() + 300}
                )
                response = await client.get("/api/v1/logs/echo", headers=bearer(token))
                return response.status_code == 401

            await eventually(refused)
        finally:
            await redis.aclose()
