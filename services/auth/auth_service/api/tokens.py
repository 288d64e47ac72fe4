"""Tokens: login (JSON and OAuth2 form), refresh, logout."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response, status
from fastapi.security import OAuth2PasswordRequestForm

from auth_service.deps import (
    AuthConfig,
    ClientIP,
    CurrentUser,
    Keys,
    Passwords,
    Revocations,
    SessionDep,
    Throttle,
    UserAgent,
)
from auth_service.login import log_in, log_out, refresh_session
from auth_service.schemas import LoginRequest, RefreshRequest, TokenPair

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/auth", tags=["tokens"])

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@router.post("/login")
async def create_login(
    body: LoginRequest,
    response: Response,
    db: SessionDep,
    passwords: Passwords,
    throttle: Throttle,
    keys: Keys,
    settings: AuthConfig,
    client_ip: ClientIP,
    user_agent: UserAgent,
) -> TokenPair:
    response.headers.update(_NO_STORE)
    return await log_in(
        db,
        email=body.email,
        password=body.password,
        requested_scope=body.scope,
        client_ip=client_ip,
        user_agent=user_agent,
        passwords=passwords,
        throttle=throttle,
        keyring=keys,
        settings=settings,
    )


@router.post("/token", summary="Log in with the OAuth2 password form (Swagger's Authorize)")
async def create_token(
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    response: Response,
    db: SessionDep,
    passwords: Passwords,
    throttle: Throttle,
    keys: Keys,
    settings: AuthConfig,
    client_ip: ClientIP,
    user_agent: UserAgent,
) -> TokenPair:
    response.headers.update(_NO_STORE)
    return await log_in(
        db,
        email=form.username,
        password=form.password,
        requested_scope=" ".join(form.scopes) if form.scopes else None,
        client_ip=client_ip,
        user_agent=user_agent,
        passwords=passwords,
        throttle=throttle,
        keyring=keys,
        settings=settings,
    )


@router.post("/refresh")
async def create_refresh(
    body: RefreshRequest,
    response: Response,
    db: SessionDep,
    keys: Keys,
    revocations: Revocations,
    settings: AuthConfig,
) -> TokenPair:
    response.headers.update(_NO_STORE)
    return await refresh_session(
        db,
        refresh_token=body.refresh_token,
        keyring=keys,
        revocations=revocations,
        settings=settings,
    )


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def delete_session(principal: CurrentUser, db: SessionDep, revocations: Revocations) -> None:
    await log_out(db, principal=principal, revocations=revocations)
