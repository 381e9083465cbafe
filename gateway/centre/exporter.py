"""Every gateway on a broker as Prometheus metrics: `edge-gateway exporter`'s logic.

The exporter subscribes to each gateway's status, health and event topics and to its
retained device states and active alarms (docs/topics.md), keeps the latest of each in a
`Fleet`, and renders that snapshot on every scrape through `FleetCollector`, a custom
collector for `prometheus_client`. Nothing is a global, mutable metric: what a scrape
shows is what the fleet says now, so a gateway or device that goes away stops being
exported once nothing has been heard of it for the staleness bound (`stale`).

- `METRICS`: the catalogue, one `MetricSpec` per family (name, type, labels, help), with
  the health field each one reads; docs/exporter.md documents each, and the Grafana
  dashboard in config/grafana/ may name only these (a test checks both).
- `Fleet.ingest(topic, payload, at)`: a message as it arrived. Never raises: what is not
  JSON, not an object, from a gateway id that is not one, or beyond the bounds of
  cardinality (`max_gateways`, `MAX_DEVICES` per gateway) is counted and dropped.
- `FleetCollector(fleet).collect()`: the metric families of one snapshot.
- `follow(connection, fleet)`: the MQTT side, reconnecting with back-off.
- `listen_address(text)`: where to serve; `MetricsServer`: `/metrics` over HTTP
  (prometheus_client's WSGI server, in a thread of its own).

Labels are `gateway` and `device` (with a `state`, `severity`, `kind`, `code`,
`outcome` or `topic` label from a closed list, where a family has one): the number of
series is bounded by the gateways and devices heard within the staleness bound.
Clock: `at` is the exporter's wall clock (`time.time()`); the gateways' own clocks are
never compared with it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn, get_args

import aiomqtt
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import CollectorRegistry

from drivers.core.backoff import backoff_delay
from gateway.centre.client import BrokerAddress, CentreClient, CentreError, Connection
from gateway.control.refusals import REFUSAL_CODES
from gateway.wire.events import EventKind

log = logging.getLogger("gateway.centre.exporter")

DEFAULT_STALE = 600.0  # seconds without a word from a gateway (or of a device) before it goes
DEFAULT_MAX_GATEWAYS = 10_000
MAX_DEVICES = 1_000  # per gateway; more is not a gateway's config but a flood
DEFAULT_LISTEN_PORT = 9108

GATEWAY_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # docs/schemas/status.schema.json
DEVICE_NAME = re.compile(r"[^\x00-\x1f/+#]{1,128}")

DEVICE_STATES = ("unknown", "online", "degraded", "offline")
UPLINK_STATES = ("connecting", "online", "denied", "offline", "stopped")
STATUSES = ("online", "stopped", "reconfigured", "connection_lost")  # offline by reason
SEVERITIES = ("info", "warning", "critical")
EVENT_KINDS: tuple[str, ...] = (*get_args(EventKind), "other")
PROCESSING_KINDS = (
    "alarm_events",
    "invalid_values",
    "out_of_range",
    "spikes",
    "dropped_spikes",
    "suppressed_by_deadband",
)
RELOAD_OUTCOMES = ("applied", "refused", "rolled_back")
TOPIC_KINDS = ("status", "health", "event", "device", "alarms_active")
REJECTIONS = (
    "not_json",
    "not_an_object",
    "bad_gateway_id",
    "bad_device_name",
    "too_many_gateways",
    "too_many_devices",
    "unknown_topic",
)

GATEWAY = ("gateway",)
DEVICE = ("gateway", "device")


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric family. `path` names the field it reads, dotted: in the health report
    for a family labelled by gateway alone, in the report's device entry for one labelled
    by device; empty when the collector fills it by hand. `null_as` stands in for null."""

    name: str  # without `_total`: prometheus_client adds it to counters
    kind: Literal["gauge", "counter"]
    labels: tuple[str, ...]
    help: str
    path: str = ""
    scale: float = 1.0
    null_as: float | None = None

    @property
    def sample_name(self) -> str:
        """The name PromQL queries: counters end in `_total`."""
        return f"{self.name}_total" if self.kind == "counter" else self.name

    def family(self) -> GaugeMetricFamily | CounterMetricFamily:
        if self.kind == "counter":
            return CounterMetricFamily(self.name, self.help, labels=self.labels)
        return GaugeMetricFamily(self.name, self.help, labels=self.labels)


