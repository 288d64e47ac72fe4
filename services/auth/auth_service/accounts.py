"""Self-service account flows: register, profile, password change, reset and verification."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from auth_service import metrics
from auth_service.action_tokens import consume_action_token, issue_action_token, issued_within
from auth_service.audit import AuditAction, audit, emit
from auth_service.login import record_failure, revoke_access
from auth_service.models import RevokeReason, TokenPurpose, User
from auth_service.passwords import PasswordHashing, check_password_policy
from auth_service.schemas import UserSelfUpdate
from auth_service.sessions import revoke_sessions
from auth_service.settings import AuthSettings
from auth_service.throttle import LoginThrottle
from auth_service.users import (
    create_user,
    get_user,
    get_user_by_email,
    normalize_email,
    parse_uuid,
)
from keelson.auth import Principal, RevocationList
from keelson.errors import BadRequest, Conflict, Forbidden, Unauthorized, Unprocessable
from keelson.events import (
    ContactChanged,
    EmailVerificationRequested,
    PasswordResetRequested,
    SignUpForExistingAccount,
    UserRegistered,
)
from keelson.keys import KeyManager, seal_action_token

__all__ = [
    "confirm_password_reset",
    "create_account",
    "current_account",
    "register_user",
    "request_email_verification",
    "request_password_reset",
    "update_account",
    "verify_email",
]

_BAD_TOKEN = "invalid or expired token"  # noqa: S105
_TOKEN_EVENTS: dict[TokenPurpose, type[PasswordResetRequested | EmailVerificationRequested]] = {
    TokenPurpose.PASSWORD_RESET: PasswordResetRequested,
    TokenPurpose.EMAIL_VERIFICATION: EmailVerificationRequested,
}


async def register_user(
    db: AsyncSession,
    *,
    email: str,
    password: str,
    name: str | None,
    passwords: PasswordHashing,
    throttle: LoginThrottle,
    settings: AuthSettings,
    keys: KeyManager,
) -> None:
    """Sign up `email`; the caller answers the same whether or not it was taken.

    A new address gets an unverified account with the default roles and a verification
    mail. A taken one changes nothing; its owner is mailed that someone tried (at most
    once per cooldown). The password is hashed either way, so both take as long.
    """
    email = normalize_email(email)
    check_password_policy(password, email=email, min_length=settings.min_password_length)
    password_hash = await passwords.hash(password)
    existing = await get_user_by_email(db, email=email)
    if existing is None:
        try:
            user = await create_user(
                db,
                email=email,
                password_hash=password_hash,
                name=name,
                roles=settings.default_roles,
            )
        except Conflict:  # a concurrent sign-up took the address first
            existing = await get_user_by_email(db, email=email)
        else:
            await emit(db, UserRegistered(user_id=str(user.id), email=user.email, name=user.name))
            await audit(db, AuditAction.REGISTERED, actor=str(user.id))
            await _send_token(
                db,
                user=user,
                purpose=TokenPurpose.EMAIL_VERIFICATION,
                settings=settings,
                keys=keys,
            )
            await db.commit()
            metrics.count("registration", "ok")
            return
    if existing is None or not existing.is_active:
        return
    cooldown = settings.email_token_cooldown_seconds
    if await throttle.first_within("signup:existing", email, seconds=cooldown):
        await emit(db, SignUpForExistingAccount(user_id=str(existing.id), email=existing.email))
        await audit(db, AuditAction.SIGNUP_FOR_EXISTING, actor=None, target=str(existing.id))
        await db.commit()


async def create_account(
    db: AsyncSession,
    *,
    email: str,
    password: str,
    name: str | None,
    roles: Sequence[str],
    passwords: PasswordHashing,
    settings: AuthSettings,
    verified: bool = False,
) -> User:
    """Insert an account (not committed): email normalised, password policy applied, hashed."""
    email = normalize_email(email)
    check_password_policy(password, email=email, min_length=settings.min_password_length)
    return await create_user(
        db,
        email=email,
        password_hash=await passwords.hash(password),
        name=name,
        roles=roles,
        verified=verified,
    )


async def current_account(db: AsyncSession, *, principal: Principal) -> User:
    """The caller's account; 401 if it was deleted or deactivated since the token was made."""
    user_id = parse_uuid(principal.user_id)
    user = None if user_id is None else await get_user(db, user_id=user_id)
    if user is None or not user.is_active:
        raise Unauthorized("account not found or inactive")
    return user


