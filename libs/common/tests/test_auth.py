"""keelson.auth: token verification, JWKS caching, revocations, identity header, deps."""

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import JSONResponse
from jose import jwt
from pydantic import SecretStr, ValidationError
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from keelson.auth import (
    IDENTITY_HEADER,
    IDENTITY_KEY,
    REVOCATIONS,
    TOKEN_VERIFIER,
    AuthPlugin,
    CurrentUser,
    IdentityKey,
    InvalidIdentity,
    InvalidToken,
    JwksClient,
    Principal,
    RevocationList,
    StaticKeys,
    TokenVerifier,
    identity_key,
    identity_signer,
    identity_verifier,
    require_role,
    require_scope,
    sign_identity,
    verify_identity_headers,
)
from keelson.config import IdentitySettings, KeelsonSettings, LogSettings, PluginSettings
from keelson.health import readiness
from keelson.http import create_app
from keelson.keys import KeyManager, SigningKey
from keelson.plugins import PluginContainer
from keelson.service import build_container
from keelson_dev.testing import LiveServer, eventually

KEY = SigningKey.generate()
OTHER_KEY = SigningKey.generate()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    values = {
        "iss": "keelson-auth",
        "aud": "keelson",
        "sub": "user-1",
        "roles": ["user"],
        "scope": "profile:read users:read",
        "sid": "session-1",
        "jti": uuid.uuid4().hex,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def sign(key: SigningKey = KEY, **overrides: Any) -> str:
    token: str = jwt.encode(
        claims(**overrides), key.private_pem, algorithm="ES256", headers={"kid": key.kid}
    )
    return token


@pytest.fixture
def verifier() -> TokenVerifier:
    return TokenVerifier(StaticKeys([KEY.public_jwk()]))


async def test_a_good_token_becomes_a_principal(verifier: TokenVerifier) -> None:
    token = sign(roles=["user", "admin"])
    principal = await verifier.verify(token)
    assert principal.user_id == "user-1"
    assert principal.roles == {"user", "admin"}
    assert principal.scopes == {"profile:read", "users:read"}
    assert principal.session_id == "session-1"
    assert principal.jti == jwt.get_unverified_claims(token)["jti"]
    assert principal.has_role("admin") and not principal.has_scope("users:write")


def _forged(kind: str) -> str:
    now = int(time.time())
    if kind == "expired":
        return sign(iat=now - 900, nbf=now - 900, exp=now - 60)
    if kind == "not_yet_valid":
        return sign(nbf=now + 120, exp=now + 600)
    if kind == "wrong_audience":
        return sign(aud="another-api")
    if kind == "wrong_issuer":
        return sign(iss="https://attacker.example")
    if kind in ("no_exp", "no_jti", "no_sub", "no_nbf"):
        return sign(**{kind[3:]: None})
    if kind == "unknown_kid":
        return sign(OTHER_KEY)
    if kind == "tampered":
        header, payload, signature = sign().split(".")
        body = json.loads(base64.urlsafe_b64decode(payload + "=="))
        body["roles"] = ["admin"]
        return f"{header}.{_b64(json.dumps(body).encode())}.{signature}"
    if kind == "signed_by_other_key_with_known_kid":
        return jwt.encode(
            claims(), OTHER_KEY.private_pem, algorithm="ES256", headers={"kid": KEY.kid}
        )
    if kind == "alg_none":
        header = _b64(json.dumps({"alg": "none", "kid": KEY.kid}).encode())
        return f"{header}.{_b64(json.dumps(claims()).encode())}."
    if kind == "hs256_with_public_key":
        from jose import jwk

        secret = jwk.construct(KEY.public_jwk(), "ES256").to_pem()
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": KEY.kid}).encode())
        body = _b64(json.dumps(claims()).encode())
        mac = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
        return f"{header}.{body}.{_b64(mac)}"
    if kind == "no_kid":
        return jwt.encode(claims(), KEY.private_pem, algorithm="ES256")
    return "garbage"


@pytest.mark.parametrize(
    "kind",
    [
        "expired",
        "not_yet_valid",
        "wrong_audience",
        "wrong_issuer",
        "no_exp",
        "no_jti",
        "no_sub",
        "no_nbf",
        "unknown_kid",
        "tampered",
        "signed_by_other_key_with_known_kid",
        "alg_none",
        "hs256_with_public_key",
        "no_kid",
        "garbage",
    ],
)
async def test_bad_tokens_are_refused(verifier: TokenVerifier, kind: str) -> None:
    with pytest.raises(InvalidToken) as refused:
        await verifier.verify(_forged(kind))
    assert refused.value.status == 401


async def test_expired_says_so(verifier: TokenVerifier) -> None:
    now = int(time.time())
    with pytest.raises(InvalidToken, match="expired"):
        await verifier.verify(sign(iat=now - 900, nbf=now - 900, exp=now - 60))


async def test_leeway_tolerates_small_clock_skew() -> None:
    now = int(time.time())
    lenient = TokenVerifier(StaticKeys([KEY.public_jwk()]), leeway=30)
    await lenient.verify(sign(nbf=now + 5))


# --- JWKS over HTTP --------------------------------------------------------------------


class JwksServer:
    """A real JWKS endpoint (an ASGI app) whose keys and health a test controls."""

    def __init__(self, keys: list[SigningKey]) -> None:
        self.keys = keys
        self.failing = False
        self.requests = 0
        self.app = FastAPI()
        self.app.add_api_route("/.well-known/jwks.json", self.jwks)

    async def jwks(self) -> JSONResponse:
        self.requests += 1
        if self.failing:
            return JSONResponse({"detail": "down"}, status_code=503)
        return JSONResponse({"keys": [key.public_jwk() for key in self.keys]})

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://auth.test"
        )


