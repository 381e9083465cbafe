"""Serial line instruments: the thin I/O shell around the pure framer and parser.

One `SerialLineDriver` owns one serial port and one instrument. In `streaming`
mode the instrument talks on its own; silence longer than `stale_after` marks it
offline. In `polled` mode the driver sends `poll_command` every `poll_interval`
and waits `timeout` for the reply frame; a poll without a valid reply marks it
offline, and polls back off exponentially up to `backoff_max`.

Bytes arrive through the event loop (`add_reader` on the port's file descriptor),
go through the framer, and each frame through the parser. Nothing a device sends
can raise out of here: discarded bytes count as framing errors, frames that fail
their checksum count as CRC errors (their values, when they can still be read,
are published flagged `BAD_CHECKSUM`, never as good), unparsable frames count
as errors. Each kind of trouble is logged once until the device behaves again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import serial

from drivers.base import DeviceHealth, ReadingSink, backoff_delay
from drivers.serial_line.build import build_framer, build_parser
from drivers.serial_line.framing import Discard, Frame, Framer
from drivers.serial_line.parsers import Field, ParseError, Parser
from gateway.model import Quality, Reading, Value

if TYPE_CHECKING:
    from gateway.settings import SerialLineDeviceConfig

log = logging.getLogger("drivers.serial_line")

_TRUE = frozenset({"1", "true", "on", "yes", "y", "t"})
_FALSE = frozenset({"0", "false", "off", "no", "n", "f"})


def _to_int(raw: Field) -> int:
    if isinstance(raw, str):
        text = raw.strip()
        try:
            return int(text, 10)
        except ValueError:
            return int(float(text))  # "12.0"
    return int(raw)


def _to_bool(raw: Field) -> bool:
    if not isinstance(raw, str):
        return bool(raw)
    text = raw.strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(f"{raw!r} is neither true nor false")


_CONVERT: dict[str, Callable[[Field], Value]] = {
    "float": float,
    "int": _to_int,
    "bool": _to_bool,
    "string": str,
}


@dataclass(frozen=True, slots=True)
class LinePoint:
    name: str
    field: str
    type: str
    scale: float
    offset: float

    def value(self, raw: Field) -> Value:
        value = _CONVERT[self.type](raw)
        if self.type in ("float", "int") and (self.scale != 1.0 or self.offset != 0.0):
            assert isinstance(value, int | float)
            return value * self.scale + self.offset
        return value


class SerialLineDriver:
    def __init__(
        self,
        name: str,
        port_settings: dict[str, Any],
        framer: Framer,
        parser: Parser,
        points: list[LinePoint],
        sink: ReadingSink,
        *,
        command: bytes | None,
        poll_interval: float,
        timeout: float,
        stale_after: float,
        backoff_max: float,
    ) -> None:
        self.name = f"serial_line {name}"
        self.device = name
        self.port_settings = port_settings
        self.framer = framer
        self.parser = parser
        self.points = points
        self.command = command
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.stale_after = stale_after
        self.backoff_max = backoff_max
        self._sink = sink
        self._serial: serial.Serial | None = None
        self._frames: asyncio.Queue[Frame] = asyncio.Queue()
        self._failures = 0
        self._complaints: set[str] = set()  # kinds of trouble already logged
        port = port_settings["port"]
        self.device_health = DeviceHealth(name, f"{port} ({port_settings['baudrate']} baud)")

    @classmethod
    def from_config(cls, cfg: SerialLineDeviceConfig, sink: ReadingSink) -> SerialLineDriver:
        return cls(
            cfg.name,
            {
                "port": cfg.port,
                "baudrate": cfg.baudrate,
                "bytesize": cfg.bytesize,
                "parity": cfg.parity,
                "stopbits": cfg.stopbits,
            },
            build_framer(cfg.framing),
            build_parser(cfg.parser),
            [LinePoint(p.name, p.field or p.name, p.type, p.scale, p.offset) for p in cfg.points],
            sink,
            command=cfg.command_bytes(),
            poll_interval=cfg.poll_interval,
            timeout=cfg.timeout,
            stale_after=cfg.stale_after,
            backoff_max=cfg.backoff_max,
        )

    def describe(self) -> str:
        how = f"polled every {self.poll_interval:g}s" if self.command is not None else "streaming"
        return f"{self.device}: {len(self.points)} point(s), {how} ({self.device_health.address})"

    def health(self) -> list[DeviceHealth]:
        return [self.device_health]

    # --- running --------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                try:
                    self._open()
                except (serial.SerialException, OSError) as err:
                    self._failed(f"cannot open {self.port_settings['port']}: {err}")
                    await asyncio.sleep(self._backoff())
                    continue
                try:
                    if self.command is None:
                        await self._stream()
                    else:
                        await self._poll_loop()
                except _PortLost as err:
                    self._close()
                    self._failed(str(err))
                    await asyncio.sleep(self._backoff())
        finally:
            self._close()

    async def _stream(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.stale_after):
                    frame = await self._frames.get()
            except TimeoutError:
                self._failed(f"no valid frame for {self.stale_after:g}s", Quality.STALE)
                continue
            self.handle(frame)

    async def _poll_loop(self) -> None:
        assert self.command is not None and self._serial is not None
        next_due = time.monotonic()
        while True:
            delay = next_due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            ok = await self._poll_once()
            now = time.monotonic()
            next_due = max(next_due + self.poll_interval, now) if ok else now + self._backoff()

    async def _poll_once(self) -> bool:
        assert self.command is not None and self._serial is not None
        self.framer.reset()
        while not self._frames.empty():
            self._frames.get_nowait()
        try:
            self._serial.reset_input_buffer()
            self._serial.write(self.command)
        except (serial.SerialException, OSError) as err:
            raise _PortLost(f"write to {self.port_settings['port']} failed: {err}") from err
        self.device_health.requests += 1
        started = time.perf_counter()
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    frame = await self._frames.get()
            except TimeoutError:
                self.device_health.timeouts += 1
                self._failed(f"no valid reply within {self.timeout:g}s")
                return False
            if self.handle(frame):
                elapsed_ms = (time.perf_counter() - started) * 1000
                self.device_health.last_latency_ms = round(elapsed_ms, 2)
                return True

    # --- bytes in ---------------------------------------------------------------------

    def _open(self) -> None:
        self._serial = serial.Serial(timeout=0, write_timeout=1.0, **self.port_settings)
        self.framer.reset()
        asyncio.get_running_loop().add_reader(self._serial.fileno(), self._on_readable)

    def _close(self) -> None:
        if self._serial is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self._serial.fileno())
        with contextlib.suppress(Exception):
            self._serial.close()
        self._serial = None

    def _on_readable(self) -> None:
        assert self._serial is not None
        try:
            data = self._serial.read(self._serial.in_waiting or 1)
        except (serial.SerialException, OSError) as err:
            # The port went away (USB adapter unplugged); the run loop reopens it.
            self._close()
            self._frames.put_nowait(_LOST)
            self.device_health.last_error = f"port lost: {err}"
            return
        self.consume(data)

    def consume(self, data: bytes) -> None:
        """Bytes from the line: frames are queued for parsing, discards are counted."""
        for event in self.framer.feed(data):
            if isinstance(event, Discard):
                self.device_health.framing_errors += 1
                self._complain("framing", f"discarded {len(event.data)} byte(s): {event.reason}")
            else:
                self._frames.put_nowait(event)

    # --- frames -----------------------------------------------------------------------

    def handle(self, frame: Frame) -> bool:
        """Parse one frame and publish its readings; True when it was a good frame."""
        if frame is _LOST:
            raise _PortLost(self.device_health.last_error or "port lost")
        quality = Quality.GOOD
        try:
            fields = self.parser.parse(frame.data)
        except ParseError as err:
            if err.kind == "skip":
                return False  # another sentence type on a shared NMEA line: not an error
            if err.kind != "checksum":
                self.device_health.errors += 1
                self._complain("format", f"unreadable frame {frame.data[:40]!r}: {err}")
                return False
            self.device_health.crc_errors += 1
            self._complain("checksum", f"checksum failure: {err}")
            fields = self._parse_unverified(frame)
            if not fields:
                return False
            quality = Quality.BAD_CHECKSUM
        readings = self._readings(fields, quality)
        if readings:
            self.device_health.readings += len(readings)
            self._sink(readings)
        if quality is Quality.GOOD:
            self.device_health.responses += 1
            self._recovered()
            return True
        return False

    def _parse_unverified(self, frame: Frame) -> dict[str, Field]:
        try:
            return self.parser.parse_unverified(frame.data)
        except ParseError:
            return {}

    def _readings(self, fields: dict[str, Field], quality: Quality) -> list[Reading]:
        ts_ms = time.time_ns() // 1_000_000
        out = []
        for point in self.points:
            if point.field not in fields:
                continue
            try:
                value = point.value(fields[point.field])
            except (ValueError, TypeError, AssertionError) as err:
                self.device_health.errors += 1
                self._complain(
                    f"convert:{point.name}",
                    f"field {point.field!r} = {fields[point.field]!r} is not a {point.type}: {err}",
                )
                continue
            out.append(Reading(self.device, point.name, ts_ms, value, quality))
        return out

    # --- state ------------------------------------------------------------------------

    def _complain(self, kind: str, message: str) -> None:
        self.device_health.last_error = message
        if kind not in self._complaints:
            self._complaints.add(kind)
            log.warning(
                "device %r (%s): %s; counting further ones quietly",
                self.device,
                self.device_health.address,
                message,
            )

    def _failed(self, reason: str, quality: Quality = Quality.DEVICE_OFFLINE) -> None:
        """The instrument stopped answering (or talking: STALE); flag its points once."""
        self._failures += 1
        self.device_health.last_error = reason
        if self.device_health.online is not False:
            self.device_health.online = False
            self.device_health.offline_since = time.time()
            log.warning(
                "device %r (%s) is offline: %s; retrying with back-off up to %gs",
                self.device,
                self.device_health.address,
                reason,
                self.backoff_max,
            )
            ts_ms = time.time_ns() // 1_000_000
            self._sink([Reading(self.device, p.name, ts_ms, None, quality) for p in self.points])

    def _recovered(self) -> None:
        self._failures = 0
        if self.device_health.online is False:
            down = time.time() - (self.device_health.offline_since or time.time())
            log.info(
                "device %r (%s) answers again after %.1fs offline",
                self.device,
                self.device_health.address,
                down,
            )
            self._complaints.clear()
        elif self.device_health.online is None:
            log.info("device %r (%s) is answering", self.device, self.device_health.address)
        self.device_health.online = True
        self.device_health.offline_since = None

    def _backoff(self) -> float:
        return backoff_delay(self._failures, self.poll_interval, self.backoff_max)


class _PortLost(Exception):
    pass


_LOST = Frame(b"")  # sentinel queued by the reader when the port disappears
