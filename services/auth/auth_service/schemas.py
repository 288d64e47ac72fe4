"""What clients send and receive: request bodies and public views, apart from the tables."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from auth_service.models import User
from auth_service.passwords import MAX_PASSWORD_LENGTH
from keelson.fields import SingleLine

__all__ = [
    "EmailRequest",
    "LoginRequest",
    "PasswordResetConfirm",
    "RefreshRequest",
    "RegisterRequest",
    "SignUpAccepted",
    "TokenPair",
    "UserAdminView",
    "UserPage",
    "UserPublic",
    "UserSelfUpdate",
    "UserUpdate",
    "VerifyEmailConfirm",
]

_Password = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)
# A new password is only capped against abuse here; below the cap the password policy
# answers, naming the rule (`too_short`, `too_long`, ...).
_NewPassword = Field(max_length=4 * MAX_PASSWORD_LENGTH)


class RegisterRequest(BaseModel):
    email: SingleLine = Field(max_length=320)
    password: str = _NewPassword
    name: SingleLine | None = Field(None, max_length=200)


class SignUpAccepted(BaseModel):
    """The one answer to a sign-up, whether the address was new or taken."""

    detail: str = "check your inbox: we sent a link to confirm the address"


class LoginRequest(BaseModel):
    email: SingleLine = Field(max_length=320)
    password: str = _Password
    scope: SingleLine | None = Field(None, max_length=1000, description="space-separated subset")


class RefreshRequest(BaseModel):
    refresh_token: SingleLine = Field(min_length=1, max_length=200)


class EmailRequest(BaseModel):
    email: SingleLine = Field(max_length=320)


class PasswordResetConfirm(BaseModel):
    token: SingleLine = Field(min_length=1, max_length=200)
    new_password: str = _NewPassword


class VerifyEmailConfirm(BaseModel):
    token: SingleLine = Field(min_length=1, max_length=200)


# E.164: a plus, a country code that does not start with 0, at most 15 digits in all.
Phone = Annotated[str, Field(pattern=r"^\+[1-9][0-9]{6,14}$", examples=["+15551234567"])]


class UserSelfUpdate(BaseModel):
    """`password` needs `current_password`; changing it ends every other session.
    `phone` null removes the number."""

    model_config = ConfigDict(extra="forbid")

    name: SingleLine | None = Field(None, max_length=200)
    phone: Phone | None = None
    password: str | None = Field(None, max_length=4 * MAX_PASSWORD_LENGTH)
    current_password: str | None = Field(None, max_length=MAX_PASSWORD_LENGTH)


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: SingleLine | None = Field(None, max_length=200)
    roles: list[Annotated[SingleLine, Field(max_length=64)]] | None = Field(None, max_length=20)
    is_active: bool | None = None


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105
    expires_in: int
    scope: str


class UserPublic(BaseModel):
    id: uuid.UUID
    email: str
    name: str | None
    phone: str | None
    roles: list[str]
    email_verified: bool
    created_at: datetime

    @classmethod
    def of(cls, user: User) -> UserPublic:
        return cls(
            id=user.id,
            email=user.email,
            name=user.name,
            phone=user.phone,
            roles=user.roles,
            email_verified=user.email_verified_at is not None,
            created_at=user.created_at,
        )


class UserAdminView(UserPublic):
    is_active: bool
    updated_at: datetime

    @classmethod
    def of(cls, user: User) -> UserAdminView:
        return cls(
            **UserPublic.of(user).model_dump(), is_active=user.is_active, updated_at=user.updated_at
        )


class UserPage(BaseModel):
    items: list[UserAdminView]
    total: int
    limit: int
    offset: int
