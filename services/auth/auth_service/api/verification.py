"""Email verification by emailed, single-use token."""

from __future__ import annotations

from fastapi import APIRouter, status

from auth_service.accounts import request_email_verification, verify_email
from auth_service.deps import AuthConfig, MasterKeys, SessionDep
from auth_service.schemas import EmailRequest, VerifyEmailConfirm
from keelson.auth import PUBLIC

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/auth/verify-email", tags=["verification"])


@router.post("/request", status_code=status.HTTP_202_ACCEPTED, openapi_extra=PUBLIC)
async def create_email_verification(
    body: EmailRequest, db: SessionDep, settings: AuthConfig, keys: MasterKeys
) -> None:
    await request_email_verification(db, email=body.email, settings=settings, keys=keys)


@router.post("/confirm", status_code=status.HTTP_204_NO_CONTENT, openapi_extra=PUBLIC)
async def confirm_email_verification(body: VerifyEmailConfirm, db: SessionDep) -> None:
    await verify_email(db, token=body.token)