def _gauge(name: str, labels: tuple[str, ...], path: str, help: str, **kw: Any) -> MetricSpec:
    return MetricSpec(f"edge_gateway_{name}", "gauge", labels, help, path, **kw)


def _counter(name: str, labels: tuple[str, ...], path: str, help: str) -> MetricSpec:
    return MetricSpec(f"edge_gateway_{name}", "counter", labels, help, path)


G, D = GATEWAY, DEVICE
METRICS: tuple[MetricSpec, ...] = (
    # the gateway: status and identity
    _gauge("up", G, "", "1 when the gateway's retained status says online, 0 when offline"),
    _gauge(
        "status",
        (*G, "state"),
        "",
        "1 for the gateway's status now, 0 for the others: online, or offline because it was "
        "stopped, reconfigured, or its connection was lost (the broker's last will)",
    ),
    _gauge(
        "info",
        (*G, "version", "config_hash"),
        "",
        "always 1: the edge-gateway version and config hash the gateway last reported",
    ),
    _gauge("last_seen_timestamp_seconds", G, "", "unix time the exporter last heard of it"),
    _gauge("uptime_seconds", G, "uptime_s", "seconds since the gateway process started"),
    _gauge("clock_synchronised", G, "clock.synchronised", "1 when NTP has set the clock"),
    _counter("clock_steps", G, "clock.steps", "wall-clock steps the gateway saw"),
    # the buffer
    _gauge("buffer_open", G, "buffer.open", "0 while a full disk keeps the buffer shut"),
    _gauge("buffer_batches", G, "buffer.batches", "batches on disk, not yet acknowledged"),
    _gauge("buffer_bytes", G, "buffer.bytes", "payload bytes of the batches on disk"),
    _gauge(
        "buffer_in_memory_batches",
        G,
        "buffer.in_memory_batches",
        "batches published from memory, neither acknowledged nor on disk yet (lost at a power cut)",
        null_as=0.0,
    ),
    _counter(
        "buffer_acked_from_memory",
        G,
        "buffer.acked_from_memory",
        "batches published from memory and acknowledged in time, never written to disk",
    ),
    _counter(
        "buffer_written_from_memory",
        G,
        "buffer.written_from_memory",
        "batches published from memory that had to be written to disk (not acknowledged "
        "within [batch] max_age)",
    ),
    _gauge("buffer_disk_bytes", G, "buffer.disk_bytes", "every file of the buffer, as bounded"),
    _gauge("buffer_limit_bytes", G, "buffer.max_bytes", "the bound: [buffer] max_bytes"),
    _gauge(
        "buffer_oldest_unsent_age_seconds",
        G,
        "buffer.oldest_unsent_age_s",
        "age of the oldest batch the broker has not acknowledged (0 when none waits)",
        null_as=0.0,
    ),
    _gauge(
        "buffer_evicting",
        G,
        "buffer.eviction.active",
        "1 while the buffer evicts its oldest batches to stay in its bounds",
        null_as=0.0,
    ),
    _counter(
        "buffer_evicted_batches", G, "buffer.evicted_batches", "batches evicted by the byte bound"
    ),
    _counter("buffer_evicted_bytes", G, "buffer.evicted_bytes", "bytes evicted by the byte bound"),
    _counter(
        "buffer_evicted_by_age_batches",
        G,
        "buffer.evicted_by_age_batches",
        "batches evicted by the age bound ([buffer] max_age)",
    ),
    _counter(
        "buffer_corrupt_batches",
        G,
        "buffer.corrupt_batches",
        "batches whose checksum failed when read (never published)",
    ),
    # the uplink
    _gauge("uplink_state", (*G, "state"), "", "1 for the uplink's state now, 0 for the others"),
    _gauge("uplink_denied_topics", G, "uplink.denied", "topics the broker refuses publishes on"),
    _counter("uplink_connects", G, "uplink.connects", "connections made to the broker"),
    _counter(
        "uplink_published_batches", G, "uplink.published_batches", "live batches acknowledged"
    ),
    _counter(
        "uplink_published_history_batches",
        G,
        "uplink.published_history_batches",
        "backlog batches acknowledged",
    ),
    _counter("uplink_published_bytes", G, "uplink.published_bytes", "data bytes acknowledged"),
    _counter("uplink_published_alarms", G, "uplink.published_alarms", "alarms acknowledged"),
    _counter(
        "uplink_refused_publishes",
        G,
        "uplink.refused_publishes",
        "publishes the broker refused (MQTT 5 reason code 0x80 or above)",
    ),
    _counter(
        "uplink_session_takeovers",
        G,
        "uplink.session_takeovers",
        "sessions the broker handed to another client with the same id",
    ),
    _counter("uplink_events_dropped", G, "uplink.events_dropped", "events dropped while offline"),
    _counter("uplink_commands_received", G, "uplink.commands_received", "commands received"),
    _counter("uplink_commands_dropped", G, "uplink.commands_dropped", "commands dropped unheard"),
    # the pipeline and alarms
    _counter("readings_in", G, "pipeline.readings_in", "readings the pipeline took in"),
    _gauge("readings_pending", G, "pipeline.readings_pending", "readings not yet in the buffer"),
    _counter(
        "readings_dropped",
        G,
        "pipeline.readings_dropped",
        "readings dropped because the buffer refused writes (should stay 0)",
    ),
    _counter("batches_written", G, "pipeline.batches_written", "batches written to the buffer"),
    _counter("batches_set_aside", G, "pipeline.batches_set_aside", "batches the encoder refused"),
    _counter(
        "processing_events",
        (*G, "kind"),
        "",
        "values local processing acted on, by kind (alarm_events, invalid_values, "
        "out_of_range, spikes, dropped_spikes, suppressed_by_deadband)",
    ),
    _counter("alarm_events", G, "alarms.events", "alarm events queued for the alarm lane"),
    _gauge("alarm_events_waiting", G, "alarms.waiting", "alarm events not yet acknowledged"),
    _counter("alarm_events_evicted", G, "alarms.evicted", "alarm events evicted from the queue"),
    _gauge(
        "alarms_active",
        (*G, "severity"),
        "",
        "alarms raised now, by severity (the retained alarms/active topic)",
    ),
    # events, reloads and commands
    _counter("events", (*G, "kind"), "", "events this exporter received, by kind"),
    _counter(
        "config_reloads",
        (*G, "outcome"),
        "",
        "configs switched in (applied), refused before anything changed, or rolled back",
    ),
    _counter("commands_accepted", G, "commands.accepted", "signed commands accepted"),
    _counter("command_refusals", (*G, "code"), "", "signed commands refused, by refusal code"),
    # devices
    _gauge(
        "device_state",
        (*D, "state"),
        "",
        "1 for the device's state now, 0 for the others: unknown, online, degraded, offline",
    ),
    _counter("device_requests", D, "requests", "requests sent to the device"),
    _counter("device_responses", D, "responses", "usable answers from the device"),
    _counter("device_timeouts", D, "timeouts", "requests not answered in time"),
    _counter("device_crc_errors", D, "crc_errors", "answers or frames that arrived garbled"),
    _counter("device_framing_errors", D, "framing_errors", "bursts of line noise discarded"),
    _counter("device_malformed", D, "malformed", "answers that break the protocol"),
    _counter("device_connection_errors", D, "errors", "connection failures"),
    _counter("device_invalid_values", D, "invalid_values", "values sent as invalid_value"),
    _counter("device_shed_bytes", D, "shed_bytes", "bytes beyond a serial input bound"),
    _counter("device_readings", D, "readings", "readings taken from the device"),
    _counter(
        "device_modbus_exceptions",
        (*D, "code"),
        "",
        "Modbus exception responses, by exception code",
    ),
    _gauge(
        "device_last_latency_seconds",
        D,
        "last_latency_ms",
        "how long the device took to answer its last request",
        scale=0.001,
    ),
    # the exporter itself
    _gauge("exporter_broker_connected", (), "", "1 while connected to the broker, subscribed"),
    _gauge("exporter_gateways", (), "", "gateways exported now"),
    _counter("exporter_messages", ("topic",), "", "messages received, by topic"),
    _counter(
        "exporter_rejected_messages",
        ("reason",),
        "",
        "messages dropped: not JSON, not an object, a bad gateway id or device name, a "
        "cardinality bound reached",
    ),
)

