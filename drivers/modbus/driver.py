"""Modbus polling (TCP, RTU over TCP, RTU on a serial bus): the thin I/O shell.

One `ModbusEndpoint` owns one line — a TCP connection or a serial port — and polls
every device (unit id) configured on it, one request on the wire at a time, each
device on its own period. A device that fails a whole poll (every retry) is marked
offline once, logged once, and retried with jittered exponential back-off;
the other devices on the endpoint keep their schedule.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient, ModbusBaseClient
from pymodbus.exceptions import ModbusException

from drivers.base import DeviceHealth, ReadingSink, backoff_delay
from drivers.modbus.decode import Table
from drivers.modbus.plan import ReadRequest, decode_response, plan_reads
from gateway.model import Quality, Reading

log = logging.getLogger("drivers.modbus")

ILLEGAL_DATA_ADDRESS = 2
HALF_OPEN_AFTER = 2  # consecutive unanswered requests before a TCP connection is replaced


class ModbusRequestError(Exception):
    """One request failed; `kind` is 'timeout', 'connection', 'exception' or 'malformed'."""

    def __init__(self, kind: str, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code


@dataclass(slots=True)
class ModbusDevice:
    """A compiled device: its read plan and schedule, built once at start-up."""

    name: str
    unit: int
    requests: list[ReadRequest]
    interval: float
    timeout: float
    retries: int
    backoff_max: float
    health: DeviceHealth
    failures: int = 0
    failed_requests: set[tuple[Table, int]] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Transport:
    """How to reach a line: 'tcp', 'rtu_over_tcp' (host, port) or 'rtu' (serial port)."""

    kind: Literal["tcp", "rtu_over_tcp", "rtu"]
    host: str = ""
    port: int = 0
    serial_port: str = ""
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1
    inter_frame_delay: float = 0.0

    def __str__(self) -> str:
        if self.kind == "rtu":
            return (
                f"{self.serial_port} ({self.baudrate} {self.bytesize}{self.parity}{self.stopbits})"
            )
        return f"{self.host}:{self.port}"

    def client(self, timeout: float, trace: Callable[[bool, bytes], bytes]) -> ModbusBaseClient:
        if self.kind == "rtu":
            return AsyncModbusSerialClient(
                self.serial_port,
                framer=FramerType.RTU,
                baudrate=self.baudrate,
                bytesize=self.bytesize,
                parity=self.parity,
                stopbits=self.stopbits,
                timeout=timeout,
                retries=0,
                reconnect_delay=0,
                trace_packet=trace,
            )
        framer = FramerType.RTU if self.kind == "rtu_over_tcp" else FramerType.SOCKET
        return AsyncModbusTcpClient(
            self.host,
            port=self.port,
            framer=framer,
            timeout=timeout,
            retries=0,
            reconnect_delay=0,
            trace_packet=trace,
        )


def default_inter_frame_delay(baudrate: int) -> float:
    """Modbus RTU: 3.5 character times of silence (11 bits each), at least 1.75 ms."""
    return max(0.00175, 3.5 * 11 / baudrate)


class ModbusEndpoint:
    """All devices behind one line (a TCP host:port or a serial bus), sharing one connection.

    One request is on the wire at a time. On a serial bus this is the whole point:
    a dead slave is backed off so that it costs the others at most one timeout per
    back-off period, not one every cycle.
    """

    def __init__(self, transport: Transport, devices: Sequence[ModbusDevice], sink: ReadingSink):
        self.transport = transport
        self.name = f"modbus_{transport.kind} {transport}"
        self.devices = list(devices)
        self._sink = sink
        self._client: ModbusBaseClient | None = None
        self._last_io = 0.0  # monotonic time the line last carried a response or timed out
        self._received = 0  # bytes received since the current request was sent
        self._silent_requests = 0  # consecutive requests on this connection without an answer

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self._received += len(data)
        return data

    def health(self) -> list[DeviceHealth]:
        return [d.health for d in self.devices]

    async def run(self) -> None:
        # Stagger first polls across the shortest period so devices are not hit at once.
        now = time.monotonic()
        spread = min(d.interval for d in self.devices) / max(1, len(self.devices))
        queue = [(now + i * spread, i) for i in range(len(self.devices))]
        heapq.heapify(queue)
        try:
            while True:
                due, index = heapq.heappop(queue)
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                device = self.devices[index]
                ok = await self._poll(device)
                heapq.heappush(queue, (self._next_due(device, due, ok), index))
        finally:
            self._close()

    @staticmethod
    def _next_due(device: ModbusDevice, due: float, ok: bool) -> float:
        now = time.monotonic()
        if not ok:
            return now + backoff_delay(device.failures, device.interval, device.backoff_max)
        nxt = due + device.interval
        # Fell behind by a whole period (slow bus, long outage): skip, do not burst.
        return nxt if nxt > now else now + device.interval

    async def _poll(self, device: ModbusDevice) -> bool:
        """Read every request of one device; True when the device answered."""
        readings: list[Reading] = []
        answered = False
        error: ModbusRequestError | None = None
        pending = list(device.requests)
        while pending:
            request = pending.pop(0)
            try:
                values = await self._read_with_retries(device, request)
            except ModbusRequestError as err:
                error = err
                if err.kind == "connection" or (err.kind == "timeout" and not answered):
                    break  # the device (or the line) is gone: the rest would fail too
                if err.kind == "timeout":
                    # It answered earlier in this poll: some devices stay silent on ranges
                    # they do not have. Skip this request, keep reading the others.
                    self._log_refused_once(device, request, err)
                    continue
                answered = True  # the device answered, but refused this request
                if err.code == ILLEGAL_DATA_ADDRESS and len(request.points) > 1:
                    pending[:0] = self._split(device, request)
                else:
                    self._log_refused_once(device, request, err)
                continue
            answered = True
            device.failed_requests.discard((request.table, request.address))
            ts_ms = time.time_ns() // 1_000_000
            try:
                decoded = decode_response(request, values)
            except ValueError as err:
                device.health.errors += 1
                device.health.last_error = f"malformed response: {err}"
                continue
            readings.extend(Reading(device.name, point, ts_ms, value) for point, value in decoded)
        if readings:
            device.health.readings += len(readings)
            self._sink(readings)
        self._set_state(device, answered, error)
        return answered

    async def _read_with_retries(self, device: ModbusDevice, request: ReadRequest) -> list[int]:
        attempt = 0
        while True:
            try:
                return await self._read(device, request)
            except ModbusRequestError as err:
                if err.kind == "exception" or attempt >= device.retries:
                    raise
                attempt += 1

    async def _read(self, device: ModbusDevice, request: ReadRequest) -> list[int]:
        health = device.health
        client = await self._connected_client(device)
        silence = self._last_io + self.transport.inter_frame_delay - time.monotonic()
        if silence > 0:
            await asyncio.sleep(silence)
        health.requests += 1
        if self._received and self.transport.kind != "tcp":
            # Bytes arrived while no request was outstanding: line noise, a stray
            # talker, or an answer that came after its timeout.
            health.framing_errors += 1
        self._received = 0
        started = time.perf_counter()
        try:
            async with asyncio.timeout(device.timeout):
                response = await getattr(client, _READERS[request.table])(
                    request.address, count=request.count, device_id=device.unit
                )
        except TimeoutError as err:
            self._silent_requests += 1
            if self._silent_requests >= HALF_OPEN_AFTER and self.transport.kind != "rtu":
                # Nothing came back on this connection for several requests: it may be
                # half-open (NAT state lost, a hung device server). Start afresh.
                self._close()
            if self._received:  # bytes came back, but no valid frame: CRC or framing damage
                self._received = 0
                health.crc_errors += 1
                raise ModbusRequestError(
                    "timeout", f"garbled answer ({self._received} bytes, bad CRC or framing)"
                ) from err
            health.timeouts += 1
            raise ModbusRequestError("timeout", f"no answer within {device.timeout:g}s") from err
        except ModbusException as err:
            health.errors += 1
            self._close()  # the connection state is unknown: start afresh next time
            raise ModbusRequestError("connection", f"connection error: {err}") from err
        finally:
            self._last_io = time.monotonic()
        self._silent_requests = 0
        if self.transport.kind != "tcp" and self._received > _rtu_response_size(request, response):
            health.framing_errors += 1  # noise around the answer; pymodbus resynchronised
        self._received = 0
        health.last_latency_ms = round((time.perf_counter() - started) * 1000, 2)
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            health.modbus_exceptions[code] = health.modbus_exceptions.get(code, 0) + 1
            raise ModbusRequestError(
                "exception",
                f"Modbus exception {code} ({_EXCEPTION_NAMES.get(code, 'unknown')})",
                code,
            )
        health.responses += 1
        values = response.bits if request.table in _BIT_TABLES else response.registers
        return list(values)

    async def _connected_client(self, device: ModbusDevice) -> ModbusBaseClient:
        if self._client is not None and self._client.connected:
            return self._client
        self._close()
        client = self.transport.client(device.timeout, self._trace)
        reason = ""
        try:
            async with asyncio.timeout(device.timeout):
                connected = await client.connect()
        except TimeoutError:
            connected, reason = False, ": no answer"
        except Exception as err:  # serial ports fail with termios/OS errors of every kind
            connected, reason = False, f": {err}"
        if not connected:
            client.close()
            device.health.errors += 1
            raise ModbusRequestError("connection", f"cannot open {self.transport}{reason}")
        self._client = client
        return client

    def _close(self) -> None:
        self._silent_requests = 0
        if self._client is not None:
            self._client.close()
            self._client = None

    def _set_state(
        self, device: ModbusDevice, answered: bool, error: ModbusRequestError | None
    ) -> None:
        health = device.health
        if error is not None:
            health.last_error = str(error)
        if answered:
            device.failures = 0
            if health.online is False:
                down = time.time() - (health.offline_since or time.time())
                log.info(
                    "device %r (%s) answers again after %.1fs offline",
                    device.name,
                    health.address,
                    down,
                )
            elif health.online is None:
                log.info(
                    "device %r (%s) is answering: %d request(s) per poll every %gs",
                    device.name,
                    health.address,
                    len(device.requests),
                    device.interval,
                )
            health.online = True
            health.offline_since = None
            return
        device.failures += 1
        if health.online is not False:
            health.offline_since = time.time()
            log.warning(
                "device %r (%s) is offline: %s; retrying with back-off up to %gs",
                device.name,
                health.address,
                error,
                device.backoff_max,
            )
            # The centre sees each point's value become unknown, once, with the reason.
            ts_ms = time.time_ns() // 1_000_000
            self._sink(
                [
                    Reading(device.name, point.name, ts_ms, None, Quality.DEVICE_OFFLINE)
                    for request in device.requests
                    for point, _ in request.points
                ]
            )
        health.online = False

    @staticmethod
    def _split(device: ModbusDevice, request: ReadRequest) -> list[ReadRequest]:
        """A merged read crossed addresses the device does not have: read point by point.

        Merging across gaps saves requests on most devices, but some map only the
        registers they use. The split replaces the merged request for good.
        """
        singles = [plan_reads([point])[0] for point, _ in request.points]
        index = device.requests.index(request)
        device.requests[index : index + 1] = singles
        log.info(
            "device %r (%s) has no registers in part of %s %d..%d; reading its %d points there "
            "one by one from now on",
            device.name,
            device.health.address,
            request.table,
            request.address,
            request.address + request.count - 1,
            len(singles),
        )
        return singles

    def _log_refused_once(
        self, device: ModbusDevice, request: ReadRequest, err: ModbusRequestError
    ) -> None:
        key = (request.table, request.address)
        if key in device.failed_requests:
            return
        device.failed_requests.add(key)
        names = ", ".join(p.name for p, _ in request.points)
        log.warning(
            "device %r (%s) cannot read %s %d..%d (%s): %s; those points are reported "
            "comm_error until it can",
            device.name,
            device.health.address,
            request.table,
            request.address,
            request.address + request.count - 1,
            names,
            err,
        )
        ts_ms = time.time_ns() // 1_000_000
        self._sink(
            [
                Reading(device.name, p.name, ts_ms, None, Quality.COMM_ERROR)
                for p, _ in request.points
            ]
        )


_BIT_TABLES = (Table.COIL, Table.DISCRETE_INPUT)


def _rtu_response_size(request: ReadRequest, response: object) -> int:
    """Bytes of the RTU frame answering `request`: id, function, count, data, CRC."""
    if getattr(response, "isError", lambda: False)():
        return 5
    if request.table in _BIT_TABLES:
        return 5 + (request.count + 7) // 8
    return 5 + 2 * request.count


_READERS = {
    Table.COIL: "read_coils",
    Table.DISCRETE_INPUT: "read_discrete_inputs",
    Table.HOLDING: "read_holding_registers",
    Table.INPUT: "read_input_registers",
}
_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
