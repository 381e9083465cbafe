"""Simulated Modbus devices: a pymodbus server whose register values we control.

Used by the demo, the tests and hardware-in-loop rigs. One `ModbusSimServer`
listens on one TCP port and answers for any number of `SimulatedDevice`s (unit
ids), like a serial device server or a PLC with several units behind it.

Each device holds four sparse tables. A value can be
- static: set once with `set_value`;
- live: computed from the time at every read (`set_signal`), e.g. a sine wave;
- a read counter (`add_read_counter`): a uint32 that goes up by one every time a
  request covering it is served, so a test can prove that no poll went missing;
and a device can be made `silent` (never answers: a dead slave) at any moment, or
given a `WireFault` (drivers/sim/faults.py) for all its answers (`fault`) or for the
requests that cover one of its points (`fault_points`): an exception with any code,
late answers, a broken CRC or transaction id, garbage, a dropped connection, a flood.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer, ModbusTcpServer

from drivers.modbus.decode import ByteOrder, DataType, Table, encode_value, register_count
from drivers.sim.faults import ANSWER_FAULTS, WireFault, broken_answer

Signal = Callable[[float], float | int | bool]

_READ_TABLES = {1: Table.COIL, 2: Table.DISCRETE_INPUT, 3: Table.HOLDING, 4: Table.INPUT}
_WRITE_TABLES = {5: Table.COIL, 15: Table.COIL, 6: Table.HOLDING, 16: Table.HOLDING}


@dataclass(slots=True)
class _Live:
    table: Table
    address: int
    dtype: DataType
    order: ByteOrder
    signal: Signal
    length: int | None = None
    bit: int | None = None


@dataclass
class SimulatedDevice:
    """One simulated Modbus unit."""

    unit: int
    tables: dict[Table, dict[int, int]] = field(default_factory=lambda: {t: {} for t in Table})
    silent: bool = False
    reads: int = 0
    fault: WireFault | None = None
    """A fault of every answer (drivers/sim/faults.py); before the point faults."""
    fault_points: dict[str, tuple[Table, range, WireFault]] = field(default_factory=dict)
    """Faults of the requests that cover a point: name -> (table, its addresses, fault)."""
    _live: list[_Live] = field(default_factory=list)
    _counters: list[tuple[Table, int]] = field(default_factory=list)

    def set_value(
        self,
        table: Table,
        address: int,
        value: float | int | bool | str,
        dtype: DataType = DataType.UINT16,
        order: ByteOrder = ByteOrder.ABCD,
        *,
        length: int | None = None,
        bit: int | None = None,
    ) -> None:
        """Store a value at an address, encoded as a real device would hold it (a `bit`
        point changes its bit alone)."""
        if table.is_bit_table:
            self.tables[table][address] = int(bool(value))
            return
        if dtype is DataType.BIT and bit is not None:
            cells = self.tables[table]
            mask = 1 << bit
            cells[address] = (cells.get(address, 0) & ~mask) | (mask if value else 0)
            return
        words = encode_value(value, dtype, order, length=length)
        for i, word in enumerate(words):
            self.tables[table][address + i] = word

    def set_signal(
        self,
        table: Table,
        address: int,
        signal: Signal,
        dtype: DataType = DataType.FLOAT32,
        order: ByteOrder = ByteOrder.ABCD,
        *,
        length: int | None = None,
        bit: int | None = None,
        initial: float | int | bool | str | None = None,
    ) -> None:
        """Compute the value from the time (unix seconds) at every read; until the first
        read the address holds `initial` (default: the signal's value now)."""
        self._live.append(_Live(table, address, dtype, order, signal, length, bit))
        first = signal(time.time()) if initial is None else initial
        self.set_value(table, address, first, dtype, order, length=length, bit=bit)

    def fault_for(self, table: Table, address: int, count: int) -> WireFault | None:
        """The fault of a request for `count` addresses from `address` of `table`."""
        if self.fault is not None:
            return self.fault
        span = range(address, address + count)
        for point_table, addresses, fault in self.fault_points.values():
            if point_table is table and addresses.start < span.stop and span.start < addresses.stop:
                return fault
        return None

    def add_read_counter(self, table: Table, address: int) -> None:
        """A uint32 (ABCD) that counts the reads covering it: 1 for the first, 2 next..."""
        self._counters.append((table, address))
        self.set_value(table, address, 0, DataType.UINT32)

    def fill(self, table: Table, start: int, count: int, value: int = 0) -> None:
        """Make a range of addresses readable (unset addresses answer 'illegal address')."""
        for address in range(start, start + count):
            self.tables[table].setdefault(address, value)

    def read(self, table: Table, address: int, count: int) -> list[int] | ExcCodes:
        cells = self.tables[table]
        span = range(address, address + count)
        if any(a not in cells for a in span):
            return ExcCodes.ILLEGAL_ADDRESS
        self.reads += 1
        now = time.time()
        for live in self._live:
            if live.table is table and _overlaps(live.address, live.dtype, span, live.length):
                value = live.signal(now)
                self.set_value(
                    table,
                    live.address,
                    value,
                    live.dtype,
                    live.order,
                    length=live.length,
                    bit=live.bit,
                )
        for c_table, c_address in self._counters:
            if c_table is table and _overlaps(c_address, DataType.UINT32, span):
                current = (cells[c_address] << 16) | cells[c_address + 1]
                self.set_value(table, c_address, (current + 1) & 0xFFFFFFFF, DataType.UINT32)
        return [cells[a] for a in span]

    def write(self, table: Table, address: int, values: Sequence[int | bool]) -> ExcCodes | None:
        cells = self.tables[table]
        if any(a not in cells for a in range(address, address + len(values))):
            return ExcCodes.ILLEGAL_ADDRESS
        for i, v in enumerate(values):
            cells[address + i] = int(v)
        return None


def _overlaps(address: int, dtype: DataType, span: range, length: int | None = None) -> bool:
    end = address + register_count(dtype, length)
    return address < span.stop and span.start < end


class _SimContext(ModbusServerContext):
    """pymodbus' server datastore contract, served from our SimulatedDevices."""

    def __init__(self, devices: Iterable[SimulatedDevice]) -> None:  # no super(): own storage
        self.devices = {d.unit: d for d in devices}
        self.old_simulator = True  # tells the server to call this object directly
        self.simdevices = []
        self.pending: dict[int, WireFault] = {}  # unit -> the fault of its next answer frame

    def _device(self, device_id: int) -> SimulatedDevice:
        device = self.devices.get(device_id)
        if device is None or device.silent:
            raise NoSuchIdException(f"no unit {device_id}")  # server stays silent: a timeout
        return device

    async def _faulty(
        self, device: SimulatedDevice, table: Table, address: int, count: int
    ) -> bool:
        """Carry out the fault of this request up to the answer; True: answer an exception
        (its code is set on the wire)."""
        fault = device.fault_for(table, address, count)
        if fault is None:
            return False
        if fault.kind == "silent":
            raise NoSuchIdException(f"unit {device.unit} is silent")
        if fault.kind == "delay":
            await asyncio.sleep(fault.millis / 1000)
        elif fault.kind in ANSWER_FAULTS:
            self.pending[device.unit] = fault
        return fault.kind == "exception"

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        device = self._device(device_id)
        table = _READ_TABLES.get(func_code) or _WRITE_TABLES.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if await self._faulty(device, table, address, count):
            return ExcCodes.DEVICE_FAILURE
        values = device.read(table, address, count)
        if isinstance(values, ExcCodes) or not table.is_bit_table:
            return values
        return [bool(v) for v in values]

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: Sequence[int | bool]
    ) -> ExcCodes | None:
        device = self._device(device_id)
        table = _WRITE_TABLES.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if await self._faulty(device, table, address, len(values)):
            return ExcCodes.DEVICE_FAILURE
        return device.write(table, address, values)

    def device_ids(self) -> list[int]:
        return list(self.devices)


