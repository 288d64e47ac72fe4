"""HTTP routers of the auth service, one per resource."""

from __future__ import annotations

from fastapi import APIRouter

from auth_service.api import accounts, discovery, jwks, passwords, tokens, users, verification

__all__ = ["routers"]

routers: list[APIRouter] = [
    accounts.router,
    tokens.router,
    passwords.router,
    verification.router,
    users.router,
    jwks.router,
    jwks.public_router,
    discovery.router,
]
