"""Modbus RTU through a serial device server speaking RFC 2217 (``rfc2217://host:port``).

A serial device server (Moxa NPort, Lantronix; drivers/sim/rfc2217_line.py in tests)
puts an RS-485 bus on the network; RFC 2217 lets the client set the bus's baud rate,
parity and stop bits over the connection. pyserial is the client (`serial_for_url`),
but its port has no file descriptor, and its `open` (a TCP connection, then the
telnet and line-setting negotiation) and `close` (a reader thread joined, then a
0.3 s pause) block. pymodbus' serial transport waits on a file descriptor, so such a
port is driven here instead:

- opened and closed off the event loop, each in a daemon thread of its own, so a
  slow or dead device server never stalls the other lines, the batcher or the
  uplink, never holds a worker of the loop's executor, and never delays the exit;
  an opening waits for the close of the same URL's previous session (a server may
  take one session at a time), and may take what pyserial needs to say why it
  failed (`opening_budget`: the TCP connection, then two negotiation steps of the
  URL's `?timeout=`, 3 s by default);
- a request is written at once; the answer is looked for every `BUSY_POLL` seconds
  while one is due (from the request until its answer timeout, or until `TRAILING`
  after the last bytes came), and every `IDLE_POLL` seconds otherwise (stray bytes,
  a connection the server dropped): a line polled every second costs about 20
  wake-ups a second, not 2,000.

A connection the server drops is found at the next look (or by `connected`, which
the endpoint asks before each request): bytes that came with the goodbye are still
delivered, a request waiting for its answer fails at once as a connection error, and
the endpoint (driver.py) reopens the line for the retry or the next poll, as it does
for TCP. A slave that does not answer is not a dead connection: the endpoint reopens
a line only when requests to two units (or to its only unit) go unanswered.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlsplit

import serial
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ModbusIOException
from pymodbus.transport.serialtransport import SerialTransport

from drivers.serial_port import (
    SERVER_CLOSED,
    LookPace,
    close_network_port,
    network_open_error,
    open_network_port,
    take_queued,
)

RAW_TCP = 'a port in raw TCP mode is protocol = "modbus_rtu_over_tcp"'
TCP_CONNECT = 5.0  # pyserial's own limit on the TCP connection to the server
NEGOTIATION = 3.0  # pyserial's wait for each step of the negotiation, unless ?timeout=
BUSY_POLL = 0.001  # seconds between looks for an answer that is due (LookPace)


def rfc2217_client(
    url: str,
    *,
    baudrate: int,
    bytesize: int,
    parity: str,
    stopbits: int,
    timeout: float,
    trace: Callable[[bool, bytes], bytes],
) -> AsyncModbusSerialClient:
    """A pymodbus RTU client whose line is the RFC 2217 port `url` (see the module).

    `timeout` is the answer timeout the endpoint applies; pymodbus' own (its opening of
    the line, and its answer timeout, which must not race the endpoint's) is longer
    than both that and the opening's budget."""
    client = Rfc2217Client(
        url,
        framer=FramerType.RTU,
        baudrate=baudrate,
        bytesize=bytesize,
        parity=parity,
        stopbits=stopbits,
        timeout=max(timeout, opening_budget(url)) + 1.0,
        retries=0,
        reconnect_delay=0,
        trace_packet=trace,
    )
    ctx = client.ctx
    ctx.call_create = partial(  # how pymodbus opens its line
        _open,
        ctx.loop,
        ctx.handle_new_connection,
        url,
        client=client,
        answer_window=timeout,
        baudrate=baudrate,
        bytesize=bytesize,
        parity=parity,
        stopbits=stopbits,
    )
    return client


def opening_budget(url: str) -> float:
    """Seconds the opening of `url` may take before pyserial itself gives up and says
    why: the TCP connection, then two negotiation steps (telnet options, line settings)."""
    values = parse_qs(urlsplit(url).query).get("timeout")
    try:
        step = float(values[0]) if values else NEGOTIATION
    except ValueError:
        step = NEGOTIATION
    return TCP_CONNECT + 2 * step + 1.0


