"""With the default [mqtt] settings, data flows again soon after a dead link returns.

The link is blackholed (bytes vanish, no reset: the usual cellular failure) for a
short time (the session is not yet given up when it returns) and for longer than
the PUBACK watchdog (connect attempts meet the dead link too). The bound here is
generous (15 s); the figures are bench/recovery_bench.py's, in docs/performance.md.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from rig import GatewayProcess, Subscriber, TcpProxy, modbus_device

from drivers.core.model import Quality
from drivers.modbus.decode import Table
from drivers.sim.modbus import ModbusSimServer, SimulatedDevice
from gateway.devtools.broker import Mosquitto

POINT = '{ name = "polls", address = 0, type = "uint32" }'


def default_mqtt_config(broker_port: int, buffer_path: Path, devices: str) -> str:
    """Only host and port in [mqtt]: every other setting is the default."""
    return f"""
[gateway]
id = "test-gw"

[mqtt]
host = "127.0.0.1"
port = {broker_port}

[buffer]
path = "{buffer_path}"
max_bytes = "50MB"

[batch]
max_readings = 50
max_age = "200ms"

{devices}
"""


def last_poll(sub: Subscriber) -> int:
    counts = [int(r.value) for r in sub.readings("pump", "polls") if r.quality == Quality.GOOD]
    return max(counts, default=0)


def gapless(sub: Subscriber) -> bool:
    counts = [int(r.value) for r in sub.readings("pump", "polls") if r.quality == Quality.GOOD]
    return bool(counts) and counts == list(range(1, counts[-1] + 1))


@pytest.mark.parametrize("outage", [3.0, 12.0], ids=["short-blackhole", "long-blackhole"])
async def test_data_arrives_again_soon_after_a_blackholed_link_returns_with_default_settings(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, gateway_process, outage: float
) -> None:
    device = SimulatedDevice(unit=1)
    device.add_read_counter(Table.HOLDING, 0)
    proxy = TcpProxy(broker.port)
    proxy.start()
    try:
        async with ModbusSimServer([device]) as sim:
            gp: GatewayProcess = gateway_process(
                default_mqtt_config(
                    proxy.port, tmp_path / "buffer.db", modbus_device("pump", sim.port, 1, POINT)
                )
            )
            gp.start()
            await subscriber.wait_async(lambda: last_poll(subscriber) >= 5, 20, "first data")
            proxy.blackhole()
            await asyncio.sleep(outage)
            proxy.restore()
            restored_at, polled_by_then = time.monotonic(), device.reads
            await subscriber.wait_async(
                lambda: last_poll(subscriber) > polled_by_then,
                15,
                "data polled after the link returned",
            )
            took = time.monotonic() - restored_at
            # What was in flight when the link went silent is sent again once the watchdog
            # gives the old connection up: every reading arrives.
            await subscriber.wait_async(
                lambda: gapless(subscriber), 20, "the readings of the outage, sent again"
            )
            assert await asyncio.to_thread(gp.stop) == 0, gp.log
    finally:
        proxy.stop()
    assert "Traceback" not in gp.log, gp.log
    print(f"blackhole {outage:g}s: data polled after the restore arrived {took:.1f}s later")
