"""Settings of the logs service."""

from __future__ import annotations

from keelson.config import KeelsonSettings

__all__ = ["Settings"]


class Settings(KeelsonSettings):
    service: str = "logs"
    port: int = 8002
