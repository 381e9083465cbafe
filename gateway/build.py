"""Compile a validated configuration into running parts, once, at start-up.

`edge-gateway validate` and `edge-gateway run` share this, so the summary a
technician sees is exactly the plan the gateway will poll.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from drivers.base import DeviceHealth, Driver, ReadingSink
from drivers.modbus.driver import (
    ModbusDevice,
    ModbusEndpoint,
    Transport,
    default_inter_frame_delay,
)
from drivers.modbus.plan import PointSpec, plan_reads
from drivers.serial_line.driver import SerialLineDriver
from gateway.settings import (
    GatewayConfig,
    ModbusRtuDeviceConfig,
    ModbusRtuOverTcpDeviceConfig,
    ModbusTcpDeviceConfig,
    SerialLineDeviceConfig,
)

ModbusConfig = ModbusTcpDeviceConfig | ModbusRtuOverTcpDeviceConfig | ModbusRtuDeviceConfig


@dataclass(frozen=True, slots=True)
class PlanSummary:
    devices: int
    points: int
    requests_per_cycle: int
    lines: int
    details: list[str]


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
    return PlanSummary(len(config.devices), points, total_requests, len(drivers), details)