_FLOOD_CHUNK = 4096
_FLOOD_BACKLOG = 16  # chunks (serial) or 64 KiB (TCP) waiting in a connection at most


class ModbusSimServer:
    """A Modbus server answering for several simulated units.

    By default Modbus TCP on a loopback port; `framer="rtu"` speaks RTU frames over
    TCP (a serial device server); `serial_port=PATH` makes it an RTU bus on a serial
    line (e.g. one end of a `NullModem`, or a real port with its line settings).

    The devices' faults act on the wire here: an answer is broken as its unit's fault
    says, a `drop` closes the connection that asked, and while a unit floods, junk goes
    out on every connection (on the bus) as fast as it is taken.
    """

    def __init__(
        self,
        devices: Iterable[SimulatedDevice],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        framer: Literal["socket", "rtu"] = "socket",
        serial_port: str | None = None,
        baudrate: int = 19200,
        bytesize: int = 8,
        parity: str = "N",
        stopbits: int = 1,
        rng: random.Random | None = None,
    ):
        self.context = _SimContext(devices)
        self.host = host
        self.port = port
        self.framer = FramerType.RTU if framer == "rtu" or serial_port else FramerType.SOCKET
        self.serial_port = serial_port
        self.baudrate = baudrate
        self.line = (bytesize, parity, stopbits)
        self.rng = rng or random.Random()
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._flood: asyncio.Task[None] | None = None
        self.connections = 0  # TCP connections accepted so far

    def _trace_connect(self, connected: bool) -> None:
        if connected:
            self.connections += 1

    @property
    def devices(self) -> dict[int, SimulatedDevice]:
        return self.context.devices

    async def start(self) -> None:
        server: ModbusTcpServer | ModbusSerialServer
        if self.serial_port is not None:
            bytesize, parity, stopbits = self.line
            server = ModbusSerialServer(
                self.context,
                framer=self.framer,
                port=self.serial_port,
                baudrate=self.baudrate,
                bytesize=bytesize,
                parity=parity,
                stopbits=stopbits,
                ignore_missing_devices=True,
                trace_connect=self._trace_connect,
            )
        else:
            if self.port == 0:
                self.port = free_tcp_port(self.host)
            server = ModbusTcpServer(
                self.context,
                framer=self.framer,
                address=(self.host, self.port),
                ignore_missing_devices=True,
                trace_connect=self._trace_connect,
            )
        self._break_answers_of(server)
        await server.serve_forever(background=True)
        self._server = server
        self._flood = asyncio.create_task(self._flood_while_asked(), name="sim-modbus-flood")

    def _break_answers_of(self, server: ModbusTcpServer | ModbusSerialServer) -> None:
        """Every connection's answers pass `_answer` on their way out."""
        make: Callable[[], Any] = server.callback_new_connection

        def new_connection() -> Any:
            handler = make()
            handler.trace_packet = lambda sending, data: (
                self._answer(handler, data) if sending else data
            )
            return handler

        server.callback_new_connection = new_connection  # type: ignore[method-assign]

    def _answer(self, handler: Any, frame: bytes) -> bytes:
        rtu = self.framer is FramerType.RTU
        unit = frame[0] if rtu else frame[6] if len(frame) > 6 else -1
        fault = self.context.pending.pop(unit, None)
        if fault is None:
            return frame
        if fault.kind == "drop":
            handler.close()
        return broken_answer(frame, fault, rtu=rtu, rng=self.rng)

    async def _flood_while_asked(self) -> None:
        junk = b""
        while True:
            if not any(
                d.fault is not None and d.fault.kind == "flood" for d in self.devices.values()
            ):
                await asyncio.sleep(0.05)
                continue
            junk = junk or self.rng.randbytes(_FLOOD_CHUNK)
            server = self._server
            backlog = _FLOOD_BACKLOG if self.serial_port else _FLOOD_BACKLOG * _FLOOD_CHUNK
            for handler in list(server.active_connections.values()) if server else ():
                transport: Any = handler.transport
                if transport is None or transport.is_closing():
                    continue
                if transport.get_write_buffer_size() < backlog:
                    transport.write(junk)
            await asyncio.sleep(0.001)

    async def stop(self) -> None:
        if self._flood is not None:
            self._flood.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flood
            self._flood = None
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None

    async def __aenter__(self) -> ModbusSimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on host."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def demo_devices() -> list[SimulatedDevice]:
    """The demo's field: a pump station (unit 1) and a flood gauge (unit 2)."""
    pump = SimulatedDevice(unit=1)
    pump.set_signal(Table.HOLDING, 0, lambda t: 6.0 + 0.8 * math.sin(t / 7.0))  # bar
    pump.set_signal(Table.HOLDING, 2, lambda t: 42.0 + 5 * math.sin(t / 11.0), order=ByteOrder.CDAB)
    pump.add_read_counter(Table.HOLDING, 4)  # run-hours style counter
    pump.set_signal(Table.INPUT, 0, lambda t: int(215 + 10 * math.sin(t / 5.0)), DataType.INT16)
    pump.set_value(Table.COIL, 0, True)  # pump running
    pump.set_value(Table.DISCRETE_INPUT, 0, False)  # door contact
    gauge = SimulatedDevice(unit=2)
    gauge.set_signal(Table.INPUT, 10, lambda t: 1.25 + 0.05 * math.sin(t / 13.0))  # metres
    gauge.set_value(Table.HOLDING, 100, "FG-204", DataType.STRING, length=4)
    return [pump, gauge]


def demo_rtu_slave() -> SimulatedDevice:
    """The demo's RS-485 bus: a flow meter (unit 11)."""
    meter = SimulatedDevice(unit=11)
    meter.set_signal(Table.INPUT, 0, lambda t: 12.5 + 2 * math.sin(t / 9.0))  # m3/h
    meter.add_read_counter(Table.INPUT, 2)  # stands in for a totaliser
    return meter
