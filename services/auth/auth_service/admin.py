"""Administration: managing users (role `admin`), and making the first and later admins."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from auth_service.accounts import create_account
from auth_service.audit import AuditAction, audit
from auth_service.login import revoke_access
from auth_service.models import RevokeReason, User
from auth_service.passwords import PasswordHashing, check_password_policy
from auth_service.schemas import UserUpdate
from auth_service.sessions import RevokedAccess, revoke_sessions
from auth_service.settings import AuthSettings
from auth_service.users import (
    ADMIN_ROLE,
    count_active_admins,
    delete_user,
    get_user,
    get_user_by_email,
    normalize_email,
)
from keelson.auth import Principal, RevocationList
from keelson.db import advisory_xact_lock
from keelson.errors import Conflict, NotFound, Unprocessable

__all__ = ["bootstrap_admin", "existing_user", "make_admin", "remove_user", "update_user"]

_log = logging.getLogger("auth_service.admin")
# Serialises changes to who is admin (bootstrap on several replicas, two admins demoting
# each other), so the last admin cannot vanish in a race. An arbitrary constant.
_ADMINS_LOCK_ID = 0x6B65_6C61


async def update_user(
    db: AsyncSession,
    *,
    actor: Principal,
    user_id: uuid.UUID,
    changes: UserUpdate,
    revocations: RevocationList,
    settings: AuthSettings,
) -> User:
    """Change name, roles or active flag; role or status changes end the user's sessions."""
    user = await existing_user(db, user_id=user_id, for_update=True)
    fields = changes.model_fields_set
    if changes.roles is not None:
        unknown = set(changes.roles) - set(settings.role_scopes)
        if unknown:
            raise Unprocessable(f"unknown roles: {', '.join(sorted(unknown))}", rule="roles")
    new_roles = sorted(set(changes.roles)) if changes.roles is not None else user.roles
    new_active = changes.is_active if changes.is_active is not None else user.is_active
    if user.is_active and ADMIN_ROLE in user.roles and not (new_active and ADMIN_ROLE in new_roles):
        await _keep_one_admin(db, user_id=user.id)
    access_changed = new_roles != sorted(user.roles) or new_active != user.is_active
    if "name" in fields:
        user.name = changes.name
    user.roles, user.is_active = new_roles, new_active
    revoked = []
    if access_changed:
        revoked = await revoke_sessions(db, reason=RevokeReason.ACCOUNT_CHANGED, user_id=user.id)
    await audit(
        db,
        AuditAction.USER_UPDATED,
        actor=actor.user_id,
        target=str(user.id),
        fields=sorted(fields),
    )
    await revoke_access(revocations, revoked)  # before the commit: see log_out
    await db.commit()
    await db.refresh(user)
    return user


async def remove_user(
    db: AsyncSession, *, actor: Principal, user_id: uuid.UUID, revocations: RevocationList
) -> None:
    user = await existing_user(db, user_id=user_id, for_update=True)
    if user.is_active and ADMIN_ROLE in user.roles:
        await _keep_one_admin(db, user_id=user.id)
    revoked = await revoke_sessions(db, reason=RevokeReason.ACCOUNT_CHANGED, user_id=user.id)
    await delete_user(db, user_id=user.id)
    await audit(db, AuditAction.USER_DELETED, actor=actor.user_id, target=str(user_id))
    await revoke_access(revocations, revoked)  # before the commit: see log_out
    await db.commit()


async def make_admin(
    db: AsyncSession,
    *,
    email: str,
    password: str | None,
    passwords: PasswordHashing,
    settings: AuthSettings,
) -> tuple[User, bool]:
    """Give `email` the admin role, creating the account (with `password`) if needed.

    Returns the user and whether it was created. An existing account keeps its password.
    """
    user = await get_user_by_email(db, email=normalize_email(email))
    created = user is None
    if user is None:
        if password is None:
            raise Unprocessable("a password is needed to create the admin account")
        user = await _create_admin(
            db, email=email, password=password, passwords=passwords, settings=settings
        )
    else:
        _promote(user)
    await audit(db, AuditAction.ADMIN_CREATED, actor=None, target=str(user.id))
    await db.commit()
    return user, created


async def bootstrap_admin(
    db: AsyncSession,
    *,
    email: str,
    password: str,
    passwords: PasswordHashing,
    revocations: RevocationList,
    settings: AuthSettings,
) -> User | None:
    """At start: make the configured admin when no active admin exists; None otherwise.

    When the address already has an account, the configured password replaces its own and
    its sessions end: whoever registered the address before the operator named it (say,
    unverified, to wait for this moment) must not inherit an admin account.
    """
    await advisory_xact_lock(db, _ADMINS_LOCK_ID)
    if await count_active_admins(db):
        await db.commit()
        return None
    user = await get_user_by_email(db, email=normalize_email(email))
    revoked: list[RevokedAccess] = []
    if user is None:
        user = await _create_admin(
            db, email=email, password=password, passwords=passwords, settings=settings
        )
    else:
        check_password_policy(password, email=user.email, min_length=settings.min_password_length)
        user.password_hash = await passwords.hash(password)
        user.email_verified_at = user.email_verified_at or datetime.now(UTC)
        _promote(user)
        revoked = await revoke_sessions(db, reason=RevokeReason.ACCOUNT_CHANGED, user_id=user.id)
    await audit(db, AuditAction.ADMIN_CREATED, actor=None, target=str(user.id))
    await revoke_access(revocations, revoked)  # before the commit: see log_out
    await db.commit()
    _log.info("first admin account is %s", user.id)
    return user


async def _create_admin(
    db: AsyncSession,
    *,
    email: str,
    password: str,
    passwords: PasswordHashing,
    settings: AuthSettings,
) -> User:
    return await create_account(
        db,
        email=email,
        password=password,
        name=None,
        roles=[*settings.default_roles, ADMIN_ROLE],
        passwords=passwords,
        settings=settings,
        verified=True,
    )


def _promote(user: User) -> None:
    user.roles = sorted({*user.roles, ADMIN_ROLE})
    user.is_active = True


async def existing_user(db: AsyncSession, *, user_id: uuid.UUID, for_update: bool = False) -> User:
    """The user, or 404."""
    user = await get_user(db, user_id=user_id, for_update=for_update)
    if user is None:
        raise NotFound("no such user")
    return user


async def _keep_one_admin(db: AsyncSession, *, user_id: uuid.UUID) -> None:
    await advisory_xact_lock(db, _ADMINS_LOCK_ID)
    if not await count_active_admins(db, excluding=user_id):
        raise Conflict("this is the last active admin")