METRIC_NAMES = frozenset(spec.sample_name for spec in METRICS)


def subscriptions(prefix: str) -> list[str]:
    """The topic filters the exporter subscribes to (docs/topics.md)."""
    return [
        f"{prefix}/+/status",
        f"{prefix}/+/health",
        f"{prefix}/+/event",
        f"{prefix}/+/device/+",
        f"{prefix}/+/alarms/active",
    ]


# --- what the fleet says ---------------------------------------------------------------


@dataclass(slots=True)
class _Device:
    state: str | None = None  # from device/{name}
    state_at: float = -math.inf
    health_state: str | None = None  # from the last health report that listed it
    report: Mapping[str, Any] | None = None
    report_at: float = -math.inf

    @property
    def heard_at(self) -> float:
        return max(self.state_at, self.report_at)

    @property
    def current_state(self) -> str | None:
        """What the newer of the two messages says."""
        return self.state if self.state_at >= self.report_at else self.health_state


@dataclass(slots=True)
class _Gateway:
    heard_at: float
    status: Mapping[str, Any] | None = None
    health: Mapping[str, Any] | None = None
    alarms: Mapping[str, Any] | None = None
    devices: dict[str, _Device] = field(default_factory=dict)
    events: Counter[str] = field(default_factory=Counter)
    last_event: tuple[str, int] | None = None  # (boot_id, seq): QoS 1 may repeat one


