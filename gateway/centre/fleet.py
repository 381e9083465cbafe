"""Every gateway on a broker, as `edge-gateway watch` shows it. Pure, no I/O.

`Fleet.receive(topic, payload)` takes what the gateways publish: the retained present
(status, `device/{name}`, `alarms/active`: a watcher that subscribes late has it at
once), the periodic health, events, and data batches (for the completeness column,
through `gateway.centre.accounting`). `Fleet.rows(now)` is one JSON object per gateway,
the answer of `watch --once --json`; `sort_rows` orders them worst first by a key.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.centre.accounting import Accounting, json_object, split_topic
from gateway.wire import DecodeError

__all__ = ["SORT_KEYS", "Fleet", "GatewayView", "completeness_summary", "sort_rows"]

EVENTS_KEPT = 5  # per gateway
FLEET_EVENTS_KEPT = 50


@dataclass(slots=True)
class GatewayView:
    """The latest of each thing one gateway said."""

    gateway_id: str
    status: dict[str, Any] | None = None
    health: dict[str, Any] | None = None
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)  # retained states
    alarms: list[dict[str, Any]] | None = None  # alarms/active; None: not heard yet
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=EVENTS_KEPT))
    last_seen: float | None = None  # the newest `ts` of anything it published
    health_gap: float | None = None  # seconds between its last two health reports

    def seen(self, doc: Mapping[str, Any]) -> None:
        ts = doc.get("ts")
        if isinstance(ts, int | float) and not isinstance(ts, bool) and math.isfinite(ts):
            self.last_seen = ts if self.last_seen is None else max(self.last_seen, ts)


class Fleet:
    """What every gateway on the broker said (module docstring)."""

    def __init__(self, prefix: str = "city") -> None:
        self.prefix = prefix
        self.accounting = Accounting(prefix)
        self.gateways: dict[str, GatewayView] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=FLEET_EVENTS_KEPT)
        self.undecodable = 0

    def gateway(self, gateway_id: str) -> GatewayView:
        found = self.gateways.get(gateway_id)
        if found is None:
            found = self.gateways[gateway_id] = GatewayView(gateway_id)
        return found

    def receive(self, topic: str, payload: bytes) -> None:
        where = split_topic(self.prefix, topic)
        if where is None:
            return
        gateway_id, kind = where
        if kind == "data":
            try:
                batch = self.accounting.receive(topic, payload)
            except DecodeError:
                self.undecodable += 1
                return
            if batch is not None:
                self.gateway(gateway_id)
            return
        if kind in ("status", "health", "event"):
            self.accounting.receive(topic, payload)
        if kind not in ("status", "health", "event", "device", "alarms_active"):
            return
        view = self.gateway(gateway_id)
        if kind == "device" and not payload:  # a removed device's retained state cleared
            view.devices.pop(topic.rsplit("/", 1)[-1], None)
            return
        doc = json_object(payload)
        if doc is None:
            return
        view.seen(doc)
        if kind == "status":
            view.status = doc
        elif kind == "health":
            self._health(view, doc)
        elif kind == "event":
            view.events.append(doc)
            self.events.append(doc)
        elif kind == "device":
            view.devices[str(doc.get("device") or topic.rsplit("/", 1)[-1])] = doc
        elif isinstance(doc.get("alarms"), list):
            view.alarms = [a for a in doc["alarms"] if isinstance(a, dict)]

    @staticmethod
    def _health(view: GatewayView, doc: dict[str, Any]) -> None:
        before, ts = view.health, doc.get("ts")
        if before is not None and isinstance(ts, int | float):
            previous = before.get("ts")
            if isinstance(previous, int | float) and ts > previous:
                view.health_gap = ts - previous
            elif isinstance(previous, int | float) and ts < previous:
                return  # an older report than the one kept
        view.health = doc

    # --- the answer ----------------------------------------------------------------------------

    def rows(self, now: float) -> list[dict[str, Any]]:
        """One JSON object per gateway, in the order of their ids."""
        return [self.row(self.gateways[name], now) for name in sorted(self.gateways)]

    def row(self, view: GatewayView, now: float) -> dict[str, Any]:
        status, health = view.status or {}, view.health or {}
        buffer = _section(health, "buffer")
        uplink = _section(health, "uplink")
        devices = _device_states(view)
        accounts = self.accounting.completeness(view.gateway_id)
        seen_age = None if view.last_seen is None else max(0.0, now - view.last_seen)
        return {
            "gateway_id": view.gateway_id,
            "state": _state(view, seen_age),
            "reason": status.get("reason"),
            "boot_id": status.get("boot_id") or health.get("boot_id"),
            "version": status.get("version") or health.get("version"),
            "config_hash": status.get("config_hash") or health.get("config_hash"),
            "last_seen": view.last_seen,
            "last_seen_age_s": None if seen_age is None else round(seen_age, 1),
            "uptime_s": health.get("uptime_s"),
            "health_interval_s": None if view.health_gap is None else round(view.health_gap, 1),
            "buffer": None
            if not buffer
            else {
                "open": buffer.get("open"),
                "batches": buffer.get("batches"),
                "bytes": buffer.get("bytes"),
                "oldest_unsent_age_s": buffer.get("oldest_unsent_age_s"),
                "first_unsent_seq": buffer.get("first_unsent_seq"),
                "last_seq": buffer.get("last_seq"),
                "evicting": bool(_section(buffer, "eviction").get("active")),
                "evicted_batches": buffer.get("evicted_batches"),
            },
            "uplink": None
            if not uplink
            else {key: uplink.get(key) for key in ("state", "protocol", "last_error", "denied")},
            "devices": devices,
            "devices_offline": [d["name"] for d in devices if d["state"] == "offline"],
            "devices_degraded": [d["name"] for d in devices if d["state"] == "degraded"],
            "alarms": view.alarms if view.alarms is not None else [],
            "events": [_event_json(e) for e in view.events],
            "completeness": accounts[0] if accounts else None,
        }

    def recent_events(self, count: int) -> list[dict[str, Any]]:
        """The newest `count` events of the whole fleet, oldest first."""
        return [_event_json(e) for e in list(self.events)[-count:]]


# --- sorting and summaries ---------------------------------------------------------------------

_STATE_ORDER = {"offline": 0, "silent": 1, "unknown": 2, "online": 3}


def _worst_first(row: dict[str, Any]) -> tuple[Any, ...]:
    return (_STATE_ORDER.get(row["state"], 2), row["gateway_id"])


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else -1.0


def _completeness_rank(row: dict[str, Any]) -> float:
    counts = (row["completeness"] or {}).get("counts") or {}
    return float(
        counts.get("missing", 0) * 4
        + counts.get("lost_at_crash", 0) * 3
        + counts.get("evicted", 0) * 2
        + counts.get("on_disk", 0)
    )


SORT_KEYS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "state": _worst_first,
    "gateway": lambda row: row["gateway_id"],
    "seen": lambda row: (-_number(row["last_seen_age_s"]), row["gateway_id"]),
    "buffer": lambda row: (-_number((row["buffer"] or {}).get("batches")), row["gateway_id"]),
    "oldest": lambda row: (
        -_number((row["buffer"] or {}).get("oldest_unsent_age_s")),
        row["gateway_id"],
    ),
    "devices": lambda row: (
        -len(row["devices_offline"]),
        -len(row["devices_degraded"]),
        row["gateway_id"],
    ),
    "alarms": lambda row: (-len(row["alarms"]), row["gateway_id"]),
    "completeness": lambda row: (-_completeness_rank(row), row["gateway_id"]),
}
"""Each key orders the gateways that need attention first (`gateway`: by id)."""


def sort_rows(
    rows: list[dict[str, Any]], key: str, *, reverse: bool = False
) -> list[dict[str, Any]]:
    return sorted(rows, key=SORT_KEYS[key], reverse=reverse)


def completeness_summary(view: Mapping[str, Any] | None) -> str:
    """A few words for a column: what stands out of a gateway's completeness view."""
    if not view:
        return "-"
    counts = view.get("counts") or {}
    crashes = len(view.get("lost_at_crash") or [])
    for key, words in (
        ("missing", "missing"),
        ("lost_at_crash", "lost"),
        ("evicted", "evicted"),
        ("on_disk", "on disk"),
    ):
        if counts.get(key):
            return f"{counts[key]} {words}"
    if crashes:
        return "crash" if crashes == 1 else f"{crashes} crashes"
    return "ok" if counts.get("received") else "-"


