"""The encryption plugin: X25519 handshake, then AES-256-GCM envelopes on request bodies."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from enum import StrEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.context import (
    CLIENT_CLOSED_REQUEST,
    BodyTooLarge,
    ClientGone,
    context,
    read_body,
    replay_body,
)
from gateway.pipeline import GatewayPlugin
from gateway.sessions import MemorySessions, RedisSessions, SecureSession, SessionStore
from keelson.client import (
    CONTENT_TYPE_HEADER,
    ENCRYPTED_MEDIA_TYPE,
    ERROR_HEADER,
    SEQ_HEADER,
    SESSION_EXPIRED,
    SESSION_HEADER,
    derive_session_keys,
    public_bytes,
    request_aad,
    request_nonce,
    response_aad,
    response_nonce,
)
from keelson.config import PluginSettings
from keelson.encoding import b64url_decode, b64url_encode
from keelson.errors import BadRequest, KeelsonError, Unauthorized
from keelson.plugins import Health, PluginMetadata, Priority
from keelson.redis_plugin import REDIS

__all__ = ["EncryptionConfig", "EncryptionPlugin", "Handshake"]

_SESSION = SESSION_HEADER.encode()
_SEQ = SEQ_HEADER.encode()
_INNER_TYPE = CONTENT_TYPE_HEADER.encode()
_E2E_PREFIX = b"x-e2e-"


class StoreKind(StrEnum):
    AUTO = "auto"
    REDIS = "redis"
    MEMORY = "memory"


class EncryptionConfig(BaseModel):
    session_ttl_seconds: int = Field(3600, ge=10)
    max_envelope_bytes: int = Field(1024 * 1024, ge=1024)
    store: StoreKind = StoreKind.AUTO
    # Paths that only accept enveloped requests (prefixes); others may also come plain.
    require_for: list[str] = []


class Handshake(BaseModel):
    session_id: str
    public_key: str
    expires_in: int
    algorithm: str = "X25519+HKDF-SHA256+AES-256-GCM"


class HandshakeError(ValueError):
    """The client's public key is not a valid X25519 key."""


class EncryptionPlugin(GatewayPlugin):
    metadata = PluginMetadata(
        name="encryption",
        priority=Priority.SECURITY,
        description="End-to-end encrypted bodies after an X25519 handshake",
        required=False,
    )

    async def initialize(self) -> None:
        self.config = self.options(EncryptionConfig)
        redis = self.container.resolve_optional(REDIS)
        if self.config.store is StoreKind.REDIS and redis is None:
            raise RuntimeError("encryption store is redis but KEELSON_REDIS_URL is not set")
        use_redis = redis is not None and self.config.store is not StoreKind.MEMORY
        self.sessions: SessionStore = (
            RedisSessions(redis) if use_redis and redis else (MemorySessions())
        )

    async def stop(self) -> None:
        await self.sessions.close()

    async def health(self) -> Health:
        kind = "redis" if isinstance(self.sessions, RedisSessions) else "memory"
        return Health(ok=True, detail=f"sessions in {kind}")

    def prepare_reload(self, section: PluginSettings) -> Callable[[], None]:
        config = self.options(EncryptionConfig, section)

        def apply() -> None:
            self.settings = section
            self.config = self.config.model_copy(
                update={
                    "require_for": config.require_for,
                    "session_ttl_seconds": config.session_ttl_seconds,
                }
            )

        return apply

    async def handshake(self, client_public_key: str) -> Handshake:
        """A fresh gateway key per session: a leaked session never exposes another one."""
        try:
            client_key = X25519PublicKey.from_public_bytes(b64url_decode(client_public_key))
        except ValueError:
            raise HandshakeError("public_key must be 32 bytes of X25519, base64url") from None
        private = X25519PrivateKey.generate()
        session_id = secrets.token_urlsafe(18)
        to_gateway, to_client = derive_session_keys(private.exchange(client_key), session_id)
        ttl = self.config.session_ttl_seconds
        await self.sessions.create(SecureSession(session_id, to_gateway, to_client), ttl)
        return Handshake(
            session_id=session_id,
            public_key=b64url_encode(public_bytes(private.public_key())),
            expires_in=ttl,
        )

    def wrap(self, app: ASGIApp) -> ASGIApp:
        return _EnvelopeLayer(app, self)


