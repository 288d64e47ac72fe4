import asyncio
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from pydantic import BaseModel, Field

from keelson.config import KeelsonSettings, PluginSettings
from keelson.plugins import (
    DependencyCycleError,
    Health,
    Key,
    Plugin,
    PluginContainer,
    PluginError,
    PluginMetadata,
    PluginState,
    Priority,
)

EVENTS: list[str] = []
NUMBER: Key[int] = Key("number")


def make_plugin(
    name: str,
    priority: Priority = Priority.BUSINESS,
    *,
    depends_on: tuple[str, ...] = (),
    required: bool = True,
    fail_on: str | None = None,
) -> type[Plugin]:
    class _Plugin(Plugin):
        metadata = PluginMetadata(
            name=name, priority=priority, depends_on=depends_on, required=required
        )

        async def initialize(self) -> None:
            EVENTS.append(f"init:{name}")
            if fail_on == "initialize":
                raise RuntimeError(f"{name} cannot initialize")

        async def start(self) -> None:
            EVENTS.append(f"start:{name}")
            if fail_on == "start":
                raise RuntimeError(f"{name} cannot start")

        async def stop(self) -> None:
            EVENTS.append(f"stop:{name}")

    return _Plugin


@pytest.fixture(autouse=True)
def reset_events() -> None:
    EVENTS.clear()


def container(*plugins: type[Plugin], **plugin_settings: PluginSettings) -> PluginContainer:
    c = PluginContainer(
        KeelsonSettings(plugins=plugin_settings), health_timeout=0.2, stop_timeout=0.5
    )
    for plugin in plugins:
        c.register(plugin)
    return c


async def test_starts_by_priority_then_dependencies_and_stops_in_reverse() -> None:
    c = container(
        make_plugin("routing", Priority.BUSINESS),
        make_plugin("security", Priority.SECURITY, depends_on=("keys",)),
        make_plugin("bus", Priority.INFRASTRUCTURE),
        make_plugin("keys", Priority.BUSINESS),
        make_plugin("limits", Priority.MIDDLEWARE),
    )
    assert c.start_order() == ["bus", "keys", "security", "limits", "routing"]
    await c.start()
    assert [e for e in EVENTS if e.startswith("start")] == [
        "start:bus",
        "start:keys",
        "start:security",
        "start:limits",
        "start:routing",
    ]
    assert all(c.state(n) is PluginState.RUNNING for n in ("bus", "keys", "routing"))
    EVENTS.clear()
    await c.stop()
    assert EVENTS == ["stop:routing", "stop:limits", "stop:security", "stop:keys", "stop:bus"]
    assert c.state("bus") is PluginState.STOPPED


async def test_cycle_is_refused_with_the_cycle_named() -> None:
    c = container(
        make_plugin("a", depends_on=("b",)),
        make_plugin("b", depends_on=("c",)),
        make_plugin("c", depends_on=("a",)),
        make_plugin("free"),
    )
    with pytest.raises(DependencyCycleError, match="a -> b -> c -> a"):
        await c.start()
    assert EVENTS == []


async def test_unknown_dependency_is_refused() -> None:
    with pytest.raises(PluginError, match="unknown plugin 'ghost'"):
        container(make_plugin("a", depends_on=("ghost",))).start_order()


async def test_optional_failure_is_isolated_and_reported() -> None:
    c = container(
        make_plugin("db", Priority.INFRASTRUCTURE),
        make_plugin("flaky", Priority.MIDDLEWARE, required=False, fail_on="start"),
        make_plugin("needs_flaky", Priority.BUSINESS, required=False, depends_on=("flaky",)),
        make_plugin("api", Priority.BUSINESS),
    )
    await c.start()
    assert c.state("flaky") is PluginState.ERROR
    assert c.state("needs_flaky") is PluginState.ERROR
    assert c.state("api") is PluginState.RUNNING
    assert c.degraded
    report = await c.health()
    assert "flaky cannot start" in report["flaky"]["error"]
    assert "dependencies not running: flaky" in report["needs_flaky"]["error"]
    await c.stop()
    assert "stop:flaky" not in EVENTS


async def test_required_failure_is_fatal_and_stops_what_started() -> None:
    c = container(
        make_plugin("db", Priority.INFRASTRUCTURE),
        make_plugin("auth", Priority.SECURITY, fail_on="initialize"),
        make_plugin("api", Priority.BUSINESS),
    )
    with pytest.raises(PluginError, match="required plugin 'auth' failed"):
        await c.start()
    assert "start:api" not in EVENTS
    assert "stop:db" in EVENTS
    assert c.state("auth") is PluginState.ERROR