# --- helpers ---------------------------------------------------------------------------------


def _state(view: GatewayView, seen_age: float | None) -> str:
    """online, offline (its status says so), silent (online, but nothing for three health
    intervals), unknown (no status heard)."""
    state = (view.status or {}).get("state")
    if state == "offline":
        return "offline"
    if state != "online":
        return "online" if view.health is not None else "unknown"
    if view.health_gap is not None and seen_age is not None and seen_age > 3 * view.health_gap:
        return "silent"
    return "online"


def _device_states(view: GatewayView) -> list[dict[str, Any]]:
    """The retained device states; the health report's for devices without one."""
    states = {
        name: {
            "name": name,
            "state": doc.get("state"),
            "since": doc.get("since"),
            "reason": doc.get("reason"),
        }
        for name, doc in view.devices.items()
    }
    devices = (view.health or {}).get("devices")
    for device in devices if isinstance(devices, list) else []:
        if isinstance(device, dict) and isinstance(device.get("name"), str):
            states.setdefault(
                device["name"],
                {
                    "name": device["name"],
                    "state": device.get("state"),
                    "since": device.get("offline_since"),
                    "reason": device.get("last_error"),
                },
            )
    return [states[name] for name in sorted(states)]


def _event_json(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {key: doc.get(key) for key in ("gateway_id", "ts", "kind", "message")}


def _section(doc: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key)
    return value if isinstance(value, dict) else {}
