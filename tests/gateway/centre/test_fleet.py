"""The fleet as `edge-gateway watch` shows it (gateway/centre/fleet.py and the drawing in
gateway/commands/watch.py): the retained present at once, health and events as they come,
worst first, in 80 columns."""

from __future__ import annotations

import argparse
import io
import json
from typing import Any

from rich.console import Console

from drivers.core.model import Reading
from gateway.centre.fleet import SORT_KEYS, Fleet, completeness_summary, sort_rows
from gateway.commands import watch
from gateway.wire import encode_batch

NOW = 1_795_438_800.0


def publish(fleet: Fleet, gateway: str, topic: str, doc: dict[str, Any] | bytes) -> None:
    payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    fleet.receive(f"city/{gateway}/{topic}", payload)


def a_gateway(fleet: Fleet, name: str, *, state: str = "online", ts: float = NOW - 1) -> None:
    boot = "0123456789abcdef"
    publish(fleet, name, "status", {"state": state, "gateway_id": name, "boot_id": boot, "ts": ts})
    for n, at in enumerate((ts - 30, ts)):
        publish(
            fleet,
            name,
            "health",
            {
                "gateway_id": name,
                "boot_id": boot,
                "ts": at,
                "uptime_s": 60.0 + 30 * n,
                "buffer": {
                    "open": True,
                    "batches": 3 * n,
                    "oldest_unsent_age_s": 12.5 if n else None,
                    "first_unsent_seq": 8 if n else None,
                    "last_seq": 10,
                    "boot_first_seq": 1,
                    "eviction": None,
                },
                "uplink": {"state": "online", "protocol": "5", "last_error": None, "denied": []},
                "pipeline": {"readings_pending": 0},
                "devices": [{"name": "meter", "state": "online", "offline_since": None}],
            },
        )


def test_the_retained_present_shows_devices_and_alarms_at_once() -> None:
    fleet = Fleet()
    a_gateway(fleet, "cab-1")
    publish(
        fleet,
        "cab-1",
        "device/pump",
        {"device": "pump", "state": "offline", "since": NOW - 5, "reason": "no answer", "ts": NOW},
    )
    publish(
        fleet,
        "cab-1",
        "alarms/active",
        {
            "gateway_id": "cab-1",
            "ts": NOW,
            "alarms": [{"alarm": "methane-high", "device": "gas", "point": "ch4"}],
        },
    )
    publish(fleet, "cab-1", "event", {"ts": NOW, "kind": "device_offline", "message": "pump off"})
    (row,) = fleet.rows(NOW)
    assert row["state"] == "online" and row["devices_offline"] == ["pump"]
    assert [d["name"] for d in row["devices"]] == ["meter", "pump"]  # meter from health
    assert [a["alarm"] for a in row["alarms"]] == ["methane-high"]
    assert row["events"][0]["kind"] == "device_offline"
    assert row["buffer"]["batches"] == 3 and row["buffer"]["first_unsent_seq"] == 8
    assert row["health_interval_s"] == 30.0 and row["last_seen_age_s"] == 0.0
    publish(fleet, "cab-1", "device/pump", b"")  # a reload removed it
    assert fleet.rows(NOW)[0]["devices_offline"] == []


def test_a_gateway_heard_of_for_three_health_intervals_is_silent() -> None:
    fleet = Fleet()
    a_gateway(fleet, "cab-1", ts=NOW - 91)
    assert fleet.rows(NOW)[0]["state"] == "silent"
    a_gateway(fleet, "cab-2", state="offline")
    assert fleet.rows(NOW)[1]["state"] == "offline"


def test_data_batches_fill_the_completeness_column() -> None:
    fleet = Fleet()
    a_gateway(fleet, "cab-1")
    for seq in (1, 2, 3, 5):
        fleet.receive(
            "city/cab-1/data",
            encode_batch("cab-1", "0123456789abcdef", seq, [Reading("d", "p", 1, 1)]),
        )
    fleet.receive("city/cab-1/data", b"\xc1")
    (row,) = fleet.rows(NOW)
    assert row["completeness"]["received"]["seqs"] == [[1, 3], [5, 5]]
    assert completeness_summary(row["completeness"]) == "3 missing"  # 4, 6, 7: not on disk
    assert fleet.undecodable == 1


def test_each_sort_key_puts_the_gateways_needing_attention_first() -> None:
    fleet = Fleet()
    a_gateway(fleet, "a-fine")
    a_gateway(fleet, "b-down", state="offline")
    publish(fleet, "c-dev", "device/pump", {"device": "pump", "state": "offline", "ts": NOW})
    rows = fleet.rows(NOW)
    assert [r["gateway_id"] for r in sort_rows(rows, "state")] == ["b-down", "c-dev", "a-fine"]
    assert sort_rows(rows, "devices")[0]["gateway_id"] == "c-dev"
    assert sort_rows(rows, "gateway", reverse=True)[0]["gateway_id"] == "c-dev"
    for key in SORT_KEYS:
        assert len(sort_rows(rows, key)) == 3


def test_the_sort_keys_the_command_offers_are_the_fleets() -> None:
    assert set(watch.SORT_CHOICES) == set(SORT_KEYS)


def test_the_view_fits_an_80_column_terminal_with_long_names() -> None:
    fleet = Fleet()
    a_gateway(fleet, "cabinet-with-a-very-long-name-0412-north-district")
    publish(
        fleet,
        "cabinet-with-a-very-long-name-0412-north-district",
        "event",
        {"ts": NOW, "kind": "device_offline", "message": "x" * 200},
    )
    args = argparse.Namespace(sort="state", reverse=False, once=False, broker="broker:1883")
    rows = fleet.rows(NOW)
    out = io.StringIO()
    Console(file=out, width=80, color_system=None).print(
        watch.render(rows, fleet.recent_events(6), args, 80)
    )
    lines = out.getvalue().splitlines()
    assert all(len(text) <= 80 for text in lines), lines
    assert "GATEWAY" in lines[1] and "COMPLETE" in lines[1]
    assert any("online" in text and "12s" in text for text in lines)


def test_completeness_summary_names_what_stands_out() -> None:
    def view(**counts: int) -> dict[str, Any]:
        base = {"received": 10, "on_disk": 0, "evicted": 0, "lost_at_crash": 0, "missing": 0}
        return {"counts": {**base, **counts}, "lost_at_crash": []}

    assert completeness_summary(None) == "-"
    assert completeness_summary(view()) == "ok"
    assert completeness_summary(view(on_disk=3)) == "3 on disk"
    assert completeness_summary(view(on_disk=3, evicted=2)) == "2 evicted"
    assert completeness_summary(view(missing=1, lost_at_crash=2)) == "1 missing"
    assert completeness_summary({**view(), "lost_at_crash": [{}]}) == "crash"
