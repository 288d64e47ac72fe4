"""Login, the OAuth2 token form, refresh-token rotation and reuse, logout."""

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from jose import jwt

from auth_service.app import create_app
from auth_service.plugin import KEYRING
from keelson.auth import DEFAULT_AUDIENCE, DEFAULT_ISSUER

SignedIn = Callable[..., Awaitable[tuple[dict[str, Any], dict[str, Any]]]]
Bearer = Callable[[dict[str, Any]], dict[str, str]]


async def _refresh(client: httpx.AsyncClient, tokens: dict[str, Any]) -> httpx.Response:
    return await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )


async def test_login_returns_a_token_pair_with_the_documented_claims(
    client: httpx.AsyncClient, auth_app: FastAPI, signed_in: SignedIn
) -> None:
    user, tokens = await signed_in()
    assert set(tokens) == {"access_token", "refresh_token", "token_type", "expires_in", "scope"}
    assert tokens["token_type"] == "bearer"
    assert tokens["expires_in"] == 900
    header = jwt.get_unverified_header(tokens["access_token"])
    assert header["alg"] == "ES256"
    assert header["kid"] == auth_app.state.container.resolve(KEYRING).active.kid
    claims = jwt.get_unverified_claims(tokens["access_token"])
    assert claims["sub"] == user["id"]
    assert claims["roles"] == ["user"]
    assert "profile:read" in claims["scope"].split()
    assert claims["iss"] == DEFAULT_ISSUER and claims["aud"] == DEFAULT_AUDIENCE
    assert claims["exp"] - claims["iat"] == 900
    assert claims["jti"] and claims["sid"]
    assert tokens["refresh_token"] not in tokens["access_token"]


async def test_login_answers_no_store(
    client: httpx.AsyncClient, register: Callable[..., Awaitable[dict[str, Any]]]
) -> None:
    user = await register(client)
    response = await client.post(
        "/api/v1/auth/login", json={"email": user["email"], "password": user["password"]}
    )
    assert response.headers["cache-control"] == "no-store"


async def test_login_can_ask_for_fewer_scopes(
    client: httpx.AsyncClient, register: Callable[..., Awaitable[dict[str, Any]]]
) -> None:
    user = await register(client)
    response = await client.post(
        "/api/v1/auth/login",
        json={
            "email": user["email"],
            "password": user["password"],
            "scope": "profile:read users:write",
        },
    )
    assert response.json()["scope"] == "profile:read"


async def test_oauth2_password_form(
    client: httpx.AsyncClient,
    register: Callable[..., Awaitable[dict[str, Any]]],
    auth_header: Bearer,
) -> None:
    user = await register(client)
    response = await client.post(
        "/api/v1/auth/token",
        data={"username": user["email"], "password": user["password"], "grant_type": "password"},
    )
    assert response.status_code == 200
    me = await client.get("/api/v1/auth/me", headers=auth_header(response.json()))
    assert me.json()["id"] == user["id"]


async def test_wrong_password_and_unknown_email_answer_the_same(
    client: httpx.AsyncClient,
    register: Callable[..., Awaitable[dict[str, Any]]],
    new_email: Callable[..., str],
) -> None:
    user = await register(client)
    wrong = await client.post(
        "/api/v1/auth/login", json={"email": user["email"], "password": "not the password at all"}
    )
    unknown = await client.post(
        "/api/v1/auth/login", json={"email": new_email(), "password": "not the password at all"}
    )
    assert wrong.status_code == unknown.status_code == 401
    strip = {"request_id"}
    assert {k: v for k, v in wrong.json().items() if k not in strip} == {
        k: v for k, v in unknown.json().items() if k not in strip
    }
    assert wrong.headers["www-authenticate"] == unknown.headers["www-authenticate"] == "Bearer"


async def test_refresh_rotates_and_the_old_token_is_spent(
    client: httpx.AsyncClient, signed_in: SignedIn, auth_header: Bearer
) -> None:
    _, first = await signed_in()
    response = await _refresh(client, first)
    assert response.status_code == 200
    second = response.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert (await client.get("/api/v1/auth/me", headers=auth_header(second))).status_code == 200
    third = await _refresh(client, second)
    assert third.status_code == 200


