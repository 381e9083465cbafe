"""Compile a validated configuration into running parts, once, at start-up.

`edge-gateway validate` and `edge-gateway run` share this, so the summary a
technician sees is exactly the plan the gateway will poll.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from drivers.base import DeviceHealth, Driver, ReadingSink
from drivers.modbus.driver import (
    ModbusDevice,
    ModbusEndpoint,
    Transport,
    default_inter_frame_delay,
)
from drivers.modbus.plan import PointSpec, ReadRequest, plan_reads
from drivers.serial_line.driver import SerialLineDriver
from gateway.core.config_types import Loc
from gateway.settings import (
    GatewayConfig,
    ModbusConfig,
    ModbusRtuDeviceConfig,
    ModbusRtuOverTcpDeviceConfig,
    SerialLineDeviceConfig,
    seconds_text,
)


@dataclass(frozen=True, slots=True)
class BusEstimate:
    """The line time an RS-485 bus (Modbus RTU slaves on one serial port) needs, with
    every request answered at once and no retries: a lower bound.

    `line_time` is what the bus needs per `cycle`, the shortest poll interval on it
    (slaves polled less often count in proportion); above `cycle`, polls fall behind."""

    port: str
    baudrate: int
    devices: tuple[str, ...]
    cycle: float
    line_time: float

    @property
    def load(self) -> float:
        """The share of the line's time the polls need (above 1: more than there is)."""
        return self.line_time / self.cycle


