"""Alarms on their own lane: raised and cleared at the centre while a big backlog drains."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from rig import Subscriber, gateway_config, modbus_device

from buffer import DurableQueue
from drivers.core.model import Reading
from drivers.modbus.decode import DataType, Table
from drivers.sim.modbus import ModbusSimServer, SimulatedDevice
from gateway.devtools.broker import Mosquitto
from gateway.wire import encode_batch

BACKLOG_BATCHES = 1000
BATCH_READINGS = 500  # 500,000 readings waiting on disk when the gateway starts

ALARMS = """
[[alarms]]
name = "methane-high"
kind = "threshold"
device = "gas"
point = "ch4"
high = 20.0
hysteresis = 2.0
severity = "critical"
"""


def prefill(path: Path) -> None:
    """A backlog as a long outage leaves it: batches of an earlier boot on disk."""
    readings = [
        Reading("old", f"p{i % 50}", 1_700_000_000_000 + i, float(i)) for i in range(BATCH_READINGS)
    ]
    with DurableQueue(path, max_bytes=500_000_000) as queue:
        for _ in range(BACKLOG_BATCHES):
            queue.append(lambda seq: encode_batch("test-gw", "earlier-boot", seq, readings))


async def test_an_alarm_raised_while_a_large_backlog_drains_reaches_the_centre_within_a_second(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, gateway_process
) -> None:
    prefill(tmp_path / "buffer.db")
    gas = SimulatedDevice(unit=1)
    gas.set_value(Table.HOLDING, 0, 25.0, DataType.FLOAT32)  # methane above the limit at once
    async with ModbusSimServer([gas]) as sim:
        gp = gateway_process(
            gateway_config(
                broker_port=broker.port,
                buffer_path=tmp_path / "buffer.db",
                devices=modbus_device(
                    "gas",
                    sim.port,
                    1,
                    '{ name = "ch4", address = 0, type = "float32" }',
                    interval="50ms",
                ),
            )
            + ALARMS
        )
        gp.start()
        # The first poll raises the alarm while the backlog is still draining.
        await subscriber.wait_async(lambda: len(subscriber.on("/alarm")) >= 1, 10, "alarm raised")
        data_when_alarm_arrived = len(subscriber.data_messages())
        gas.set_value(Table.HOLDING, 0, 17.0, DataType.FLOAT32)  # back below high - hysteresis
        await subscriber.wait_async(lambda: len(subscriber.on("/alarm")) >= 2, 10, "alarm cleared")
        await subscriber.wait_async(
            lambda: len(subscriber.batches()) >= BACKLOG_BATCHES, 60, "the whole backlog"
        )
        assert await asyncio.to_thread(gp.stop) == 0, gp.log
    raised, cleared = (json.loads(p) for p in subscriber.on("/alarm")[:2])
    assert (raised["alarm"], raised["state"], raised["severity"]) == (
        "methane-high",
        "raised",
        "critical",
    )
    assert raised["value"] == 25.0 and cleared["state"] == "cleared"
    assert raised["gateway_id"] == "test-gw" and cleared["seq"] == raised["seq"] + 1
    # Latency: from the reading that raised it to its arrival at the centre.
    with subscriber._lock:
        arrival = next(
            t
            for (topic, _), t in zip(subscriber.messages, subscriber.arrived, strict=True)
            if topic.endswith("/alarm")
        )
    latency = arrival - raised["ts_ms"] / 1000
    print(
        f"alarm latency {latency * 1000:.0f} ms with {BACKLOG_BATCHES * BATCH_READINGS:,} readings of backlog; "
        f"{data_when_alarm_arrived} of {BACKLOG_BATCHES} backlog batches had arrived"
    )
    assert latency < 1.0
    assert data_when_alarm_arrived < BACKLOG_BATCHES, (
        "the backlog had drained before the alarm: test proves nothing"
    )
    assert "alarm methane-high raised" in gp.log
