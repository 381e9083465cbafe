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

from drivers.base import DeviceHealth, DevicePlan, DriverPlan, ReadingSink
from drivers.core.backoff import backoff_delay
from drivers.core.model import Quality, Reading
from drivers.modbus.decode import Table, Value
from drivers.modbus.diagnose import describe_tcp_answer
from drivers.modbus.exceptions import exception_name
from drivers.modbus.plan import ReadRequest, decode_response, plan_reads
from drivers.modbus.rfc2217 import Rfc2217Client, opening_budget, rfc2217_client
from drivers.modbus.timing import bus_estimate, poll_line_time, rtu_response_bytes
from drivers.serial_port import is_rfc2217, line_rate

log = logging.getLogger("drivers.modbus")

ILLEGAL_DATA_ADDRESS = 2
HALF_OPEN_AFTER = 2  # consecutive unanswered requests before a TCP connection is replaced


class ModbusRequestError(Exception):
    """One request failed; `kind` is 'timeout', 'connection', 'exception' or 'malformed'
    (an answer that breaks the protocol: wrong length, ids or function code)."""

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
    # Requests failing while the device otherwise answers: (table, address) -> why.
    failing: dict[tuple[Table, int], str] = field(default_factory=dict)


AnswerHook = Callable[[ModbusDevice, ReadRequest, list[int], float], None]
"""Called with every answer that carried values: the device, the request, the raw
registers (or bits) as read, and the latency in milliseconds (`ModbusEndpoint.on_answer`)."""


@dataclass(frozen=True, slots=True)
class Transport:
    """How to reach a line: 'tcp', 'rtu_over_tcp' (host, port) or 'rtu' (a serial port,
    or a serial device server's `rfc2217://host:port`)."""

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

    @property
    def character_time(self) -> float:
        """Seconds one byte takes on a serial line."""
        return 1 / line_rate(self.baudrate, self.bytesize, self.parity, self.stopbits)

    @property
    def on_device_server(self) -> bool:
        """Whether the line is an RTU bus on a serial device server (`rfc2217://`)."""
        return self.kind == "rtu" and is_rfc2217(self.serial_port)

    @property
    def networked(self) -> bool:
        """Whether the line is reached over the network (a connection that can go half-open)."""
        return self.kind != "rtu" or self.on_device_server

    def connect_timeout(self, answer_timeout: float) -> float:
        """Seconds opening the line may take: an RFC 2217 port negotiates its settings first."""
        if self.on_device_server:
            return max(answer_timeout, opening_budget(self.serial_port))
        return answer_timeout

    def client(self, timeout: float, trace: Callable[[bool, bytes], bytes]) -> ModbusBaseClient:
        if self.on_device_server:
            return rfc2217_client(
                self.serial_port,
                baudrate=self.baudrate,
                bytesize=self.bytesize,
                parity=self.parity,
                stopbits=self.stopbits,
                timeout=timeout,
                trace=trace,
            )
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


class _MalformedAnswer(Exception):
    """pymodbus could not make a response of the bytes that arrived."""


