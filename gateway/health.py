"""The health report: one typed model, assembled from what each part says of itself.

Every part that has something to report exposes a `health()` returning its section
of `gateway.wire.messages.Health` (the uplink its `UplinkHealth`, a store its
`BufferHealth`, the clock watch its `ClockHealth`, each driver its devices). The
`HealthModel` holds those providers and makes one snapshot from them; the uplink is
handed `HealthModel.payload` (a callable returning the encoded report) and knows
nothing else about the gateway, so no part calls back into the composition root.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drivers.core.clock import Clock
from gateway.wire.messages import (
    AlarmsHealth,
    BufferHealth,
    ClockHealth,
    Health,
    Identity,
    PipelineHealth,
    ReloadsHealth,
    UplinkHealth,
    encode,
)


@dataclass(frozen=True, slots=True)
class HealthSources:
    """Where each section of the report comes from (called at every snapshot)."""

    identity: Callable[[], Identity]
    clock: Callable[[], ClockHealth]
    buffer: Callable[[], BufferHealth]
    uplink: Callable[[], UplinkHealth]
    alarms: Callable[[], AlarmsHealth]
    processing: Callable[[], dict[str, int]]
    pipeline: Callable[[], PipelineHealth]
    reloads: Callable[[], ReloadsHealth]
    devices: Callable[[], list[dict[str, Any]]]
    commands: Callable[[], dict[str, Any] | None] = lambda: None


class HealthModel:
    def __init__(self, sources: HealthSources, clock: Clock) -> None:
        self.sources = sources
        self.clock = clock
        self.started = clock.monotonic()

    def snapshot(self) -> Health:
        s = self.sources
        return Health(
            identity=s.identity(),
            ts=self.clock.time(),
            uptime_s=self.clock.monotonic() - self.started,
            clock=s.clock(),
            buffer=s.buffer(),
            uplink=s.uplink(),
            alarms=s.alarms(),
            processing=s.processing(),
            pipeline=s.pipeline(),
            reloads=s.reloads(),
            devices=s.devices(),
            commands=s.commands(),
        )

    def payload(self) -> bytes:
        """The report as published on the health topic."""
        return encode(self.snapshot())
