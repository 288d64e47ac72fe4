import uuid

from keelson.bus import BUS, BusPlugin, ZmqBroker
from keelson.config import BusSettings, KeelsonSettings
from keelson.events import Envelope
from keelson.plugins import PluginState
from keelson.service import build_container
from keelson_dev.embedded import free_port
from keelson_dev.testing import eventually, make_settings


async def round_trip(settings: KeelsonSettings, *, transport: str) -> None:
    container = build_container(settings, database=False)
    await container.start()
    try:
        bus = container.resolve(BUS)
        assert bus.transport == transport
        assert container.get(BusPlugin).bus is bus
        got: list[Envelope] = []

        async def handler(env: Envelope) -> None:
            got.append(env)

        topic = f"plugin.t{uuid.uuid4().hex[:8]}"
        bus.subscribe(topic, handler, group="plugin-test")
        await bus.wait_ready()
        sent = await bus.publish(Envelope(type=topic, producer="x", data={"ok": True}))
        await eventually(lambda: [e.id for e in got] == [sent.id])

        report = await container.health()
        assert report["bus"]["state"] == PluginState.RUNNING
        assert report["bus"]["healthy"] is True
        assert report["bus"]["detail"].startswith(f"transport={transport}")
    finally:
        await container.stop()
    assert container.state("bus") is PluginState.STOPPED


async def test_with_redis_the_plugin_runs_on_redis_streams_after_the_redis_plugin(
    redis_url: str,
) -> None:
    settings = make_settings(redis_url=redis_url, bus=BusSettings(block_ms=50))
    assert build_container(settings, database=False).start_order()[:2] == ["redis", "bus"]
    await round_trip(settings, transport="redis")


async def test_without_redis_the_plugin_runs_on_zeromq() -> None:
    broker = ZmqBroker(f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}")
    broker.start()
    try:
        bus_settings = BusSettings(
            zmq_xsub_endpoint=broker.xsub_endpoint, zmq_xpub_endpoint=broker.xpub_endpoint
        )
        await round_trip(make_settings(redis_url=None, bus=bus_settings), transport="zmq")
    finally:
        broker.stop()
