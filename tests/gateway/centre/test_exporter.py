"""The exporter's logic, fed JSON as the broker would deliver it: what a scrape shows for a
gateway's status, health, events, device states and alarms; the staleness bound; the
bounds of cardinality; messages that are not a gateway's; the catalogue against
docs/exporter.md and the Grafana dashboard."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from gateway.centre.exporter import (
    DEVICE_STATES,
    MAX_DEVICES,
    METRIC_NAMES,
    METRICS,
    Fleet,
    FleetCollector,
    MetricsServer,
    listen_address,
)
from gateway.control.refusals import REFUSAL_CODES

REPO = Path(__file__).resolve().parents[3]
T0 = 1_800_000_000.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Scraper:
    """A fleet, and what Prometheus would read from it at a given time."""

    def __init__(self, stale: float = 60.0, **fleet: Any) -> None:
        self.fleet = Fleet("city", stale=stale, **fleet)
        self.now = T0
        self.registry = CollectorRegistry()
        self.registry.register(FleetCollector(self.fleet, clock=lambda: self.now))

    def feed(self, topic: str, doc: Any, *, after: float = 0.0) -> None:
        self.now += after
        payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        self.fleet.ingest(f"city/{topic}", payload, at=self.now)

    def scrape(self, *, after: float = 0.0) -> Samples:
        self.now += after
        text = generate_latest(self.registry).decode()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """The samples of one metric, by the value of one of their labels."""
    return {dict(labels)[label]: v for (n, labels), v in samples.items() if n == name}


def names(samples: Samples, **labels: str) -> set[str]:
    """The sample names carrying at least these labels."""
    wanted = set(labels.items())
    return {name for name, have in samples if wanted <= have}


def device(name: str, state: str, **counters: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "address": "unit 1 at 127.0.0.1:502",
        "state": state,
        "requests": 48,
        "responses": 47,
        "timeouts": 1,
        "crc_errors": 0,
        "framing_errors": 0,
        "malformed": 0,
        "errors": 0,
        "modbus_exceptions": {},
        "invalid_values": 0,
        "shed_bytes": 0,
        "readings": 72,
        "last_error": None,
        "last_latency_ms": 2.5,
        "offline_since": None,
    }
    entry.update(counters)
    return entry


def health(*devices: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """A health report with the fields the exporter reads (docs/schemas/health.schema.json)."""
    doc: dict[str, Any] = {
        "gateway_id": "gw-1",
        "boot_id": "9d24c916ecb403a0",
        "version": "0.2.0",
        "config_hash": "106ab88809e8",
        "ts": T0,
        "uptime_s": 3600.5,
        "clock": {"synchronised": True, "steps": 0, "last_step_s": None},
        "buffer": {
            "open": True,
            "batches": 12,
            "bytes": 48000,
            "disk_bytes": 90000,
            "max_bytes": 256000000,
            "oldest_unsent_age_s": 42.5,
            "evicted_batches": 3,
            "evicted_bytes": 12000,
            "evicted_by_age_batches": 0,
            "corrupt_batches": 0,
            "eviction": None,
        },
        "uplink": {
            "state": "offline",
            "connects": 4,
            "published_batches": 900,
            "published_history_batches": 30,
            "published_bytes": 123456,
            "published_alarms": 2,
            "denied": [],
            "refused_publishes": 0,
            "session_takeovers": 0,
            "events_dropped": 0,
            "commands_received": 1,
            "commands_dropped": 0,
        },
        "alarms": {"events": 2, "waiting": 0, "evicted": 0},
        "processing": {"alarm_events": 2, "invalid_values": 1, "spikes": 5},
        "pipeline": {
            "readings_in": 10_000,
            "readings_pending": 20,
            "batches_written": 930,
            "readings_dropped": 0,
            "batches_set_aside": 0,
            "readings_set_aside": 0,
        },
        "reloads": {"applied": 1, "refused": 2, "last_error": None, "rolled_back": 0},
        "devices": list(devices),
        "commands": {"accepted": 3, "refused": {"bad_signature": 2}},
    }
    doc.update(sections)
    return doc


def online(gateway: str = "gw-1") -> dict[str, Any]:
    return {
        "state": "online",
        "gateway_id": gateway,
        "boot_id": "9d24c916ecb403a0",
        "version": "0.2.0",
        "config_hash": "106ab88809e8",
        "ts": T0,
    }


# --- what a scrape shows ------------------------------------------------------------------


def test_a_health_report_becomes_the_gateways_and_its_devices_metrics() -> None:
    s = Scraper()
    s.feed("gw-1/status", online())
    s.feed(
        "gw-1/health",
        health(device("pump", "online"), device("gas", "degraded", modbus_exceptions={"2": 3})),
    )
    m = s.scrape()
    gw = {"gateway": "gw-1"}
    assert value(m, "edge_gateway_up", **gw) == 1
    assert value(m, "edge_gateway_status", **gw, state="online") == 1
    assert value(m, "edge_gateway_status", **gw, state="connection_lost") == 0
    assert value(m, "edge_gateway_info", **gw, version="0.2.0", config_hash="106ab88809e8") == 1
    assert value(m, "edge_gateway_last_seen_timestamp_seconds", **gw) == T0
    assert value(m, "edge_gateway_uptime_seconds", **gw) == 3600.5
    assert value(m, "edge_gateway_buffer_batches", **gw) == 12
    assert value(m, "edge_gateway_buffer_bytes", **gw) == 48000
    assert value(m, "edge_gateway_buffer_oldest_unsent_age_seconds", **gw) == 42.5
    assert value(m, "edge_gateway_buffer_evicted_batches_total", **gw) == 3
    assert value(m, "edge_gateway_buffer_evicting", **gw) == 0
    assert value(m, "edge_gateway_uplink_state", **gw, state="offline") == 1
    assert value(m, "edge_gateway_uplink_state", **gw, state="online") == 0
    assert value(m, "edge_gateway_uplink_connects_total", **gw) == 4
    assert value(m, "edge_gateway_uplink_denied_topics", **gw) == 0
    assert value(m, "edge_gateway_readings_in_total", **gw) == 10_000
    assert value(m, "edge_gateway_readings_dropped_total", **gw) == 0
    assert value(m, "edge_gateway_processing_events_total", **gw, kind="spikes") == 5
    assert value(m, "edge_gateway_config_reloads_total", **gw, outcome="refused") == 2
    assert value(m, "edge_gateway_commands_accepted_total", **gw) == 3
    assert value(m, "edge_gateway_clock_synchronised", **gw) == 1

    pump, gas = {**gw, "device": "pump"}, {**gw, "device": "gas"}
    assert value(m, "edge_gateway_device_state", **pump, state="online") == 1
    assert value(m, "edge_gateway_device_state", **pump, state="offline") == 0
    assert value(m, "edge_gateway_device_state", **gas, state="degraded") == 1
    assert value(m, "edge_gateway_device_requests_total", **pump) == 48
    assert value(m, "edge_gateway_device_timeouts_total", **pump) == 1
    assert value(m, "edge_gateway_device_last_latency_seconds", **pump) == 0.0025
    assert value(m, "edge_gateway_device_modbus_exceptions_total", **gas, code="2") == 3


def test_the_documented_health_example_is_read_without_a_rejection() -> None:
    text = (REPO / "docs" / "topics.md").read_text()
    example = re.search(r"```json\n(.*?)```", text.split("\n## health\n", 1)[1], re.DOTALL)
    assert example is not None
    s = Scraper()
    s.feed("cabinet-0412/health", json.loads(example.group(1)))
    m = s.scrape()
    assert "edge_gateway_buffer_batches" in names(m, gateway="cabinet-0412")
    assert "edge_gateway_device_requests_total" in names(m, gateway="cabinet-0412")
    assert not any(v for (n, _), v in m.items() if n.startswith("edge_gateway_exporter_rejected"))


def test_the_last_will_says_the_gateway_is_down_and_why() -> None:
    s = Scraper()
    s.feed("gw-1/status", online())
    s.feed("gw-1/status", {**online(), "state": "offline", "reason": "connection lost"}, after=5)
    m = s.scrape()
    assert value(m, "edge_gateway_up", gateway="gw-1") == 0
    assert value(m, "edge_gateway_status", gateway="gw-1", state="connection_lost") == 1
    assert value(m, "edge_gateway_status", gateway="gw-1", state="online") == 0
    assert value(m, "edge_gateway_last_seen_timestamp_seconds", gateway="gw-1") == T0 + 5


def test_a_device_state_newer_than_the_health_report_decides_the_state() -> None:
    s = Scraper()
    s.feed("gw-1/health", health(device("pump", "online")))
    s.feed("gw-1/device/pump", {"device": "pump", "state": "offline", "since": T0}, after=1)
    m = s.scrape()
    assert (
        value(m, "edge_gateway_device_state", gateway="gw-1", device="pump", state="offline") == 1
    )
    assert value(m, "edge_gateway_device_requests_total", gateway="gw-1", device="pump") == 48

    s.feed("gw-1/health", health(device("pump", "online")), after=1)  # it came back
    m = s.scrape()
    assert value(m, "edge_gateway_device_state", gateway="gw-1", device="pump", state="online") == 1


def test_a_device_known_only_by_its_retained_state_has_a_state_and_no_counters() -> None:
    s = Scraper()
    s.feed("gw-1/device/pump", {"device": "pump", "state": "unknown"})
    m = s.scrape()
    assert names(m, device="pump") == {"edge_gateway_device_state"}
    assert {dict(labels)["state"] for n, labels in m if n == "edge_gateway_device_state"} == set(
        DEVICE_STATES
    )


def test_the_oldest_unsent_age_is_zero_when_nothing_waits_and_eviction_is_shown() -> None:
    s = Scraper()
    buffer = {**health()["buffer"], "oldest_unsent_age_s": None, "eviction": {"active": True}}
    s.feed("gw-1/health", health(buffer=buffer))
    m = s.scrape()
    assert value(m, "edge_gateway_buffer_oldest_unsent_age_seconds", gateway="gw-1") == 0
    assert value(m, "edge_gateway_buffer_evicting", gateway="gw-1") == 1


def test_events_are_counted_by_kind_and_a_repeated_event_once() -> None:
    s = Scraper()
    boot = "9d24c916ecb403a0"
    for seq, kind in [(1, "device_offline"), (2, "device_online"), (2, "device_online")]:
        s.feed("gw-1/event", {"boot_id": boot, "seq": seq, "kind": kind, "data": {}})
    s.feed("gw-1/event", {"boot_id": "0" * 16, "seq": 1, "kind": "device_offline"})  # new boot
    s.feed("gw-1/event", {"boot_id": "0" * 16, "seq": 2, "kind": "something_new"})
    m = s.scrape()
    assert value(m, "edge_gateway_events_total", gateway="gw-1", kind="device_offline") == 2
    assert value(m, "edge_gateway_events_total", gateway="gw-1", kind="device_online") == 1
    assert value(m, "edge_gateway_events_total", gateway="gw-1", kind="other") == 1


def test_active_alarms_are_counted_by_severity() -> None:
    s = Scraper()
    alarm = {"alarm": "ch4-high", "device": "gas", "point": "ch4", "since_ms": 1, "value": 25.0}
    raised = [{**alarm, "severity": "critical"}, {**alarm, "alarm": "x", "severity": "critical"}]
    s.feed("gw-1/alarms/active", {"gateway_id": "gw-1", "ts": T0, "alarms": raised})
    m = s.scrape()
    assert value(m, "edge_gateway_alarms_active", gateway="gw-1", severity="critical") == 2
    assert value(m, "edge_gateway_alarms_active", gateway="gw-1", severity="warning") == 0
    s.feed("gw-1/alarms/active", {"gateway_id": "gw-1", "ts": T0, "alarms": []})
    m = s.scrape()
    assert value(m, "edge_gateway_alarms_active", gateway="gw-1", severity="critical") == 0


def test_command_refusals_are_exported_for_every_refusal_code() -> None:
    s = Scraper()
    s.feed("gw-1/health", health())
    m = s.scrape()
    codes = by_label(m, "edge_gateway_command_refusals_total", "code")
    assert codes == {code: (2.0 if code == "bad_signature" else 0.0) for code in REFUSAL_CODES}
    s.feed("gw-1/health", health(commands=None))  # commands off: no refusals to speak of
    assert "edge_gateway_command_refusals_total" not in names(s.scrape(), gateway="gw-1")


# --- what goes away -----------------------------------------------------------------------


def test_a_gateway_not_heard_of_for_the_staleness_bound_is_no_longer_exported() -> None:
    s = Scraper(stale=60)
    s.feed("gw-1/status", online("gw-1"))
    s.feed("gw-1/health", health(device("pump", "online")))
    s.feed("gw-2/status", online("gw-2"), after=50)
    assert names(s.scrape(after=9), gateway="gw-1")  # 59 s: still there
    m = s.scrape(after=2)  # 61 s
    assert not names(m, gateway="gw-1")
    assert names(m, gateway="gw-2")
    assert value(m, "edge_gateway_exporter_gateways") == 1


def test_a_device_no_health_report_lists_any_more_goes_after_the_staleness_bound() -> None:
    s = Scraper(stale=60)
    s.feed("gw-1/health", health(device("pump", "online"), device("old", "online")))
    for _ in range(4):
        s.feed("gw-1/health", health(device("pump", "online")), after=20)
    m = s.scrape()
    assert names(m, device="pump")
    assert not names(m, device="old")


def test_a_cleared_retained_message_removes_the_device_or_the_gateway_at_once() -> None:
    s = Scraper()
    s.feed("gw-1/status", online())
    s.feed("gw-1/device/pump", {"device": "pump", "state": "online"})
    s.feed("gw-1/device/pump", b"")  # a reload removed it
    assert not names(s.scrape(), device="pump")
    s.feed("gw-1/status", b"")  # decommissioned: its retained status cleared
    assert not names(s.scrape(), gateway="gw-1")


# --- what is not a gateway's --------------------------------------------------------------


def test_messages_that_are_not_a_gateways_are_counted_and_dropped() -> None:
    s = Scraper()
    s.feed("gw-1/health", b"{not json")
    s.feed("gw-1/health", [1, 2])
    s.feed("a gateway/status", online())
    s.feed("gw-1/somewhere/else", {})
    s.feed("gw-1/health", {"buffer": "full", "uplink": {"state": 7}, "devices": [3, {"x": 1}]})
    m = s.scrape()
    rejected = by_label(m, "edge_gateway_exporter_rejected_messages_total", "reason")
    assert {reason: n for reason, n in rejected.items() if n} == {
        "not_json": 1,
        "not_an_object": 1,
        "bad_gateway_id": 1,
        "unknown_topic": 1,
        "bad_device_name": 1,
    }
    assert names(m, gateway="gw-1") == {"edge_gateway_last_seen_timestamp_seconds"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
health_like = st.fixed_dictionaries(
    {},
    optional=dict.fromkeys(
        (
            *("buffer", "uplink", "devices", "commands", "processing", "clock", "version"),
            *("alarms", "state", "reason", "kind", "seq", "boot_id", "config_hash"),
        ),
        json_values,
    ),
)


@settings(max_examples=100, deadline=None)
@given(
    topic=st.sampled_from(["health", "status", "event", "alarms/active", "device/d"]),
    doc=health_like,
)
def test_any_json_on_any_topic_never_breaks_a_scrape(topic: str, doc: dict[str, Any]) -> None:
    s = Scraper()
    s.fleet.ingest(f"city/gw-1/{topic}", json.dumps(doc).encode(), at=T0)
    s.scrape()


def test_the_number_of_gateways_and_devices_is_bounded() -> None:
    s = Scraper(stale=60, max_gateways=2)
    for gateway in ("gw-1", "gw-2", "gw-3"):
        s.feed(f"{gateway}/status", online(gateway))
    m = s.scrape()
    assert value(m, "edge_gateway_exporter_gateways") == 2
    assert value(m, "edge_gateway_exporter_rejected_messages_total", reason="too_many_gateways")
    s.feed("gw-3/status", online("gw-3"), after=61)  # the others went quiet: room again
    assert value(s.scrape(), "edge_gateway_exporter_gateways") == 1

    many = [device(f"d{i}", "online") for i in range(MAX_DEVICES + 5)]
    s.feed("gw-3/health", health(*many))
    m = s.scrape()
    assert (
        len({labels for n, labels in m if n == "edge_gateway_device_requests_total"}) == MAX_DEVICES
    )
    assert value(m, "edge_gateway_exporter_rejected_messages_total", reason="too_many_devices")


# --- the catalogue, its documentation and the dashboard -----------------------------------


def test_every_metric_is_documented_with_its_type_in_docs_exporter_md() -> None:
    doc = (REPO / "docs" / "exporter.md").read_text()
    for spec in METRICS:
        row = re.search(rf"^\| `{spec.sample_name}` \|([^|]*)\|", doc, re.MULTILINE)
        assert row is not None, f"docs/exporter.md has no row for {spec.sample_name}"
        assert spec.kind in row.group(1), f"{spec.sample_name}: documented as {row.group(1)}"
    documented = set(re.findall(r"^\| `(edge_gateway_\w+)`", doc, re.MULTILINE))
    assert documented == METRIC_NAMES, "docs/exporter.md names metrics the exporter lacks"


def test_the_grafana_dashboard_is_importable_and_queries_only_exported_metrics() -> None:
    dashboard = json.loads((REPO / "config" / "grafana" / "edge-gateway-fleet.json").read_text())
    assert dashboard["title"] and dashboard["uid"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p.get("type") != "row"]
    assert panels
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    used: set[str] = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            used |= set(re.findall(r"\bedge_gateway_\w+", target["expr"]))
    for variable in variables.values():
        used |= set(re.findall(r"\bedge_gateway_\w+", json.dumps(variable.get("query", ""))))
    assert used, "the dashboard queries no metric"
    assert used <= METRIC_NAMES, f"not exported: {sorted(used - METRIC_NAMES)}"
    titles = " ".join(p["title"].lower() for p in panels)
    for subject in (
        "up",
        "offline devices",
        "buffer",
        "oldest unsent",
        "readings",
        "evict",
        "alarm",
    ):
        assert subject in titles, f"no panel about {subject}"


# --- serving, and the command line --------------------------------------------------------


def test_metrics_are_served_over_http_in_the_exposition_format() -> None:
    fleet = Fleet("city")
    fleet.ingest("city/gw-1/status", json.dumps(online()).encode())
    server = MetricsServer(FleetCollector(fleet), "127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as r:
            content_type, text = r.headers["Content-Type"], r.read().decode()
    finally:
        server.close()
    assert content_type.startswith("text/plain; version=0.0.4")
    assert 'edge_gateway_up{gateway="gw-1"} 1.0' in text
    assert "# TYPE edge_gateway_device_requests_total counter" in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9200", ("127.0.0.1", 9200)),
        ("0.0.0.0", ("0.0.0.0", 9108)),
        ("[::1]:9300", ("::1", 9300)),
        ("[::1]", ("::1", 9108)),
        ("localhost:1883", ("localhost", 1883)),
    ],
)
def test_a_listen_address_without_a_port_takes_9108(text: str, expected: tuple[str, int]) -> None:
    assert listen_address(text) == expected


def exporter(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "exporter", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--broker", "127.0.0.1", "--listen", "127.0.0.1:http"], "port must be a number"),
        (["--broker", "127.0.0.1", "--stale", "500ms"], "at least 1s"),
        (["--broker", ":1883"], "names no host"),
    ],
)
def test_bad_arguments_are_said_in_a_sentence_and_exit_2(args: list[str], said: str) -> None:
    done = exporter(*args)
    assert done.returncode == 2
    assert said in done.stderr
    assert "Traceback" not in done.stderr


def test_a_listen_address_in_use_is_said_and_exits_3() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = exporter("--broker", "127.0.0.1:1", "--listen", f"127.0.0.1:{port}")
    assert done.returncode == 3
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr
