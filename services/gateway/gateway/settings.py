"""Settings of the gateway service."""

from __future__ import annotations

from keelson.config import KeelsonSettings

__all__ = ["Settings"]


class Settings(KeelsonSettings):
    service: str = "gateway"
    port: int = 8000
