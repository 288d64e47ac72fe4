"""Registering, and the caller's own account (`/me`)."""

from __future__ import annotations

from fastapi import APIRouter, status

from auth_service.accounts import current_account, register_user, update_account
from auth_service.deps import (
    AuthConfig,
    ClientIP,
    MasterKeys,
    Passwords,
    ProfileReader,
    ProfileWriter,
    Revocations,
    SessionDep,
    Throttle,
)
from auth_service.idempotency import IdempotencyKeyHeader, claim, fingerprint
from auth_service.schemas import RegisterRequest, SignUpAccepted, UserPublic, UserSelfUpdate
from keelson.auth import PUBLIC

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/auth", tags=["accounts"])


@router.post(
    "/register",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Sign up; the same answer whether or not the address has an account",
    openapi_extra=PUBLIC,
)
async def register_account(
    body: RegisterRequest,
    db: SessionDep,
    passwords: Passwords,
    throttle: Throttle,
    settings: AuthConfig,
    keys: MasterKeys,
    idempotency_key: IdempotencyKeyHeader = None,
) -> SignUpAccepted:
    if idempotency_key is not None:
        digest = fingerprint(keys, "register", body.model_dump(mode="json"))
        if not await claim(db, scope="register", key=idempotency_key, digest=digest):
            return SignUpAccepted()  # a retry of a sign-up that committed: nothing again
    await register_user(
        db,
        email=body.email,
        password=body.password,
        name=body.name,
        passwords=passwords,
        throttle=throttle,
        settings=settings,
        keys=keys,
    )
    await db.commit()  # the key, when no account or mail came of it
    return SignUpAccepted()


@router.get("/me")
async def read_me(principal: ProfileReader, db: SessionDep) -> UserPublic:
    return UserPublic.of(await current_account(db, principal=principal))


@router.patch("/me")
async def update_me(
    body: UserSelfUpdate,
    principal: ProfileWriter,
    db: SessionDep,
    passwords: Passwords,
    throttle: Throttle,
    revocations: Revocations,
    settings: AuthConfig,
    client_ip: ClientIP,
) -> UserPublic:
    user = await update_account(
        db,
        principal=principal,
        changes=body,
        passwords=passwords,
        throttle=throttle,
        revocations=revocations,
        settings=settings,
        client_ip=client_ip,
    )
    return UserPublic.of(user)