async def test_reusing_a_spent_refresh_token_revokes_the_whole_family(
    client: httpx.AsyncClient, signed_in: SignedIn, auth_header: Bearer
) -> None:
    _, first = await signed_in()
    second = (await _refresh(client, first)).json()
    third = (await _refresh(client, second)).json()

    reuse = await _refresh(client, first)
    assert reuse.status_code == 401

    descendant = await _refresh(client, third)
    assert descendant.status_code == 401
    # The family's newest access token is refused at once, not at expiry.
    assert (await client.get("/api/v1/auth/me", headers=auth_header(third))).status_code == 401


async def test_reuse_leaves_other_logins_alone(
    client: httpx.AsyncClient,
    signed_in: SignedIn,
    login: Callable[..., Awaitable[dict[str, Any]]],
) -> None:
    user, first = await signed_in()
    other_login = await login(client, user["email"])
    await _refresh(client, first)
    await _refresh(client, first)
    other = await _refresh(client, other_login)
    assert other.status_code == 200


async def test_unknown_refresh_token_is_401(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/auth/refresh", json={"refresh_token": "made-up"})
    assert response.status_code == 401


async def test_concurrent_refresh_of_one_token_rotates_once_and_the_winner_survives(
    client: httpx.AsyncClient, signed_in: SignedIn, auth_header: Bearer
) -> None:
    _, tokens = await signed_in()
    responses = await asyncio.gather(*(_refresh(client, tokens) for _ in range(8)))
    assert [response.status_code for response in responses] == [200] * 8
    # One rotation: every presentation got the same successor pair.
    assert len({response.json()["refresh_token"] for response in responses}) == 1
    assert len({response.json()["access_token"] for response in responses}) == 1
    winner = responses[0].json()
    assert (await client.get("/api/v1/auth/me", headers=auth_header(winner))).status_code == 200
    assert (await _refresh(client, winner)).status_code == 200


async def test_a_retried_refresh_within_the_grace_window_gets_the_same_pair(
    client: httpx.AsyncClient, signed_in: SignedIn, auth_header: Bearer
) -> None:
    _, first = await signed_in()
    second = (await _refresh(client, first)).json()
    retry = await _refresh(client, first)
    assert retry.status_code == 200
    again = retry.json()
    assert again["refresh_token"] == second["refresh_token"]
    assert again["access_token"] == second["access_token"]
    assert 0 < again["expires_in"] <= 900
    assert (await client.get("/api/v1/auth/me", headers=auth_header(second))).status_code == 200
    assert (await _refresh(client, second)).status_code == 200


async def test_reuse_after_the_grace_window_revokes_the_family(
    client: httpx.AsyncClient, signed_in: SignedIn, auth_header: Bearer, auth_engine: Any
) -> None:
    from sqlalchemy import text

    _, first = await signed_in()
    second = (await _refresh(client, first)).json()
    async with auth_engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE auth.refresh_tokens SET used_at = now() - interval '11 seconds'"
                " WHERE token_hash = :digest"
            ),
            {"digest": hashlib.sha256(first["refresh_token"].encode()).digest()},
        )
    assert (await _refresh(client, first)).status_code == 401
    assert (await _refresh(client, second)).status_code == 401
    assert (await client.get("/api/v1/auth/me", headers=auth_header(second))).status_code == 401


async def test_without_a_grace_window_a_second_presentation_revokes_the_family(
    auth_settings_factory: Callable[..., Any],
    serve: Callable[..., Any],
    register: Callable[..., Awaitable[dict[str, Any]]],
    login: Callable[..., Awaitable[dict[str, Any]]],
    auth_engine: Any,
) -> None:
    from sqlalchemy import text

    settings = auth_settings_factory(refresh_reuse_grace_seconds=0)
    async with serve(create_app(settings)) as client:
        user = await register(client)
        tokens = await login(client, user["email"])
        responses = await asyncio.gather(*(_refresh(client, tokens) for _ in range(4)))
        assert sorted(response.status_code for response in responses) == [200] + [401] * 3
        async with auth_engine.connect() as conn:
            kept = await conn.scalar(
                text("SELECT successor_sealed FROM auth.refresh_tokens WHERE token_hash = :d"),
                {"d": hashlib.sha256(tokens["refresh_token"].encode()).digest()},
            )
        assert kept is None


