"""`POST /api/v1/handshake`: start an end-to-end encrypted session."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from gateway.deps import EncryptionDep
from gateway.plugins.encryption import Handshake, HandshakeError
from keelson.client import HANDSHAKE_PATH
from keelson.errors import Unprocessable

__all__ = ["router"]

router = APIRouter(tags=["encryption"])


class HandshakeRequest(BaseModel):
    public_key: str


@router.post(HANDSHAKE_PATH, status_code=201)
async def create_handshake(body: HandshakeRequest, encryption: EncryptionDep) -> Handshake:
    try:
        return await encryption.handshake(body.public_key)
    except HandshakeError as exc:
        raise Unprocessable(f"public_key: {exc}") from None