@dataclass(frozen=True, slots=True)
class DeviceView:
    name: str
    state: str | None
    report: Mapping[str, Any] | None  # its entry in the last health report, if it had one


@dataclass(frozen=True, slots=True)
class GatewayView:
    """One gateway as a scrape sees it."""

    gateway_id: str
    heard_at: float
    status: Mapping[str, Any] | None
    health: Mapping[str, Any] | None
    alarms: Mapping[str, Any] | None
    devices: tuple[DeviceView, ...]
    events: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class FleetView:
    gateways: tuple[GatewayView, ...]
    broker_connected: bool
    messages: Mapping[str, int]
    rejected: Mapping[str, int]


class Fleet:
    """The latest of every message from every gateway (thread-safe: the MQTT side feeds it
    on the event loop, scrapes read it from the HTTP server's threads)."""

    def __init__(
        self,
        prefix: str,
        *,
        stale: float = DEFAULT_STALE,
        max_gateways: int = DEFAULT_MAX_GATEWAYS,
    ) -> None:
        self.prefix = prefix
        self.stale = stale
        self.max_gateways = max_gateways
        self.broker_connected = False
        self._gateways: dict[str, _Gateway] = {}
        self._messages: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()
        self._lock = threading.Lock()

    def ingest(self, topic: str, payload: bytes, at: float | None = None) -> None:
        """Take one message as it arrived (`at`: the exporter's unix time); never raises."""
        at = time.time() if at is None else at
        parsed = self._parse_topic(topic)
        if isinstance(parsed, str):
            self._reject(parsed)
            return
        gateway_id, kind, device = parsed
        doc: Any = None
        if payload:  # an empty retained payload clears what was there
            try:
                doc = json.loads(payload)
            except (ValueError, RecursionError):
                self._reject("not_json")
                return
            if not isinstance(doc, dict):
                self._reject("not_an_object")
                return
        with self._lock:
            self._messages[kind] += 1
            rejection = self._apply(gateway_id, kind, device, doc, at)
            if rejection is not None:
                self._rejected[rejection] += 1

    def _parse_topic(self, topic: str) -> tuple[str, str, str | None] | str:
        head = f"{self.prefix}/"
        if not topic.startswith(head):
            return "unknown_topic"
        gateway_id, _, rest = topic[len(head) :].partition("/")
        if not GATEWAY_ID.fullmatch(gateway_id):
            return "bad_gateway_id"
        if rest in ("status", "health", "event"):
            return gateway_id, rest, None
        if rest == "alarms/active":
            return gateway_id, "alarms_active", None
        if rest.startswith("device/"):
            name = rest.removeprefix("device/")
            if not DEVICE_NAME.fullmatch(name):
                return "bad_device_name"
            return gateway_id, "device", name
        return "unknown_topic"

    def _apply(
        self, gateway_id: str, kind: str, device: str | None, doc: dict[str, Any] | None, at: float
    ) -> str | None:
        """Change the state under the lock; the reason for a rejection, or None."""
        gateway = self._gateways.get(gateway_id)
        if kind == "status" and doc is None:  # the retained status cleared: decommissioned
            self._gateways.pop(gateway_id, None)
            return None
        if gateway is None:
            if doc is None:
                return None  # clearing what we never had
            if len(self._gateways) >= self.max_gateways and not self._evict_one_stale(at):
                return "too_many_gateways"
            gateway = self._gateways[gateway_id] = _Gateway(heard_at=at)
        gateway.heard_at = at
        if kind == "status":
            gateway.status = doc
        elif kind == "alarms_active":
            gateway.alarms = doc
        elif kind == "event" and doc is not None:
            _count_event(gateway, doc)
        elif kind == "health" and doc is not None:
            return _take_health(gateway, doc, at)
        elif kind == "device" and device is not None:
            return _take_device_state(gateway, device, doc, at)
        return None

    def _evict_one_stale(self, at: float) -> bool:
        """Make room for a new gateway by forgetting the one heard of longest ago, if that
        was so long ago that a scrape would not show it anyway (never a live one)."""
        oldest = min(self._gateways, key=lambda gid: self._gateways[gid].heard_at)
        if at - self._gateways[oldest].heard_at <= self.stale:
            return False
        del self._gateways[oldest]
        return True

    def _reject(self, reason: str) -> None:
        with self._lock:
            self._rejected[reason] += 1

    def set_broker_connected(self, connected: bool) -> None:
        with self._lock:
            self.broker_connected = connected

    def view(self, at: float) -> FleetView:
        """What a scrape at `at` shows: gateways and devices heard of within the staleness
        bound; the ones heard of before are forgotten here."""
        stale = self.stale
        with self._lock:
            for gateway_id in [g for g, gw in self._gateways.items() if at - gw.heard_at > stale]:
                del self._gateways[gateway_id]
            gateways = []
            for gateway_id, gw in sorted(self._gateways.items()):
                for name in [n for n, d in gw.devices.items() if at - d.heard_at > stale]:
                    del gw.devices[name]
                devices = tuple(
                    DeviceView(name, d.current_state, d.report)
                    for name, d in sorted(gw.devices.items())
                )
                gateways.append(
                    GatewayView(
                        gateway_id,
                        gw.heard_at,
                        gw.status,
                        gw.health,
                        gw.alarms,
                        devices,
                        dict(gw.events),
                    )
                )
            return FleetView(
                tuple(gateways), self.broker_connected, dict(self._messages), dict(self._rejected)
            )


