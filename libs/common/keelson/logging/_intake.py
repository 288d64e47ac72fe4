"""CURVE keys of the log intake, derived from the deployment's master key.

The log service's ROUTER is a CURVE server; each sender is a CURVE client whose key pair is
derived from the master key and its service name, so the intake knows who sent a batch
from the key it authenticated, not from the service name written in the records.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import zmq
from zmq.utils import z85

from keelson.keys import KeyManager

__all__ = [
    "CurveKeyPair",
    "SenderCredentials",
    "intake_server_keys",
    "sender_keys",
    "senders_by_public_key",
]


@dataclass(frozen=True, slots=True)
class CurveKeyPair:
    """A Curve25519 key pair, Z85-encoded (40 bytes each), as ZeroMQ's socket options take."""

    public: bytes
    secret: bytes

    def __repr__(self) -> str:
        return f"CurveKeyPair(public={self.public!r})"


@dataclass(frozen=True, slots=True)
class SenderCredentials:
    """What a sender needs to reach the intake: its own key pair and the server's public key."""

    keys: CurveKeyPair
    server_public: bytes

    @classmethod
    def derive(cls, keys: KeyManager, service: str) -> SenderCredentials:
        return cls(sender_keys(keys, service), intake_server_keys(keys).public)

    def apply(self, socket: zmq.Socket[bytes]) -> None:
        """Make `socket` a CURVE client of the intake (before it connects)."""
        socket.curve_secretkey = self.keys.secret
        socket.curve_publickey = self.keys.public
        socket.curve_serverkey = self.server_public


def _key_pair(keys: KeyManager, purpose: str) -> CurveKeyPair:
    # Any 32 bytes are a Curve25519 secret key (the scalar is clamped when used).
    secret = z85.encode(keys.derive(purpose))
    return CurveKeyPair(zmq.curve_public(secret), secret)


def intake_server_keys(keys: KeyManager) -> CurveKeyPair:
    return _key_pair(keys, "logs-intake/server")


def sender_keys(keys: KeyManager, service: str) -> CurveKeyPair:
    return _key_pair(keys, f"logs-intake/sender/{service}")


def senders_by_public_key(keys: KeyManager, services: Iterable[str]) -> dict[bytes, str]:
    """`{public key: service}` for the senders an intake admits."""
    return {sender_keys(keys, service).public: service for service in services}
