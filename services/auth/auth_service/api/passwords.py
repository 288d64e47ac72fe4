"""Password reset by emailed, single-use token."""

from __future__ import annotations

from fastapi import APIRouter, status

from auth_service.accounts import confirm_password_reset, request_password_reset
from auth_service.deps import (
    AuthConfig,
    MasterKeys,
    Passwords,
    Revocations,
    SessionDep,
    Throttle,
)
from auth_service.schemas import EmailRequest, PasswordResetConfirm
from keelson.auth import PUBLIC

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/auth/password-reset", tags=["passwords"])


@router.post("/request", status_code=status.HTTP_202_ACCEPTED, openapi_extra=PUBLIC)
async def create_password_reset(
    body: EmailRequest, db: SessionDep, settings: AuthConfig, keys: MasterKeys
) -> None:
    await request_password_reset(db, email=body.email, settings=settings, keys=keys)


@router.post("/confirm", status_code=status.HTTP_204_NO_CONTENT, openapi_extra=PUBLIC)
async def confirm_reset(
    body: PasswordResetConfirm,
    db: SessionDep,
    passwords: Passwords,
    throttle: Throttle,
    revocations: Revocations,
    settings: AuthConfig,
) -> None:
    await confirm_password_reset(
        db,
        token=body.token,
        new_password=body.new_password,
        passwords=passwords,
        throttle=throttle,
        revocations=revocations,
        settings=settings,
    )
