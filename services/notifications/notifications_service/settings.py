"""Settings of the notifications service."""

from __future__ import annotations

from keelson.config import KeelsonSettings

__all__ = ["Settings"]


class Settings(KeelsonSettings):
    service: str = "notifications"
    port: int = 8003
