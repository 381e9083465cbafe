"""An RS-485 bus behind a simulated serial device server that speaks RFC 2217: wrong baud
rates and wrong parity, simulated truthfully.

A pseudo-terminal keeps the baud rate a program sets but ignores parity (Linux does not
keep PARENB on a pty) and never garbles a byte, so on a pty every line setting "works".
A technician's real mistakes — the wrong baud rate, the wrong parity — need a line
that knows its own settings. `Rfc2217Line` is one:

- the bus side is a pty (`bus_path`): the simulated slaves open it like any serial
  port, e.g. `ModbusSimServer(devices, serial_port=line.bus_path)`, or a line
  instrument;
- the client side is RFC 2217 (serial over telnet, the protocol of Moxa and
  Lantronix serial device servers) on a loopback TCP port (`url`,
  `rfc2217://127.0.0.1:PORT`): pyserial opens it with `serial.serial_for_url`, and
  the client sets baud rate, data bits, parity and stop bits on it, as it would on a
  real port;
- every byte crossing between the two is sent as the sender's UART would put it on
  the wire (start bit, data bits, parity, stop bits, at the sender's baud rate, back
  to back within one write) and read back as the receiver's UART would sample it
  (`uart_receive`). With matching settings the bytes pass unchanged; with a wrong
  baud rate or parity they come out garbled, or not at all.

What each side does with a damaged character is what real ones do:

- towards the bus, a character with a parity or framing error is dropped: a Modbus
  slave discards it (the Modbus serial line specification, 2.5.1), so a request
  sent with the wrong settings gets no answer;
- towards the client, every character is delivered, errors and all: pyserial puts
  the tty in raw mode without INPCK, and Linux then passes what the UART sampled.

A receiver checks one stop bit, as 16550-style UARTs do, so a device set to two stop
bits answers a master sending one (and the other way round), as on a real bus. The
line does not pace bytes at the baud rate: bytes are garbled as if sent at it, but
arrive as fast as a pty carries them.

One client has the port at a time, like a serial device server: a new connection
takes it over from the previous one. `client` holds what the current client
negotiated; `dropped` counts the characters the bus side discarded; `drop_client()`
closes the client's connection from the server's side.

Beside tests, the same server lets a rig exercise a client of a serial device server
without the hardware (`edge-gateway probe` and `scan` take `--serial rfc2217://...`).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib

from serial.rfc2217 import PortManager

from drivers.serial_port import LineSettings
from drivers.sim.serial_link import PtyPort


def uart_receive(data: bytes, sent: LineSettings, read: LineSettings) -> list[tuple[int, bool]]:
    """What a UART set to `read` makes of `data` sent back to back by a UART set to `sent`.

    Returns one (byte, error) per character the receiver sees, where error means a
    parity or framing error (the stop bit sampled low). The line idles high before
    and after `data`. The receiver waits for a falling edge, samples the start bit
    half a bit later (a start bit that is high again by then is a glitch, ignored),
    then each data bit, the parity bit and the first stop bit a whole bit apart at its
    own baud rate, and then looks for the next falling edge.
    """
    # Integer time: one unit is 1 / (2 * sent.baudrate * read.baudrate) s, so that every
    # edge and every sample (half a receiver bit after an edge) falls on a whole unit.
    sender_bit = 2 * read.baudrate
    receiver_bit = 2 * sent.baudrate
    edges, levels = _waveform(data, sent, sender_bit)

    def level(t: int) -> int:
        index = bisect.bisect_right(edges, t) - 1
        return 1 if index < 0 else levels[index]

    received: list[tuple[int, bool]] = []
    after = -1
    while True:
        start = _next_falling_edge(edges, levels, after)
        if start is None:
            return received
        middle = start + receiver_bit // 2
        if level(middle) != 0:
            after = middle  # a glitch, not a start bit
            continue
        value = 0
        for i in range(read.bytesize):
            value |= level(middle + (1 + i) * receiver_bit) << i
        at = middle + (1 + read.bytesize) * receiver_bit
        error = False
        if read.parity != "N":
            error = level(at) != _parity_bit(value, read.bytesize, read.parity)
            at += receiver_bit
        error = error or level(at) == 0  # framing error: no stop bit
        received.append((value, error))
        after = at


def _waveform(data: bytes, line: LineSettings, bit: int) -> tuple[list[int], list[int]]:
    """The line level as change points: (times, level from that time on)."""
    edges: list[int] = []
    levels: list[int] = []
    t = 0

    def put(level: int, duration: int) -> None:
        nonlocal t
        if not levels or levels[-1] != level:
            edges.append(t)
            levels.append(level)
        t += duration

    for byte in data:
        put(0, bit)  # start bit
        value = byte & ((1 << line.bytesize) - 1)
        for i in range(line.bytesize):
            put(value >> i & 1, bit)
        if line.parity != "N":
            put(_parity_bit(value, line.bytesize, line.parity), bit)
        put(1, round(bit * line.stopbits))
    put(1, 0)  # idle after the last stop bit
    return edges, levels


def _next_falling_edge(edges: list[int], levels: list[int], after: int) -> int | None:
    for i in range(bisect.bisect_right(edges, after), len(edges)):
        if levels[i] == 0 and (i == 0 or levels[i - 1] == 1):
            return edges[i]
    return None


def _parity_bit(value: int, bytesize: int, parity: str) -> int:
    ones = bin(value & ((1 << bytesize) - 1)).count("1")
    return {"E": ones % 2, "O": 1 - ones % 2, "M": 1, "S": 0}[parity]


class _ClientPort:
    """The port as the RFC 2217 client sees it: what `PortManager` sets and asks for."""

    def __init__(self, settings: LineSettings) -> None:
        self.baudrate = settings.baudrate
        self.bytesize = settings.bytesize
        self.parity = settings.parity
        self.stopbits: float = settings.stopbits
        self.xonxoff = False
        self.rtscts = False
        self.dtr = True
        self.rts = True
        self.break_condition = False
        self.cts = self.dsr = self.cd = True
        self.ri = False

    @property
    def settings(self) -> LineSettings:
        return LineSettings(self.baudrate, self.bytesize, self.parity, self.stopbits)

    def reset_input_buffer(self) -> None:
        """Nothing is buffered here: bytes pass as they arrive."""

    def reset_output_buffer(self) -> None:
        """Nothing is buffered here: bytes pass as they arrive."""


class _Session:
    """One client connection: the telnet/RFC 2217 state and the settings it negotiated."""

    def __init__(self, line: Rfc2217Line, writer: asyncio.StreamWriter) -> None:
        self.line = line
        self.writer = writer
        self.port = _ClientPort(line.settings)
        self.manager = PortManager(self.port, self)  # negotiation starts here

    def write(self, data: bytes) -> None:
        """PortManager's connection: telnet commands and escaped data to the client."""
        if not self.writer.is_closing():
            self.writer.write(data)

    def send_data(self, data: bytes) -> None:
        self.write(b"".join(self.manager.escape(data)))

    def data_from_client(self, raw: bytes) -> bytes:
        return b"".join(self.manager.filter(raw))


