"""Serving a simulator file: the servers, buses and instruments a `ScenarioConfig`
describes, running on the event loop, and what the control interface changes in them.

`Simulation(scenario).start()` starts every endpoint (drivers/sim/scenario.py: a TCP
port with its units, a bus with its slaves, an instrument's line), each from the
simulators of this package: `ModbusSimServer` for Modbus TCP, RTU over TCP and RTU
buses (a `NullModem` pair of pseudo-terminals, a real port, or an `Rfc2217Line`: a
serial device server on a TCP port), `LineInstrument` for line instruments.
Pseudo-terminals get their symlinks (`link`, or `link_dir/<bus or instrument name>`),
replaced when a stale one is there and removed at stop.

Every point's value comes from its `ValueSource`, sampled at each read (each frame)
with the seconds since start; `hold` pins it, `release` lets it go. Faults are set on
the device (`SimulatedDevice.fault`, `LineInstrument.fault`) or, for a Modbus point,
on the addresses the point occupies (`SimulatedDevice.fault_points`).

Starting fails with `SimulationError` (one sentence, the environment's fault: a TCP
port in use, a link path that is not a link, a serial port that cannot be opened)
after stopping whatever had started.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from drivers.modbus.config import ModbusPointConfig
from drivers.modbus.decode import DataType, Table, register_count
from drivers.serial_port import LineSettings, is_rfc2217, open_error
from drivers.sim.control import CommandError
from drivers.sim.faults import WireFault
from drivers.sim.modbus import ModbusSimServer, SimulatedDevice, free_tcp_port
from drivers.sim.modbus_profile import plausible_value, raw_value, typical_value
from drivers.sim.rfc2217_line import Rfc2217Line
from drivers.sim.scenario import (
    Endpoint,
    ScenarioConfig,
    SimDevice,
    SimLinePointConfig,
    SimModbusRtuDeviceConfig,
    SimSerialLineDeviceConfig,
    SimTcpDeviceConfig,
)
from drivers.sim.serial_line import LineInstrument
from drivers.sim.serial_link import NullModem, PtyPort, SerialDevicePort
from drivers.sim.values import Constant, Scalar, ValueConfig, ValueSource

__all__ = ["Simulation", "SimulationError"]


class SimulationError(Exception):
    """The simulator cannot serve here as asked; the message is one sentence."""


@dataclass
class SimPoint:
    """A point's value: its source, or what the control interface holds it at."""

    name: str
    source: ValueSource
    started: float
    text: bool = False  # a string point (the others hold numbers or true/false)
    held: Scalar | None = None
    last: Scalar | None = None

    def value(self, now: float) -> Scalar:
        """The value at unix time `now` (also kept as `last`, what was served)."""
        value = self.held if self.held is not None else self.source.sample(now - self.started)
        self.last = value
        return value


@dataclass
class ServedDevice:
    """One simulated device as the control interface sees it."""

    name: str
    protocol: str
    where: dict[str, Any]
    points: dict[str, SimPoint]
    modbus: SimulatedDevice | None = None
    instrument: LineInstrument | None = None
    has_checksum: bool = True
    spans: dict[str, tuple[Table, range]] = field(default_factory=dict)

    @property
    def fault(self) -> WireFault | None:
        if self.modbus is not None:
            return self.modbus.fault
        assert self.instrument is not None
        return self.instrument.fault

    @fault.setter
    def fault(self, fault: WireFault | None) -> None:
        if self.modbus is not None:
            self.modbus.fault = fault
        elif self.instrument is not None:
            self.instrument.fault = fault

    def point_fault(self, point: str) -> WireFault | None:
        held = self.modbus.fault_points.get(point) if self.modbus is not None else None
        return held[2] if held is not None else None


