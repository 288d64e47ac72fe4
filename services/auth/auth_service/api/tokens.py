"""Tokens: login (JSON and OAuth2 form), refresh, logout."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, status
from fastapi.security import OAuth2PasswordRequestForm

from auth_service.deps import (
    AuthConfig,
    CurrentUser,
    Keys,
    Login,
    Revocations,
    SessionDep,
    Successors,
    no_store,
)
from auth_service.login import log_in, log_out, refresh_session
from auth_service.schemas import LoginRequest, RefreshRequest, TokenPair
from keelson.auth import PUBLIC

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/auth", tags=["tokens"], dependencies=[Depends(no_store)])


@router.post("/login", openapi_extra=PUBLIC)
async def create_login(body: LoginRequest, login: Login) -> TokenPair:
    return await log_in(login, email=body.email, password=body.password, requested_scope=body.scope)


@router.post(
    "/token",
    summary="Log in with the OAuth2 password form (Swagger's Authorize)",
    openapi_extra=PUBLIC,
)
async def create_token(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], login: Login
) -> TokenPair:
    scope = " ".join(form.scopes) if form.scopes else None
    return await log_in(login, email=form.username, password=form.password, requested_scope=scope)


@router.post("/refresh", openapi_extra=PUBLIC)
async def create_refresh(
    body: RefreshRequest,
    db: SessionDep,
    keys: Keys,
    revocations: Revocations,
    settings: AuthConfig,
    successors: Successors,
) -> TokenPair:
    return await refresh_session(
        db,
        refresh_token=body.refresh_token,
        keyring=keys,
        revocations=revocations,
        settings=settings,
        successors=successors,
    )


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def delete_session(principal: CurrentUser, db: SessionDep, revocations: Revocations) -> None:
    await log_out(db, principal=principal, revocations=revocations)