class Rfc2217Client(AsyncModbusSerialClient):
    """pymodbus' serial client; `connected` also looks whether the server has closed
    the connection since the last look, so the endpoint reopens the line before a
    request instead of sending one into a dead connection. `open_error` says, in
    words, why the last opening failed (pymodbus keeps only True or False)."""

    open_error = ""

    @property
    def connected(self) -> bool:
        transport = self.ctx.transport
        if isinstance(transport, _Rfc2217Transport):
            transport.check()
        return super().connected


async def _open(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: Callable[[], Any],
    url: str,
    *,
    client: Rfc2217Client,
    answer_window: float,
    **settings: Any,
) -> tuple[asyncio.Transport, Any]:
    client.open_error = ""
    try:
        port = await open_network_port(url, **settings)
    except Exception as err:  # SerialException, OSError, ValueError: pymodbus says False
        client.open_error = network_open_error(err, raw_tcp=RAW_TCP)
        raise
    protocol = protocol_factory()
    transport = _Rfc2217Transport(loop, protocol, port, url, answer_window)
    loop.call_soon(transport.setup)
    return transport, protocol


class _Rfc2217Transport(SerialTransport):
    """pymodbus' serial transport on an open RFC 2217 port (no file descriptor)."""

    force_poll = True

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol: Any,
        port: Any,
        url: str,
        answer_window: float,
    ) -> None:
        asyncio.Transport.__init__(self)
        self.async_loop = loop
        self.intern_protocol = protocol
        self.sync_serial = port
        self.url = url
        self._request: object = None  # the answer the last request awaits (pymodbus')
        self.intern_write_buffer: list[bytes] = []
        self.poll_task: asyncio.Task[None] | None = None
        self._window = answer_window
        self._pace = LookPace(BUSY_POLL)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send at once: a Modbus request is a few bytes, which the socket takes; a
        failed send fails the request at once."""
        port = self.sync_serial
        if port is None:
            return
        self._pace.due(self._window)
        self._request = getattr(self.intern_protocol, "response_future", None)
        try:
            port.write(data)
        except Exception as err:  # SerialException; AttributeError once pyserial's reader ended
            lost = err if isinstance(err, serial.SerialException) else serial.SerialException(err)
            self.async_loop.call_soon(self.close, lost)

    def check(self) -> None:
        """Take what has arrived; a connection found closed closes the transport now."""
        try:
            self._drain()
        except serial.SerialException as err:
            self.close(err)

    async def polling_task(self) -> None:
        try:
            while self.sync_serial is not None:
                await self._pace.wait()
                if self._drain():  # an answer, or part of one: the rest follows at once
                    self._pace.quiet()
                    self._pace.heard()
        except serial.SerialException as err:  # the server dropped the connection
            self.close(err)

    def _drain(self) -> bool:
        """Hand every byte that has arrived to the protocol; False when none had.
        SerialException (after those bytes) once the server has closed the connection."""
        port = self.sync_serial
        if port is None:
            return False
        data, _, ended = take_queued(port)
        if data:
            self.intern_protocol.data_received(data)  # type: ignore[attr-defined]
        if ended:
            raise serial.SerialException(SERVER_CLOSED)
        return bool(data)

    def close(self, exc: Exception | None = None) -> None:
        port, self.sync_serial = self.sync_serial, None
        if port is None:
            return
        self.intern_write_buffer.clear()
        task, self.poll_task = self.poll_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        close_network_port(self.async_loop, self.url, port)
        if exc is not None:
            # A request waiting for its answer fails now, not at its timeout: the
            # endpoint counts a connection error and reopens the line for the retry.
            waiting, self._request = self._request, None
            if isinstance(waiting, asyncio.Future) and not waiting.done():
                waiting.set_exception(ModbusIOException(f"connection lost: {exc}"))
            with contextlib.suppress(Exception):
                self.intern_protocol.connection_lost(exc)