def _count_event(gateway: _Gateway, doc: Mapping[str, Any]) -> None:
    boot, seq = doc.get("boot_id"), doc.get("seq")
    if isinstance(boot, str) and isinstance(seq, int):
        last = gateway.last_event
        if last is not None and last[0] == boot and seq <= last[1]:
            return  # a repeat (QoS 1 is at least once)
        gateway.last_event = (boot, seq)
    kind = doc.get("kind")
    gateway.events[kind if kind in EVENT_KINDS else "other"] += 1


def _take_health(gateway: _Gateway, doc: Mapping[str, Any], at: float) -> str | None:
    gateway.health = doc
    entries = doc.get("devices")
    if not isinstance(entries, list):
        return None
    rejection = None
    for entry in entries:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not DEVICE_NAME.fullmatch(name):
            rejection = "bad_device_name"
            continue
        device = _device(gateway, name)
        if device is None:
            rejection = "too_many_devices"
            continue
        state = entry.get("state")
        device.health_state = state if isinstance(state, str) else None
        device.report, device.report_at = entry, at
    return rejection


def _take_device_state(
    gateway: _Gateway, name: str, doc: Mapping[str, Any] | None, at: float
) -> str | None:
    if doc is None:  # cleared: a reload removed the device
        gateway.devices.pop(name, None)
        return None
    device = _device(gateway, name)
    if device is None:
        return "too_many_devices"
    state = doc.get("state")
    device.state = state if isinstance(state, str) else None
    device.state_at = at
    return None


