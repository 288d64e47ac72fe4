"""Settings of the payments service."""

from __future__ import annotations

from keelson.config import KeelsonSettings

__all__ = ["Settings"]


class Settings(KeelsonSettings):
    service: str = "payments"
    port: int = 8004