JWKS_URL = "http://auth.test/.well-known/jwks.json"


@pytest.fixture
async def jwks_server() -> AsyncIterator[tuple[JwksServer, httpx.AsyncClient]]:
    server = JwksServer([KEY])
    async with server.client() as http:
        yield server, http


async def test_jwks_is_fetched_once_and_cached(
    jwks_server: tuple[JwksServer, httpx.AsyncClient],
) -> None:
    server, http = jwks_server
    verifier = TokenVerifier(JwksClient(http, JWKS_URL))
    for _ in range(20):
        await verifier.verify(sign())
    assert server.requests == 1


async def test_an_unknown_kid_refetches_and_a_rotated_key_verifies(
    jwks_server: tuple[JwksServer, httpx.AsyncClient],
) -> None:
    server, http = jwks_server
    keys = JwksClient(http, JWKS_URL, min_refresh_interval=0)
    verifier = TokenVerifier(keys)
    await verifier.verify(sign())
    server.keys = [KEY, OTHER_KEY]
    principal = await verifier.verify(sign(OTHER_KEY))
    assert principal.user_id == "user-1"
    assert server.requests == 2


async def test_made_up_kids_cannot_hammer_the_auth_service(
    jwks_server: tuple[JwksServer, httpx.AsyncClient],
) -> None:
    server, http = jwks_server
    verifier = TokenVerifier(JwksClient(http, JWKS_URL, min_refresh_interval=60))
    await verifier.verify(sign())
    for attempt in range(50):
        stranger = SigningKey.generate() if attempt % 10 == 0 else OTHER_KEY
        with pytest.raises(InvalidToken, match="unknown signing key"):
            await verifier.verify(sign(stranger))
    # Within the refresh interval of the first fetch nothing more is asked for.
    assert server.requests == 1


async def test_a_key_published_after_the_first_fetch_verifies_at_once(
    jwks_server: tuple[JwksServer, httpx.AsyncClient],
) -> None:
    # Cold start: this service fetched before auth had published anything.
    server, http = jwks_server
    server.keys = []
    keys = JwksClient(http, JWKS_URL)  # the default interval, as services run
    await keys.refresh()
    assert keys.kids == frozenset()
    server.keys = [KEY]

    async def verified() -> bool:
        try:
            await TokenVerifier(keys).verify(sign())
        except InvalidToken as exc:
            assert str(exc) == "unknown signing key"
            return False
        return True

    await eventually(verified, timeout=5, interval=0.01)
    assert server.requests == 2  # one refetch, however many refused tokens before it