def _device(gateway: _Gateway, name: str) -> _Device | None:
    device = gateway.devices.get(name)
    if device is None and len(gateway.devices) < MAX_DEVICES:
        device = gateway.devices[name] = _Device()
    return device


# --- the collector ----------------------------------------------------------------------

_Families = dict[str, GaugeMetricFamily | CounterMetricFamily]


class FleetCollector:
    """A `prometheus_client` collector that renders the fleet's latest snapshot."""

    def __init__(self, fleet: Fleet, clock: Callable[[], float] = time.time) -> None:
        self.fleet = fleet
        self.clock = clock

    def describe(self) -> Iterator[Metric]:
        """The families, without samples (what the registry checks names against)."""
        for spec in METRICS:
            yield spec.family()

    def collect(self) -> Iterator[Metric]:
        view = self.fleet.view(self.clock())
        families: _Families = {spec.name: spec.family() for spec in METRICS}
        for gateway in view.gateways:
            _gateway_samples(families, gateway)
            for device in gateway.devices:
                _device_samples(families, gateway.gateway_id, device)
        _exporter_samples(families, view)
        yield from families.values()


def _gateway_samples(families: _Families, gw: GatewayView) -> None:
    def add(name: str, value: float, *labels: str) -> None:
        families[name].add_metric([gw.gateway_id, *labels], value)

    add("edge_gateway_last_seen_timestamp_seconds", gw.heard_at)
    status = gw.status
    if status is not None:
        online = status.get("state") == "online"
        add("edge_gateway_up", 1.0 if online else 0.0)
        now = "online" if online else str(status.get("reason", "")).replace(" ", "_")
        for state in STATUSES:
            add("edge_gateway_status", float(state == now), state)
    identity = gw.health or status or {}
    version, config_hash = identity.get("version"), identity.get("config_hash")
    if isinstance(version, str) and isinstance(config_hash, str):
        add("edge_gateway_info", 1.0, version, config_hash)
    if gw.alarms is not None and isinstance(raised := gw.alarms.get("alarms"), list):
        severities = Counter(
            a["severity"] for a in raised if isinstance(a, dict) and a.get("severity") in SEVERITIES
        )
        for severity in SEVERITIES:
            add("edge_gateway_alarms_active", float(severities[severity]), severity)
    for event_kind, received in sorted(gw.events.items()):
        add("edge_gateway_events", float(received), event_kind)
    health = gw.health
    if health is None:
        return
    for spec in METRICS:
        if spec.labels == GATEWAY and spec.path:
            value = _value(health, spec)
            if value is not None:
                add(spec.name, value)
    if isinstance(uplink := _section(health, "uplink").get("state"), str):
        for state in UPLINK_STATES:
            add("edge_gateway_uplink_state", float(state == uplink), state)
    for kind, count in _counts(_section(health, "processing"), PROCESSING_KINDS):
        add("edge_gateway_processing_events", count, kind)
    for outcome, count in _counts(_section(health, "reloads"), RELOAD_OUTCOMES):
        add("edge_gateway_config_reloads", count, outcome)
    commands = _section(health, "commands")
    if commands:
        for code, count in _counts(_section(commands, "refused"), REFUSAL_CODES, zero=True):
            add("edge_gateway_command_refusals", count, code)


def _device_samples(families: _Families, gateway_id: str, device: DeviceView) -> None:
    def add(name: str, value: float, *labels: str) -> None:
        families[name].add_metric([gateway_id, device.name, *labels], value)

    if device.state in DEVICE_STATES:
        for state in DEVICE_STATES:
            add("edge_gateway_device_state", float(state == device.state), state)
    report = device.report
    if report is None:
        return
    for spec in METRICS:
        if spec.labels == DEVICE and spec.path:
            value = _value(report, spec)
            if value is not None:
                add(spec.name, value)
    exceptions = _section(report, "modbus_exceptions")
    for code, count in sorted(exceptions.items()):
        if isinstance(code, str) and code.isdigit() and len(code) <= 3:
            number = _number(count)
            if number is not None:
                add("edge_gateway_device_modbus_exceptions", number, code)


