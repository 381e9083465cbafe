"""Serial line instruments: the thin I/O shell around the pure framer and parser.

One `SerialLineDriver` owns one serial port and one instrument. In `streaming`
mode the instrument talks on its own; silence longer than `stale_after` marks it
offline. In `polled` mode the driver sends `poll_command` every `poll_interval`
and waits `timeout` for the reply frame; a poll without a valid reply marks it
offline, and polls back off exponentially up to `backoff_max`.

Bytes arrive through the event loop (`add_reader` on the port's file descriptor),
go through the framer, and each frame through the parser. A port on a serial device
server (`rfc2217://host:port`: pyserial's client, which has no file descriptor) is
opened and closed in a thread (drivers/serial_port.py) and looked at on a timer
instead (`LookPace`): every `_BUSY_POLL` seconds while a reply is due or bytes are
flowing, every 50 ms otherwise. Nothing a device sends
can raise out of here: discarded bytes count as framing errors, frames that fail
their checksum count as CRC errors (their values, when they can still be read,
are published flagged `BAD_CHECKSUM`, never as good), unparsable frames count
as errors. Each kind of trouble is logged once until the device behaves again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import serial

from drivers.base import DeviceHealth, DevicePlan, DriverPlan, ReadingSink
from drivers.core.backoff import backoff_delay
from drivers.core.model import Quality, Reading, Value
from drivers.serial_line.framing import Discard, Frame, Framer
from drivers.serial_line.parsers import Field, ParseError, Parser
from drivers.serial_port import (
    SERVER_CLOSED,
    LookPace,
    close_network_port,
    forbid_other_openers,
    is_rfc2217,
    line_rate,
    open_error,
    open_network_port,
    take_queued,
)

log = logging.getLogger("drivers.serial_line")

_TRUE = frozenset({"1", "true", "on", "yes", "y", "t"})
_FALSE = frozenset({"0", "false", "off", "no", "n", "f"})
_MAX_INT_DIGITS = 20  # 2**64 has 20 digits: longer integers cannot go on the wire


def _to_int(raw: Field) -> int:
    """An integer field: '42', '-7', '12.0', '1e3'. Anything else raises ValueError."""
    if isinstance(raw, bool | int):
        return int(raw)
    if isinstance(raw, float):
        if not raw.is_integer():  # also NaN and the infinities
            raise ValueError(f"{raw!r} is not a whole number")
        return int(raw)
    text = raw.strip()
    digits = text.lstrip("+-")
    if digits.isdigit():
        if len(digits.lstrip("0")) > _MAX_INT_DIGITS:
            raise ValueError(f"an integer of {len(digits)} digits is beyond 64 bits")
        return int(text, 10)
    number = float(text)  # "12.0", "1e3"; ValueError for words
    if not number.is_integer():
        raise ValueError(f"{text[:40]!r} is not a whole number")
    return int(number)


def _to_float(raw: Field) -> float:
    if isinstance(raw, str) and len(raw) > 64:
        raise ValueError(f"a number of {len(raw)} characters")
    return float(raw)


def _to_bool(raw: Field) -> bool:
    if not isinstance(raw, str):
        return bool(raw)
    text = raw.strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(f"{raw[:40]!r} is neither true nor false")


_CONVERT: dict[str, Callable[[Field], Value]] = {
    "float": _to_float,
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
        """The point's value from its raw field; ValueError saying why when there is none.

        Total: whatever a device sends, the outcome is a value or a ValueError (the
        driver then publishes no value with quality invalid_value)."""
        try:
            value = _CONVERT[self.type](raw)
            if self.type in ("float", "int") and (self.scale != 1.0 or self.offset != 0.0):
                assert isinstance(value, int | float)
                return value * self.scale + self.offset
        except (ValueError, TypeError, ArithmeticError) as err:
            raise ValueError(str(err) or type(err).__name__) from err
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
        max_input_rate: float | None = None,
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
        self.device_health = DeviceHealth(
            name, f"{port} ({port_settings['baudrate']} baud)", log=log
        )
        # The input bound: twice what the line carries at its baud rate, unless
        # configured. A real UART cannot exceed its line rate (the margin absorbs the
        # kernel's buffering); a virtual COM port (pty, USB CDC, a TCP bridge) can, by
        # orders of magnitude, and must not starve the other devices.
        self.max_input_rate = max_input_rate or _RATE_MARGIN * self._line_rate()
        self._burst = max(_MIN_BURST, self.max_input_rate * _BURST_SECONDS)
        self._tokens = self._burst
        self._refilled = time.monotonic()
        self._shedding_since: float | None = None  # monotonic start of a shedding episode
        self._last_shed = 0.0
        self._shed_in_episode = 0
        self._resync = False  # the framer restarted after shedding: its next discard is shed
        self._paused = False
        self._heard = 0.0  # monotonic time a byte last came from a server's port
        # A port on a serial device server: looked at by a task, not by the event loop.
        self._network = is_rfc2217(port)
        self._reader: asyncio.Task[None] | None = None
        self._pace = LookPace(_BUSY_POLL)

    def plan(self) -> DriverPlan:
        polled = self.command is not None
        how = f"polled every {self.poll_interval:g}s" if polled else "streaming"
        address = self.device_health.address
        summary = f"{self.device}: {len(self.points)} point(s), {how} ({address})"
        return DriverPlan((DevicePlan(self.device, summary, len(self.points), int(polled)),))

    def health(self) -> list[DeviceHealth]:
        return [self.device_health]

    # --- running --------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self._open()
                except (serial.SerialException, OSError, ValueError, termios.error) as err:
                    self._failed(open_error(self.port_settings["port"], err))
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
        """Frames as they come; no GOOD frame for `stale_after` marks the instrument stale
        (silent) or offline with comm_error (talking, but nothing usable)."""
        last_good = time.monotonic()
        garbage = False  # frames arrived since the last good one, none usable
        self._heard = time.monotonic()
        while True:
            if (
                self._network
                and time.monotonic() - self._heard > _SILENT_SESSION * self.stale_after
            ):
                # Not one byte for so long: a session the server (or the path to it) has
                # dropped without a word looks exactly like this. A new one costs little.
                raise _PortLost(
                    f"nothing from {self.port_settings['port']} for "
                    f"{_SILENT_SESSION * self.stale_after:g}s; reopening the session"
                )
            remaining = last_good + self.stale_after - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                async with asyncio.timeout(remaining):
                    frame = await self._frames.get()
            except TimeoutError:
                if garbage:
                    self._failed(
                        f"no usable frame for {self.stale_after:g}s, only unusable ones "
                        f"({self.device_health.last_error})",
                        Quality.COMM_ERROR,
                    )
                else:
                    self._failed(f"no valid frame for {self.stale_after:g}s", Quality.STALE)
                last_good, garbage = time.monotonic(), False
                continue
            if self.handle(frame):
                last_good, garbage = time.monotonic(), False
            else:
                garbage = True

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
        assert self.command is not None
        if self._serial is None:  # the reader found the port gone since the last poll
            raise _PortLost(self.device_health.last_error or "port lost")
        self.framer.reset()
        while not self._frames.empty():
            self._frames.get_nowait()
        try:
            if self._network:  # what is queued here (a purge at the server waits for it)
                _, lost = self._take_network()
                if lost is not None:
                    raise lost
            else:
                self._serial.reset_input_buffer()
            self._serial.write(self.command)
        except Exception as err:  # SerialException, OSError; pyserial's RFC 2217 port: any
            raise _PortLost(f"write to {self.port_settings['port']} failed: {err}") from err
        if self._network:
            self._pace.due(self.timeout)
        self.device_health.requests += 1
        started = time.perf_counter()
        deadline = time.monotonic() + self.timeout
        replied = False
        while True:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    frame = await self._frames.get()
            except TimeoutError:
                self.device_health.timeouts += 1
                if replied:
                    self._failed(
                        f"no usable reply within {self.timeout:g}s "
                        f"({self.device_health.last_error})",
                        Quality.COMM_ERROR,
                    )
                else:
                    self._failed(f"no valid reply within {self.timeout:g}s")
                return False
            if self.handle(frame):
                self._pace.quiet()  # answered: the reader looks at its idle pace again
                elapsed_ms = (time.perf_counter() - started) * 1000
                self.device_health.last_latency_ms = round(elapsed_ms, 2)
                return True
            replied = True

    # --- bytes in ---------------------------------------------------------------------

    async def _open(self) -> None:
        if self._network:
            url = self.port_settings["port"]
            settings = {k: v for k, v in self.port_settings.items() if k != "port"}
            self._serial = await open_network_port(url, **settings)
        else:
            # exclusive: a second program on this port gets an error instead of our bytes.
            self._serial = serial.Serial(
                timeout=0, write_timeout=1.0, exclusive=True, **self.port_settings
            )
            forbid_other_openers(self._serial.fileno())
        self.framer.reset()
        # A streaming instrument is caught mid-frame when the port opens (pyserial
        # flushes what had arrived): the first thing framed is a fragment, not noise.
        self._resync = self.command is None
        self._paused = False
        if self._network:
            self._heard = time.monotonic()
            self._reader = asyncio.create_task(self._read_network(), name=f"{self.name} reader")
            self._reader.add_done_callback(self._reader_ended)
        else:
            asyncio.get_running_loop().add_reader(self._serial.fileno(), self._on_readable)

    def _close(self) -> None:
        if self._serial is None:
            return
        if self._network:
            reader, self._reader = self._reader, None
            if reader is not None and reader is not asyncio.current_task():
                reader.cancel()
            close_network_port(asyncio.get_running_loop(), self.port_settings["port"], self._serial)
            self._serial = None
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self._serial.fileno())
        with contextlib.suppress(Exception):
            self._serial.close()
        self._serial = None

    def _on_readable(self) -> None:
        assert self._serial is not None
        try:
            data = self._serial.read(max(1, min(self._serial.in_waiting, _READ_CHUNK)))
        except (serial.SerialException, OSError) as err:
            self._lost(err)  # the USB adapter unplugged
            return
        self.consume(self._within_rate(data))

    def _lost(self, err: BaseException) -> None:
        """The port went away; the run loop reopens it."""
        self._close()
        self._frames.put_nowait(_LOST)
        self.device_health.last_error = f"port lost: {err}"

    async def _read_network(self) -> None:
        """The bytes of a port on a serial device server, looked for on a timer."""
        while self._serial is not None:
            # a flood: look at the idle pace
            await self._pace.wait(slow=time.monotonic() - self._last_shed < _BUSY_SHEDDING)
            data, lost = self._take_network()
            if data:
                self._heard = time.monotonic()
                self._pace.heard()
                self.consume(self._within_rate(data))
            if lost is not None:  # the server closed the connection
                self._lost(lost)
                return

    def _reader_ended(self, task: asyncio.Task[None]) -> None:
        """A reader that failed (a bug) must not leave the port unread: log it, reopen."""
        if task.cancelled() or task.exception() is None:
            return
        log.error(
            "device %r (%s): reading the port failed unexpectedly; reopening it",
            self.device,
            self.device_health.address,
            exc_info=task.exception(),
        )
        if self._serial is not None:
            self._lost(task.exception() or RuntimeError("reader ended"))

    def _take_network(self) -> tuple[bytes, serial.SerialException | None]:
        """What the server's port has received (at most the flood guard's burst: older
        bytes are shed and counted), and why the connection ended, if it has."""
        port = self._serial
        if port is None:
            return b"", None
        data, dropped, ended = take_queued(port, limit=int(self._burst))
        if dropped:
            self.device_health.shed_bytes += dropped
            self._shed_in_episode += dropped
            self._last_shed = time.monotonic()
            self.framer.reset()  # the bytes kept start somewhere inside a frame
            self._resync = True
        lost = serial.SerialException(SERVER_CLOSED) if ended else None
        return data, lost

    def _within_rate(self, data: bytes) -> bytes:
        """Keep at most what the line may carry (a token bucket); shed and count the rest.

        The newest bytes are kept (they hold the freshest values); the framer restarts
        at the next frame boundary. While shedding, reading pauses briefly so that a
        flooding port costs a few wake-ups per second, not the event loop.
        """
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self.max_input_rate)
        self._refilled = now
        excess = len(data) - int(self._tokens)
        if excess <= 0:
            self._tokens -= len(data)
            if self._shedding_since is not None and now - self._last_shed > _CALM_SECONDS:
                self._shedding_ended(now)
            return data
        self.device_health.shed_bytes += excess
        self._shed_in_episode += excess
        self._last_shed = now
        if self._shedding_since is None:
            self._shedding_since = now
            log.warning(
                "device %r (%s) sends faster than its line carries (limit %d bytes/s: %s); "
                "shedding the excess, counted as shed_bytes, so that the other devices keep "
                "their schedule",
                self.device,
                self.device_health.address,
                round(self.max_input_rate),
                "max_input_rate"
                if self.max_input_rate != _RATE_MARGIN * self._line_rate()
                else "twice its baud rate",
            )
        kept = data[excess:]
        self._tokens -= len(kept)
        self.framer.reset()
        self._resync = True
        self._pause(_PAUSE_SECONDS)
        return kept

    def _line_rate(self) -> float:
        ps = self.port_settings
        return line_rate(ps["baudrate"], ps["bytesize"], ps["parity"], ps["stopbits"])

    def _shedding_ended(self, now: float) -> None:
        assert self._shedding_since is not None
        log.info(
            "device %r (%s) sends within its line rate again: %d bytes shed in %.0fs",
            self.device,
            self.device_health.address,
            self._shed_in_episode,
            self._last_shed - self._shedding_since,
        )
        self._shedding_since = None
        self._shed_in_episode = 0

    def _pause(self, seconds: float) -> None:
        if self._paused or self._serial is None or self._network:
            return  # a network port is looked at every _IDLE_POLL while shedding
        loop = asyncio.get_running_loop()
        fd = self._serial.fileno()
        loop.remove_reader(fd)
        self._paused = True

        def resume() -> None:
            self._paused = False
            if self._serial is not None and self._serial.fileno() == fd:
                loop.add_reader(fd, self._on_readable)

        loop.call_later(seconds, resume)

    def consume(self, data: bytes) -> None:
        """Bytes from the line: frames are queued for parsing, discards are counted."""
        for event in self.framer.feed(data):
            if self._resync:  # the remnant of a frame cut by shedding or by opening the port
                self._resync = False
                continue
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
                self.device_health.malformed += 1
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
            raw = fields[point.field]
            try:
                value = point.value(raw)
            except ValueError as err:
                # Documented outcome (docs/wire-format.md): no value, quality invalid_value.
                self.device_health.invalid_values += 1
                shown = repr(raw) if len(repr(raw)) <= 60 else f"{repr(raw)[:57]}..."
                self._complain(
                    f"convert:{point.name}",
                    f"field {point.field!r} = {shown} is not a usable {point.type} ({err}); "
                    "sent as no value with quality invalid_value",
                )
                out.append(Reading(self.device, point.name, ts_ms, None, Quality.INVALID_VALUE))
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
        """The instrument stopped answering (or talking: STALE; or talks only nonsense:
        COMM_ERROR); flag its points once."""
        self._failures += 1
        changed = self.device_health.set_state(
            "offline", reason, action=f"retrying with back-off up to {self.backoff_max:g}s"
        )
        if changed:
            ts_ms = time.time_ns() // 1_000_000
            self._sink([Reading(self.device, p.name, ts_ms, None, quality) for p in self.points])

    def _recovered(self) -> None:
        self._failures = 0
        if self.device_health.set_state("online"):
            self._complaints.clear()

    def _backoff(self) -> float:
        return backoff_delay(self._failures, self.poll_interval, self.backoff_max)


class _PortLost(Exception):
    pass


_LOST = Frame(b"")  # sentinel queued by the reader when the port disappears
_RATE_MARGIN = 2.0  # default input bound: this many times the line rate
_READ_CHUNK = 65536  # bytes read per wake-up at most
_BUSY_POLL = 0.002  # seconds between looks at a server's port while a reply is due
_BUSY_SHEDDING = 1.0  # seconds after the last shed byte the reader keeps its idle pace
_SILENT_SESSION = 3  # streaming: stale periods without a byte before a session is reopened
_BURST_SECONDS = 0.5  # the input bound allows bursts of this many seconds' worth
_MIN_BURST = 4096  # ... and at least this many bytes (a long frame at a low baud rate)
_PAUSE_SECONDS = 0.1  # reading pauses this long after shedding
_CALM_SECONDS = 10.0  # no shedding for this long ends a shedding episode (logged once)