async def test_concurrent_tokens_with_a_new_kid_share_one_refetch(
    jwks_server: tuple[JwksServer, httpx.AsyncClient],
) -> None:
    server, http = jwks_server
    keys = JwksClient(http, JWKS_URL, min_refresh_interval=0)
    verifier = TokenVerifier(keys)
    await verifier.verify(sign())
    server.keys = [KEY, OTHER_KEY]
    token = sign(OTHER_KEY)
    principals = await asyncio.gather(*(verifier.verify(token) for _ in range(20)))
    assert {p.user_id for p in principals} == {"user-1"}
    assert server.requests == 2


async def test_unknown_kids_refetch_at_most_once_per_interval_by_default(
    jwks_server: tuple[JwksServer, httpx.AsyncClient],
) -> None:
    server, http = jwks_server
    verifier = TokenVerifier(JwksClient(http, JWKS_URL))
    await verifier.verify(sign())
    made_up = [SigningKey.generate() for _ in range(5)]
    for stranger in made_up:
        for _ in range(20):
            with pytest.raises(InvalidToken, match="unknown signing key"):
                await verifier.verify(sign(stranger))
    # 100 forged tokens, in far less than the 1 s default interval: no refetch at all.
    assert server.requests == 1


async def test_known_keys_keep_working_while_the_auth_service_is_down(
    jwks_server: tuple[JwksServer, httpx.AsyncClient],
) -> None:
    server, http = jwks_server
    # max_age=0: every use finds the cache stale and tries to refetch.
    keys = JwksClient(http, JWKS_URL, min_refresh_interval=0, max_age=0)
    verifier = TokenVerifier(keys)
    await verifier.verify(sign())
    server.failing = True
    await verifier.verify(sign())
    assert server.requests >= 2 and keys.kids == {KEY.kid}


async def test_malformed_jwks_entries_are_skipped(
    jwks_server: tuple[JwksServer, httpx.AsyncClient],
) -> None:
    from keelson.auth import parse_jwks

    good = KEY.public_jwk()
    parsed = parse_jwks(
        {
            "keys": [
                good,
                {**good, "kid": "rsa", "kty": "RSA"},
                {**good, "kid": "hs", "alg": "HS256"},
                {**good, "kid": "broken", "x": "not-base64!"},
                "junk",
            ]
        }
    )
    assert set(parsed) == {KEY.kid}


# --- revocations ------------------------------------------------------------------------


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_a_revocation_is_seen_by_every_replica_at_once(redis: Redis) -> None:
    here, there = RevocationList(redis), RevocationList(redis)
    jti = uuid.uuid4().hex
    assert not await there.is_revoked(jti)
    await here.revoke(jti, time.time() + 120)
    assert await there.is_revoked(jti)
    ttl = await redis.ttl(f"keelson:auth:revoked:{jti}")
    assert 100 < ttl <= 122


async def test_revoking_an_expired_token_stores_nothing(redis: Redis) -> None:
    revocations = RevocationList(redis)
    jti = uuid.uuid4().hex
    await revocations.revoke(jti, time.time() - 5)
    assert not await redis.exists(f"keelson:auth:revoked:{jti}")


async def test_revocations_are_announced_and_remembered_from_announcements() -> None:
    announced: list[tuple[str, dict[str, Any]]] = []

    async def announce(channel: str, payload: dict[str, Any]) -> None:
        announced.append((channel, payload))

    sender, receiver = RevocationList(announce=announce), RevocationList()
    await sender.revoke("jti-1", time.time() + 60)
    [(channel, payload)] = announced
    assert channel == "auth.revocations"
    await receiver.on_announcement(payload)
    assert await receiver.is_revoked("jti-1")
    await receiver.on_announcement({"jti": "jti-2", "exp": time.time() - 1})
    assert not await receiver.is_revoked("jti-2")


class RecordingBus:
    """The two broadcast methods of a bus, delivering to the handlers in this process."""

    def __init__(self) -> None:
        self.handlers: list[Any] = []
        self.sent: list[str] = []

    def on_broadcast(self, channel: str, handler: Any) -> None:
        self.handlers.append(handler)

    async def broadcast(self, channel: str, payload: dict[str, Any]) -> None:
        self.sent.append(channel)
        for handler in self.handlers:
            await handler(payload)