class Simulation:
    def __init__(
        self,
        scenario: ScenarioConfig,
        *,
        link_dir: Path | None = None,
        seed: int | None = None,
    ) -> None:
        self.scenario = scenario
        self.link_dir = link_dir
        chosen = seed if seed is not None else scenario.simulator.seed
        self.rng = random.Random(chosen)
        self.devices: dict[str, ServedDevice] = {}
        self.started = time.time()
        self._servers: list[ModbusSimServer] = []
        self._instruments: list[LineInstrument] = []
        self._modems: list[NullModem] = []
        self._device_servers: list[Rfc2217Line] = []
        self._links: list[tuple[Path, str]] = []

    # --- start and stop ----------------------------------------------------------------

    async def start(self) -> None:
        self.started = time.time()
        try:
            for endpoint in self.scenario.endpoints():
                if endpoint.kind == "serial_line":
                    await self._start_instrument(endpoint)
                elif endpoint.kind == "modbus_rtu":
                    await self._start_bus(endpoint)
                else:
                    await self._start_tcp(endpoint)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for instrument in self._instruments:
            await instrument.stop()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.stop()
        for modem in self._modems:
            modem.stop()
        for line in self._device_servers:
            with contextlib.suppress(Exception):
                await line.stop()
        for link, target in self._links:
            with contextlib.suppress(OSError):
                if str(link.readlink()) == target:
                    link.unlink()
        self._instruments, self._servers, self._modems, self._links = [], [], [], []
        self._device_servers = []

    async def __aenter__(self) -> Simulation:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _start_tcp(self, endpoint: Endpoint) -> None:
        first = endpoint.devices[0][1]
        assert isinstance(first, SimTcpDeviceConfig)
        port = first.port or free_tcp_port(first.host)
        where = {"host": first.host, "port": port}
        units = [self._modbus_unit(device, where) for _, device in endpoint.devices]
        _check_tcp_port(first.host, port)
        rtu = endpoint.kind == "modbus_rtu_over_tcp"
        server = ModbusSimServer(
            units, first.host, port, framer="rtu" if rtu else "socket", rng=self.rng
        )
        await self._start_server(server, f"{first.host}:{port}")

    async def _start_bus(self, endpoint: Endpoint) -> None:
        first = endpoint.devices[0][1]
        assert isinstance(first, SimModbusRtuDeviceConfig)
        if first.port is not None and is_rfc2217(first.port):
            line = await self._start_device_server(first.port, first)
            where: dict[str, Any] = {"path": first.port, "link": None, "bus": first.bus_name}
            # the bus side is a pseudo-terminal: the line itself garbles wrong settings
            server = ModbusSimServer(
                [], serial_port=line.bus_path, baudrate=first.baudrate, rng=self.rng
            )
        elif first.port is not None:
            _check_serial_port(first.port, first)
            where = {"path": first.port, "link": None, "bus": first.bus_name}
            server = ModbusSimServer(
                [],
                serial_port=first.port,
                baudrate=first.baudrate,
                bytesize=first.bytesize,
                parity=first.parity,
                stopbits=first.stopbits,
                rng=self.rng,
            )
        else:
            modem = NullModem()
            modem.start()
            self._modems.append(modem)
            link = self._link(first.link, first.bus_name, modem.a.path)
            where = {"path": modem.a.path, "link": link, "bus": first.bus_name}
            # a pseudo-terminal carries bytes at any setting; this kernel refuses parity on one
            server = ModbusSimServer(
                [], serial_port=modem.b.path, baudrate=first.baudrate, rng=self.rng
            )
        for _, device in endpoint.devices:
            unit = self._modbus_unit(device, where)
            server.context.devices[unit.unit] = unit
        await self._start_server(server, where["path"])

    async def _start_device_server(
        self, url: str, line: SimModbusRtuDeviceConfig | SimSerialLineDeviceConfig
    ) -> Rfc2217Line:
        """A simulated serial device server listening where `url` says, its bus at the
        line's settings."""
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or 0
        _check_tcp_port(host, port)
        server = Rfc2217Line(LineSettings(*line.line_settings), host, port)
        try:
            await server.start()
        except OSError as err:
            server.bus.close()
            raise SimulationError(f"cannot serve {url}: {err.strerror or err}") from err
        self._device_servers.append(server)
        return server

    async def _start_server(self, server: ModbusSimServer, where: str) -> None:
        try:
            await server.start()
        except (RuntimeError, OSError) as err:
            raise SimulationError(f"cannot serve Modbus on {where}: {err}") from err
        self._servers.append(server)

    async def _start_instrument(self, endpoint: Endpoint) -> None:
        device = endpoint.devices[0][1]
        assert isinstance(device, SimSerialLineDeviceConfig)
        port: PtyPort | SerialDevicePort
        if device.port is not None and is_rfc2217(device.port):
            line = await self._start_device_server(device.port, device)
            # the server's bus side is a pseudo-terminal (parity is the line's to judge)
            port = SerialDevicePort(line.bus_path, device.baudrate)
            where: dict[str, Any] = {"path": device.port, "link": None}
        elif device.port is not None:
            try:
                port = SerialDevicePort(device.port, *device.line_settings)
            except (OSError, ValueError) as err:
                raise SimulationError(open_error(device.port, err)) from err
            where = {"path": device.port, "link": None}
        else:
            port = PtyPort()
            where = {"path": port.path, "link": self._link(device.link, device.name, port.path)}
        points = {
            p.name: self._point(p.name, p.value, _line_default(p, i), text=p.type == "string")
            for i, p in enumerate(device.points)
        }
        frame = device.frame

        def make_frame(n: int) -> bytes:
            now = time.time()
            return frame.encode(
                {p.field_name: _line_raw(p, points[p.name].value(now)) for p in device.points}
            )

        command = device.command_bytes()
        instrument = LineInstrument(
            make_frame,
            period=device.period if command is None else None,
            command=command,
            reply_delay=device.reply_delay,
            port=port,
            corrupt=frame.corrupt,
            lossy=True,
            rng=self.rng,
        )
        await instrument.start()
        self._instruments.append(instrument)
        where |= {"mode": device.mode}
        if command is None:
            where["period"] = device.period
        self.devices[device.name] = ServedDevice(
            device.name,
            device.protocol,
            where,
            points,
            instrument=instrument,
            has_checksum=frame.has_checksum,
        )

    def _modbus_unit(self, device: SimDevice, where: dict[str, Any]) -> SimulatedDevice:
        assert not isinstance(device, SimSerialLineDeviceConfig)
        unit = SimulatedDevice(unit=device.unit)
        points: dict[str, SimPoint] = {}
        spans: dict[str, tuple[Table, range]] = {}
        order = device.profile_byte_order
        nth: dict[str | None, int] = {}
        for point, value in device.served_points():
            count = nth[point.unit] = nth.get(point.unit, -1) + 1
            default = _modbus_default(point, count)
            text = point.type is DataType.STRING
            sim = points[point.name] = self._point(point.name, value, default, text=text)
            width = 1 if point.table.is_bit_table else register_count(point.type, point.length)
            spans[point.name] = (point.table, range(point.address, point.address + width))
            unit.set_signal(
                point.table,
                point.address,
                _register_signal(point, sim),
                point.type,
                point.byte_order or order,
                length=point.length,
                bit=point.bit,
                initial=_register_value(point, default),
            )
        for table, cells in unit.tables.items():  # a merged read may cross unmapped addresses
            if cells:
                unit.fill(table, min(cells), max(cells) - min(cells) + 1)
        self.devices[device.name] = ServedDevice(
            device.name,
            device.protocol,
            where | {"unit": device.unit},
            points,
            modbus=unit,
            has_checksum=device.protocol != "modbus_tcp",
            spans=spans,
        )
        return unit

    def _point(
        self, name: str, value: ValueConfig | None, default: Scalar, *, text: bool
    ) -> SimPoint:
        source: ValueSource = value.build(self.rng) if value is not None else Constant(default)
        return SimPoint(name, source, self.started, text)

    def _link(self, link: str | None, name: str, target: str) -> str | None:
        """Make the symlink of a pseudo-terminal: its own `link`, or one in link_dir."""
        if link is None and self.link_dir is None:
            return None
        path = Path(link) if link is not None else self.link_dir / name  # type: ignore[operator]
        path = path.absolute()  # what a harness or a config can name from anywhere
        make_link(path, target)
        self._links.append((path, target))
        return str(path)

    # --- what the control interface does ------------------------------------------------

    def _target(self, target: str) -> tuple[ServedDevice, str | None]:
        """The device and point (None: the device itself) that `target` names."""
        if target in self.devices:
            return self.devices[target], None
        for at in range(len(target)):
            if target[at] != ".":
                continue
            device = self.devices.get(target[:at])
            if device is not None and target[at + 1 :] in device.points:
                return device, target[at + 1 :]
            if device is not None:
                known = ", ".join(device.points)
                point = target[at + 1 :]
                raise CommandError(f"{device.name!r} has no point {point!r} (its points: {known})")
        raise CommandError(f"no device {target!r} (devices: {', '.join(self.devices)})")

    def set_fault(self, target: str, fault: WireFault) -> str:
        device, point = self._target(target)
        refused = _refusal(device, point, fault)
        if refused is not None:
            raise CommandError(refused)
        if point is None:
            device.fault = fault
        else:
            assert device.modbus is not None
            table, addresses = device.spans[point]
            device.modbus.fault_points[point] = (table, addresses, fault)
        return f"{target} {fault}"

    def clear(self, target: str | None) -> str:
        if target is None:
            for device in self.devices.values():
                self._clear(device, None)
            return "no faults"
        device, point = self._target(target)
        self._clear(device, point)
        return f"{target} no fault"

    @staticmethod
    def _clear(device: ServedDevice, point: str | None) -> None:
        if point is None:
            device.fault = None
            if device.modbus is not None:
                device.modbus.fault_points.clear()
        elif device.modbus is not None:
            device.modbus.fault_points.pop(point, None)

    def hold(self, target: str, value: Scalar) -> str:
        device, point = self._target(target)
        if point is None:
            raise CommandError(f"set names a point: {target}.POINT VALUE")
        sim = device.points[point]
        if isinstance(value, str) and not sim.text:
            raise CommandError(f"{value!r} is text; {target} holds a number")
        sim.held = value
        return f"{target} = {value!r}"

    def release(self, target: str) -> str:
        device, point = self._target(target)
        if point is None:
            raise CommandError(f"unset names a point: {target}.POINT")
        device.points[point].held = None
        return f"{target} follows its value again"

    def status(self) -> dict[str, Any]:
        return {
            "uptime": round(time.time() - self.started, 3),
            "devices": [
                {
                    "name": device.name,
                    "protocol": device.protocol,
                    **device.where,
                    "fault": _shown(device.fault),
                    **_counts(device),
                    "points": [
                        {
                            "name": point.name,
                            "value": point.last,
                            "held": point.held is not None,
                            "fault": _shown(device.point_fault(point.name)),
                        }
                        for point in device.points.values()
                    ],
                }
                for device in self.devices.values()
            ],
        }

    def describe(self) -> list[dict[str, Any]]:
        """What is served where, one entry per device (for people and for --json)."""
        return [
            {"name": d.name, "protocol": d.protocol, **d.where, "points": list(d.points)}
            for d in self.devices.values()
        ]


