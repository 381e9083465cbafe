"""Malformed Modbus TCP answers: caught in the request that received them, counted as
malformed (Modbus TCP has no CRC), logged once per device, and never a traceback."""

from __future__ import annotations

import asyncio
import logging

import pytest

from drivers.core.model import Quality, Reading
from drivers.modbus.decode import DataType, Table
from drivers.modbus.diagnose import describe_tcp_answer
from drivers.modbus.driver import ModbusEndpoint
from drivers.sim.modbus_faults import FaultyModbusTcpServer
from gateway.build import build_drivers
from gateway.settings import parse_config
from gateway.tasks import cancel_and_wait

pytestmark = pytest.mark.rig  # real devices, ptys or processes

POINTS = """points = [
  { name = "a", address = 0 },
  { name = "b", address = 1 },
  { name = "c", address = 20, table = "input" },
]"""


def endpoint(port: int, sink: list[Reading]) -> ModbusEndpoint:
    text = f"""
[gateway]
id = "t"
[[devices]]
name = "meter"
protocol = "modbus_tcp"
host = "127.0.0.1"
port = {port}
poll_interval = "100ms"
timeout = "250ms"
backoff_max = "300ms"
{POINTS}
"""
    (ep,) = build_drivers(parse_config(text.encode()).config, sink.extend)
    assert isinstance(ep, ModbusEndpoint)
    return ep


async def run_for(ep: ModbusEndpoint, seconds: float) -> None:
    task = asyncio.create_task(ep.run())
    await asyncio.sleep(seconds)
    await cancel_and_wait([task])


MALFORMED = [
    ("wrong_length", "announces"),
    ("lying_byte_count", "byte count"),
    ("short_data", "byte count"),
    ("wrong_function", "function code"),
    ("wrong_transaction", "transaction id"),
    ("wrong_unit", "unit id"),
    ("undecodable", "function code"),
    ("garbage", ""),
]


@pytest.mark.parametrize(("fault", "said"), MALFORMED, ids=[f for f, _ in MALFORMED])
async def test_a_device_whose_every_answer_is_malformed_goes_offline_with_comm_error_once(
    fault: str, said: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    sink: list[Reading] = []
    async with FaultyModbusTcpServer(fault=fault) as device:  # type: ignore[arg-type]
        ep = endpoint(device.port, sink)
        await run_for(ep, 1.2)
    health = ep.devices[0].health
    assert health.state == "offline"
    assert health.malformed >= 2 and health.crc_errors == 0
    assert said in (health.last_error or "")
    # Every point says why it has no value, once.
    flagged = [(r.point, r.quality) for r in sink if r.value is None]
    assert sorted(flagged) == [(p, Quality.COMM_ERROR) for p in ("a", "b", "c")]
    assert not [r for r in sink if r.value is not None]
    text = caplog.text
    assert "Traceback" not in text and "Fatal error" not in text
    assert sum("is offline" in r.getMessage() for r in caplog.records) == 1


async def test_a_malformed_answer_to_one_request_degrades_the_device_and_flags_only_its_points(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    sink: list[Reading] = []
    async with FaultyModbusTcpServer(fault="lying_byte_count", fault_at=20) as device:
        ep = endpoint(device.port, sink)
        await run_for(ep, 1.5)
    health = ep.devices[0].health
    assert health.state == "degraded"
    assert {r.value for r in sink if r.point in ("a", "b")} == {0, 1}
    assert [r.quality for r in sink if r.point == "c"] == [Quality.COMM_ERROR]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("cannot read input 20..20" in m for m in warnings) == 1
    assert sum("is degraded" in m for m in warnings) == 1
    assert "Traceback" not in caplog.text


async def test_one_refused_register_is_logged_once_and_its_recovery_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    sink: list[Reading] = []
    async with FaultyModbusTcpServer(fault="exception", fault_at=20, exception_code=2) as device:
        ep = endpoint(device.port, sink)
        task = asyncio.create_task(ep.run())
        await asyncio.sleep(1.0)
        assert ep.devices[0].health.state == "degraded"
        device.fault = None
        await asyncio.sleep(0.8)
        await cancel_and_wait([task])
    health = ep.devices[0].health
    assert health.state == "online"
    assert health.modbus_exceptions == {2: health.modbus_exceptions[2]}
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot read input 20..20 (c): Modbus exception 2" in m for m in messages) == 1
    assert sum("reads input 20..20 (c) again" in m for m in messages) == 1
    assert sum("is fully readable again" in m for m in messages) == 1
    assert [r.value for r in sink if r.point == "c"][-1] == 20


def test_what_was_wrong_with_an_answer_is_said_in_words() -> None:
    good = bytes.fromhex("0001 0000 0005 01 03 02 0007")
    assert "transaction id 1 instead of 2" in describe_tcp_answer(
        good, transaction_id=2, unit=1, function=3
    )
    assert "unit id 1 instead of 9" in describe_tcp_answer(
        good, transaction_id=1, unit=9, function=3
    )
    assert "function code 3 in answer to function 4" in describe_tcp_answer(
        good, transaction_id=1, unit=1, function=4
    )
    lying = bytes.fromhex("0001 0000 0005 01 03 08 0007")
    assert "byte count 8 but 2" in describe_tcp_answer(lying, transaction_id=1, unit=1, function=3)
    assert "announces 12 bytes but 11" in describe_tcp_answer(
        bytes.fromhex("0001 0000 0006 01 03 02 0007"), transaction_id=1, unit=1, function=3
    )
    assert "shorter than" in describe_tcp_answer(b"\x00\x01", transaction_id=1, unit=1, function=3)


def test_a_garbled_rtu_answer_says_how_many_bytes_came() -> None:
    """Seen: 'garbled answer (0 bytes ...)': the count was read after it was reset."""
    from drivers.base import DeviceHealth
    from drivers.modbus.driver import ModbusDevice, Transport
    from drivers.modbus.plan import PointSpec, plan_reads

    request = plan_reads([PointSpec("p", Table.HOLDING, 0, DataType.UINT16)])[0]
    device = ModbusDevice("meter", 1, [request], 1.0, 0.2, 0, 1.0, DeviceHealth("meter", "bus"))
    endpoint = ModbusEndpoint(Transport("rtu", serial_port="/dev/null"), [device], lambda r: None)
    endpoint._trace(False, b"\x01\x03\x02\x00")  # half an answer, then silence
    endpoint._trace(False, b"\x07\xff")
    err = endpoint._garbled(device, request, client=None)  # type: ignore[arg-type]
    assert "garbled answer (6 bytes, bad CRC or framing)" in str(err)
    assert device.health.crc_errors == 1 and device.health.malformed == 0
