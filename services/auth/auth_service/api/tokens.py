"""Tokens: login (JSON), the OAuth2 token endpoint, refresh, logout."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, status
from fastapi.responses import JSONResponse

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
from auth_service.oauth import OAuthError, TokenRequest, exchange_grant
from auth_service.schemas import LoginRequest, RefreshRequest, TokenPair
from keelson.auth import PUBLIC

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/auth", tags=["tokens"], dependencies=[Depends(no_store)])


@router.post("/login", openapi_extra=PUBLIC)
async def create_login(body: LoginRequest, login: Login) -> TokenPair:
    return await log_in(login, email=body.email, password=body.password, requested_scope=body.scope)


@router.post(
    "/token",
    summary="OAuth2 token endpoint (RFC 6749): the password and refresh_token grants",
    description="Errors here are RFC 6749 §5.2 bodies (`error`, `error_description`).",
    response_model=TokenPair,
    openapi_extra=PUBLIC,
)
async def create_token(
    login: Login,
    revocations: Revocations,
    successors: Successors,
    grant_type: Annotated[str | None, Form()] = None,
    username: Annotated[str | None, Form()] = None,
    password: Annotated[str | None, Form()] = None,
    refresh_token: Annotated[str | None, Form()] = None,
    scope: Annotated[str | None, Form()] = None,
    client_id: Annotated[str | None, Form()] = None,
) -> TokenPair | JSONResponse:
    request = TokenRequest(grant_type, username, password, refresh_token, scope, client_id)
    try:
        return await exchange_grant(login, request, revocations=revocations, successors=successors)
    except OAuthError as exc:
        return exc.response()


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
