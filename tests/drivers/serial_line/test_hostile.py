"""A serial instrument that sends hostile values, floods its port, or shares it: the
driver never raises, every value has a documented outcome, the flood is shed and
counted, and a second opener of the port gets a clear error."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import termios
import time

import pytest
import serial

from drivers.core.model import Quality, Reading
from drivers.serial_line.build import build_driver
from drivers.serial_line.driver import LinePoint, SerialLineDriver
from drivers.serial_port import open_error
from drivers.sim.serial_line import LineInstrument
from drivers.sim.serial_link import TalkingPort
from gateway.settings import parse_config
from gateway.tasks import cancel_and_wait

pytestmark = pytest.mark.rig  # real devices, ptys or processes

COUNTER = """
[[devices]]
name = "counter"
protocol = "serial_line"
port = "{path}"
baudrate = {baud}
stale_after = "2s"
framing = {{ kind = "delimiter", delimiter = "\\n", max_length = 8000 }}
parser = {{ kind = "regex", pattern = 'N=(?P<n>[^;]*);V=(?P<v>[^;]*);S=(?P<s>.*)' }}
points = [
  {{ name = "n", type = "int" }},
  {{ name = "v", type = "float" }},
  {{ name = "s", type = "string" }},
]
"""


def driver_for(path: str, sink: list[Reading], baud: int = 115200) -> SerialLineDriver:
    text = '[gateway]\nid = "t"\n' + COUNTER.format(path=path, baud=baud)
    device = parse_config(text.encode()).config.devices[0]
    return build_driver(device, sink.extend)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field_type", "raw", "why"),
    [
        ("int", "123456789012345678901234567890", "beyond 64 bits"),
        ("int", "9" * 5000, "beyond 64 bits"),
        ("int", "1e999", "whole number"),
        ("int", "inf", "whole number"),
        ("int", "nan", "whole number"),
        ("int", "12.5", "whole number"),
        ("int", "twelve", "convert"),
        ("float", "1" * 400, "characters"),
        ("float", "12,5", "convert"),
        ("bool", "maybe", "neither true nor false"),
    ],
)
def test_a_field_that_does_not_convert_is_no_value_with_a_reason_never_an_exception(
    field_type: str, raw: str, why: str
) -> None:
    point = LinePoint("p", "p", field_type, 1.0, 0.0)
    with pytest.raises(ValueError) as err:
        point.value(raw)
    if why != "convert":
        assert why in str(err.value)


def test_integers_in_64_bits_convert_with_scale_and_offset() -> None:
    assert LinePoint("p", "p", "int", 1.0, 0.0).value(" 18446744073709551615 ") == 2**64 - 1
    assert LinePoint("p", "p", "int", 1.0, 0.0).value("12.0") == 12
    assert LinePoint("p", "p", "int", 0.5, 1.0).value("1e3") == 501.0


HOSTILE_LINES = [
    b"N=123456789012345678901234567890;V=1.5;S=ok\n",  # seen: stopped the whole gateway
    b"N=" + b"9" * 5000 + b";V=1.5;S=ok\n",
    b"N=1e999;V=inf;S=ok\n",  # seen: crashed the driver every 5 s
    b"N=7;V=nan;S=" + b"x" * 3000 + b"\n",
    b"N=;V=;S=\n",  # empty fields: no reading for those points
]


async def test_hostile_values_from_an_instrument_keep_the_driver_running_and_online(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    sink: list[Reading] = []
    async with LineInstrument(lambda n: f"N={n};V={n / 2};S=fine\n".encode(), period=0.05) as inst:
        driver = driver_for(inst.path, sink)
        task = asyncio.create_task(driver.run())
        await asyncio.sleep(0.3)
        for line in HOSTILE_LINES:
            inst.send(line)
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert not task.done(), "the driver stopped"
        await cancel_and_wait([task])
    health = driver.device_health
    assert health.state == "online"
    invalid = [r for r in sink if r.quality == Quality.INVALID_VALUE]
    assert [r.point for r in invalid] == ["n", "n", "n"]  # beyond 64 bits twice, 1e999
    assert all(r.value is None for r in invalid)
    assert health.invalid_values == 3
    # inf, nan and the 3000-character string reach the pipeline, which replaces them
    # (tests/gateway/test_values.py); empty fields give no reading at all.
    good_n = [r.value for r in sink if r.point == "n" and r.quality == Quality.GOOD]
    assert 7 in good_n  # the line with V=nan still delivers its good N
    assert "Traceback" not in caplog.text
    convert_warnings = [m for m in caplog.messages if "is not a usable int" in m]
    assert len(convert_warnings) == 1  # once per point, then counted quietly


async def test_a_flooding_instrument_is_shed_to_its_line_rate_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Seen: a virtual COM port at 46,000 readings/s starved a Modbus neighbour."""
    caplog.set_level(logging.INFO)
    sink: list[Reading] = []
    line = b"N=1;V=2.5;S=flood\n"  # 18 bytes
    with TalkingPort(lambda turn: line * 200) as flood:  # as fast as the pty takes it
        driver = driver_for(flood.path, sink, baud=9600)  # bound 1920 bytes/s: ~107 lines/s
        gaps: list[float] = []

        async def neighbour() -> None:  # stands for another device's 10 ms poll loop
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        other = asyncio.create_task(neighbour())
        task = asyncio.create_task(driver.run())
        await asyncio.sleep(2.0)
        await cancel_and_wait([task, other])
    health = driver.device_health
    # The flooder offers far more than 960 bytes/s (it is slowed only by the pty filling
    # up while the driver pauses); what the driver does not parse is shed and counted.
    assert flood.sent > 50_000 and health.shed_bytes > 40_000
    parsed = len([r for r in sink if r.point == "n"])
    assert 20 <= parsed <= (4096 + 2 * 1920) / len(line)  # the burst plus 2 s at the bound
    assert health.malformed == 0 and health.framing_errors == 0  # cut frames count as shed
    gaps.sort()
    assert gaps[int(len(gaps) * 0.95)] < 0.05  # the event loop stayed free for others
    shedding = [m for m in caplog.messages if "sends faster than its line carries" in m]
    assert len(shedding) == 1 and "1920 bytes/s" in shedding[0]


