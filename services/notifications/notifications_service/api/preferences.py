"""The caller's opt-outs per channel and category (transactional mail ignores them)."""

from __future__ import annotations

from fastapi import APIRouter

from keelson.auth import CurrentUser
from notifications_service.deps import SessionDep
from notifications_service.recipients import get_preferences, put_preferences
from notifications_service.schemas import PreferencesPublic, PreferencesUpdate

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/notifications/preferences", tags=["preferences"])


@router.get("")
async def read_preferences(principal: CurrentUser, db: SessionDep) -> PreferencesPublic:
    return PreferencesPublic.model_validate(await get_preferences(db, user_id=principal.user_id))


@router.put("")
async def update_preferences(
    body: PreferencesUpdate, principal: CurrentUser, db: SessionDep
) -> PreferencesPublic:
    saved = await put_preferences(
        db,
        user_id=principal.user_id,
        muted_channels=list(body.muted_channels),
        muted_categories=body.muted_categories,
        locale=body.locale,
    )
    public = PreferencesPublic.model_validate(saved)
    await db.commit()
    return public