async def test_disabled_in_config_is_skipped() -> None:
    c = container(make_plugin("on"), make_plugin("off"), off=PluginSettings(enabled=False))
    await c.start()
    assert c.state("off") is PluginState.DISABLED
    assert "init:off" not in EVENTS
    assert (await c.health())["off"]["state"] == "disabled"


async def test_typed_values_and_health() -> None:
    class Provider(Plugin):
        metadata = PluginMetadata(name="provider", priority=Priority.INFRASTRUCTURE)

        async def initialize(self) -> None:
            self.container.provide(NUMBER, 42)

        async def health(self) -> Health:
            return Health(ok=False, detail="disk full")

    class Consumer(Plugin):
        metadata = PluginMetadata(name="consumer", depends_on=("provider",))

        async def start(self) -> None:
            self.seen = self.container.resolve(NUMBER)

    c = container(Provider, Consumer)
    await c.start()
    assert c.get(Consumer).seen == 42
    report = await c.health()
    assert report["provider"]["healthy"] is False
    assert report["provider"]["detail"] == "disk full"
    with pytest.raises(PluginError, match="nothing provides"):
        c.resolve(Key[str]("missing"))
    await c.stop()


async def test_each_hook_runs_in_its_state_and_the_states_follow_the_lifecycle() -> None:
    seen: list[tuple[str, PluginState]] = []

    class Observed(Plugin):
        metadata = PluginMetadata(name="observed")

        async def initialize(self) -> None:
            seen.append(("initialize", self.container.state("observed")))

        async def start(self) -> None:
            seen.append(("start", self.container.state("observed")))

        async def stop(self) -> None:
            seen.append(("stop", self.container.state("observed")))

    c = container(Observed)
    assert c.state("observed") is PluginState.REGISTERED
    await c.start()
    assert c.state("observed") is PluginState.RUNNING
    await c.stop()
    assert c.state("observed") is PluginState.STOPPED
    assert seen == [
        ("initialize", PluginState.INITIALIZING),
        ("start", PluginState.STARTING),
        ("stop", PluginState.STOPPING),
    ]


async def test_a_stop_that_hangs_is_cut_short_and_the_others_still_stop() -> None:
    class Hangs(Plugin):
        metadata = PluginMetadata(name="hangs", priority=Priority.BUSINESS)

        async def stop(self) -> None:
            await asyncio.Event().wait()

    c = container(make_plugin("db", Priority.INFRASTRUCTURE), Hangs)
    await c.start()
    await c.stop()
    assert c.state("hangs") is PluginState.ERROR
    assert "stop took longer" in (await c.health())["hangs"]["error"]
    assert c.state("db") is PluginState.STOPPED


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_gracefully(signum: signal.Signals) -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys
        from keelson.config import KeelsonSettings
        from keelson.plugins import Plugin, PluginContainer, PluginMetadata

        class Worker(Plugin):
            metadata = PluginMetadata(name="worker")
            async def start(self):
                print("started", flush=True)
            async def stop(self):
                print("stopped cleanly", flush=True)

        c = PluginContainer(KeelsonSettings())
        c.register(Worker)
        asyncio.run(c.run_until_signal())
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=10)
    assert "stopped cleanly" in out
    assert proc.returncode == 0


async def test_health_checks_that_hang_are_reported_and_run_concurrently() -> None:
    both_waiting = asyncio.Barrier(2)
    passed: list[str] = []

    def hanging(name: str) -> type[Plugin]:
        class Hangs(Plugin):
            metadata = PluginMetadata(name=name)

            async def health(self) -> Health:
                await both_waiting.wait()  # passes only if the other check runs meanwhile
                passed.append(name)
                await asyncio.Event().wait()
                return Health(ok=True)

        return Hangs

    c = container(hanging("first"), hanging("second"))
    await c.start()
    report = await c.health()
    assert report["first"]["healthy"] is False and report["second"]["healthy"] is False
    assert report["first"]["detail"] == "no answer within 0.2s"
    assert sorted(passed) == ["first", "second"]
    await c.stop()


class _Limits(BaseModel):
    per_minute: int = Field(60, gt=0)
    burst: int = 10


async def test_options_are_typed_and_a_bad_value_fails_the_start_naming_it() -> None:
    class Limits(Plugin):
        metadata = PluginMetadata(name="rate_limits")

        async def initialize(self) -> None:
            self.limits = self.options(_Limits)

    good = container(Limits, rate_limits=PluginSettings(per_minute=5))
    await good.start()
    assert good.get(Limits).limits == _Limits(per_minute=5, burst=10)
    await good.stop()

    bad = container(Limits, rate_limits=PluginSettings(per_minute=0))
    with pytest.raises(PluginError, match="KEELSON_PLUGINS__RATE_LIMITS__PER_MINUTE"):
        await bad.start()