class Rfc2217Line:
    """A simulated RS-485 bus with `settings`, reached over RFC 2217 at `url`.

    `async with Rfc2217Line(LineSettings(19200, parity="E")) as line:` then start the
    bus's slaves on `line.bus_path` and point the client at `line.url`.
    """

    def __init__(self, settings: LineSettings, host: str = "127.0.0.1", port: int = 0) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self.bus = PtyPort()
        self.dropped = 0  # characters the bus side discarded (parity or framing errors)
        self.connections = 0
        self._session: _Session | None = None
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def bus_path(self) -> str:
        """The pty the bus's slaves open (their settings are `settings`, whatever they set)."""
        return self.bus.path

    @property
    def url(self) -> str:
        """What a client opens: `serial.serial_for_url(line.url, baudrate=...)`."""
        return f"rfc2217://{self.host}:{self.port}"

    @property
    def client(self) -> LineSettings | None:
        """The settings the connected client negotiated (None: no client)."""
        return self._session.port.settings if self._session is not None else None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._loop.add_reader(self.bus.master, self._from_bus)

    async def stop(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.bus.master)
        if self._server is not None:
            self._server.close()
            if self._session is not None:
                self._session.writer.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        self.bus.close()

    def drop_client(self) -> bool:
        """Close the current client's connection, as a device server that restarts or
        times a session out does; False when no client was connected."""
        session, self._session = self._session, None
        if session is None:
            return False
        session.writer.close()
        return True

    async def __aenter__(self) -> Rfc2217Line:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        if self._session is not None:  # the newest client takes the port over
            self._session.writer.close()
        session = self._session = _Session(self, writer)
        self.connections += 1
        try:
            while raw := await reader.read(4096):
                data = session.data_from_client(raw)
                if data:
                    self._to_bus(data, session.port.settings)
        except (ConnectionError, asyncio.CancelledError):
            pass  # a client that went away, or the server stopping: end normally
        finally:
            if task is not None:
                self._handlers.discard(task)
            if self._session is session:
                self._session = None
            with contextlib.suppress(Exception):
                writer.close()

    def _to_bus(self, data: bytes, client: LineSettings) -> None:
        characters = uart_receive(data, client, self.settings)
        kept = bytes(value for value, error in characters if not error)
        self.dropped += len(characters) - len(kept)
        if kept:
            self.bus.write(kept)

    def _from_bus(self) -> None:
        data = self.bus.read_available()
        session = self._session
        if not data or session is None:
            return
        characters = uart_receive(data, self.settings, session.port.settings)
        session.send_data(bytes(value for value, _ in characters))