def _exporter_samples(families: _Families, view: FleetView) -> None:
    def add(name: str, value: float, *labels: str) -> None:
        families[name].add_metric(list(labels), value)

    add("edge_gateway_exporter_broker_connected", float(view.broker_connected))
    add("edge_gateway_exporter_gateways", float(len(view.gateways)))
    for topic in TOPIC_KINDS:
        add("edge_gateway_exporter_messages", float(view.messages.get(topic, 0)), topic)
    for reason in REJECTIONS:
        add("edge_gateway_exporter_rejected_messages", float(view.rejected.get(reason, 0)), reason)


def _section(doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    """A number a gateway reported (booleans as 1 and 0), or None for anything else."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _value(doc: Mapping[str, Any], spec: MetricSpec) -> float | None:
    """The number at `spec.path`; `spec.null_as` where it (or a section on the way) is
    null; None where it is missing or not a number (no sample, rather than a wrong one)."""
    node: Any = doc
    for key in spec.path.split("."):
        if node is None:  # a null section: as null as its fields
            break
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    if node is None:
        return spec.null_as
    if isinstance(node, list):  # a list's length (uplink.denied)
        return float(len(node))
    number = _number(node)
    return None if number is None else number * spec.scale


def _counts(
    section: Mapping[str, Any], known: tuple[str, ...], *, zero: bool = False
) -> Iterator[tuple[str, float]]:
    """The numbers of a section under its known keys only (the label values stay a closed
    list); with `zero`, every known key, 0 when absent."""
    for key in known:
        number = _number(section.get(key, 0 if zero else None))
        if number is not None:
            yield key, number


# --- the MQTT side ----------------------------------------------------------------------


async def follow(
    connection: Connection, fleet: Fleet, *, retry_min: float = 0.5, retry_max: float = 30.0
) -> NoReturn:
    """Subscribe to every gateway's topics under `fleet.prefix` and feed each message to
    the fleet, until cancelled. A broker that cannot be reached or goes away is tried
    again after a jittered back-off (`retry_min` doubling up to `retry_max`); the log
    says so once per outage, and once when the broker is back."""
    failures = 0
    where = f"the broker at {connection.address}"
    while True:
        try:
            async with CentreClient(connection) as client:
                for topic in subscriptions(fleet.prefix):
                    await client.subscribe(topic, qos=1)
                fleet.set_broker_connected(True)
                again = " again" if failures else ""
                log.info("connected to %s%s; following %s/+/...", where, again, fleet.prefix)
                failures = 0
                async for message in client.messages():
                    fleet.ingest(message.topic, message.payload)
            raise CentreError(f"{where} ended the connection")
        except (CentreError, aiomqtt.MqttError) as err:  # subscribe raises aiomqtt's own
            fleet.set_broker_connected(False)
            failures += 1
            if failures == 1:
                log.warning("%s; trying again, at most %gs apart", err, retry_max)
            else:
                log.debug("still no broker: %s", err)
            await asyncio.sleep(backoff_delay(failures, retry_min, retry_max))


def listen_address(text: str) -> tuple[str, int]:
    """Where to serve: 'host:port', '[v6 address]:port', or a host alone (port 9108), read
    as --broker reads its address. Raises ValueError with the reason."""
    address = BrokerAddress.parse(text)
    if not text.endswith(f":{address.port}"):  # no port given: ours, not MQTT's
        return address.host, DEFAULT_LISTEN_PORT
    return address.host, address.port


class MetricsServer:
    """`/metrics` over HTTP, served by prometheus_client from a thread of its own.
    Raises OSError when the address cannot be listened on (in use, not permitted)."""

    def __init__(self, collector: FleetCollector, host: str, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self._server, self._thread = start_http_server(port, host, self.registry)
        self.port: int = self._server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)
