"""Modbus RTU on a shared serial bus (pty pairs) and RTU over TCP."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

import pytest
from rig import rtu_device

from drivers.core.model import Quality, Reading
from drivers.modbus.decode import DataType, Table
from drivers.serial_port import LineSettings
from drivers.sim.modbus import ModbusSimServer, SimulatedDevice
from drivers.sim.rfc2217_line import Rfc2217Line
from drivers.sim.serial_link import NullModem
from gateway.build import build_drivers
from gateway.settings import parse_config
from gateway.tasks import cancel_and_wait

pytestmark = pytest.mark.rig  # real devices, ptys or processes

POINTS = (
    '{ name = "n", address = 0, type = "uint32" }, { name = "t", address = 2, type = "float32" }'
)


def slaves(*units: int) -> list[SimulatedDevice]:
    out = []
    for unit in units:
        d = SimulatedDevice(unit=unit)
        d.add_read_counter(Table.HOLDING, 0)
        d.set_value(Table.HOLDING, 2, 20.0 + unit, DataType.FLOAT32)
        out.append(d)
    return out


class Sink(list[Reading]):
    def __call__(self, readings: list[Reading]) -> None:
        self.extend(readings)

    def counts(self, device: str) -> list[int]:
        return [int(r.value) for r in self.good(device, "n")]  # type: ignore[arg-type]

    def good(self, device: str, point: str) -> list[Reading]:
        return [r for r in self if r.device == device and r.point == point and r.quality == 0]


async def run_for(drivers, seconds: float) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(d.run()) for d in drivers]
        await asyncio.sleep(seconds)
        await cancel_and_wait(tasks)


async def test_slaves_on_one_bus_share_one_port_and_every_poll_is_read_in_order() -> None:
    sink = Sink()
    async with NullModem() as line, ModbusSimServer(slaves(1, 2, 3), serial_port=line.b.path):
        text = '[gateway]\nid = "t"\n' + "".join(
            rtu_device(f"s{u}", line.a.path, u, POINTS, backoff_max="2s") for u in (1, 2, 3)
        )
        drivers = build_drivers(parse_config(text.encode()).config, sink)
        assert len(drivers) == 1  # one bus, one endpoint, one request at a time
        await run_for(drivers, 1.5)
    for unit in (1, 2, 3):
        counts = sink.counts(f"s{unit}")
        assert len(counts) >= 8, f"s{unit} polled only {len(counts)} times"
        assert counts == list(range(1, len(counts) + 1))
        assert {r.value for r in sink.good(f"s{unit}", "t")} == {20.0 + unit}


async def test_a_dead_slave_costs_its_neighbours_at_most_one_timeout_per_back_off_period() -> None:
    sink = Sink()
    devices = slaves(1, 2, 3)
    devices[1].silent = True  # unit 2 is dead from the start
    async with NullModem() as line, ModbusSimServer(devices, serial_port=line.b.path):
        text = '[gateway]\nid = "t"\n' + "".join(
            rtu_device(f"s{u}", line.a.path, u, POINTS, backoff_max="2s") for u in (1, 2, 3)
        )
        drivers = build_drivers(parse_config(text.encode()).config, sink)
        started = time.monotonic()
        await run_for(drivers, 4.0)
        elapsed = time.monotonic() - started
    health = {h.name: h for h in drivers[0].health()}
    assert health["s2"].online is False
    # Back-off 0.1, 0.2, 0.4, 0.8, 1.6, 2, ... s: about 6-8 attempts in 4 s, not 40.
    assert health["s2"].timeouts <= 10, health["s2"].timeouts
    for unit in (1, 3):
        polls = len(sink.counts(f"s{unit}"))
        # Nominal 10 polls/s; each dead-slave timeout steals 0.2 s of bus time.
        # Generous bound: at least 60 % of nominal.
        assert polls >= 0.6 * 10 * elapsed, f"s{unit}: {polls} polls in {elapsed:.1f}s"


async def test_noise_on_the_line_is_counted_and_polling_resynchronises() -> None:
    sink = Sink()
    async with NullModem() as line, ModbusSimServer(slaves(1, 2), serial_port=line.b.path):
        text = '[gateway]\nid = "t"\n' + "".join(
            rtu_device(f"s{u}", line.a.path, u, POINTS, backoff_max="300ms") for u in (1, 2)
        )
        drivers = build_drivers(parse_config(text.encode()).config, sink)
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(drivers[0].run())
            for _ in range(15):  # stray bytes on the bus, at random moments
                await asyncio.sleep(0.07)
                line.inject_to_a(b"\x00\xff\x13\x37garbage\x01\x03")
            await asyncio.sleep(1.0)  # then a quiet line
            before = {u: len(sink.counts(f"s{u}")) for u in (1, 2)}
            await asyncio.sleep(1.0)
            await cancel_and_wait([task])
    health = {h.name: h for h in drivers[0].health()}
    for unit in (1, 2):
        assert len(sink.counts(f"s{unit}")) - before[unit] >= 6, "polling did not recover"
        assert health[f"s{unit}"].online is True
    # The noise is seen and counted, not silently swallowed.
    assert sum(h.framing_errors + h.crc_errors for h in health.values()) >= 10


async def test_rtu_frames_over_tcp_reach_slaves_behind_a_serial_device_server() -> None:
    sink = Sink()
    async with ModbusSimServer(slaves(5, 6), framer="rtu") as server:
        text = '[gateway]\nid = "t"\n' + "".join(
            f"""
