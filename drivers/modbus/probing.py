"""One read at a time on a line nobody has configured yet, and what came back: the I/O
of the commissioning tools (`edge-gateway probe`, `scan`).

Reads go through the gateway's own endpoint (driver.py), so a probe sends exactly
what a poll would: the same silence between frames on a serial line, the same checks
of every answer. Instead of readings for a pipeline, each read returns an `Outcome`:
values, a Modbus exception (by name, with what it usually means), bytes that are no
answer (said in words by diagnose.py), or nothing.

`check_line_opens` opens the line once before the first read, because pymodbus
swallows the reason a port does not open: pyserial and the socket keep it, and
`drivers.serial_port.open_error` names the holder of a busy port and the dialout fix.

A serial port may also be ``rfc2217://host:port``, a serial device server speaking
RFC 2217 (Moxa, Lantronix; and drivers/sim/rfc2217_line.py), as in the daemon
(rfc2217.py).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field, replace
from typing import Literal

import serial
from pymodbus.client import ModbusBaseClient

from drivers.base import DeviceHealth
from drivers.modbus.decode import Table
from drivers.modbus.diagnose import describe_rtu_answer, find_rtu_frame
from drivers.modbus.driver import ModbusDevice, ModbusEndpoint, ModbusRequestError, Transport
from drivers.modbus.exceptions import GATEWAY_EXCEPTIONS, describe_exception
from drivers.modbus.plan import ReadRequest
from drivers.modbus.timing import default_inter_frame_delay
from drivers.serial_port import LineSettings, is_rfc2217, open_error

__all__ = [
    "Answer",
    "LineUnusableError",
    "ModbusLine",
    "Outcome",
    "check_line_opens",
    "describe_line",
    "network_transport",
    "serial_transport",
    "settings_of",
]

Answer = Literal["data", "exception", "gateway", "garbled", "silent", "connection"]
"""What came back for one read: values; a Modbus exception from the device; exception
10 or 11 from a TCP gateway for a unit behind it that did not answer; bytes that are
no answer; nothing; or the line could not be used."""

_FUNCTIONS = {Table.COIL: 1, Table.DISCRETE_INPUT: 2, Table.HOLDING: 3, Table.INPUT: 4}
_KEEP_HEARD = 512  # bytes of a wrong answer kept to show and explain
CONNECT_TIMEOUT = 5.0
"""Seconds a TCP connection or the opening of a port may take (an RFC 2217 port
negotiates its settings first)."""


def serial_transport(port: str, settings: LineSettings) -> Transport:
    """Modbus RTU on a serial port (or an `rfc2217://` URL) with these settings."""
    return Transport(
        "rtu",
        serial_port=port,
        baudrate=settings.baudrate,
        bytesize=settings.bytesize,
        parity=settings.parity,
        stopbits=int(settings.stopbits),
        inter_frame_delay=default_inter_frame_delay(settings.baudrate),
    )


def network_transport(kind: Literal["tcp", "rtu_over_tcp"], host: str, port: int) -> Transport:
    return Transport(kind, host=host, port=port)


def settings_of(transport: Transport) -> LineSettings:
    return LineSettings(
        transport.baudrate, transport.bytesize, transport.parity, transport.stopbits
    )


def describe_line(transport: Transport) -> str:
    """'/dev/ttyUSB0 at 9600 8N1', 'Modbus TCP 10.0.0.5:502', 'RTU over TCP 10.0.0.9:4001'."""
    if transport.kind == "rtu":
        return f"{transport.serial_port} at {settings_of(transport)}"
    what = "Modbus TCP" if transport.kind == "tcp" else "RTU over TCP"
    return f"{what} {transport.host}:{transport.port}"


class LineUnusableError(Exception):
    """The line cannot be used, in words. `local` is True when the machine is the reason
    (a serial port missing, held by another program, not permitted), False when nothing
    answers on the network."""

    def __init__(self, message: str, *, local: bool) -> None:
        super().__init__(message)
        self.local = local


def check_line_opens(transport: Transport, timeout: float) -> None:
    """Open and close the line once; LineUnusableError says what stops it."""
    if transport.kind == "rtu":
        if is_rfc2217(transport.serial_port):
            return  # a network port: pyserial says in words why it does not open
        try:
            serial.serial_for_url(transport.serial_port, exclusive=True).close()
        except (OSError, ValueError) as err:
            raise LineUnusableError(open_error(transport.serial_port, err), local=True) from err
        return
    try:
        socket.create_connection((transport.host, transport.port), timeout=timeout).close()
    except OSError as err:
        why = f"no answer within {timeout:g}s" if isinstance(err, TimeoutError) else None
        why = why or err.strerror or str(err) or type(err).__name__
        raise LineUnusableError(
            f"cannot connect to {transport.host}:{transport.port}: {why} (is it the device's "
            "address and port, and is it on this network?)",
            local=False,
        ) from err


@dataclass(slots=True)
class Outcome:
    """What one read brought back."""

    unit: int
    answer: Answer
    detail: str  # in words: the exception and its meaning, what was wrong with the bytes
    values: list[int] = field(default_factory=list)
    code: int | None = None  # the Modbus exception code
    latency_ms: float | None = None
    received: bytes = b""  # what came back, when it was no answer
    other_unit: int | None = None  # garbled bytes holding a valid answer of another unit

    @property
    def present(self) -> bool:
        """Whether a device answered this unit id (with data, or with an exception)."""
        return self.answer in ("data", "exception")


class ModbusLine(ModbusEndpoint):
    """One line opened for the commissioning tools: single reads, each returning what came
    back (`read`), one request on the wire at a time. `close()` when done."""

    def __init__(self, transport: Transport, timeout: float) -> None:
        super().__init__(transport, [], lambda readings: None)
        self.timeout = timeout
        self._heard = bytearray()

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending and len(self._heard) < _KEEP_HEARD:
            self._heard += data[: _KEEP_HEARD - len(self._heard)]
        return super()._trace(sending, data)

    async def open(self) -> None:
        """Connect (or open the port) now; LineUnusableError says why it cannot be.

        A read would connect too, but within its answer timeout, which is shorter than
        a TCP connection or an RFC 2217 negotiation may take."""
        try:
            await self._connected_client(self._device(0, CONNECT_TIMEOUT))
        except ModbusRequestError as err:
            raise LineUnusableError(str(err), local=False) from err

    async def _connected_client(self, device: ModbusDevice) -> ModbusBaseClient:
        # The client's own answer timeout must not race the endpoint's (a client that
        # times out first calls it a connection error): give it the longer one.
        return await super()._connected_client(replace(device, timeout=CONNECT_TIMEOUT))

    def _device(self, unit: int, timeout: float) -> ModbusDevice:
        health = DeviceHealth(f"unit {unit}", f"unit {unit} at {self.transport}")
        return ModbusDevice(
            name=health.name,
            unit=unit,
            requests=[],
            interval=1.0,
            timeout=timeout,
            retries=0,
            backoff_max=1.0,
            health=health,
        )

    async def read(self, unit: int, table: Table, address: int, count: int) -> Outcome:
        device = self._device(unit, self.timeout)
        health = device.health
        request = ReadRequest(table, address, count, ())
        self._heard.clear()
        try:
            values = await self._read(device, request)
        except ModbusRequestError as err:
            return self._failed(unit, err, health, request)
        return Outcome(unit, "data", "", list(values[:count]), latency_ms=health.last_latency_ms)

    def _failed(
        self, unit: int, err: ModbusRequestError, health: DeviceHealth, request: ReadRequest
    ) -> Outcome:
        if err.kind == "exception" and err.code is not None:
            gateway = err.code in GATEWAY_EXCEPTIONS and self.transport.kind == "tcp"
            return Outcome(
                unit,
                "gateway" if gateway else "exception",
                describe_exception(err.code),
                code=err.code,
                latency_ms=health.last_latency_ms,
            )
        heard = bytes(self._heard)
        if err.kind == "connection" and not heard:
            return Outcome(unit, "connection", str(err))
        if err.kind in ("malformed", "connection") or health.crc_errors:
            if self.transport.kind == "tcp" or not heard:
                return Outcome(unit, "garbled", str(err), received=heard)
            detail = describe_rtu_answer(heard, unit=unit, function=_FUNCTIONS[request.table])
            found = find_rtu_frame(heard)
            other = found[1][0] if found is not None and found[1][0] != unit else None
            return Outcome(unit, "garbled", detail, received=heard, other_unit=other)
        return Outcome(unit, "silent", f"no answer within {self.timeout:g}s")

    def close(self) -> None:
        self._close()
