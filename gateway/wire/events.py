"""What changed, and what is true now: events, retained device states, active alarms and
the metadata of each config version. Pure, no I/O; JSON Schemas in docs/schemas/.

- `Event` on `{prefix}/{id}/event` (QoS 1, not retained): a device went online,
  degraded or offline; eviction started or stopped (with the time range lost); a
  config was applied or rolled back; the clock stepped; a command was refused. Sent in
  order, as soon as connected; while offline the last `EVENT_BACKLOG` wait in memory
  (the retained states below tell a late subscriber the present regardless).
- `DeviceState` on `{prefix}/{id}/device/{name}` (retained): the present state of one
  device; an empty retained payload clears it when a reload removes the device.
- `ActiveAlarms` on `{prefix}/{id}/alarms/active` (retained): every alarm raised now.
- `Metadata` on `{prefix}/{id}/meta/{config_hash}` (retained, one per config version):
  every device and point as configured (type, unit, table/address or field, profile,
  processing). Data batches carry `c` (the config hash) so the centre finds it; the
  metadata of older versions stays retained, so their batches stay understood.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "EVENT_BACKLOG",
    "ActiveAlarm",
    "ActiveAlarms",
    "DeviceState",
    "Event",
    "EventKind",
    "Metadata",
    "encode_json",
]

EVENT_BACKLOG = 1000  # events kept in memory while the broker is away; older ones dropped

EventKind = Literal[
    "device_online",
    "device_degraded",
    "device_offline",
    "eviction_started",
    "eviction_stopped",
    "config_applied",
    "config_rolled_back",
    "config_refused",
    "clock_stepped",
    "command_refused",
]


@dataclass(frozen=True, slots=True)
class Event:
    gateway_id: str
    boot_id: str
    seq: int  # numbers this boot's events: a gap means some were dropped while offline
    ts: float
    kind: EventKind
    message: str  # the sentence the log says
    data: dict[str, Any] = field(default_factory=dict)  # per kind: docs/topics.md

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class DeviceState:
    gateway_id: str
    device: str
    state: Literal["unknown", "online", "degraded", "offline"]
    since: float  # unix time of the change
    reason: str | None
    ts: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class ActiveAlarm:
    alarm: str
    device: str
    point: str
    severity: str
    since_ms: int  # the reading that raised it
    value: float | None
    message: str


@dataclass(frozen=True, slots=True)
class ActiveAlarms:
    gateway_id: str
    ts: float
    alarms: list[ActiveAlarm]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class Metadata:
    gateway_id: str
    config_hash: str
    ts: float
    devices: list[dict[str, Any]]  # each device's config as the gateway runs it

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def encode_json(message: Event | DeviceState | ActiveAlarms | Metadata) -> bytes:
    return json.dumps(message.to_json(), separators=(",", ":"), allow_nan=False).encode()
