"""Modbus configs into drivers, once, at start-up: each device's read plan, and one
`ModbusEndpoint` per line (a TCP host:port or a serial bus), which polls every unit
configured on it over one connection. Its plan (what `validate` prints) says what
each request reads (report.py)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from drivers.base import DeviceHealth, DriverPlan, ReadingSink
from drivers.modbus.driver import ModbusDevice, ModbusEndpoint, Transport
from drivers.modbus.plan import PointSpec, plan_reads
from drivers.modbus.report import line_time_text, read_data, read_lines
from drivers.modbus.timing import default_inter_frame_delay

if TYPE_CHECKING:  # the daemon builds from the config's records (gateway/loaded.py)
    from drivers.modbus.config import ModbusConfig


def transport_of(dev: ModbusConfig) -> Transport:
    """How the device's line is reached."""
    if dev.protocol == "modbus_rtu":
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
    if dev.protocol == "modbus_rtu_over_tcp":
        return Transport("rtu_over_tcp", host=dev.host, port=dev.port)
    return Transport("tcp", host=dev.host, port=dev.port)


def compile_device(dev: ModbusConfig, transport: Transport) -> ModbusDevice:
    """The device's read plan and schedule."""
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
    requests = plan_reads(
        specs,
        max_gap_registers=dev.max_gap,
        max_gap_bits=dev.max_gap_bits,
        max_registers=dev.max_registers,
    )
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


class PlannedEndpoint(ModbusEndpoint):
    """A `ModbusEndpoint` whose plan also says, per device, what each request reads and
    the line time of a poll on a serial bus (report.py words it)."""

    def plan(self) -> DriverPlan:
        plan = super().plan()
        devices = []
        for described, device in zip(plan.devices, self.devices, strict=True):
            details = read_lines(device.requests)
            if described.line_time is not None:
                details.append(line_time_text(described.line_time, device.interval))
            reads = tuple(read_data(device.requests))
            devices.append(replace(described, details=tuple(details), reads=reads))
        return replace(plan, devices=tuple(devices))


def build(devices: Sequence[ModbusConfig], sink: ReadingSink) -> list[ModbusEndpoint]:
    """One endpoint per line, in the order the lines first appear; units on a line share it."""
    lines: dict[Transport, list[ModbusDevice]] = defaultdict(list)
    for dev in devices:
        transport = transport_of(dev)
        lines[transport].append(compile_device(dev, transport))
    return [PlannedEndpoint(transport, line, sink) for transport, line in lines.items()]