def _shown(fault: WireFault | None) -> str | None:
    return None if fault is None else str(fault)


def _counts(device: ServedDevice) -> dict[str, int]:
    if device.modbus is not None:
        return {"reads": device.modbus.reads}
    assert device.instrument is not None
    return {"frames": device.instrument.frames_sent, "polls": device.instrument.polls_seen}


def _refusal(device: ServedDevice, point: str | None, fault: WireFault) -> str | None:
    """Why `fault` cannot be set on the device (or its point), or None."""
    kind = fault.kind
    if device.instrument is not None:
        if point is not None:
            return f"a line instrument's faults are its frames': fault {device.name} {fault}"
        if kind in ("exception", "txid"):
            return f"{kind} is a Modbus fault; {device.name} is a line instrument"
        if kind == "drop":
            return f"{device.name} is on a serial line: there is no connection to drop"
        if kind == "crc" and not device.has_checksum:
            return f"{device.name}'s frames carry no checksum to corrupt"
        return None
    if kind == "flood" and point is not None:
        return f"a flood is the line's, whatever is asked: fault {device.name} flood"
    if kind == "crc" and not device.has_checksum:
        return "Modbus TCP answers carry no CRC; crc is for modbus_rtu and modbus_rtu_over_tcp"
    if kind == "txid" and device.protocol != "modbus_tcp":
        return "only Modbus TCP answers carry a transaction id"
    if kind == "drop" and device.protocol == "modbus_rtu":
        return f"{device.name} is on a serial bus: there is no connection to drop"
    return None


