"""Which MQTT version the uplink speaks, and what each lets it know, on a real mosquitto."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from rig import Subscriber

from buffer import DurableQueue
from gateway.devtools.broker import Mosquitto
from gateway.store import Store
from gateway.uplink.config import MqttConfig
from gateway.uplink.mqtt import MqttUplink
from gateway.uplink.topics import Topics

DENY_DATA = "topic read #\ntopic write city/+/status\ntopic write city/+/health\n"


@asynccontextmanager
async def uplink_running(tmp_path: Path, port: int, protocol: str) -> AsyncIterator[MqttUplink]:
    config = MqttConfig.model_validate({"port": port, "protocol": protocol})
    store = Store(DurableQueue(tmp_path / "buffer.db", max_bytes=10_000_000))
    for i in range(5):
        await store.append(lambda seq, i=i: f"batch {i}".encode())
    uplink = MqttUplink(
        config,
        Topics("city", "gw-1"),
        store,
        identity={"gateway_id": "gw-1", "boot_id": "b", "version": "0", "config_hash": "c"},
        health=dict,
    )
    task = asyncio.create_task(uplink.run())
    try:
        yield uplink
    finally:
        uplink.stop()
        async with asyncio.timeout(15):
            await task
        store.close()


@pytest.mark.parametrize(("protocol", "mark"), [("5", "(p5,"), ("3.1.1", "(p2,")])
async def test_the_uplink_speaks_the_configured_mqtt_version_and_delivers(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, protocol: str, mark: str
) -> None:
    async with uplink_running(tmp_path, broker.port, protocol) as uplink:
        await _wait(lambda: len(subscriber.on("/data/history")) == 5, 10, "the five batches")
        assert uplink.health()["protocol"] == protocol
    assert f"as edge-gateway-gw-1 {mark}" in broker.log.read_text()


async def test_under_mqtt_3_1_1_a_denied_publish_looks_stored_which_is_why_5_is_the_default(
    tmp_path: Path,
) -> None:
    broker = Mosquitto(
        tmp_path / "broker", acl=DENY_DATA, extra_config="max_queued_messages 1000\n"
    )
    broker.start()
    sub = Subscriber(broker)
    try:
        async with uplink_running(tmp_path, broker.port, "3.1.1") as uplink:
            await _wait(lambda: uplink.store.stats.batches == 0, 10, "the batches 'acknowledged'")
            assert uplink.state == "online" and uplink.health()["denied"] == []
        await asyncio.sleep(0.5)
        assert sub.data_messages() == []  # deleted from disk, and the centre has none
    finally:
        sub.close()
        broker.kill()


async def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s: {what}")
        await asyncio.sleep(0.05)