async def test_a_revocation_list_on_the_bus_listens_and_announces_only_when_asked() -> None:
    bus = RecordingBus()
    listener = RevocationList.on_bus(None, bus)
    await listener.revoke("jti-quiet", time.time() + 60)
    assert bus.sent == []
    speaker = RevocationList.on_bus(None, bus, announce=True)
    await speaker.revoke("jti-1", time.time() + 60)
    assert bus.sent == ["auth.revocations"]
    assert await listener.is_revoked("jti-1")
    assert RevocationList.on_bus(None, None).announce is None


def unreachable_redis() -> Redis:
    from keelson_dev.embedded import free_port

    return Redis(port=free_port(), retry=Retry(NoBackoff(), 0))


async def test_without_redis_known_revocations_still_hold_and_revoking_is_503() -> None:
    from keelson.errors import ServiceUnavailable

    gone = unreachable_redis()
    revocations = RevocationList(gone)
    revocations.remember("announced", time.time() + 60)
    try:
        assert await revocations.is_revoked("announced")
        # Never synced: whether another token was revoked cannot be known, so no answer.
        with pytest.raises(ServiceUnavailable):
            await revocations.is_revoked("never-revoked")
        with pytest.raises(ServiceUnavailable):
            await revocations.revoke("logged-out", time.time() + 60)
        assert not revocations.revoked_here("logged-out")  # a failed revoke changes nothing
    finally:
        await gone.aclose()


async def test_a_process_started_before_an_outage_refuses_tokens_revoked_before_it(
    redis: Redis,
) -> None:
    from keelson.errors import ServiceUnavailable

    auth = RevocationList(redis)
    revoked = uuid.uuid4().hex
    await auth.revoke(revoked, time.time() + 120)
    # A replica (re)started after that revocation, which it never heard announced.
    replica = RevocationList(redis)
    assert await replica.sync()
    gone = unreachable_redis()
    replica.redis = gone  # Redis stops
    try:
        assert await replica.is_revoked(revoked)
        assert not await replica.is_revoked(uuid.uuid4().hex)
        with pytest.raises(ServiceUnavailable):
            await replica.revoke(uuid.uuid4().hex, time.time() + 60)
    finally:
        await gone.aclose()


async def test_when_redis_answers_again_the_mirror_catches_up(redis: Redis) -> None:
    replica = RevocationList(redis)
    assert await replica.sync()
    gone = unreachable_redis()
    replica.redis = gone
    try:
        assert not await replica.is_revoked("anything")  # answered from the mirror
    finally:
        await gone.aclose()
    # Meanwhile (Redis back, its announcement missed), auth revoked a token.
    missed = uuid.uuid4().hex
    await RevocationList(redis).revoke(missed, time.time() + 120)
    replica.redis = redis
    assert not await replica.is_revoked(uuid.uuid4().hex)  # Redis answers: a sync starts
    await eventually(lambda: replica.revoked_here(missed))


async def test_the_verifier_refuses_revoked_tokens(redis: Redis) -> None:
    revocations = RevocationList(redis)
    verifier = TokenVerifier(StaticKeys([KEY.public_jwk()]), revocations=revocations)
    token = sign()
    principal = await verifier.verify(token)
    assert principal.jti is not None
    await RevocationList(redis).revoke(principal.jti, time.time() + 60)
    with pytest.raises(InvalidToken, match="revoked"):
        await verifier.verify(token)


# --- identity header --------------------------------------------------------------------

IDENTITY = identity_key(KeyManager("k" * 40))
ALICE = Principal(
    user_id="alice",
    roles=frozenset({"admin", "user"}),
    scopes=frozenset({"users:read"}),
    jti="j1",
    session_id="s1",
    expires_at=int(time.time()) + 300,
)