class ModbusEndpoint:
    """All devices behind one line (a TCP host:port or a serial bus), sharing one connection.

    One request is on the wire at a time. On a serial bus this is the whole point:
    a dead slave is backed off so that it costs the others at most one timeout per
    back-off period, not one every cycle.

    Nothing a device sends can raise out of here or make asyncio print a traceback:
    pymodbus' frame handling runs behind a guard (`_guard_frames`), and every answer
    is checked against its request (function code, length) before it is decoded.
    """

    def __init__(self, transport: Transport, devices: Sequence[ModbusDevice], sink: ReadingSink):
        self.transport = transport
        self.name = f"modbus_{transport.kind} {transport}"
        self.devices = list(devices)
        for device in self.devices:
            device.health.log = log  # state changes are logged as this driver's
        self._sink = sink
        self._client: ModbusBaseClient | None = None
        self._last_io = 0.0  # monotonic time the line last carried a response or timed out
        self._received = bytearray()  # bytes received since the current request was sent
        self._received_total = 0
        self._silent_requests = 0  # consecutive requests on this connection without an answer
        self._silent_units: set[int] = set()  # the units those requests were for
        # A dead slave on a bus behind a server is not a dead connection: silence counts
        # as one only when it spans two units (or the line's only unit).
        self._half_open_units = min(2, len({d.unit for d in self.devices}))
        # Sees every answer's raw values before decoding (`edge-gateway check`); None in
        # the daemon, where it costs one attribute test per request.
        self.on_answer: AnswerHook | None = None

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self._received_total += len(data)
            if len(self._received) < _KEEP_RECEIVED:
                self._received += data[: _KEEP_RECEIVED - len(self._received)]
        return data

    def health(self) -> list[DeviceHealth]:
        return [d.health for d in self.devices]

    def plan(self) -> DriverPlan:
        """Each device's read plan; on a serial bus, the line time its polls need."""
        serial = self.transport.kind == "rtu"
        devices = []
        for device in self.devices:
            points = sum(len(r.points) for r in device.requests)
            requests = len(device.requests)
            line_time = (
                poll_line_time(
                    device.requests,
                    self.transport.character_time,
                    self.transport.inter_frame_delay,
                )
                if serial
                else None
            )
            summary = (
                f"{device.name}: {points} point(s) in {requests} request(s) "
                f"every {device.interval:g}s ({device.health.address})"
            )
            devices.append(DevicePlan(device.name, summary, points, requests, line_time))
        if not serial:
            return DriverPlan(tuple(devices))
        polls = [
            (plan.name, device.interval, plan.line_time or 0.0)
            for plan, device in zip(devices, self.devices, strict=True)
        ]
        bus = bus_estimate(self.transport.serial_port, self.transport.baudrate, polls)
        return DriverPlan(tuple(devices), bus)

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
        """Read every request of one device once; True when it answered (on schedule next)."""
        readings: list[Reading] = []
        usable = False  # some request gave values
        answered = False  # the device said something that was not garbage
        failed: list[tuple[ReadRequest, ModbusRequestError]] = []
        pending = list(device.requests)
        while pending:
            request = pending.pop(0)
            try:
                values = await self._read_with_retries(device, request)
                decoded = self._decode(device, request, values)
            except ModbusRequestError as err:
                if err.kind == "connection" or (err.kind == "timeout" and not usable):
                    failed.append((request, err))
                    break  # the device (or the line) is gone: the rest would fail too
                if err.kind == "exception":
                    answered = True  # the device answered, but refused this request
                    if err.code == ILLEGAL_DATA_ADDRESS and len(request.points) > 1:
                        pending[:0] = self._split(device, request)
                        continue
                failed.append((request, err))
                continue
            usable = answered = True
            ts_ms = time.time_ns() // 1_000_000
            readings.extend(Reading(device.name, point, ts_ms, value) for point, value in decoded)
            self._request_recovered(device, request)
        if readings:
            device.health.readings += len(readings)
            self._sink(readings)
        if usable or answered:
            device.failures = 0
            for failed_request, why in failed:
                self._request_failed(device, failed_request, why)
            if device.failing:
                device.health.set_state("degraded", next(iter(device.failing.values())))
            else:
                device.health.set_state(
                    "online",
                    action=f"{len(device.requests)} request(s) per poll every {device.interval:g}s",
                )
            return True
        self._went_offline(device, failed)
        return False

    def _decode(
        self, device: ModbusDevice, request: ReadRequest, values: list[int]
    ) -> list[tuple[str, Value]]:
        try:
            return decode_response(request, values)
        except ValueError as err:  # fewer values than asked: the answer is short
            device.health.malformed += 1
            raise ModbusRequestError("malformed", f"malformed answer: {err}") from err

    async def _read_with_retries(self, device: ModbusDevice, request: ReadRequest) -> list[int]:
        attempt = 0
        while True:
            try:
                return await self._read(device, request)
            except ModbusRequestError as err:
                if err.kind in ("exception", "malformed") or attempt >= device.retries:
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
        self._received.clear()
        self._received_total = 0
        started = time.perf_counter()
        try:
            async with asyncio.timeout(device.timeout):
                response = await getattr(client, _READERS[request.table])(
                    request.address, count=request.count, device_id=device.unit
                )
        except TimeoutError as err:
            self._silent_requests += 1
            self._silent_units.add(device.unit)
            received = self._received_total
            if (
                self._silent_requests >= HALF_OPEN_AFTER
                and len(self._silent_units) >= self._half_open_units
                and self.transport.networked
            ):
                # Nothing usable came back on this connection for several requests, to
                # more than one unit: it may be half-open (NAT state lost, a hung device
                # server). Start afresh.
                self._close()
            if received:  # bytes came back, but no answer to this request
                raise self._garbled(device, request, client) from err
            health.timeouts += 1
            raise ModbusRequestError("timeout", f"no answer within {device.timeout:g}s") from err
        except _MalformedAnswer as err:
            self._close()  # whatever else is in flight on this connection is suspect
            raise self._garbled(device, request, client, str(err)) from err
        except ModbusException as err:
            health.errors += 1
            self._close()  # the connection state is unknown: start afresh next time
            raise ModbusRequestError("connection", f"connection error: {err}") from err
        finally:
            self._last_io = time.monotonic()
        self._silent_requests = 0
        self._silent_units.clear()
        if self.transport.kind != "tcp" and len(self._received) > _rtu_response_size(
            request, response
        ):
            health.framing_errors += 1  # noise around the answer; pymodbus resynchronised
        self._received.clear()
        latency_ms = round((time.perf_counter() - started) * 1000, 2)
        health.last_latency_ms = latency_ms
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            health.modbus_exceptions[code] = health.modbus_exceptions.get(code, 0) + 1
            raise ModbusRequestError(
                "exception",
                f"Modbus exception {code} ({exception_name(code)})",
                code,
            )
        expected = _FUNCTION_CODES[request.table]
        if response.function_code != expected:
            health.malformed += 1
            raise ModbusRequestError(
                "malformed",
                f"malformed answer: function code {response.function_code} in answer to "
                f"function {expected}",
            )
        health.responses += 1
        values = list(response.bits if request.table.is_bit_table else response.registers)
        if self.on_answer is not None:
            self.on_answer(device, request, values, latency_ms)
        return values

    def _garbled(
        self,
        device: ModbusDevice,
        request: ReadRequest,
        client: ModbusBaseClient,
        problem: str = "",
    ) -> ModbusRequestError:
        """Bytes came back, but no answer: a protocol violation (TCP) or line damage (RTU)."""
        data = bytes(self._received)
        received = max(self._received_total, len(data))
        self._received.clear()
        if self.transport.kind == "tcp":
            device.health.malformed += 1
            why = describe_tcp_answer(
                data,
                transaction_id=int(getattr(client.ctx, "request_transaction_id", 0) or 0),
                unit=device.unit,
                function=_FUNCTION_CODES[request.table],
            )
            return ModbusRequestError("malformed", f"malformed answer: {why}")
        device.health.crc_errors += 1
        detail = f": {problem}" if problem else ""
        return ModbusRequestError(
            "timeout", f"garbled answer ({received} bytes, bad CRC or framing{detail})"
        )

    async def _connected_client(self, device: ModbusDevice) -> ModbusBaseClient:
        if self._client is not None and self._client.connected:
            return self._client
        self._close()
        client = self.transport.client(device.timeout, self._trace)
        _guard_frames(client)
        reason = ""
        try:
            async with asyncio.timeout(self.transport.connect_timeout(device.timeout)):
                connected = await client.connect()
        except TimeoutError:
            connected, reason = False, ": no answer"
        except Exception as err:  # serial ports fail with termios/OS errors of every kind
            connected, reason = False, f": {err}"
        if not connected:
            if not reason and isinstance(client, Rfc2217Client) and client.open_error:
                reason = f": {client.open_error}"
            client.close()
            device.health.errors += 1
            raise ModbusRequestError("connection", f"cannot open {self.transport}{reason}")
        self._client = client
        return client

    def _close(self) -> None:
        self._silent_requests = 0
        self._silent_units.clear()
        if self._client is not None:
            self._client.close()
            self._client = None

    def _went_offline(
        self, device: ModbusDevice, failed: list[tuple[ReadRequest, ModbusRequestError]]
    ) -> None:
        """No usable answer at all: back off; each point's value becomes unknown, once."""
        device.failures += 1
        device.failing.clear()
        error = failed[-1][1] if failed else None
        talking = bool(failed) and all(err.kind == "malformed" for _, err in failed)
        reason = str(error) if error is not None else "no answer"
        if talking:
            reason = f"every answer is malformed, e.g. {reason}"
        changed = device.health.set_state(
            "offline", reason, action=f"retrying with back-off up to {device.backoff_max:g}s"
        )
        if changed:
            # COMM_ERROR when it talks nonsense, DEVICE_OFFLINE when it is silent.
            quality = Quality.COMM_ERROR if talking else Quality.DEVICE_OFFLINE
            ts_ms = time.time_ns() // 1_000_000
            self._sink(
                [
                    Reading(device.name, point.name, ts_ms, None, quality)
                    for request in device.requests
                    for point, _ in request.points
                ]
            )

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
            "device %r (%s) has no registers in part of %s; reading its %d points there "
            "one by one from now on",
            device.name,
            device.health.address,
            _span(request),
            len(singles),
        )
        return singles

    def _request_failed(
        self, device: ModbusDevice, request: ReadRequest, err: ModbusRequestError
    ) -> None:
        """A request of a device that otherwise answers failed: log and flag it once."""
        key = (request.table, request.address)
        if device.failing.get(key) is not None:
            device.failing[key] = str(err)
            return
        device.failing[key] = str(err)
        names = ", ".join(p.name for p, _ in request.points)
        log.warning(
            "device %r (%s) cannot read %s (%s): %s; those points are reported "
            "comm_error until it can",
            device.name,
            device.health.address,
            _span(request),
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

    @staticmethod
    def _request_recovered(device: ModbusDevice, request: ReadRequest) -> None:
        if device.failing.pop((request.table, request.address), None) is not None:
            log.info(
                "device %r (%s) reads %s (%s) again",
                device.name,
                device.health.address,
                _span(request),
                ", ".join(p.name for p, _ in request.points),
            )


def _span(request: ReadRequest) -> str:
    last = request.address + request.count - 1
    return f"{request.table} {request.address}..{last}"


def _guard_frames(client: ModbusBaseClient) -> None:
    """Keep a malformed frame inside the request that received it.

    pymodbus decodes frames inside `data_received`; a frame it cannot decode raises
    there, and asyncio then logs "Fatal error: protocol.data_received() call failed"
    with a traceback and closes the connection, on every answer of a broken device.
    The guard drops the bytes and fails the waiting request instead, so the driver
    counts it as a malformed answer and logs it once.
    """
    manager = client.ctx
    handle = manager.callback_data

    def guarded(data: bytes, addr: tuple[str, int] | None = None) -> int:
        try:
            used: int = handle(data, addr)
        except Exception as err:
            future = manager.response_future
            if not future.done():
                future.set_exception(_MalformedAnswer(str(err) or type(err).__name__))
            return len(data)
        return used

    manager.callback_data = guarded  # type: ignore[method-assign]


_KEEP_RECEIVED = 512  # bytes of an answer kept to say what was wrong with it


def _rtu_response_size(request: ReadRequest, response: object) -> int:
    """Bytes of the RTU frame answering `request` (an exception answer has 5)."""
    if getattr(response, "isError", lambda: False)():
        return 5
    return rtu_response_bytes(request)


_READERS = {
    Table.COIL: "read_coils",
    Table.DISCRETE_INPUT: "read_discrete_inputs",
    Table.HOLDING: "read_holding_registers",
    Table.INPUT: "read_input_registers",
}
_FUNCTION_CODES = {Table.COIL: 1, Table.DISCRETE_INPUT: 2, Table.HOLDING: 3, Table.INPUT: 4}
