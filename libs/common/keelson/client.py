"""`SecureClient`: an httpx client that speaks the gateway's end-to-end encrypted envelopes.

The protocol (the gateway's `encryption` plugin is the other side):

1. `POST /api/v1/handshake` `{"public_key": <X25519, base64url>}` answers
   `{"session_id", "public_key", "expires_in"}`. Both sides derive two AES-256-GCM keys
   from the X25519 secret with HKDF-SHA256 (salt: the session id): client→gateway and
   gateway→client.
2. A request sends `X-E2E-Session`, `X-E2E-Seq` (a counter, never reused) and the real
   media type in `X-E2E-Content-Type`; its body is the sealed plaintext (possibly empty).
   The nonce is the direction and the counter; the associated data binds session,
   counter, method, path and media type, so a body cannot be moved to another request.
3. The response body is sealed with the other key under the same counter, binding the
   status and media type. A replayed counter or a tampered envelope is refused with 400,
   an unknown or expired session with 401 (`X-E2E-Error: session-expired`), and the
   client then shakes hands again once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

import httpx
import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keelson.encoding import b64url_decode, b64url_encode

__all__ = [
    "CONTENT_TYPE_HEADER",
    "ENCRYPTED_MEDIA_TYPE",
    "ERROR_HEADER",
    "HANDSHAKE_PATH",
    "SEQ_HEADER",
    "SESSION_EXPIRED",
    "SESSION_HEADER",
    "SecureChannelError",
    "SecureClient",
    "derive_session_keys",
    "public_bytes",
    "request_aad",
    "request_nonce",
    "response_aad",
    "response_nonce",
]

HANDSHAKE_PATH = "/api/v1/handshake"
SESSION_HEADER = "x-e2e-session"
SEQ_HEADER = "x-e2e-seq"
CONTENT_TYPE_HEADER = "x-e2e-content-type"
ERROR_HEADER = "x-e2e-error"
SESSION_EXPIRED = "session-expired"
ENCRYPTED_MEDIA_TYPE = "application/vnd.keelson.e2e"
_TO_GATEWAY = b"c2s\x00"
_TO_CLIENT = b"s2c\x00"


class SecureChannelError(RuntimeError):
    """The gateway's answer could not be opened: it was altered or the session is broken."""


