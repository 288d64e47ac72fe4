"""Logging in, refreshing and logging out: sessions, token pairs and their revocation."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from auth_service import metrics
from auth_service.audit import AuditAction, audit, emit
from auth_service.keyring import KeyRing
from auth_service.models import RefreshToken, RevokeReason, User
from auth_service.passwords import PasswordHashing
from auth_service.schemas import TokenPair
from auth_service.sessions import (
    RevokedAccess,
    add_refresh_token,
    find_refresh_token,
    forget_successors,
    get_session_row,
    keep_successor,
    record_access_token,
    revoke_sessions,
    spend_refresh_token,
    start_session,
)
from auth_service.settings import AuthSettings
from auth_service.throttle import LoginThrottle
from auth_service.tokens import hash_token, issue_access_token
from auth_service.users import get_user, get_user_by_email, normalize_email, parse_uuid
from keelson import monitor
from keelson.auth import Principal, RevocationList
from keelson.errors import Forbidden, TooManyRequests, Unauthorized
from keelson.events import UserLoggedIn
from keelson.keys import DecryptionError, FieldCipher

__all__ = [
    "LoginContext",
    "granted_scopes",
    "log_in",
    "log_out",
    "record_failure",
    "refresh_session",
    "revoke_access",
]

_BAD_CREDENTIALS = "incorrect email or password"
_BAD_REFRESH = "invalid refresh token"


def granted_scopes(
    settings: AuthSettings, roles: Iterable[str], requested: str | None
) -> list[str]:
    """The scopes `roles` allow, narrowed to `requested` when a client asks for fewer."""
    allowed = {scope for role in roles for scope in settings.role_scopes.get(role, ())}
    if requested is not None:
        allowed &= set(requested.split())
    return sorted(allowed)


@dataclass(frozen=True)
class LoginContext:
    """What a login needs besides the credentials: its collaborators and the client."""

    db: AsyncSession
    passwords: PasswordHashing
    throttle: LoginThrottle
    keyring: KeyRing
    settings: AuthSettings
    client_ip: str
    user_agent: str | None


async def log_in(
    ctx: LoginContext, *, email: str, password: str, requested_scope: str | None
) -> TokenPair:
    """A new session and its first token pair; 401 for any bad credential, 429 when locked."""
    db, passwords, throttle = ctx.db, ctx.passwords, ctx.throttle
    email = normalize_email(email, strict=False)
    try:
        await throttle.check(email=email, ip=ctx.client_ip)
    except TooManyRequests:
        metrics.count("login", "locked")
        raise
    user = await get_user_by_email(db, email=email)
    if user is None:
        verified = await passwords.verify_dummy(password)
    else:
        verified = await passwords.verify(user.password_hash, password)
    monitor.add_breadcrumb(
        "login: password checked", category="auth", account_found=user is not None
    )
    if not verified or user is None or not user.is_active:
        await record_failure(db, throttle=throttle, email=email, client_ip=ctx.client_ip, user=user)
        metrics.count("login", "failure")
        raise Unauthorized(_BAD_CREDENTIALS)
    await throttle.record_success(email=email)
    monitor.set_user(str(user.id))  # the id only: no email or name leaves for Sentry
    if ctx.settings.require_verified_email and user.email_verified_at is None:
        # Said only to whoever knows the password, so it reveals nothing to others.
        raise Forbidden(
            "the email address is not verified yet: follow the link we mailed, "
            "or ask for a new one at /api/v1/auth/verify-email/request",
            rule="email_unverified",
        )
    if passwords.needs_rehash(user.password_hash):
        user.password_hash = await passwords.hash(password)
    scopes = granted_scopes(ctx.settings, user.roles, requested_scope)
    row = await start_session(
        db, user_id=user.id, scopes=scopes, client_ip=ctx.client_ip, user_agent=ctx.user_agent
    )
    pair = await _issue_pair(
        db, ctx.keyring, ctx.settings, user=user, session_id=row.id, scopes=scopes
    )
    await emit(db, UserLoggedIn(user_id=str(user.id), ip=ctx.client_ip, user_agent=ctx.user_agent))
    await audit(db, AuditAction.LOGIN_SUCCEEDED, actor=str(user.id), ip=ctx.client_ip)
    await db.commit()
    monitor.add_breadcrumb("login: session started", category="auth", session_id=str(row.id))
    metrics.count("login", "success")
    return pair


async def refresh_session(
    db: AsyncSession,
    *,
    refresh_token: str,
    keyring: KeyRing,
    revocations: RevocationList,
    settings: AuthSettings,
    successors: FieldCipher,
) -> TokenPair:
    """Spend `refresh_token` for a new pair.

    A spent one presented again within the grace window, while its successor is unused,
    gets that successor again; otherwise it revokes its whole family (401).
    """
    digest = hash_token(refresh_token)
    spent = await spend_refresh_token(db, token_hash=digest)
    if spent is None:
        try:
            return await _answer_spent(
                db,
                token_hash=digest,
                revocations=revocations,
                settings=settings,
                successors=successors,
            )
        except Unauthorized:
            metrics.count("refresh", "failure")
            raise
    row = await get_session_row(db, session_id=spent.session_id)
    user = None if row is None else await get_user(db, user_id=row.user_id)
    if (
        row is None
        or user is None
        or row.revoked_at is not None
        or not user.is_active
        or spent.expires_at <= datetime.now(UTC)
    ):
        await db.commit()
        metrics.count("refresh", "failure")
        raise Unauthorized(_BAD_REFRESH)
    # Roles may have changed since login: scopes are what the session asked for and the
    # current roles still allow.
    scopes = sorted(set(row.scopes) & set(granted_scopes(settings, user.roles, None)))
    pair = await _issue_pair(db, keyring, settings, user=user, session_id=row.id, scopes=scopes)
    grace = timedelta(seconds=settings.refresh_reuse_grace_seconds)
    if grace:
        kept = _Successor(pair=pair, access_expires_at=int(time.time()) + pair.expires_in)
        sealed = successors.encrypt(kept.model_dump_json(), associated=digest)
        await keep_successor(db, token_hash=digest, sealed=sealed)
        await forget_successors(db, session_id=row.id, older_than=grace)
    await db.commit()
    metrics.count("refresh", "success")
    return pair


class _Successor(BaseModel):
    pair: TokenPair
    access_expires_at: int


async def _answer_spent(
    db: AsyncSession,
    *,
    token_hash: bytes,
    revocations: RevocationList,
    settings: AuthSettings,
    successors: FieldCipher,
) -> TokenPair:
    known = await find_refresh_token(db, token_hash=token_hash)
    if known is None:
        raise Unauthorized(_BAD_REFRESH)
    replay = await _successor_in_grace(
        db, known=known, token_hash=token_hash, settings=settings, successors=successors
    )
    if replay is not None:
        return replay
    await _revoke_reused(db, known=known, revocations=revocations)
    raise Unauthorized(_BAD_REFRESH)


async def _successor_in_grace(
    db: AsyncSession,
    *,
    known: RefreshToken,
    token_hash: bytes,
    settings: AuthSettings,
    successors: FieldCipher,
) -> TokenPair | None:
    """The pair `known` was exchanged for, if it may be handed out again; else None."""
    if known.used_at is None or known.successor_sealed is None:
        return None
    window_start = datetime.now(UTC) - timedelta(seconds=settings.refresh_reuse_grace_seconds)
    if known.used_at < window_start:
        return None
    row = await get_session_row(db, session_id=known.session_id)
    if row is None or row.revoked_at is not None:
        return None
    try:
        sealed = successors.decrypt(known.successor_sealed, associated=token_hash)
    except DecryptionError:  # sealed under a master key since dropped: no replay
        return None
    kept = _Successor.model_validate_json(sealed)
    # Once the successor is spent the client plainly got it: a presentation of its
    # parent now is not a retry.
    successor = await find_refresh_token(db, token_hash=hash_token(kept.pair.refresh_token))
    if successor is None or successor.used_at is not None:
        return None
    expires_in = max(0, kept.access_expires_at - int(time.time()))
    return kept.pair.model_copy(update={"expires_in": expires_in})


async def log_out(db: AsyncSession, *, principal: Principal, revocations: RevocationList) -> None:
    """End the caller's session (its refresh family) and refuse its access token at once.

    The access tokens are refused (in Redis) before the session's end commits: when
    Redis cannot store them, `revoke` answers 503 and the transaction rolls back, so the
    session, its refresh family and its list of access tokens stay as they were and a
    retry can finish the job. Committing first would have ended the session and dropped
    that list while its access tokens stayed valid until they expired.
    """
    revoked: list[RevokedAccess] = []
    session_id = parse_uuid(principal.session_id)
    if session_id is not None:
        revoked = await revoke_sessions(db, reason=RevokeReason.LOGOUT, session_id=session_id)
    await audit(db, AuditAction.LOGGED_OUT, actor=principal.user_id)
    if principal.jti and principal.expires_at and all(r.jti != principal.jti for r in revoked):
        revoked.append(RevokedAccess(principal.jti, principal.expires_at))
    await revoke_access(revocations, revoked)
    await db.commit()


async def revoke_access(revocations: RevocationList, revoked: Iterable[RevokedAccess]) -> None:
    for access in revoked:
        await revocations.revoke(access.jti, access.expires_at)


async def _issue_pair(
    db: AsyncSession,
    keyring: KeyRing,
    settings: AuthSettings,
    *,
    user: User,
    session_id: uuid.UUID,
    scopes: list[str],
) -> TokenPair:
    access = issue_access_token(
        keyring,
        settings,
        user_id=user.id,
        roles=user.roles,
        scopes=scopes,
        session_id=session_id,
        email_verified=user.email_verified_at is not None,
    )
    await record_access_token(db, session_id=session_id, access=access)
    refresh = await add_refresh_token(
        db, session_id=session_id, ttl=timedelta(seconds=settings.refresh_token_ttl_seconds)
    )
    return TokenPair(
        access_token=access.token,
        refresh_token=refresh,
        expires_in=settings.access_token_ttl_seconds,
        scope=access.scope,
    )


async def _revoke_reused(
    db: AsyncSession, *, known: RefreshToken, revocations: RevocationList
) -> None:
    # A spent token came back: it was stolen, or the client is confused. Either way
    # nothing descended from that login can be trusted any more.
    revoked = await revoke_sessions(db, reason=RevokeReason.REUSE, session_id=known.session_id)
    row = await get_session_row(db, session_id=known.session_id)
    await audit(
        db,
        AuditAction.REFRESH_REUSED,
        actor=None,
        target=str(row.user_id) if row else None,
        session_id=str(known.session_id),
    )
    await db.commit()
    metrics.count("refresh_reuse", "detected")
    await revoke_access(revocations, revoked)


async def record_failure(
    db: AsyncSession, *, throttle: LoginThrottle, email: str, client_ip: str, user: User | None
) -> None:
    """Count and audit a wrong password; raises 429 when this attempt locks the account."""
    target = str(user.id) if user is not None else None
    try:
        await throttle.record_failure(email=email, ip=client_ip)
    except TooManyRequests:
        metrics.count("login", "locked")
        await audit(db, AuditAction.LOGIN_LOCKED, actor=None, target=target, ip=client_ip)
        await db.commit()
        raise
    await audit(db, AuditAction.LOGIN_FAILED, actor=None, target=target, ip=client_ip)
    await db.commit()