def test_identity_header_round_trip() -> None:
    headers = sign_identity(ALICE, IDENTITY)
    assert list(headers) == [IDENTITY_HEADER]
    assert verify_identity_headers(headers, IDENTITY) == ALICE
    bare = Principal(user_id="bob")
    assert verify_identity_headers(sign_identity(bare, IDENTITY), IDENTITY) == bare
    odd = Principal(user_id="ünï.cøde,1", roles=frozenset({"a,b", "c d"}), scopes=frozenset({"x"}))
    assert verify_identity_headers(sign_identity(odd, IDENTITY), IDENTITY) == odd
    assert verify_identity_headers({}, IDENTITY) is None


def _signed(fields: Any) -> dict[str, str]:
    """An identity header carrying `fields` as given, correctly signed."""
    return _signed_payload(_b64(json.dumps(fields).encode()))


def _signed_payload(payload: str) -> dict[str, str]:
    # The documented format: Ed25519 over the v3 prefix and the payload, the key derived
    # from the master key for the purpose `internal-identity/ed25519` (the development pair).
    private = Ed25519PrivateKey.from_private_bytes(
        KeyManager("k" * 40).derive("internal-identity/ed25519")
    )
    signature = private.sign(b"keelson-identity/v3\n" + payload.encode())
    return {IDENTITY_HEADER: payload + "." + _b64(signature)}


def _hmac_signed(fields: Any, master: str) -> dict[str, str]:
    """A header in the old shared-key format: HMAC-SHA256 keyed from the master key."""
    payload = _b64(json.dumps(fields).encode())
    key = KeyManager(master).derive("internal-identity")
    mac = hmac.new(key, b"keelson-identity/v2\n" + payload.encode(), hashlib.sha256)
    return {IDENTITY_HEADER: payload + "." + _b64(mac.digest())}


def test_a_header_in_the_old_shared_key_format_is_refused() -> None:
    # Before: every service held this HMAC key (derived from the master key), so any
    # service could mint an admin. It no longer verifies anywhere.
    with pytest.raises(InvalidIdentity, match="signature"):
        verify_identity_headers(_hmac_signed(_fields(), "k" * 40), IDENTITY)


def test_services_hold_only_public_keys_and_refuse_any_other_signer() -> None:
    gateway = IdentityKey.generate()
    settings = KeelsonSettings(
        log=LogSettings(ship_endpoint=None),
        identity=IdentitySettings(public_keys=gateway.public_keys),
    )
    verifier = identity_verifier(settings)
    assert not isinstance(verifier, IdentityKey)  # nothing to sign with
    assert verify_identity_headers(gateway.sign(ALICE), verifier) == ALICE
    # The development pair (derived from the master key every service holds) is refused.
    development = identity_key(KeyManager(settings.master_key.get_secret_value()))
    with pytest.raises(InvalidIdentity, match="signature"):
        verify_identity_headers(development.sign(ALICE), verifier)
    with pytest.raises(InvalidIdentity, match="signature"):
        verify_identity_headers(IdentityKey.generate().sign(ALICE), verifier)
    # The gateway's own settings: the private half, as text or in a file.
    signer = identity_signer(
        KeelsonSettings(
            log=LogSettings(ship_endpoint=None),
            identity=IdentitySettings(
                signing_key=SecretStr(gateway.secret_text()), public_keys=gateway.public_keys
            ),
        )
    )
    assert verify_identity_headers(signer.sign(ALICE), verifier) == ALICE


def test_a_gateway_key_outside_the_public_keys_is_refused_at_start(tmp_path: Path) -> None:
    key_file = tmp_path / "identity.key"
    key_file.write_text(IdentityKey.generate().secret_text() + "\n")
    settings = KeelsonSettings(
        log=LogSettings(ship_endpoint=None),
        identity=IdentitySettings(
            signing_key_file=key_file, public_keys=IdentityKey.generate().public_keys
        ),
    )
    with pytest.raises(ValueError, match=r"not among identity\.public_keys"):
        identity_signer(settings)


@pytest.mark.parametrize("env", ["staging", "prod"])
def test_staging_and_production_need_the_gateways_public_key(env: str) -> None:
    with pytest.raises(ValidationError, match=r"identity\.public_keys must be set"):
        KeelsonSettings(env=env, master_key=SecretStr("m" * 40))
    with pytest.raises(ValidationError, match="raw 32-byte"):
        KeelsonSettings(identity=IdentitySettings.model_validate({"public_keys": ["AAAA"]}))