@dataclass(frozen=True, slots=True)
class PlanSummary:
    devices: int
    points: int
    requests_per_cycle: int
    lines: int
    details: list[str]
    line_time: dict[str, float] = field(default_factory=dict)
    """Seconds on the wire one poll of each Modbus RTU device takes (see `BusEstimate`)."""
    buses: tuple[BusEstimate, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """Plain data for `validate --json`."""
        data = asdict(self)
        data["buses"] = [{**asdict(bus), "load": bus.load} for bus in self.buses]
        return data


RTU_REQUEST_BYTES = 8
"""A Modbus RTU read request: unit, function, address, count, CRC."""


def rtu_response_bytes(request: ReadRequest) -> int:
    """The answer to a read: unit, function, byte count, the data, CRC."""
    if request.table.is_bit_table:
        return 5 + math.ceil(request.count / 8)
    return 5 + 2 * request.count


def rtu_line_time(dev: ModbusRtuDeviceConfig, requests: list[ReadRequest]) -> float:
    """Seconds on the wire one poll of `dev` takes: each request and its answer, and the
    silence between frames."""
    silence = transport_of(dev).inter_frame_delay
    return sum(
        (RTU_REQUEST_BYTES + rtu_response_bytes(r)) * dev.character_time + silence for r in requests
    )


def bus_estimates(config: GatewayConfig) -> tuple[dict[str, float], tuple[BusEstimate, ...]]:
    """The line time of each Modbus RTU device per poll, and of each bus per cycle."""
    per_device: dict[str, float] = {}
    buses: dict[str, list[ModbusRtuDeviceConfig]] = defaultdict(list)
    for dev in config.devices:
        if isinstance(dev, ModbusRtuDeviceConfig):
            requests = compile_modbus_device(dev, transport_of(dev)).requests
            per_device[dev.name] = rtu_line_time(dev, requests)
            buses[dev.port].append(dev)
    estimates = []
    for port, devices in buses.items():
        cycle = min(d.poll_interval for d in devices)
        need = sum(per_device[d.name] * cycle / d.poll_interval for d in devices)
        names = tuple(d.name for d in devices)
        estimates.append(BusEstimate(port, devices[0].baudrate, names, cycle, need))
    return per_device, tuple(estimates)


def line_time_warnings(config: GatewayConfig) -> list[tuple[Loc, str]]:
    """A warning for each RS-485 bus whose polls need more line time than there is."""
    first: dict[str, int] = {}
    for i, dev in enumerate(config.devices):
        if isinstance(dev, ModbusRtuDeviceConfig):
            first.setdefault(dev.port, i)
    found: list[tuple[Loc, str]] = []
    for bus in bus_estimates(config)[1]:
        if bus.load <= 1:
            continue
        same = all(d.poll_interval == bus.cycle for d in _devices_on(config, bus.port))
        cycle = f"{seconds_text(bus.cycle)} cycle" + (
            "" if same else " (its shortest poll_interval)"
        )
        found.append(
            (
                ("devices", first[bus.port], "port"),
                f"the bus on {bus.port} at {bus.baudrate} baud needs "
                f"{seconds_text(bus.line_time)} of line time per {cycle}, with every "
                f"request answered and no retries ({', '.join(bus.devices)}): polls will "
                "fall behind; raise the baudrate, poll less often or read fewer registers",
            )
        )
    return found


def _devices_on(config: GatewayConfig, port: str) -> list[ModbusRtuDeviceConfig]:
    return [d for d in config.devices if isinstance(d, ModbusRtuDeviceConfig) and d.port == port]


def transport_of(dev: ModbusConfig) -> Transport:
    if isinstance(dev, ModbusRtuDeviceConfig):
        return Transport(
            "rtu",
            serial_port=dev.port,
            baudrate=dev.baudrate,
            bytesize=dev.bytesize,
            parity=dev.parity,
            stopbits=dev.stopbits,
            inter_frame_delay=(
                dev.inter_frame_delay
                if dev.inter_frame_delay is not None
                else default_inter_frame_delay(dev.baudrate)
            ),
        )
    if isinstance(dev, ModbusRtuOverTcpDeviceConfig):
        return Transport("rtu_over_tcp", host=dev.host, port=dev.port)
    return Transport("tcp", host=dev.host, port=dev.port)


def compile_modbus_device(dev: ModbusConfig, transport: Transport) -> ModbusDevice:
    specs = [
        PointSpec(
            name=p.name,
            table=p.table,
            address=p.address,
            dtype=p.type,
            order=p.byte_order or dev.byte_order,
            bit=p.bit,
            length=p.length,
            scale=p.scale,
            offset=p.offset,
        )
        for p in dev.points
    ]
    requests = plan_reads(specs, max_gap_registers=dev.max_gap, max_gap_bits=dev.max_gap_bits)
    return ModbusDevice(
        name=dev.name,
        unit=dev.unit,
        requests=requests,
        interval=dev.poll_interval,
        timeout=dev.timeout,
        retries=dev.retries,
        backoff_max=dev.backoff_max,
        health=DeviceHealth(dev.name, f"unit {dev.unit} at {transport}"),
    )


def build_drivers(config: GatewayConfig, sink: ReadingSink) -> list[Driver]:
    """One Modbus endpoint per line (units on it share it); one driver per serial instrument."""
    lines: dict[Transport, list[ModbusDevice]] = defaultdict(list)
    drivers: list[Driver] = []
    for dev in config.devices:
        if isinstance(dev, SerialLineDeviceConfig):
            drivers.append(SerialLineDriver.from_config(dev, sink))
            continue
        transport = transport_of(dev)
        lines[transport].append(compile_modbus_device(dev, transport))
    modbus: list[Driver] = [ModbusEndpoint(t, devices, sink) for t, devices in lines.items()]
    return modbus + drivers


def summarize(config: GatewayConfig) -> PlanSummary:
    drivers = build_drivers(config, lambda readings: None)
    details = []
    total_requests = 0
    points = 0
    for driver in drivers:
        if isinstance(driver, ModbusEndpoint):
            for device in driver.devices:
                n_points = sum(len(r.points) for r in device.requests)
                points += n_points
                total_requests += len(device.requests)
                details.append(
                    f"{device.name}: {n_points} point(s) in {len(device.requests)} request(s) "
                    f"every {device.interval:g}s ({device.health.address})"
                )
        elif isinstance(driver, SerialLineDriver):
            points += len(driver.points)
            total_requests += 1 if driver.command is not None else 0
            details.append(driver.describe())
    line_time, buses = bus_estimates(config)
    return PlanSummary(
        len(config.devices), points, total_requests, len(drivers), details, line_time, buses
    )