class _EnvelopeLayer:
    def __init__(self, app: ASGIApp, plugin: EncryptionPlugin) -> None:
        self.app = app
        self.plugin = plugin
        self.required = tuple(plugin.config.require_for)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function (see GatewayPlugin.wrap) unless the request is sealed.
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        session_id = seq_text = None
        inner_type = b""
        for name, value in scope["headers"]:
            if name == _SESSION:
                session_id = value.decode("latin-1")
            elif name == _SEQ:
                seq_text = value
            elif name == _INNER_TYPE:
                inner_type = value
        if session_id is not None:
            return self._sealed(scope, receive, send, session_id, seq_text, inner_type)
        if self.required and scope["path"].startswith(self.required):
            return BadRequest("This path only accepts encrypted requests.").send_to(send)
        return self.app(scope, receive, send)

    async def _sealed(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        session_id: str,
        seq_text: bytes | None,
        inner_type: bytes,
    ) -> None:
        try:
            session, seq, plaintext = await self._open(
                scope, receive, session_id, seq_text, inner_type
            )
        except KeelsonError as refusal:
            await refusal.send_to(send)
            return
        except ClientGone:
            # And no answer: nobody would read it.
            context(scope).response.status = CLIENT_CLOSED_REQUEST
            return
        scope["headers"] = _inner_headers(scope["headers"], inner_type, len(plaintext))
        context(scope).session = session.session_id
        await self.app(scope, replay_body(plaintext, receive), _Sealer(send, session, seq))

    async def _open(
        self,
        scope: Scope,
        receive: Receive,
        session_id: str,
        seq_text: bytes | None,
        inner_type: bytes,
    ) -> tuple[SecureSession, int, bytes]:
        sessions = self.plugin.sessions
        session = await sessions.get(session_id)
        if session is None:
            # About the session, not the caller's credentials: no WWW-Authenticate challenge.
            raise Unauthorized(
                "The encryption session is unknown or expired; shake hands again.",
                challenge=None,
                headers={ERROR_HEADER: SESSION_EXPIRED},
            )
        try:
            seq = int(seq_text or b"")
        except ValueError:
            raise BadRequest("The envelope has no valid sequence number.") from None
        if not 0 < seq < 2**63:
            raise BadRequest("The envelope has no valid sequence number.")
        limit = self.plugin.config.max_envelope_bytes
        try:
            sealed = await read_body(receive, limit)
        except BodyTooLarge:
            raise BadRequest(f"The envelope exceeds {limit} bytes.") from None
        target = scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        aad = request_aad(session_id, seq, scope["method"], target, inner_type.decode("latin-1"))
        try:
            plaintext = AESGCM(session.to_gateway).decrypt(request_nonce(seq), sealed, aad)
        except InvalidTag:
            raise BadRequest("The envelope failed authentication.") from None
        # Recorded only once authentic: forged envelopes cannot burn a client's counters.
        if not await sessions.use_counter(session_id, seq):
            raise BadRequest("The envelope was already used (replay).")
        return session, seq, plaintext


class _Sealer:
    """Collects the response body and sends it sealed under the request's counter."""

    def __init__(self, send: Send, session: SecureSession, seq: int) -> None:
        self.send = send
        self.session = session
        self.seq = seq
        self.start: Message | None = None
        self.chunks: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.start = message
            return
        if message["type"] != "http.response.body":
            await self.send(message)
            return
        self.chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        assert self.start is not None
        status: int = self.start["status"]
        headers = []
        inner_type = b""
        for name, value in self.start.get("headers", ()):
            lowered = name.lower()
            if lowered == b"content-type":
                inner_type = value
            elif lowered not in (b"content-length", b"content-encoding"):
                headers.append((name, value))
        aad = response_aad(self.session.session_id, self.seq, status, inner_type.decode("latin-1"))
        sealed = AESGCM(self.session.to_client).encrypt(
            response_nonce(self.seq), b"".join(self.chunks), aad
        )
        headers += [
            (b"content-type", ENCRYPTED_MEDIA_TYPE.encode()),
            (_INNER_TYPE, inner_type),
            (b"content-length", str(len(sealed)).encode()),
        ]
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": sealed})


def _inner_headers(
    headers: list[tuple[bytes, bytes]], inner_type: bytes, length: int
) -> list[tuple[bytes, bytes]]:
    kept = [
        (n, v)
        for n, v in headers
        if n not in (b"content-type", b"content-length", b"transfer-encoding")
        and not n.startswith(_E2E_PREFIX)
    ]
    if inner_type:
        kept.append((b"content-type", inner_type))
    if length:
        kept.append((b"content-length", str(length).encode()))
    return kept
