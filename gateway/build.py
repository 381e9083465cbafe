"""Compile a validated configuration into running parts, once, at start-up.

`edge-gateway validate` and `edge-gateway run` share this, so the summary a
technician sees is exactly the plan the gateway will poll.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from drivers.base import DeviceHealth, ReadingSink
from drivers.modbus.driver import ModbusDevice, ModbusTcpEndpoint
from drivers.modbus.plan import PointSpec, plan_reads
from gateway.settings import GatewayConfig, ModbusTcpDeviceConfig


@dataclass(frozen=True, slots=True)
class PlanSummary:
    devices: int
    points: int
    requests_per_cycle: int
    endpoints: int
    lines: list[str]


def compile_modbus_device(dev: ModbusTcpDeviceConfig) -> ModbusDevice:
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
        health=DeviceHealth(dev.name, f"unit {dev.unit} at {dev.host}:{dev.port}"),
    )


def build_endpoints(config: GatewayConfig, sink: ReadingSink) -> list[ModbusTcpEndpoint]:
    """One endpoint (one connection) per host:port; units behind it share it."""
    groups: dict[tuple[str, int], list[ModbusDevice]] = defaultdict(list)
    for dev in config.devices:
        groups[(dev.host, dev.port)].append(compile_modbus_device(dev))
    return [
        ModbusTcpEndpoint(host, port, devices, sink) for (host, port), devices in groups.items()
    ]


def summarize(config: GatewayConfig) -> PlanSummary:
    endpoints = build_endpoints(config, lambda readings: None)
    lines = []
    total_requests = 0
    points = 0
    for endpoint in endpoints:
        for device in endpoint.devices:
            n_points = sum(len(r.points) for r in device.requests)
            points += n_points
            total_requests += len(device.requests)
            lines.append(
                f"{device.name}: {n_points} point(s) in {len(device.requests)} request(s) "
                f"every {device.interval:g}s ({device.health.address})"
            )
    return PlanSummary(len(config.devices), points, total_requests, len(endpoints), lines)
