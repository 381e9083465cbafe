"""The core path on the real rig: pymodbus devices -> gateway process -> mosquitto -> centre."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from pathlib import Path

from rig import GatewayProcess, Subscriber, TcpProxy, gateway_config, modbus_device

from buffer import DurableQueue
from drivers.core.model import Quality
from drivers.modbus.decode import DataType, Table
from drivers.sim.modbus import ModbusSimServer, SimulatedDevice
from gateway.devtools.broker import Mosquitto

POINTS = """
  { name = "polls", address = 0, type = "uint32" },
  { name = "pressure", address = 2, type = "float32", unit = "bar" },
  { name = "running", table = "coil", address = 0, type = "bool" },
"""


def counting_device(unit: int = 1) -> SimulatedDevice:
    device = SimulatedDevice(unit=unit)
    device.add_read_counter(Table.HOLDING, 0)
    device.set_value(Table.HOLDING, 2, 4.5, DataType.FLOAT32)
    device.set_value(Table.COIL, 0, True)
    return device


def poll_counts(sub: Subscriber, device: str = "pump") -> list[int]:
    return [int(r.value) for r in sub.readings(device, "polls") if r.quality == Quality.GOOD]


def assert_gapless(counts: list[int], what: str) -> None:
    assert counts, f"no {what} arrived"
    assert counts == list(range(counts[0], counts[0] + len(counts))), (
        f"{what}: readings missing or out of order: {counts}"
    )


def pump_gateway(
    gateway_process, tmp_path: Path, broker_port: int, modbus_port: int
) -> GatewayProcess:  # type: ignore[no-untyped-def]
    """The gateway polling the counting pump, with its buffer in tmp_path."""
    config = gateway_config(
        broker_port=broker_port,
        buffer_path=tmp_path / "buffer.db",
        devices=modbus_device("pump", modbus_port, 1, POINTS),
    )
    gp: GatewayProcess = gateway_process(config)
    return gp


def journal_segments(directory: Path) -> list[Path]:
    return list(directory.glob("buffer.db.journal-*"))


def rows_in(database: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        (count,) = conn.execute("SELECT count(*) FROM batches").fetchone()
    return int(count)


async def stop(gp: GatewayProcess) -> int:
    return await asyncio.to_thread(gp.stop)


async def test_every_polled_reading_reaches_the_centre_in_order(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, gateway_process
) -> None:
    async with ModbusSimServer([counting_device()]) as sim:
        gp = pump_gateway(gateway_process, tmp_path, broker.port, sim.port)
        gp.start()
        await subscriber.wait_async(lambda: len(poll_counts(subscriber)) >= 15, 20, "15 polls")
        assert await stop(gp) == 0, gp.log
        served = sim.devices[1].reads
    await subscriber.wait_async(
        lambda: len(poll_counts(subscriber)) >= served // 2, 10, "the flushed last batch"
    )
    counts = poll_counts(subscriber)
    # Every poll the device served (its counter) arrived exactly once, in order,
    # including the batch that was still open when the gateway was told to stop.
    assert counts == list(range(1, counts[-1] + 1))
    assert counts[-1] * 2 == served  # two register requests per poll: holding + coil
    assert {r.value for r in subscriber.readings("pump", "pressure")} == {4.5}
    assert {r.value for r in subscriber.readings("pump", "running")} == {True}
    batches = subscriber.batches()
    assert [b.seq for b in batches] == list(range(1, len(batches) + 1))
    assert len({b.boot_id for b in batches}) == 1
    # A clean stop publishes the flushed batch before saying goodbye.
    assert "stopped; 0 batch(es) remain on disk" in gp.log, gp.log


async def test_readings_made_while_the_broker_is_down_arrive_in_order_after_it_returns(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, gateway_process
) -> None:
    async with ModbusSimServer([counting_device()]) as sim:
        gp = pump_gateway(gateway_process, tmp_path, broker.port, sim.port)
        gp.start()
        await subscriber.wait_async(lambda: len(poll_counts(subscriber)) >= 5, 20, "first polls")
        await asyncio.to_thread(broker.stop)
        before_outage = sim.devices[1].reads
        await asyncio.sleep(2.5)
        polled_during_outage = (sim.devices[1].reads - before_outage) // 2
        # The outage's batches went to the outage journal, not into SQLite.
        assert journal_segments(tmp_path), gp.log
        assert rows_in(tmp_path / "buffer.db") == 0
        await asyncio.to_thread(broker.start)
        await subscriber.wait_async(
            lambda: (
                bool(poll_counts(subscriber))
                and poll_counts(subscriber)[-1] > before_outage // 2 + polled_during_outage
            ),
            20,
            "readings from after the outage",
        )
        # Once the backlog is acknowledged its segments are deleted.
        await subscriber.wait_async(
            lambda: not journal_segments(tmp_path), 20, "the journal emptied by the acks"
        )
        assert await stop(gp) == 0, gp.log
    assert polled_during_outage >= 10, "the outage was too short to test anything"
    counts = poll_counts(subscriber)
    assert_gapless(counts, "polls across a broker outage" + gp.log)
    assert counts[0] == 1
    # The backlog went out on the history lane beside live data; each lane in order.
    lanes = subscriber.lane_seqs()
    assert set(lanes) == {"data", "history"}
    assert all(seqs == sorted(seqs) for seqs in lanes.values()), lanes
    assert len(lanes["history"]) >= 5
    assert "lost the MQTT broker" in gp.log
    assert gp.log.count("connected to MQTT broker") == 2, gp.log


async def test_batches_on_disk_when_the_gateway_is_killed_arrive_after_a_restart(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, gateway_process
) -> None:
    buffer_path = tmp_path / "buffer.db"
    async with ModbusSimServer([counting_device()]) as sim:
        gp = pump_gateway(gateway_process, tmp_path, broker.port, sim.port)
        await asyncio.to_thread(broker.stop)  # an outage: everything piles up on disk
        gp.start()
        await subscriber.wait_async(
            lambda: "is answering" in gp.log,
            20,
            "the gateway polling",  # slow on a busy CI
        )
        await asyncio.sleep(2.0)  # batches close every 200 ms
        gp.kill()  # SIGKILL: no flush, no goodbye
        with DurableQueue(buffer_path, max_bytes=50_000_000) as queue:
            persisted = queue.read(0, 100_000)
        assert len(persisted) >= 3, gp.log
        await asyncio.to_thread(broker.start)
        gp.start()
        await subscriber.wait_async(
            lambda: {b.seq for b in subscriber.batches()} >= {e.seq for e in persisted},
            20,
            "every persisted batch",
        )
        assert await stop(gp) == 0, gp.log
    batches = subscriber.batches()
    first_boot = [b for b in batches if b.seq <= persisted[-1].seq]
    assert [b.seq for b in first_boot] == [e.seq for e in persisted]  # oldest first
    assert [b.seq for b in batches] == sorted(b.seq for b in batches)  # seq grows across restart
    assert len({b.boot_id for b in batches}) == 2
    # Readings of the first run are gapless up to the last persisted batch; only the
    # open batch (at most max_age of readings) died with the process.
    counts = poll_counts(subscriber)
    first_run = [
        c
        for c in counts
        if c
        <= max(int(r.value) for e in persisted for r in _decode(e.payload) if r.point == "polls")
    ]
    assert first_run == list(range(1, len(first_run) + 1))


def _decode(payload: bytes):  # type: ignore[no-untyped-def]
    from gateway.wire import decode_batch

    return decode_batch(payload).readings


async def test_a_device_that_disappears_is_marked_offline_and_recovers_while_others_carry_on(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, gateway_process
) -> None:
    steady = ModbusSimServer([counting_device()])
    flaky_device = counting_device()
    flaky = ModbusSimServer([flaky_device])
    await steady.start()
    await flaky.start()
    try:
        gp = gateway_process(
            gateway_config(
                broker_port=broker.port,
                buffer_path=tmp_path / "buffer.db",
                devices=modbus_device("pump", steady.port, 1, POINTS)
                + modbus_device("gauge", flaky.port, 1, POINTS, backoff_max="300ms"),
            )
        )
        gp.start()
        await subscriber.wait_async(lambda: len(poll_counts(subscriber, "gauge")) >= 5, 20, "gauge")
        await flaky.stop()
        await subscriber.wait_async(
            lambda: "'gauge'" in gp.log and "is offline" in gp.log, 10, "the gauge reported offline"
        )
        await subscriber.wait_async(
            lambda: any(_device_state(h, "gauge") == "offline" for h in subscriber.on("/health")),
            10,
            "health topic shows the gauge offline",
        )
        steady_before = len(poll_counts(subscriber, "pump"))
        await asyncio.sleep(1.5)
        await flaky.start()  # same port, same device: it comes back
        await subscriber.wait_async(lambda: "answers again" in gp.log, 10, "gauge recovery logged")
        gauge_before = poll_counts(subscriber, "gauge")[-1]
        await subscriber.wait_async(
            lambda: poll_counts(subscriber, "gauge")[-1] >= gauge_before + 3, 10, "gauge readings"
        )
        assert len(poll_counts(subscriber, "pump")) > steady_before + 5, "pump stalled"
        assert await stop(gp) == 0, gp.log
    finally:
        await steady.stop()
        await flaky.stop()
    assert gp.log.count("'gauge' (unit 1 at") >= 2
    assert gp.log.count("is offline") == 1, gp.log  # logged once, not every poll
    assert gp.log.count("answers again") == 1, gp.log
    assert_gapless(poll_counts(subscriber, "pump"), "pump polls while the gauge was away")


def _device_state(health_payload: bytes, name: str) -> str | None:
    for device in json.loads(health_payload)["devices"]:
        if device["name"] == name:
            return str(device["state"])
    return None


async def test_status_topic_says_online_on_connect_and_offline_on_stop_or_death(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, gateway_process
) -> None:
    async with ModbusSimServer([counting_device()]) as sim:
        gp = pump_gateway(gateway_process, tmp_path, broker.port, sim.port)
        gp.start()
        await subscriber.wait_async(lambda: len(subscriber.on("/status")) >= 1, 20, "birth")
        birth = json.loads(subscriber.on("/status")[0])
        assert birth["state"] == "online"
        assert birth["gateway_id"] == "test-gw"
        assert len(birth["boot_id"]) == 16 and len(birth["config_hash"]) == 12
        assert birth["version"]
        assert await stop(gp) == 0
        await subscriber.wait_async(lambda: len(subscriber.on("/status")) >= 2, 10, "goodbye")
        assert json.loads(subscriber.on("/status")[1])["state"] == "offline"
        assert json.loads(subscriber.on("/status")[1])["reason"] == "stopped"
        gp.start()
        await subscriber.wait_async(lambda: len(subscriber.on("/status")) >= 3, 20, "2nd birth")
        gp.kill()
        await subscriber.wait_async(lambda: len(subscriber.on("/status")) >= 4, 20, "last will")
        will = json.loads(subscriber.on("/status")[3])
        assert will["state"] == "offline" and will["reason"] == "connection lost"
    # A newcomer subscribing later sees the retained state at once.
    late = Subscriber(broker, "city/test-gw/status")
    try:
        late.wait(lambda: len(late.messages) >= 1, 10, "retained status")
        assert json.loads(late.messages[0][1])["state"] == "offline"
    finally:
        late.close()


async def test_a_blackholed_link_is_detected_torn_down_and_unacknowledged_batches_resent(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, gateway_process
) -> None:
    proxy = TcpProxy(broker.port)
    proxy.start()
    try:
        async with ModbusSimServer([counting_device()]) as sim:
            gp = gateway_process(
                gateway_config(
                    broker_port=proxy.port,
                    buffer_path=tmp_path / "buffer.db",
                    devices=modbus_device("pump", sim.port, 1, POINTS),
                    extra_mqtt='publish_timeout = "2s"\nkeepalive = "2s"',
                )
            )
            gp.start()
            await subscriber.wait_async(lambda: len(poll_counts(subscriber)) >= 5, 20, "first")
            proxy.blackhole()  # no reset, no FIN: the link just goes silent
            await asyncio.sleep(5.0)
            during = sim.devices[1].reads // 2
            proxy.restore()
            await subscriber.wait_async(
                lambda: bool(poll_counts(subscriber)) and poll_counts(subscriber)[-1] > during,
                30,
                "readings from the blackout and after it",
            )
            assert await stop(gp) == 0, gp.log
    finally:
        proxy.stop()
    counts = poll_counts(subscriber)
    assert_gapless(counts, "polls across a blackholed link")
    assert counts[0] == 1
    assert proxy.connections >= 2  # the dead connection was replaced
    assert "lost the MQTT broker" in gp.log
    duplicates = len(subscriber.all_batches()) - len(subscriber.batches())
    print(f"blackhole: {len(subscriber.batches())} batches, {duplicates} duplicate(s) re-sent")