async def test_the_kept_successor_is_sealed_and_dropped_when_the_family_ends(
    client: httpx.AsyncClient, signed_in: SignedIn, auth_header: Bearer, auth_engine: Any
) -> None:
    from sqlalchemy import text

    _, first = await signed_in()
    second = (await _refresh(client, first)).json()
    query = text("SELECT successor_sealed FROM auth.refresh_tokens WHERE token_hash = :d")
    digest = {"d": hashlib.sha256(first["refresh_token"].encode()).digest()}
    async with auth_engine.connect() as conn:
        sealed = await conn.scalar(query, digest)
    assert sealed
    assert second["refresh_token"] not in sealed and second["access_token"] not in sealed
    await client.post("/api/v1/auth/logout", headers=auth_header(second))
    async with auth_engine.connect() as conn:
        assert await conn.scalar(query, digest) is None
    assert (await _refresh(client, first)).status_code == 401


async def test_logout_refuses_the_access_token_at_once_and_ends_the_family(
    client: httpx.AsyncClient, signed_in: SignedIn, auth_header: Bearer
) -> None:
    _, tokens = await signed_in()
    assert (await client.get("/api/v1/auth/me", headers=auth_header(tokens))).status_code == 200
    logout = await client.post("/api/v1/auth/logout", headers=auth_header(tokens))
    assert logout.status_code == 204
    assert (await client.get("/api/v1/auth/me", headers=auth_header(tokens))).status_code == 401
    refresh = await _refresh(client, tokens)
    assert refresh.status_code == 401


async def test_logout_needs_a_token(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/v1/auth/logout")).status_code == 401


async def test_deactivated_user_cannot_log_in_or_refresh(
    client: httpx.AsyncClient,
    signed_in: SignedIn,
    auth_engine: Any,
) -> None:
    from sqlalchemy import text

    user, tokens = await signed_in()
    async with auth_engine.begin() as conn:
        await conn.execute(
            text("UPDATE auth.users SET is_active = false WHERE id = :id"), {"id": user["id"]}
        )
    login = await client.post(
        "/api/v1/auth/login", json={"email": user["email"], "password": user["password"]}
    )
    assert login.status_code == 401
    refresh = await _refresh(client, tokens)
    assert refresh.status_code == 401


async def _refresh_rows(engine: Any, *tokens: str) -> list[Any]:
    from sqlalchemy import text

    digests = [hashlib.sha256(token.encode()).digest() for token in tokens]
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT token_hash, created_at, expires_at FROM auth.refresh_tokens"
                " WHERE token_hash = ANY(:digests) ORDER BY created_at"
            ),
            {"digests": digests},
        )
        return list(rows)


async def test_refresh_tokens_are_stored_hashed_with_a_sliding_expiry(
    client: httpx.AsyncClient, signed_in: SignedIn, auth_engine: Any
) -> None:
    from sqlalchemy import text

    _, first = await signed_in()
    second = (await _refresh(client, first)).json()
    rows = await _refresh_rows(auth_engine, first["refresh_token"], second["refresh_token"])
    assert len(rows) == 2
    for row in rows:
        assert abs(row.expires_at - row.created_at - timedelta(days=30)) < timedelta(seconds=5)
    assert rows[1].expires_at > rows[0].expires_at  # each rotation starts the 30 days again
    async with auth_engine.connect() as conn:
        raw = await conn.scalar(
            text("SELECT count(*) FROM auth.refresh_tokens WHERE token_hash = :raw"),
            {"raw": first["refresh_token"].encode()},
        )
    assert raw == 0


async def test_refresh_lifetime_is_configurable_and_an_expired_token_is_refused(
    auth_settings_factory: Callable[..., Any],
    serve: Callable[..., Any],
    register: Callable[..., Awaitable[dict[str, Any]]],
    login: Callable[..., Awaitable[dict[str, Any]]],
    auth_engine: Any,
) -> None:
    from sqlalchemy import text

    async with serve(create_app(auth_settings_factory(refresh_token_ttl_seconds=120))) as client:
        user = await register(client)
        tokens = await login(client, user["email"])
        [row] = await _refresh_rows(auth_engine, tokens["refresh_token"])
        assert abs(row.expires_at - row.created_at - timedelta(seconds=120)) < timedelta(seconds=5)
        async with auth_engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE auth.refresh_tokens SET expires_at = now() - interval '1 second'"
                    " WHERE token_hash = :digest"
                ),
                {"digest": row.token_hash},
            )
        expired = await _refresh(client, tokens)
        assert expired.status_code == 401


