"""Plugins and the container that starts them in priority-then-dependency order."""

from __future__ import annotations

import asyncio
import heapq
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any, ClassVar, Generic, TypeVar, cast

from pydantic import BaseModel, ValidationError

from keelson.config import ConfigError, KeelsonSettings, PluginSettings, describe_errors

__all__ = [
    "DependencyCycleError",
    "Health",
    "Key",
    "Plugin",
    "PluginContainer",
    "PluginError",
    "PluginMetadata",
    "PluginState",
    "Priority",
]

_log = logging.getLogger("keelson.plugins")

T = TypeVar("T")
P = TypeVar("P", bound="Plugin")
M = TypeVar("M", bound=BaseModel)


class Priority(IntEnum):
    INFRASTRUCTURE = 10
    SECURITY = 20
    MIDDLEWARE = 30
    BUSINESS = 40


class PluginState(StrEnum):
    REGISTERED = "registered"
    DISABLED = "disabled"
    INITIALIZING = "initializing"
    INITIALIZED = "initialized"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    ERROR = "error"


class PluginError(RuntimeError):
    """A required plugin failed, or the plugin graph is invalid."""


class DependencyCycleError(PluginError):
    """The declared dependencies form a cycle; the message lists it."""


@dataclass(frozen=True)
class Key(Generic[T]):
    """A typed name for a value one plugin provides and others resolve."""

    name: str


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str = ""
    critical: bool = True  # False: a failure degrades readiness but does not fail it


@dataclass(frozen=True)
class PluginMetadata:
    name: str
    version: str = "1.0"
    description: str = ""
    priority: Priority = Priority.BUSINESS
    depends_on: tuple[str, ...] = ()
    required: bool = True


class Plugin:
    """Base class: override only the hooks you need."""

    metadata: ClassVar[PluginMetadata]

    def __init__(self, container: PluginContainer) -> None:
        self.container = container
        self.settings: PluginSettings = container.settings.plugin(self.metadata.name)

    def options(self, model: type[M], section: PluginSettings | None = None) -> M:
        """This plugin's section of the settings (`plugins.<name>`) validated as `model`;
        `section` in place of the current one (a reload's new settings).

        A bad value raises `ConfigError` naming its variable, so the plugin fails at start.
        """
        given = self.settings if section is None else section
        try:
            return model.model_validate(given.model_dump(exclude={"enabled"}))
        except ValidationError as exc:
            raise ConfigError(
                describe_errors(exc, within=f"plugins__{self.metadata.name}")
            ) from None

    async def initialize(self) -> None:
        """Build what `start` needs; may `provide` values to the container."""

    async def start(self) -> None:
        """Open connections and start background work."""

    async def stop(self) -> None:
        """Release what `start` acquired; called in reverse start order."""

    async def health(self) -> Health:
        return Health(ok=True)


@dataclass
class _Slot:
    plugin: Plugin
    state: PluginState = PluginState.REGISTERED
    error: str | None = None
    order: int = 0