# --- values on the wire ---------------------------------------------------------------------


def _modbus_default(point: ModbusPointConfig, nth: int) -> Scalar:
    if point.type is DataType.STRING:
        return f"SIM {point.name}"[: 2 * (point.length or 1)]
    if point.type in (DataType.BOOL, DataType.BIT):
        return True
    return plausible_value(point, nth)


def _register_value(point: ModbusPointConfig, value: Scalar) -> float | int | bool | str:
    """What the registers hold for a point that reads as `value`."""
    if point.type is DataType.STRING:
        return str(value)[: 2 * (point.length or 1)]
    if point.type in (DataType.BOOL, DataType.BIT):
        return bool(value)
    if isinstance(value, str):
        return 0
    return raw_value(point, float(value))


def _register_signal(point: ModbusPointConfig, sim: SimPoint) -> Callable[[float], Any]:
    return lambda now: _register_value(point, sim.value(now))


def _line_default(point: SimLinePointConfig, nth: int) -> Scalar:
    if point.type == "string":
        return f"SIM {point.name}"
    if point.type == "bool":
        return True
    return typical_value(point.unit, nth)


def _line_raw(point: SimLinePointConfig, value: Scalar) -> Scalar:
    """The field's value in the frame for a point that reads as `value`."""
    if point.type == "string" or isinstance(value, str):
        return str(value)
    if point.type == "bool":
        return bool(value)
    raw = (float(value) - point.offset) / point.scale
    return round(raw) if point.type == "int" else raw


# --- the environment -------------------------------------------------------------------------


def make_link(path: Path, target: str) -> None:
    """A symlink at `path` to `target`, replacing a symlink there (a stale one); never
    anything else."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and not path.is_symlink():
            raise SimulationError(
                f"{path} exists and is not a symlink; the simulator makes its link there "
                "(remove it, or name another link)"
            )
        temporary = path.with_name(f".{path.name}.{os.getpid()}.link")
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(target)
        temporary.replace(path)
    except OSError as err:
        raise SimulationError(f"cannot make the link {path}: {err.strerror or err}") from err


def _check_tcp_port(host: str, port: int) -> None:
    """SimulationError naming why `host:port` cannot be listened on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            probe.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise SimulationError(f"{host}:{port} is in use by another program") from err
            raise SimulationError(f"cannot listen on {host}:{port}: {err.strerror or err}") from err


def _check_serial_port(port: str, line: SimModbusRtuDeviceConfig) -> None:
    """SimulationError saying why the real serial port cannot be opened (missing, held,
    not permitted); the Modbus server opens it afterwards."""
    try:
        SerialDevicePort(port, *line.line_settings).close()
    except (OSError, ValueError) as err:
        raise SimulationError(open_error(port, err)) from err