async def test_logout_refuses_every_live_access_token_of_the_session(
    client: httpx.AsyncClient, signed_in: SignedIn, auth_header: Bearer
) -> None:
    _, first = await signed_in()
    second = (await _refresh(client, first)).json()
    # The token from before the refresh is still valid on its own...
    assert (await client.get("/api/v1/auth/me", headers=auth_header(first))).status_code == 200
    assert (
        await client.post("/api/v1/auth/logout", headers=auth_header(second))
    ).status_code == 204
    # ...and ending the session refuses it too, not only the one that logged out.
    assert (await client.get("/api/v1/auth/me", headers=auth_header(first))).status_code == 401


async def test_the_access_token_says_whether_the_email_is_verified(
    client: httpx.AsyncClient,
    register: Callable[..., Awaitable[dict[str, Any]]],
    login: Callable[..., Awaitable[dict[str, Any]]],
    auth_engine: Any,
) -> None:
    from sqlalchemy import text

    user = await register(client)
    unverified = await login(client, user["email"])
    assert jwt.get_unverified_claims(unverified["access_token"])["email_verified"] is False
    async with auth_engine.begin() as conn:
        await conn.execute(
            text("UPDATE auth.users SET email_verified_at = now() WHERE id = :id"),
            {"id": user["id"]},
        )
    verified = await login(client, user["email"])
    assert jwt.get_unverified_claims(verified["access_token"])["email_verified"] is True


async def test_an_unverified_account_cannot_log_in_when_verification_is_required(
    auth_settings_factory: Callable[..., Any],
    serve: Callable[..., Any],
    register: Callable[..., Awaitable[dict[str, Any]]],
    auth_engine: Any,
) -> None:
    from sqlalchemy import text

    async with serve(create_app(auth_settings_factory(require_verified_email=True))) as client:
        user = await register(client)
        refused = await client.post(
            "/api/v1/auth/login", json={"email": user["email"], "password": user["password"]}
        )
        assert refused.status_code == 403
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["rule"] == "email_unverified"
        assert "refresh_token" not in refused.text
        # Only the right password learns that the address is unverified.
        wrong = await client.post(
            "/api/v1/auth/login", json={"email": user["email"], "password": "not it at all"}
        )
        assert wrong.status_code == 401
        async with auth_engine.begin() as conn:
            await conn.execute(
                text("UPDATE auth.users SET email_verified_at = now() WHERE id = :id"),
                {"id": user["id"]},
            )
        allowed = await client.post(
            "/api/v1/auth/login", json={"email": user["email"], "password": user["password"]}
        )
        assert allowed.status_code == 200


async def test_a_logout_redis_cannot_store_answers_503_and_changes_nothing(
    client: httpx.AsyncClient, auth_app: FastAPI, signed_in: SignedIn, auth_header: Bearer
) -> None:
    """Sent: a logout while the revocation store (Redis) does not answer, then the same
    logout once it does. Holds: the first answers 503 and the session is untouched (its
    refresh token still rotates; before, the session ended, its access tokens' list was
    dropped and the token stayed valid); the retry answers 204 and refuses both."""
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    from keelson.auth import REVOCATIONS
    from keelson_dev.embedded import free_port

    _, tokens = await signed_in()
    revocations = auth_app.state.container.resolve(REVOCATIONS)
    working, gone = revocations.redis, Redis(port=free_port(), retry=Retry(NoBackoff(), 0))
    revocations.redis = gone
    try:
        failed = await client.post("/api/v1/auth/logout", headers=auth_header(tokens))
    finally:
        revocations.redis = working
        await gone.aclose()
    assert failed.status_code == 503, failed.text
    assert failed.headers["content-type"] == "application/problem+json"
    assert (await client.get("/api/v1/auth/me", headers=auth_header(tokens))).status_code == 200
    rotated = await _refresh(client, tokens)
    assert rotated.status_code == 200, rotated.text  # the session was not ended
    tokens = rotated.json()
    logout = await client.post("/api/v1/auth/logout", headers=auth_header(tokens))
    assert logout.status_code == 204
    assert (await client.get("/api/v1/auth/me", headers=auth_header(tokens))).status_code == 401
    assert (await _refresh(client, tokens)).status_code == 401
