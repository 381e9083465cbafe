"""The backlog survives a config change and an upgrade of the gateway."""

from __future__ import annotations

import asyncio
from pathlib import Path

from rig import Subscriber, gateway_config, modbus_device

from buffer import DurableQueue
from drivers.core.model import Reading
from drivers.modbus.decode import DataType, Table
from drivers.sim.modbus import ModbusSimServer, SimulatedDevice
from gateway.devtools.broker import Mosquitto
from gateway.wire import decode_batch, encode_batch


async def test_a_backlog_written_by_an_older_version_under_another_config_is_delivered(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, gateway_process
) -> None:
    # What an older gateway left on disk: wire format v1 batches, from devices and
    # a gateway id that the new config no longer has.
    buffer_path = tmp_path / "buffer.db"
    old = [Reading("old-meter", "energy", 1_790_000_000_000 + i, i * 10) for i in range(50)]
    with DurableQueue(buffer_path, max_bytes=50_000_000) as queue:
        for _ in range(30):
            queue.append(lambda seq: encode_batch("cabinet-old", "old-boot", seq, old, version=1))
    device = SimulatedDevice(unit=1)
    device.set_value(Table.HOLDING, 0, 7.5, DataType.FLOAT32)
    async with ModbusSimServer([device]) as sim:
        gp = gateway_process(
            gateway_config(
                broker_port=broker.port,
                buffer_path=buffer_path,
                gateway_id="cabinet-new",
                devices=modbus_device(
                    "new-pump", sim.port, 1, '{ name = "p", address = 0, type = "float32" }'
                ),
            )
        )
        gp.start()
        await subscriber.wait_async(
            lambda: len(subscriber.batches()) >= 32, 20, "old backlog and new readings"
        )
        assert await asyncio.to_thread(gp.stop) == 0, gp.log
    old_batches = [b for b in subscriber.batches() if b.gateway_id == "cabinet-old"]
    assert [b.seq for b in old_batches] == list(range(1, 31))
    assert all(b.version == 1 and b.readings == old for b in old_batches)
    new = [b for b in subscriber.batches() if b.gateway_id == "cabinet-new"]
    assert new and all(b.version == 2 for b in new)
    assert min(b.seq for b in new) == 31  # seq carries on from the old buffer
    # The old batches went out as history, on the new gateway's topic, untouched.
    raw = [
        (t, p) for t, p in subscriber.data_messages() if decode_batch(p).gateway_id == "cabinet-old"
    ]
    assert {t for t, _ in raw} == {"city/cabinet-new/data/history"}
