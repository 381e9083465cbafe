"""Serial line instruments on pseudo-terminals, read through pyserial like /dev/ttyUSB1."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.core.model import Quality, Reading
from drivers.serial_line.build import build_driver
from drivers.serial_line.driver import SerialLineDriver
from drivers.serial_port import LineSettings, take_queued
from drivers.sim.rfc2217_line import Rfc2217Line
from drivers.sim.serial_line import (
    LineInstrument,
    binary_level_frame,
    flow_meter_csv,
    gas_detector_line,
    nmea_gga,
)
from drivers.sim.serial_link import SerialDevicePort
from gateway.settings import parse_config
from gateway.tasks import cancel_and_wait

pytestmark = pytest.mark.rig  # real devices, ptys or processes


class Sink(list[Reading]):
    def __call__(self, readings: list[Reading]) -> None:
        self.extend(readings)

    def values(self, point: str) -> list[object]:
        """Values of the readings that carry one (offline readings carry None)."""
        return [r.value for r in self if r.point == point and r.value is not None]


def driver_for(device_toml: str, sink: Sink) -> SerialLineDriver:
    cfg = parse_config(f'[gateway]\nid = "t"\n{device_toml}'.encode()).config
    return build_driver(cfg.devices[0], sink)  # type: ignore[arg-type]


GAS = """
[[devices]]
name = "gas"
protocol = "serial_line"
port = "{path}"
baudrate = 115200  # the simulated detector talks faster than 9600 baud carries
stale_after = "{stale}"
backoff_max = "200ms"
poll_interval = "100ms"
framing = {{ kind = "delimiter", delimiter = "\\r\\n", max_length = 64 }}
parser = {{ kind = "regex", pattern = 'CH4=(?P<ch4>[-\\d.]+);H2S=(?P<h2s>\\d+);T=[-\\d.]+;N=(?P<n>\\d+)' }}
points = [
  {{ name = "ch4", unit = "%LEL" }},
  {{ name = "h2s", type = "int", unit = "ppm" }},
  {{ name = "n", type = "int" }},
]
"""


async def run_until(driver: SerialLineDriver, done, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(driver.run())
        try:
            async with asyncio.timeout(timeout):
                while not done():
                    await asyncio.sleep(0.01)
        finally:
            await cancel_and_wait([task])


async def test_a_streaming_instrument_is_read_line_by_line_without_gaps() -> None:
    sink = Sink()
    async with LineInstrument(gas_detector_line, period=0.01) as inst:
        driver = driver_for(GAS.format(path=inst.path, stale="1s"), sink)
        await run_until(driver, lambda: len(sink.values("n")) >= 50)
    n = sink.values("n")
    assert n == list(range(n[0], n[0] + len(n)))
    assert all(isinstance(v, float) and 5 <= v <= 15 for v in sink.values("ch4"))
    assert all(isinstance(v, int) for v in sink.values("h2s"))
    assert {r.quality for r in sink} == {Quality.GOOD}
    assert driver.device_health.online is True


async def test_garbage_and_partial_frames_between_good_ones_are_counted_and_every_good_frame_parsed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = Sink()
    caplog.set_level(logging.WARNING, logger="drivers.serial_line")
    async with LineInstrument(gas_detector_line, period=0.01) as inst:
        driver = driver_for(GAS.format(path=inst.path, stale="1s"), sink)
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(driver.run())
            await asyncio.sleep(0.2)
            first = len(sink.values("n"))
            inst.noise = b"\x00\xff\xfe\r\nCH4=9;H2S\r\n" + bytes(range(1, 13)) * 10 + b"\r\n"
            await asyncio.sleep(0.5)
            inst.noise = b""
            await asyncio.sleep(0.2)
            await cancel_and_wait([task])
    n = sink.values("n")
    assert n == list(range(n[0], n[0] + len(n))), "a good frame was lost to the noise"
    assert len(n) > first + 20
    health = driver.device_health
    assert health.framing_errors >= 10  # the over-long junk lines
    assert health.malformed >= 10  # the half line "CH4=9;H2S" does not parse
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("discarded" in m for m in warnings) == 1  # logged once, then counted
    assert sum("unreadable frame" in m for m in warnings) == 1


NMEA = """
[[devices]]
name = "gps"
protocol = "serial_line"
port = "{path}"
baudrate = 4800
framing = {{ kind = "delimiter", start = "$", max_length = 90 }}
parser = {{ kind = "nmea", sentence = "GGA", fields = {{ fix = 6, satellites = 7, altitude = 9 }}, coordinates = {{ lat = [2, 3], lon = [4, 5] }} }}
points = [
  {{ name = "lat" }}, {{ name = "lon" }}, {{ name = "altitude", unit = "m" }},
  {{ name = "satellites", type = "int" }}, {{ name = "fix", type = "int" }},
]
"""


def nmea_with_bad_checksums(n: int) -> bytes:
    frame = nmea_gga(n)
    if n % 4 == 0:  # every 4th sentence arrives with a flipped bit in the altitude
        frame = frame.replace(b",M,46.9", b",M,47.9")
    if n % 5 == 0:  # and every 5th is another sentence type the gateway skips
        frame += b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A\r\n"
    return frame


async def test_nmea_checksum_failures_are_counted_and_their_readings_flagged_not_good() -> None:
    sink = Sink()
    async with LineInstrument(nmea_with_bad_checksums, period=0.01) as inst:
        driver = driver_for(NMEA.format(path=inst.path), sink)
        await run_until(driver, lambda: driver.device_health.crc_errors >= 5)
    good = [r for r in sink if r.point == "altitude" and r.quality == Quality.GOOD]
    flagged = [r for r in sink if r.point == "altitude" and r.quality == Quality.BAD_CHECKSUM]
    assert good and flagged
    assert len(flagged) == driver.device_health.crc_errors
    assert sink.values("lat")[0] == pytest.approx(48.1173)
    assert sink.values("lon")[0] == pytest.approx(11.516667, abs=1e-5)
    assert driver.device_health.errors == 0  # RMC sentences are skipped, not errors


BINARY = """
[[devices]]
name = "level"
protocol = "serial_line"
port = "{path}"
framing = {{ kind = "length_field", start_hex = "AA55", length_offset = 2, length_adjust = 2, max_length = 64 }}
parser = {{ kind = "binary", layout = ">HhI", fields = ["level_mm", "temp", "n"], offset = 3, checksum = "crc16_modbus" }}
points = [
  {{ name = "level_mm", type = "int", unit = "mm" }},
  {{ name = "temp", scale = 0.1, unit = "degC" }},
  {{ name = "n", type = "int" }},
]
"""


async def test_binary_frames_with_crc_are_decoded_and_corrupt_ones_flagged() -> None:
    sink = Sink()

    def frames(n: int) -> bytes:
        return binary_level_frame(n, corrupt=n % 3 == 0) + (b"\x13\x37" if n % 7 == 0 else b"")

    async with LineInstrument(frames, period=0.01) as inst:
        driver = driver_for(BINARY.format(path=inst.path), sink)
        await run_until(driver, lambda: len(sink.values("n")) >= 30)
    good = [int(r.value) for r in sink if r.point == "n" and r.quality == Quality.GOOD]
    bad = [int(r.value) for r in sink if r.point == "n" and r.quality == Quality.BAD_CHECKSUM]
    assert good and bad
    assert all(n % 3 == 0 for n in bad) and all(n % 3 for n in good)
    assert sink.values("temp")[0] == pytest.approx(21.5)
    assert driver.device_health.crc_errors == len(bad)


POLLED = """
[[devices]]
name = "flow"
protocol = "serial_line"
port = "{path}"
mode = "polled"
poll_command = "READ\\r\\n"
poll_interval = "50ms"
timeout = "200ms"
backoff_max = "200ms"
framing = {{ kind = "delimiter" }}
parser = {{ kind = "delimited", fields = ["", "flow", "total", "n"] }}
points = [{{ name = "flow", unit = "m3/h" }}, {{ name = "total", type = "int" }}, {{ name = "n", type = "int" }}]
"""


async def test_a_polled_instrument_answers_each_poll_and_silence_marks_it_offline_then_online(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = Sink()
    caplog.set_level(logging.INFO, logger="drivers.serial_line")
    async with LineInstrument(flow_meter_csv, command=b"READ\r\n", reply_delay=0.005) as inst:
        driver = driver_for(POLLED.format(path=inst.path), sink)
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(driver.run())
            await asyncio.sleep(0.6)
            assert driver.device_health.online is True
            inst.silent = True
            await asyncio.sleep(0.8)
            assert driver.device_health.online is False
            assert driver.device_health.timeouts >= 2
            inst.silent = False
            await asyncio.sleep(0.6)
            await cancel_and_wait([task])
    health = driver.device_health
    assert health.online is True
    assert health.requests >= health.responses >= 10
    n = sink.values("n")
    assert n == sorted(n) and len(set(n)) == len(n)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("is offline" in m for m in messages) == 1
    assert sum("answers again" in m for m in messages) == 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=st.lists(st.binary(max_size=200), max_size=20))
def test_random_bytes_never_raise_out_of_any_driver_configuration(chunks: list[bytes]) -> None:
    for template in (GAS, NMEA, BINARY, POLLED):
        sink = Sink()
        driver = driver_for(template.format(path="/dev/null", stale="1s"), sink)
        for chunk in chunks:
            driver.consume(chunk)
        while not driver._frames.empty():
            driver.handle(driver._frames.get_nowait())
        assert all(isinstance(r, Reading) for r in sink)


# --- on a serial device server (rfc2217://) ------------------------------------------------


async def test_a_streaming_instrument_behind_a_serial_device_server_survives_a_dropped_session(
    rfc2217_closes: list[bool],
) -> None:
    closed_on_loop = rfc2217_closes  # pyserial's close blocks 0.3 s
    sink = Sink()
    async with Rfc2217Line(LineSettings(115200, parity="E")) as line:
        port = SerialDevicePort(line.bus_path, 115200)
        async with LineInstrument(gas_detector_line, period=0.02, port=port):
            text = GAS.format(path=line.url, stale="1s").replace(
                "baudrate = 115200", 'baudrate = 115200\nparity = "E"'
            )
            driver = driver_for(text, sink)
            async with asyncio.TaskGroup() as tg:
                task = tg.create_task(driver.run())
                await _until(lambda: len(sink.values("n")) >= 20, "frames through the server")
                assert line.client == LineSettings(115200, parity="E")  # set from the config
                before = len(sink.values("n"))
                assert line.drop_client()  # the server restarts, or times the session out
                await _until(lambda: len(sink.values("n")) >= before + 20, "frames after the drop")
                await cancel_and_wait([task])
            assert line.connections == 2
    n = sink.values("n")
    assert n == sorted(set(n))  # in order, none twice (frames sent during the drop are lost)
    assert n[:before] == list(range(n[0], n[0] + before))
    assert driver.device_health.online is True
    await _until(lambda: len(closed_on_loop) >= 2, "both sessions closed")
    assert closed_on_loop == [False] * len(closed_on_loop)  # never on the event loop


async def test_a_polled_instrument_behind_a_serial_device_server_answers_each_poll() -> None:
    sink = Sink()
    async with Rfc2217Line(LineSettings(9600)) as line:
        port = SerialDevicePort(line.bus_path, 9600)
        async with LineInstrument(flow_meter_csv, command=b"READ\r\n", port=port):
            driver = driver_for(POLLED.format(path=line.url), sink)
            await run_until(driver, lambda: len(sink.values("n")) >= 10)
    health = driver.device_health
    assert health.online is True and health.requests >= health.responses >= 10
    assert health.last_latency_ms is not None and health.last_latency_ms < 150
    n = sink.values("n")
    assert n == sorted(n) and len(set(n)) == len(n)


async def _until(check: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"no {what} within {seconds:g}s"
        await asyncio.sleep(0.02)


async def test_a_polled_instrument_whose_session_is_dropped_between_polls_is_reopened() -> None:
    sink = Sink()
    async with Rfc2217Line(LineSettings(9600)) as line:
        port = SerialDevicePort(line.bus_path, 9600)
        async with LineInstrument(flow_meter_csv, command=b"READ\r\n", port=port):
            text = POLLED.format(path=line.url).replace(
                'poll_interval = "50ms"', 'poll_interval = "300ms"'
            )
            driver = driver_for(text, sink)
            async with asyncio.TaskGroup() as tg:
                task = tg.create_task(driver.run())
                await _until(lambda: len(sink.values("n")) >= 3, "replies")
                seen = len(sink.values("n"))
                await _until(lambda: len(sink.values("n")) > seen, "a reply")
                assert line.drop_client()  # between two polls
                await _until(lambda: len(sink.values("n")) >= seen + 4, "replies after the drop")
                assert not task.done()  # run() goes on (an assert ended it before)
                await cancel_and_wait([task])
            assert line.connections == 2


async def test_a_streaming_session_that_goes_silent_is_reopened_after_three_stale_periods() -> None:
    sink = Sink()
    async with Rfc2217Line(LineSettings(115200)) as line:
        port = SerialDevicePort(line.bus_path, 115200)
        async with LineInstrument(gas_detector_line, period=0.02, port=port) as inst:
            driver = driver_for(GAS.format(path=line.url, stale="300ms"), sink)
            async with asyncio.TaskGroup() as tg:
                task = tg.create_task(driver.run())
                await _until(lambda: len(sink.values("n")) >= 5, "frames")
                inst.silent = True  # as a session whose path died sounds: nothing at all
                await _until(lambda: line.connections >= 2, "a new session", 5.0)
                assert driver.device_health.online is False
                inst.silent = False
                await _until(lambda: driver.device_health.online is True, "frames again")
                await cancel_and_wait([task])


def test_a_flood_queued_by_pyserial_is_taken_whole_and_only_its_newest_bytes_kept() -> None:
    import queue

    class Port:  # what take_queued reads of pyserial's RFC 2217 port
        def __init__(self) -> None:
            self._read_buffer: queue.Queue[bytes | None] = queue.Queue()
            self._thread = threading.current_thread()

    port = Port()
    for i in range(200_000):  # pyserial queues every byte as an item of its own
        port._read_buffer.put(bytes([i % 251]))
    started = time.perf_counter()
    data, dropped, ended = take_queued(port, limit=1000)
    assert time.perf_counter() - started < 0.5  # one join, not 200,000 read() calls
    assert (len(data), dropped, ended) == (1000, 199_000, False)
    assert data == bytes(i % 251 for i in range(199_000, 200_000))
    assert port._read_buffer.qsize() == 0
    port._read_buffer.put(b"x")
    port._read_buffer.put(None)  # the reader thread's end mark
    assert take_queued(port) == (b"x", 0, True)
