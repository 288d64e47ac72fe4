"""The shared Redis connection as a plugin (present only when `KEELSON_REDIS_URL` is set)."""

from __future__ import annotations

from redis.asyncio import Redis

from keelson.plugins import Health, Key, Plugin, PluginMetadata, Priority

__all__ = ["REDIS", "RedisPlugin"]

REDIS: Key[Redis] = Key("redis")


class RedisPlugin(Plugin):
    metadata = PluginMetadata(
        name="redis", priority=Priority.INFRASTRUCTURE, description="Redis connection pool"
    )

    async def initialize(self) -> None:
        url = self.container.settings.redis_url
        if url is None:
            raise RuntimeError("KEELSON_REDIS_URL is not set")
        self.client = Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
        )
        self.container.provide(REDIS, self.client)

    async def stop(self) -> None:
        await self.client.aclose()

    async def health(self) -> Health:
        await self.client.ping()
        return Health(ok=True)