def _fields(**overrides: Any) -> list[Any]:
    """The payload's array, in order: user, roles, scopes, jti, session, expires, issued."""
    fields = {
        "user": "alice",
        "roles": ["admin"],
        "scopes": [],
        "jti": None,
        "session": None,
        "expires": None,
        "issued": int(time.time()),
    }
    return list({**fields, **overrides}.values())


def test_a_header_built_to_the_documented_format_verifies() -> None:
    assert verify_identity_headers(_signed(_fields()), IDENTITY) == Principal(
        user_id="alice", roles=frozenset({"admin"})
    )


def _edited_payload(token: str) -> str:
    payload, signature = token.split(".")
    fields = json.loads(base64.urlsafe_b64decode(payload + "=="))
    fields[1] = ["admin", "superuser", "user"]
    return _b64(json.dumps(fields).encode()) + "." + signature


def _flipped_signature(token: str) -> str:
    payload, signature = token.split(".")
    return payload + "." + ("A" if signature[0] != "A" else "B") + signature[1:]


@pytest.mark.parametrize(
    "tamper",
    [
        _edited_payload,
        _flipped_signature,
        lambda token: token[:-1],
        lambda token: token[: len(token) // 2],
        lambda token: token.split(".")[0],
        lambda token: token + ".x",
        lambda token: "",
        lambda token: ".",
        lambda token: "é" + token,
        lambda token: token.replace(".", ".é"),
        lambda token: "{}.AAAA",
    ],
)
def test_tampered_identity_header_is_refused(tamper: Any) -> None:
    token = sign_identity(ALICE, IDENTITY)[IDENTITY_HEADER]
    with pytest.raises(InvalidIdentity, match="signature"):
        verify_identity_headers({IDENTITY_HEADER: tamper(token)}, IDENTITY)


@pytest.mark.parametrize(
    "header",
    [
        _signed_payload("!!!"),
        _signed_payload(_b64(b"\xff not json")),
        _signed_payload(_b64(b"{")),
        _signed("not an array"),
        _signed("abcdefg"),
        _signed(7),
        _signed(None),
        _signed(dict(zip("abcdefg", _fields(), strict=True))),
        _signed(_fields()[:-1]),
        _signed([*_fields(), None]),
        _signed(_fields(user="")),
        _signed(_fields(user=None)),
        _signed(_fields(user=7)),
        _signed(_fields(roles="admin")),
        _signed(_fields(roles=["admin", 1])),
        _signed(_fields(scopes=None)),
        _signed(_fields(jti=5)),
        _signed(_fields(session=["s"])),
        _signed(_fields(expires="soon")),
        _signed(_fields(expires=True)),
        _signed(_fields(expires=2.5e9)),
        _signed(_fields(issued=None)),
        _signed(_fields(issued=str(int(time.time())))),
        _signed(_fields(issued=float(int(time.time())))),
    ],
)
def test_signed_garbage_is_refused_not_a_crash(header: dict[str, str]) -> None:
    with pytest.raises(InvalidIdentity, match="invalid identity header"):
        verify_identity_headers(header, IDENTITY)


def test_identity_header_from_another_key_or_too_old_is_refused() -> None:
    other = identity_key(KeyManager("z" * 40))
    with pytest.raises(InvalidIdentity, match="signature"):
        verify_identity_headers(sign_identity(ALICE, other), IDENTITY)
    now = time.time()
    old = sign_identity(ALICE, IDENTITY, now=now - 120)
    with pytest.raises(InvalidIdentity, match="expired"):
        verify_identity_headers(old, IDENTITY, max_age=60, now=now)
    future = sign_identity(ALICE, IDENTITY, now=now + 120)
    with pytest.raises(InvalidIdentity, match="expired"):
        verify_identity_headers(future, IDENTITY, max_age=60, now=now)
    assert verify_identity_headers(old, IDENTITY, max_age=180, now=now) == ALICE
    expired = Principal(user_id="bob", expires_at=int(now) - 1)
    with pytest.raises(InvalidIdentity, match="token expired"):
        verify_identity_headers(sign_identity(expired, IDENTITY), IDENTITY, now=now)


# --- FastAPI dependencies ---------------------------------------------------------------

router = APIRouter()


@router.get("/whoami")
async def whoami(principal: CurrentUser) -> dict[str, Any]:
    return {"user": principal.user_id, "roles": sorted(principal.roles)}


@router.get("/admin", dependencies=[Depends(require_role("admin"))])
async def admin_only() -> dict[str, str]:
    return {"ok": "admin"}


@router.get("/users")
async def users(
    principal: Annotated[Principal, Depends(require_scope("users:read"))],
) -> dict[str, str]:
    return {"ok": principal.user_id}


@pytest.fixture
def service_revocations(redis: Redis) -> RevocationList:
    """The revocation list of the service under test (the `api` fixture's)."""
    return RevocationList(redis)


@pytest.fixture
async def api(service_revocations: RevocationList) -> AsyncIterator[httpx.AsyncClient]:
    settings = KeelsonSettings(service="demo", log=LogSettings(ship_endpoint=None))
    container = PluginContainer(settings)
    revocations = service_revocations
    container.provide(
        TOKEN_VERIFIER, TokenVerifier(StaticKeys([KEY.public_jwk()]), revocations=revocations)
    )
    container.provide(REVOCATIONS, revocations)
    container.provide(IDENTITY_KEY, IDENTITY)
    app = create_app(settings, container=container, routers=[router])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://demo.test") as client:
        yield client


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_current_user_from_a_bearer_token(api: httpx.AsyncClient) -> None:
    response = await api.get("/whoami", headers=_bearer(sign()))
    assert response.json() == {"user": "user-1", "roles": ["user"]}


async def test_no_or_bad_credentials_are_401_problems(api: httpx.AsyncClient) -> None:
    for headers in (
        {},
        _bearer("garbage"),
        _bearer(_forged("expired")),
        {"Authorization": "Basic x"},
    ):
        response = await api.get("/whoami", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"] == "Bearer"


async def test_role_and_scope_checks_are_403(api: httpx.AsyncClient) -> None:
    assert (await api.get("/admin", headers=_bearer(sign()))).status_code == 403
    assert (await api.get("/admin", headers=_bearer(sign(roles=["admin"])))).status_code == 200
    assert (await api.get("/users", headers=_bearer(sign(scope="profile:read")))).status_code == 403
    assert (await api.get("/users", headers=_bearer(sign()))).status_code == 200
    assert (await api.get("/admin")).status_code == 401


async def test_signed_identity_header_stands_in_for_the_token(api: httpx.AsyncClient) -> None:
    response = await api.get("/admin", headers=sign_identity(ALICE, IDENTITY))
    assert response.status_code == 200
    forged = {IDENTITY_HEADER: _edited_payload(sign_identity(ALICE, IDENTITY)[IDENTITY_HEADER])}
    assert (await api.get("/whoami", headers=forged)).status_code == 401
    # A forged identity is not rescued by also sending a valid token.
    assert (await api.get("/whoami", headers={**forged, **_bearer(sign())})).status_code == 401
    for garbage in (b"\xe9.\xe9", b"", _signed(_fields(roles=7))[IDENTITY_HEADER].encode()):
        response = await api.get("/whoami", headers={IDENTITY_HEADER: garbage})
        assert response.status_code == 401, garbage


async def test_a_revoked_token_is_refused_by_the_dependency(
    api: httpx.AsyncClient, redis: Redis
) -> None:
    token = sign()
    assert (await api.get("/whoami", headers=_bearer(token))).status_code == 200
    await RevocationList(redis).revoke(jwt.get_unverified_claims(token)["jti"], time.time() + 60)
    assert (await api.get("/whoami", headers=_bearer(token))).status_code == 401


async def test_an_identity_header_of_a_revoked_token_is_refused(
    api: httpx.AsyncClient, redis: Redis, service_revocations: RevocationList
) -> None:
    principal = Principal(user_id="alice", roles=frozenset({"admin"}), jti=uuid.uuid4().hex)
    captured = sign_identity(principal, IDENTITY)
    assert (await api.get("/admin", headers=captured)).status_code == 200
    # Logged out: auth revokes and announces; this service hears it on the bus.
    announced: list[dict[str, Any]] = []

    async def announce(channel: str, payload: dict[str, Any]) -> None:
        announced.append(payload)

    await RevocationList(redis, announce=announce).revoke(principal.jti, time.time() + 60)
    for payload in announced:
        await service_revocations.on_announcement(payload)
    replayed = await api.get("/admin", headers=captured)
    assert replayed.status_code == 401
    assert replayed.json()["detail"] == "token revoked"


# --- the plugin, against a JWKS served over real HTTP ------------------------------------


async def test_auth_plugin_verifies_against_a_live_jwks(redis_url: str) -> None:
    server = JwksServer([KEY])
    with LiveServer(server.app) as live:
        settings = KeelsonSettings(
            service="demo",
            redis_url=redis_url,
            log=LogSettings(ship_endpoint=None),
            plugins={
                "auth": PluginSettings.model_validate(
                    {"jwks_url": f"{live.url}/.well-known/jwks.json", "audience": "keelson"}
                )
            },
        )

        container = build_container(settings, [AuthPlugin], database=False)
        await container.start()
        try:
            verifier = container.resolve(TOKEN_VERIFIER)
            assert (await verifier.verify(sign())).user_id == "user-1"
            assert server.requests == 1
            health = await container.health()
            assert health["auth"]["healthy"] is True
            assert container.resolve(IDENTITY_KEY) == identity_key(
                KeyManager(settings.master_key.get_secret_value())
            )
        finally:
            await container.stop()


async def test_a_service_without_signing_keys_is_not_ready_until_auth_publishes(
    redis_url: str,
) -> None:
    server = JwksServer([])
    with LiveServer(server.app) as live:
        settings = KeelsonSettings(
            service="demo",
            redis_url=redis_url,
            log=LogSettings(ship_endpoint=None),
            plugins={
                "auth": PluginSettings.model_validate(
                    {
                        "jwks_url": f"{live.url}/.well-known/jwks.json",
                        "jwks_min_refresh_seconds": 0.05,
                    }
                )
            },
        )
        container = build_container(settings, [AuthPlugin], database=False)
        await container.start()
        try:
            status, report = await readiness(container)
            assert status == "unavailable", report
            server.keys = [KEY]

            async def ready() -> bool:
                return (await readiness(container))[0] == "ready"

            await eventually(ready, timeout=5, interval=0.02)
            # Ready means keys: the first token signed with them is accepted.
            verifier = container.resolve(TOKEN_VERIFIER)
            assert (await verifier.verify(sign())).user_id == "user-1"
        finally:
            await container.stop()


# Both ages lie on the other side of the 60 s default from the configured window.
@pytest.mark.parametrize(
    ("max_age", "age", "status"), [(300, 120, 200), (30, 45, 401)], ids=["longer", "shorter"]
)
async def test_identity_headers_are_accepted_for_the_configured_max_age(
    max_age: int, age: int, status: int
) -> None:
    with LiveServer(JwksServer([KEY]).app) as jwks:
        settings = KeelsonSettings(
            service="demo",
            log=LogSettings(ship_endpoint=None),
            plugins={
                "auth": PluginSettings.model_validate(
                    {
                        "jwks_url": f"{jwks.url}/.well-known/jwks.json",
                        "identity_max_age_seconds": max_age,
                    }
                )
            },
        )

        container = build_container(settings, [AuthPlugin], database=False)
        app = create_app(settings, container=container, routers=[router])
        await container.start()
        try:
            key = identity_key(KeyManager(settings.master_key.get_secret_value()))
            assert container.resolve(IDENTITY_KEY) == key
            headers = sign_identity(ALICE, key, now=time.time() - age)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://demo.test") as api:
                response = await api.get("/whoami", headers=headers)
        finally:
            await container.stop()
    assert response.status_code == status
    if status == 401:
        assert response.json()["detail"] == "identity header expired"


def test_principal_from_claims_tolerates_missing_optional_claims() -> None:
    principal = Principal.from_claims({"sub": "u", "jti": "j"})
    assert principal == Principal(user_id="u", jti="j")