async def test_a_port_held_by_the_gateway_cannot_be_opened_by_another_program() -> None:
    sink: list[Reading] = []
    async with LineInstrument(lambda n: b"N=1;V=1;S=x\n", period=0.05) as inst:
        driver = driver_for(inst.path, sink)
        task = asyncio.create_task(driver.run())
        await asyncio.sleep(0.3)
        with pytest.raises(serial.SerialException) as err:
            serial.Serial(inst.path, exclusive=True)
        reason = open_error(inst.path, err.value)
        assert "is in use by" in reason and "one reader at a time" in reason
        await cancel_and_wait([task])


async def test_a_second_driver_on_the_same_port_says_who_holds_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    async with LineInstrument(lambda n: b"N=1;V=1;S=x\n", period=0.05) as inst:
        holder = await asyncio.create_subprocess_exec(
            sys.executable, "-c", HOLD_PORT, inst.path, stdout=subprocess.PIPE
        )
        try:
            assert holder.stdout is not None
            assert (await holder.stdout.readline()).strip() == b"held"
            sink: list[Reading] = []
            driver = driver_for(inst.path, sink)
            task = asyncio.create_task(driver.run())
            await asyncio.sleep(0.3)
            await cancel_and_wait([task])
        finally:
            holder.kill()
            await holder.wait()
    assert driver.device_health.state == "offline"
    assert "is in use by pid" in (driver.device_health.last_error or "")
    assert [r.quality for r in sink] == [Quality.DEVICE_OFFLINE] * 3


HOLD_PORT = """
import sys, time, serial
port = serial.Serial(sys.argv[1], exclusive=True)
print("held", flush=True)
time.sleep(60)
"""


def test_line_settings_the_adapter_refuses_are_explained_not_a_traceback() -> None:
    # termios.error is no OSError: an adapter without even parity raises it on open.
    refused = open_error("/dev/ttyUSB0", termios.error(22, "Invalid argument"))
    assert refused == (
        "/dev/ttyUSB0: the adapter refuses these line settings (Invalid argument): does it "
        "support this baud rate, parity and stop bits?"
    )


def test_a_missing_port_and_a_permission_problem_are_explained() -> None:
    missing = open_error("/dev/ttyUSB9", serial.SerialException(2, "could not open port"))
    assert "does not exist" in missing and "plugged in" in missing
    denied = open_error("/dev/null", PermissionError(13, "Permission denied"))
    assert "permission denied" in denied and "usermod -aG" in denied