class PluginContainer:
    """Registers plugins, resolves their dependencies and drives their lifecycle.

    A health check has `health_timeout` seconds to answer, a `stop` has `stop_timeout`
    (then the plugin is marked ERROR and the others still stop).
    """

    def __init__(
        self,
        settings: KeelsonSettings,
        *,
        health_timeout: float = 2.0,
        stop_timeout: float = 30.0,
    ) -> None:
        self.settings = settings
        self.health_timeout = health_timeout
        self.stop_timeout = stop_timeout
        self._slots: dict[str, _Slot] = {}
        self._values: dict[Key[Any], Any] = {}
        self._started: list[str] = []
        self._stop_event = asyncio.Event()

    def register(self, plugin_cls: type[Plugin]) -> None:
        name = plugin_cls.metadata.name
        if name in self._slots:
            raise PluginError(f"plugin {name!r} registered twice")
        self._slots[name] = _Slot(plugin_cls(self), order=len(self._slots))

    def provide(self, key: Key[T], value: T) -> None:
        self._values[key] = value

    def resolve(self, key: Key[T]) -> T:
        try:
            return cast(T, self._values[key])
        except KeyError:
            raise PluginError(f"nothing provides {key.name!r}") from None

    def resolve_optional(self, key: Key[T]) -> T | None:
        return cast(T | None, self._values.get(key))

    def get(self, plugin_cls: type[P]) -> P:
        slot = self._slots.get(plugin_cls.metadata.name)
        if slot is None or not isinstance(slot.plugin, plugin_cls):
            raise PluginError(f"plugin {plugin_cls.metadata.name!r} is not registered")
        return slot.plugin

    def state(self, name: str) -> PluginState:
        return self._slots[name].state

    @property
    def degraded(self) -> bool:
        return any(slot.state is PluginState.ERROR for slot in self._slots.values())

    def start_order(self) -> list[str]:
        """Priority first, then dependencies first; a cycle raises `DependencyCycleError`."""
        enabled = {n: s for n, s in self._slots.items() if self._enabled(n)}
        for name, slot in enabled.items():
            for dep in slot.plugin.metadata.depends_on:
                if dep not in self._slots:
                    raise PluginError(f"plugin {name!r} depends on unknown plugin {dep!r}")
        indegree = {n: 0 for n in enabled}
        dependents: dict[str, list[str]] = {n: [] for n in enabled}
        for name, slot in enabled.items():
            for dep in slot.plugin.metadata.depends_on:
                if dep in enabled:
                    indegree[name] += 1
                    dependents[dep].append(name)
        order = self._topological(indegree, dependents, self._rank)
        if len(order) != len(enabled):
            raise DependencyCycleError(
                "plugin dependency cycle: " + self._describe_cycle(set(enabled) - set(order))
            )
        # A dependency inherits the urgency of what needs it: a SECURITY plugin's
        # BUSINESS-level dependency still starts before the MIDDLEWARE plugins.
        urgency = {name: int(slot.plugin.metadata.priority) for name, slot in enabled.items()}
        for name in reversed(order):
            for child in dependents[name]:
                urgency[name] = min(urgency[name], urgency[child])
        return self._topological(
            indegree, dependents, lambda n: (urgency[n], self._slots[n].order, n)
        )

    @staticmethod
    def _topological(
        indegree: dict[str, int],
        dependents: dict[str, list[str]],
        rank: Callable[[str], tuple[int, int, str]],
    ) -> list[str]:
        """Kahn's algorithm, lowest `rank` first among the ready; `indegree` is not changed."""
        waiting = dict(indegree)
        ready = [rank(n) for n, deg in waiting.items() if deg == 0]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            *_, name = heapq.heappop(ready)
            order.append(name)
            for child in dependents[name]:
                waiting[child] -= 1
                if waiting[child] == 0:
                    heapq.heappush(ready, rank(child))
        return order

    async def start(self) -> None:
        order = self.start_order()
        for name, slot in self._slots.items():
            if name not in order:
                slot.state = PluginState.DISABLED
        for name in order:
            await self._start_one(self._slots[name])

    async def stop(self) -> None:
        while self._started:
            slot = self._slots[self._started.pop()]
            slot.state = PluginState.STOPPING
            try:
                async with asyncio.timeout(self.stop_timeout):
                    await slot.plugin.stop()
                slot.state = PluginState.STOPPED
            except TimeoutError:
                slot.state = PluginState.ERROR
                slot.error = f"stop took longer than {self.stop_timeout}s"
                _log.error("plugin %s: %s", slot.plugin.metadata.name, slot.error)
            except Exception as exc:
                slot.state, slot.error = PluginState.ERROR, _short(exc)
                _log.exception("plugin %s failed to stop", slot.plugin.metadata.name)
        self._stop_event.set()

    async def health(self) -> dict[str, dict[str, Any]]:
        """Every plugin's state and, for running ones, its health check (run concurrently)."""
        report: dict[str, dict[str, Any]] = {}
        for name, slot in self._slots.items():
            meta = slot.plugin.metadata
            report[name] = {
                "state": slot.state.value,
                "priority": meta.priority.name,
                "required": meta.required,
                "version": meta.version,
            }
            if slot.error:
                report[name]["error"] = slot.error
        running = [n for n, slot in self._slots.items() if slot.state is PluginState.RUNNING]
        results = await asyncio.gather(*(self._check(self._slots[n].plugin) for n in running))
        for name, result in zip(running, results, strict=True):
            report[name].update(healthy=result.ok, critical=result.critical)
            if result.detail:
                report[name]["detail"] = result.detail
        return report

    async def _check(self, plugin: Plugin) -> Health:
        try:
            return await asyncio.wait_for(plugin.health(), self.health_timeout)
        except TimeoutError:
            return Health(ok=False, detail=f"no answer within {self.health_timeout}s")
        except Exception as exc:
            return Health(ok=False, detail=_short(exc))

    async def run_until_signal(self) -> None:
        """Start, wait for SIGTERM or SIGINT, then stop gracefully (for non-HTTP processes)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop_event.set)
        await self.start()
        try:
            await self._stop_event.wait()
        finally:
            self._stop_event.clear()
            await self.stop()

    def _enabled(self, name: str) -> bool:
        return self.settings.plugin(name).enabled

    def _rank(self, name: str) -> tuple[int, int, str]:
        slot = self._slots[name]
        return (slot.plugin.metadata.priority, slot.order, name)

    def _describe_cycle(self, members: set[str]) -> str:
        start = min(members)
        path, node = [start], start
        while True:
            node = next(d for d in self._slots[node].plugin.metadata.depends_on if d in members)
            if node in path:
                return " -> ".join([*path[path.index(node) :], node])
            path.append(node)

    async def _start_one(self, slot: _Slot) -> None:
        meta = slot.plugin.metadata
        failed_deps = [
            d for d in meta.depends_on if self._slots[d].state is not PluginState.RUNNING
        ]
        try:
            if failed_deps:
                raise PluginError(f"dependencies not running: {', '.join(failed_deps)}")
            slot.state = PluginState.INITIALIZING
            await slot.plugin.initialize()
            slot.state = PluginState.INITIALIZED
            slot.state = PluginState.STARTING
            await slot.plugin.start()
        except Exception as exc:
            slot.state, slot.error = PluginState.ERROR, _short(exc)
            if meta.required:
                _log.error("required plugin %s failed to start: %s", meta.name, slot.error)
                await self.stop()
                raise PluginError(f"required plugin {meta.name!r} failed: {slot.error}") from exc
            _log.warning("optional plugin %s failed, running degraded: %s", meta.name, slot.error)
            return
        slot.state = PluginState.RUNNING
        self._started.append(meta.name)
        _log.info("plugin %s running", meta.name)


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