def public_bytes(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def derive_session_keys(shared_secret: bytes, session_id: str) -> tuple[bytes, bytes]:
    """(client→gateway key, gateway→client key) from the X25519 shared secret."""
    material = HKDF(
        algorithm=hashes.SHA256(),
        length=64,
        salt=session_id.encode(),
        info=b"keelson-e2e/v1",
    ).derive(shared_secret)
    return material[:32], material[32:]


def request_nonce(seq: int) -> bytes:
    return _TO_GATEWAY + seq.to_bytes(8, "big")


def response_nonce(seq: int) -> bytes:
    return _TO_CLIENT + seq.to_bytes(8, "big")


def request_aad(session_id: str, seq: int, method: str, target: str, media_type: str) -> bytes:
    """`target` is the raw path plus `?query` when there is one, exactly as sent."""
    return "\n".join(("req", session_id, str(seq), method.upper(), target, media_type)).encode()


def response_aad(session_id: str, seq: int, status: int, media_type: str) -> bytes:
    return "\n".join(("res", session_id, str(seq), str(status), media_type)).encode()


class SecureClient:
    """Async client whose request and response bodies travel sealed end to end.

    Headers (the bearer token among them) travel as usual: TLS protects them; the
    envelope keeps bodies opaque to everything between this client and the gateway.
    """

    def __init__(
        self,
        base_url: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url, transport=transport, headers=headers, timeout=timeout
        )
        self.session_id: str | None = None
        self._seq = 0
        self._to_gateway: AESGCM | None = None
        self._to_client: AESGCM | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def handshake(self) -> None:
        """Agree on fresh keys with the gateway (done automatically before the first call)."""
        private = X25519PrivateKey.generate()
        response = await self._http.post(
            HANDSHAKE_PATH, json={"public_key": b64url_encode(public_bytes(private.public_key()))}
        )
        response.raise_for_status()
        answer = response.json()
        gateway_key = X25519PublicKey.from_public_bytes(b64url_decode(answer["public_key"]))
        to_gateway, to_client = derive_session_keys(
            private.exchange(gateway_key), answer["session_id"]
        )
        self.session_id = answer["session_id"]
        self._to_gateway, self._to_client = AESGCM(to_gateway), AESGCM(to_client)
        self._seq = 0

    async def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Seal the body, send, open the answer; one new handshake if the session expired."""
        if json is not None:
            content = orjson.dumps(json)
            headers = {"content-type": "application/json", **(headers or {})}
        for attempt in (1, 2):
            if self.session_id is None:
                await self.handshake()
            response = await self._send(method, url, content or b"", params, headers or {})
            expired = response.headers.get(ERROR_HEADER) == SESSION_EXPIRED
            if response.status_code == 401 and expired and attempt == 1:
                self.session_id = None
                continue
            return self._open(response)
        raise AssertionError("unreachable")

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", url, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("POST", url, **kwargs)

    async def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("PUT", url, **kwargs)

    async def patch(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("PATCH", url, **kwargs)

    async def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("DELETE", url, **kwargs)

    def seal(self, request: httpx.Request, body: bytes) -> httpx.Request:
        """Turn a plain request into its envelope (public for tests of tampering)."""
        assert self.session_id is not None and self._to_gateway is not None
        self._seq += 1
        seq = self._seq
        media_type = request.headers.get("content-type", "")
        target = request.url.raw_path.decode("ascii")
        aad = request_aad(self.session_id, seq, request.method, target, media_type)
        sealed = self._to_gateway.encrypt(request_nonce(seq), body, aad)
        headers = {k: v for k, v in request.headers.items() if k not in ("content-type",)}
        headers.update(
            {
                SESSION_HEADER: self.session_id,
                SEQ_HEADER: str(seq),
                CONTENT_TYPE_HEADER: media_type,
                "content-type": ENCRYPTED_MEDIA_TYPE,
                "content-length": str(len(sealed)),
                # The sealed body is opened before anything could decompress it.
                "accept-encoding": "identity",
            }
        )
        return httpx.Request(request.method, request.url, headers=headers, content=sealed)

    async def _send(
        self,
        method: str,
        url: str,
        body: bytes,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str],
    ) -> httpx.Response:
        plain = self._http.build_request(method, url, params=params, headers=headers)
        sealed = self.seal(plain, body)
        response = await self._http.send(sealed)
        response.extensions["e2e_seq"] = int(sealed.headers[SEQ_HEADER])
        return response

    def _open(self, response: httpx.Response) -> httpx.Response:
        media = response.headers.get("content-type", "").split(";")[0].strip()
        if media != ENCRYPTED_MEDIA_TYPE:
            return response  # refused by the gateway before a session applied (plain problem)
        assert self.session_id is not None and self._to_client is not None
        seq: int = response.extensions["e2e_seq"]
        inner_type = response.headers.get(CONTENT_TYPE_HEADER, "")
        aad = response_aad(self.session_id, seq, response.status_code, inner_type)
        try:
            body = self._to_client.decrypt(response_nonce(seq), response.content, aad)
        except InvalidTag:
            raise SecureChannelError("the gateway's response failed authentication") from None
        headers = [
            (k, v)
            for k, v in response.headers.multi_items()
            if k not in ("content-type", "content-length", CONTENT_TYPE_HEADER)
        ]
        if inner_type:
            headers.append(("content-type", inner_type))
        return httpx.Response(
            response.status_code,
            headers=headers,
            content=body,
            request=response.request,
            extensions=response.extensions,
        )