[[devices]]
name = "s{u}"
protocol = "modbus_rtu_over_tcp"
host = "127.0.0.1"
port = {server.port}
unit = {u}
poll_interval = "100ms"
points = [{POINTS}]
"""
            for u in (5, 6)
        )
        drivers = build_drivers(parse_config(text.encode()).config, sink)
        assert len(drivers) == 1
        await run_for(drivers, 1.0)
    for unit in (5, 6):
        counts = sink.counts(f"s{unit}")
        assert len(counts) >= 5 and counts == list(range(1, len(counts) + 1))


async def _until(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"no {what} within {seconds:g}s"
        await asyncio.sleep(0.02)


async def test_slaves_behind_an_rfc2217_server_are_polled_and_a_dropped_connection_is_reopened(
    rfc2217_closes: list[bool],
) -> None:
    closed_on_loop = rfc2217_closes  # pyserial's close blocks 0.3 s
    sink = Sink()
    async with (
        Rfc2217Line(LineSettings(19200, parity="E")) as line,
        ModbusSimServer(slaves(1, 2), serial_port=line.bus_path),
    ):
        text = '[gateway]\nid = "t"\n' + "".join(
            rtu_device(f"s{u}", line.url, u, POINTS, interval="300ms").replace(
                "baudrate = 19200", 'baudrate = 19200\nparity = "E"'
            )
            for u in (1, 2)
        )
        drivers = build_drivers(parse_config(text.encode()).config, sink)
        assert len(drivers) == 1  # one bus behind one server: one connection
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(drivers[0].run())
            await _until(lambda: min(len(sink.counts(f"s{u}")) for u in (1, 2)) >= 3, 10, "polls")
            assert line.client == LineSettings(19200, parity="E")  # negotiated from the config
            seen = len(sink)
            await _until(lambda: len(sink) > seen, 5, "a poll")
            # Between two polls (150 ms apart) the server restarts, or times the session
            # out: the line is reopened before the next request, which costs no reading.
            assert line.drop_client()
            before = {u: len(sink.counts(f"s{u}")) for u in (1, 2)}
            await _until(
                lambda: all(len(sink.counts(f"s{u}")) >= before[u] + 5 for u in (1, 2)),
                10,
                "polls after the server dropped the connection",
            )
            await cancel_and_wait([task])
        assert line.connections == 2
        assert line.dropped == 0
    health = {h.name: h for h in drivers[0].health()}
    for unit in (1, 2):
        counts = sink.counts(f"s{unit}")
        assert counts == list(range(1, len(counts) + 1))  # every poll read, in order
        assert len(counts) >= before[unit] + 5
        assert {r.value for r in sink if r.device == f"s{unit}" and r.point == "t"} == {20.0 + unit}
        assert health[f"s{unit}"].online is True
    # Both connections were closed, each off the event loop (the polls of other lines and
    # the uplink never wait for pyserial's close).
    await _until(lambda: len(closed_on_loop) >= 2, 5, "closes")
    assert closed_on_loop == [False] * len(closed_on_loop)


async def test_a_server_port_in_raw_tcp_mode_is_named_as_such_when_rfc2217_is_configured() -> None:
    sink = Sink()
    async with ModbusSimServer(slaves(1), framer="rtu") as raw:  # raw TCP: no telnet at all
        text = '[gateway]\nid = "t"\n' + rtu_device(
            "s1", f"rfc2217://127.0.0.1:{raw.port}", 1, POINTS, interval="1s", timeout="500ms"
        )
        drivers = build_drivers(parse_config(text.encode()).config, sink)
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(drivers[0].run())
            (health,) = drivers[0].health()
            await _until(lambda: health.state == "offline", 15, "the device offline")
            await cancel_and_wait([task])
    assert health.last_error is not None
    assert "does not speak RFC 2217 (is the server's port in RFC 2217 mode?" in health.last_error
    assert 'protocol = "modbus_rtu_over_tcp"' in health.last_error
    offline = [(r.point, r.value, r.quality) for r in sink]
    assert offline == [("n", None, Quality.DEVICE_OFFLINE), ("t", None, Quality.DEVICE_OFFLINE)]


async def test_a_dead_slave_behind_a_serial_device_server_does_not_reopen_the_session() -> None:
    sink = Sink()
    devices = slaves(1, 3)
    devices[1].silent = True  # unit 3 is powered off; the default retry makes 2 silences a poll
    async with (
        Rfc2217Line(LineSettings(19200)) as line,
        ModbusSimServer(devices, serial_port=line.bus_path),
    ):
        text = '[gateway]\nid = "t"\n' + "".join(
            rtu_device(f"s{u}", line.url, u, POINTS, interval="200ms").replace(
                "retries = 0", "retries = 1"
            )
            for u in (1, 3)
        )
        drivers = build_drivers(parse_config(text.encode()).config, sink)
        await run_for(drivers, 3.0)
        assert line.connections == 1  # the live slave answers: the connection is fine
    health = {h.name: h for h in drivers[0].health()}
    assert health["s3"].online is False and health["s1"].online is True
    assert health["s3"].timeouts >= 4
    counts = sink.counts("s1")  # its polls go on (each dead-slave timeout delays them)
    assert len(counts) >= 4 and counts == list(range(1, len(counts) + 1))


async def test_a_session_dropped_before_any_request_leaves_no_unretrieved_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from drivers.modbus.rfc2217 import rfc2217_client

    async with Rfc2217Line(LineSettings(19200)) as line:
        client = rfc2217_client(
            line.url,
            baudrate=19200,
            bytesize=8,
            parity="N",
            stopbits=1,
            timeout=0.5,
            trace=lambda sending, data: data,
        )
        assert await client.connect()
        held = [client]
        del client
        assert line.drop_client()
        await _until(lambda: not held[0].connected, 5, "the drop seen")
        held.pop().close()
        await asyncio.sleep(0.2)  # the poll task ends, the close thread reports
        gc.collect()  # an exception set on a future nobody awaits is logged here
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_server_that_never_negotiates_is_given_up_on_within_its_url_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts the connection, says nothing
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sink = Sink()
    try:
        text = '[gateway]\nid = "t"\n' + rtu_device(
            "s1", f"rfc2217://127.0.0.1:{port}?timeout=0.2", 1, POINTS, interval="1s"
        )
        drivers = build_drivers(parse_config(text.encode()).config, sink)
        started = time.monotonic()
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(drivers[0].run())
            (health,) = drivers[0].health()
            await _until(lambda: health.state == "offline", 10, "the device offline")
            elapsed = time.monotonic() - started
            await cancel_and_wait([task])
    finally:
        server.close()
    # pyserial waits 0.2 s for the telnet options, then says why: in words, not "no answer".
    assert health.last_error is not None and "does not speak RFC 2217" in health.last_error
    assert elapsed < 5.0, elapsed
