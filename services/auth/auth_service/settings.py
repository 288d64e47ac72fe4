"""Settings of the auth service."""

from __future__ import annotations

from keelson.config import KeelsonSettings

__all__ = ["Settings"]


class Settings(KeelsonSettings):
    service: str = "auth"
    port: int = 8001
