"""Compile a validated configuration into running parts, once, at start-up.

`edge-gateway validate` and `edge-gateway run` share this, so the summary a
technician sees is exactly the plan the gateway will poll. Each protocol builds its
own drivers (drivers/registry.py); the summary is what those drivers say they will do.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from drivers.base import BusEstimate, DevicePlan, Driver, ReadingSink, discard

if TYPE_CHECKING:  # the daemon builds from the config's records (gateway/loaded.py)
    from gateway.settings import GatewayConfig


@dataclass(frozen=True, slots=True)
class PlanSummary:
    devices: int
    points: int
    requests_per_cycle: int
    lines: int
    details: list[str]
    line_time: dict[str, float] = field(default_factory=dict)
    """Seconds on the wire one poll of each device on a serial bus takes (see `BusEstimate`)."""
    buses: tuple[BusEstimate, ...] = ()
    plans: tuple[DevicePlan, ...] = ()
    """Each device's plan: the summary line, and the lines under it (its requests)."""

    def as_dict(self) -> dict[str, Any]:
        """Plain data for `validate --json`: the figures, and what each device's requests
        read (`reads`, by device name)."""
        data = {key: value for key, value in asdict(self).items() if key != "plans"}
        data["buses"] = [{**asdict(bus), "load": bus.load} for bus in self.buses]
        data["reads"] = {plan.name: list(plan.reads) for plan in self.plans if plan.reads}
        return data


def build_drivers(
    config: GatewayConfig, sink: ReadingSink, plugins: Mapping[str, str] | None = None
) -> list[Driver]:
    """Each protocol's drivers for its devices, in the order of the registry: each
    plugin's `build(devices, sink)`, from drivers/<plugin>/build.py. `plugins` names each
    protocol's plugin (`LoadedConfig.plugins`; by default the registry's)."""
    if not plugins:
        from drivers.registry import protocol_plugins

        plugins = protocol_plugins()
    drivers: list[Driver] = []
    for name in dict.fromkeys(plugins.values()):
        own = [dev for dev in config.devices if plugins[dev.protocol] == name]
        if own:
            drivers.extend(importlib.import_module(f"drivers.{name}.build").build(own, sink))
    return drivers


def summarize(config: GatewayConfig) -> PlanSummary:
    """What the drivers of `config` will do, as `validate` prints it."""
    drivers = build_drivers(config, discard)
    plans = [driver.plan() for driver in drivers]
    devices = [device for plan in plans for device in plan.devices]
    return PlanSummary(
        devices=len(config.devices),
        points=sum(d.points for d in devices),
        requests_per_cycle=sum(d.requests for d in devices),
        lines=len(drivers),
        details=[d.summary for d in devices],
        line_time={d.name: d.line_time for d in devices if d.line_time is not None},
        buses=tuple(plan.bus for plan in plans if plan.bus is not None),
        plans=tuple(devices),
    )
