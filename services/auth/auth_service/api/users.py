"""User administration (scopes `users:read` and `users:write`, which the admin role grants)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, status

from auth_service.admin import existing_user, remove_user, update_user
from auth_service.deps import AuthConfig, Revocations, SessionDep, UsersReader, UsersWriter
from auth_service.schemas import UserAdminView, UserPage, UserUpdate
from auth_service.users import list_users
from keelson.fields import MAX_OFFSET, SingleLine

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/auth/users", tags=["users"])


@router.get("")
async def read_users(
    admin: UsersReader,
    db: SessionDep,
    email: Annotated[SingleLine | None, Query(max_length=320)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> UserPage:
    users, total = await list_users(db, email=email, limit=limit, offset=offset)
    return UserPage(
        items=[UserAdminView.of(user) for user in users], total=total, limit=limit, offset=offset
    )


@router.get("/{user_id}")
async def read_user(user_id: uuid.UUID, admin: UsersReader, db: SessionDep) -> UserAdminView:
    return UserAdminView.of(await existing_user(db, user_id=user_id))


@router.patch("/{user_id}")
async def patch_user(
    user_id: uuid.UUID,
    body: UserUpdate,
    admin: UsersWriter,
    db: SessionDep,
    revocations: Revocations,
    settings: AuthConfig,
) -> UserAdminView:
    user = await update_user(
        db,
        actor=admin,
        user_id=user_id,
        changes=body,
        revocations=revocations,
        settings=settings,
    )
    return UserAdminView.of(user)


@router.delete("/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_user(
    user_id: uuid.UUID, admin: UsersWriter, db: SessionDep, revocations: Revocations
) -> None:
    await remove_user(db, actor=admin, user_id=user_id, revocations=revocations)
