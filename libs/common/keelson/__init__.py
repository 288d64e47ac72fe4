"""Keelson core library: import from its modules (`keelson.config`, `keelson.bus`, ...)."""

__all__: list[str] = []