async def update_account(
    db: AsyncSession,
    *,
    principal: Principal,
    changes: UserSelfUpdate,
    passwords: PasswordHashing,
    throttle: LoginThrottle,
    revocations: RevocationList,
    settings: AuthSettings,
    client_ip: str,
) -> User:
    """Change the caller's name, phone or password; a new password ends every other session.

    A changed phone is announced (`auth.contact_changed`): the notifications service lets
    a user text that number as their own.

    Wrong current passwords count as failed logins, so a stolen access token cannot be
    used to guess the password faster than the login form allows.
    """
    user = await current_account(db, principal=principal)
    revoked = []
    if changes.password is not None:
        if changes.current_password is None:
            raise Unprocessable("current_password is needed to change the password")
        await throttle.check(email=user.email, ip=client_ip)
        if not await passwords.verify(user.password_hash, changes.current_password):
            await record_failure(
                db, throttle=throttle, email=user.email, client_ip=client_ip, user=user
            )
            raise Forbidden("the current password is not correct")
        check_password_policy(
            changes.password, email=user.email, min_length=settings.min_password_length
        )
        await throttle.record_success(email=user.email)
        user.password_hash = await passwords.hash(changes.password)
        revoked = await revoke_sessions(
            db,
            reason=RevokeReason.PASSWORD_CHANGED,
            user_id=user.id,
            keep_session_id=parse_uuid(principal.session_id),
        )
        await audit(db, AuditAction.PASSWORD_CHANGED, actor=str(user.id))
    if "name" in changes.model_fields_set:
        user.name = changes.name
    if "phone" in changes.model_fields_set and changes.phone != user.phone:
        user.phone = changes.phone
        await emit(db, ContactChanged(user_id=str(user.id), email=user.email, phone=user.phone))
        await audit(db, AuditAction.USER_UPDATED, actor=str(user.id), target=str(user.id))
    await revoke_access(revocations, revoked)  # before the commit: see log_out
    await db.commit()
    await db.refresh(user)
    return user


async def request_password_reset(
    db: AsyncSession, *, email: str, settings: AuthSettings, keys: KeyManager
) -> None:
    """Publish a reset token for an active account; says nothing either way (always 202)."""
    await _request_token(
        db, email=email, purpose=TokenPurpose.PASSWORD_RESET, settings=settings, keys=keys
    )


async def confirm_password_reset(
    db: AsyncSession,
    *,
    token: str,
    new_password: str,
    passwords: PasswordHashing,
    throttle: LoginThrottle,
    revocations: RevocationList,
    settings: AuthSettings,
) -> None:
    """Set the new password and end every session; a policy failure leaves the token unspent."""
    user_id = await consume_action_token(db, token=token, purpose=TokenPurpose.PASSWORD_RESET)
    user = None if user_id is None else await get_user(db, user_id=user_id, for_update=True)
    if user is None or not user.is_active:
        raise BadRequest(_BAD_TOKEN)
    check_password_policy(new_password, email=user.email, min_length=settings.min_password_length)
    user.password_hash = await passwords.hash(new_password)
    # Only the owner of the mailbox could have read the token.
    user.email_verified_at = user.email_verified_at or datetime.now(UTC)
    revoked = await revoke_sessions(db, reason=RevokeReason.PASSWORD_RESET, user_id=user.id)
    await audit(db, AuditAction.PASSWORD_RESET, actor=str(user.id))
    await revoke_access(revocations, revoked)  # before the commit: see log_out
    await db.commit()
    await throttle.record_success(email=user.email)


async def request_email_verification(
    db: AsyncSession, *, email: str, settings: AuthSettings, keys: KeyManager
) -> None:
    """Publish a verification token for an unverified account; always 202."""
    await _request_token(
        db, email=email, purpose=TokenPurpose.EMAIL_VERIFICATION, settings=settings, keys=keys
    )


async def verify_email(db: AsyncSession, *, token: str) -> None:
    user_id = await consume_action_token(db, token=token, purpose=TokenPurpose.EMAIL_VERIFICATION)
    user = None if user_id is None else await get_user(db, user_id=user_id)
    if user is None:
        raise BadRequest(_BAD_TOKEN)
    user.email_verified_at = user.email_verified_at or datetime.now(UTC)
    await audit(db, AuditAction.EMAIL_VERIFIED, actor=str(user.id))
    await db.commit()


async def _request_token(
    db: AsyncSession,
    *,
    email: str,
    purpose: TokenPurpose,
    settings: AuthSettings,
    keys: KeyManager,
) -> None:
    """Email a token when one is due; silently nothing otherwise (the caller answers 202).

    Nothing for an unknown or inactive account, an already verified address, or within
    the cooldown since the last token: anyone may ask, so asking must not flood a mailbox.
    """
    user = await get_user_by_email(db, email=normalize_email(email, strict=False))
    if user is None or not user.is_active:
        return
    if purpose is TokenPurpose.EMAIL_VERIFICATION and user.email_verified_at is not None:
        return
    cooldown = timedelta(seconds=settings.email_token_cooldown_seconds)
    if await issued_within(db, user_id=user.id, purpose=purpose, period=cooldown):
        return
    await _send_token(db, user=user, purpose=purpose, settings=settings, keys=keys)
    await db.commit()


async def _send_token(
    db: AsyncSession,
    *,
    user: User,
    purpose: TokenPurpose,
    settings: AuthSettings,
    keys: KeyManager,
) -> None:
    """Issue a single-use token for `purpose` and queue the event that emails it.

    The token is sealed for the notifications service (`keelson.keys.seal_action_token`):
    it never lies in plain text in the outbox or on the bus.
    """
    ttl = (
        settings.password_reset_ttl_seconds
        if purpose is TokenPurpose.PASSWORD_RESET
        else settings.email_verification_ttl_seconds
    )
    token, expires_at = await issue_action_token(
        db, user_id=user.id, purpose=purpose, ttl=timedelta(seconds=ttl)
    )
    event = _TOKEN_EVENTS[purpose]
    sealed = seal_action_token(keys, token, event_type=event.type, user_id=str(user.id))
    await emit(
        db, event(user_id=str(user.id), email=user.email, token=sealed, expires_at=expires_at)
    )
