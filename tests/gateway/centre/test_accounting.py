"""Completeness at the centre (gateway/centre/accounting.py): every seq a gateway handed
out is received, on its disk, evicted, lost at a crash, skipped, or missing, and the
centre says which."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.centre.accounting import Accounting, SeqSet, split_topic
from gateway.wire import DecodeError
from tests.gateway.centre.helpers import GW, A, B, batch, event, feed, health, status, view

# --- seq sets --------------------------------------------------------------------------------


@given(
    st.lists(st.tuples(st.integers(0, 60), st.integers(0, 8))),
    st.lists(st.tuples(st.integers(0, 60), st.integers(0, 8))),
    st.integers(0, 70),
    st.integers(0, 70),
)
def test_a_seq_set_behaves_like_a_set_of_integers(
    adds: list[tuple[int, int]], others: list[tuple[int, int]], low: int, high: int
) -> None:
    ours, model = SeqSet(), set()
    for start, length in adds:
        if length == 0:
            assert ours.add(start) == (start not in model)
            model.add(start)
        else:
            ours.add_range(start, start + length - 1)
            model |= set(range(start, start + length))
    theirs = SeqSet((s, s + n) for s, n in others)
    their_model = {x for s, n in others for x in range(s, s + n + 1)}
    assert {x for lo, hi in ours for x in range(lo, hi + 1)} == model
    assert len(ours) == len(model)
    assert all(hi + 1 < lo for (_, hi), (lo, _) in zip(ours, list(ours)[1:], strict=False))
    assert set(_expand(ours.minus(theirs))) == model - their_model
    assert set(_expand(ours.union(theirs))) == model | their_model
    assert set(_expand(ours.within(low, high))) == {x for x in model if low <= x <= high}
    assert all((x in ours) == (x in model) for x in range(-1, 72))


def _expand(seqs: SeqSet) -> list[int]:
    return [x for lo, hi in seqs for x in range(lo, hi + 1)]


# --- topics ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("city/cab-1/data", ("cab-1", "data")),
        ("city/cab-1/data/history", ("cab-1", "data")),
        ("city/cab-1/health", ("cab-1", "health")),
        ("city/cab-1/device/data", ("cab-1", "device")),
        ("city/cab-1/device/status", ("cab-1", "device")),
        ("city/cab-1/meta/106ab88809e8", ("cab-1", "meta")),
        ("city/cab-1/alarms/active", ("cab-1", "alarms_active")),
        ("city/cab-1/reply/ping", ("cab-1", "other")),
        ("town/cab-1/data", None),
        ("city/", None),
    ],
)
def test_a_topic_is_split_into_its_gateway_and_kind_even_for_a_device_named_data(
    topic: str, expected: tuple[str, str] | None
) -> None:
    assert split_topic("city", topic) == expected


# --- accounting ------------------------------------------------------------------------------


def test_duplicates_are_dropped_and_a_whole_run_of_seqs_is_complete() -> None:
    accounting = Accounting()
    new = feed(accounting, *[("data", batch(seq)) for seq in (1, 2, 2, 3, 1, 4)])
    assert new == [1, 2, 3, 4]
    got = view(accounting)
    assert got["received"] == {
        "batches": 4,
        "readings": 8,
        "duplicates": 2,
        "undecodable": 0,
        "seqs": [[1, 4]],
    }
    assert got["complete"] and got["missing"] == [] and got["counts"]["received"] == 4


def test_the_same_seq_from_another_boot_is_not_a_duplicate_of_this_one() -> None:
    accounting = Accounting()
    assert feed(accounting, ("data", batch(7, A)), ("data", batch(7, B))) == [7, 7]
    assert view(accounting)["received"]["duplicates"] == 0


def test_a_gap_the_gateway_still_holds_on_disk_is_on_disk_not_missing() -> None:
    accounting = Accounting()
    feed(accounting, ("data", batch(1)), ("data", batch(4)))
    assert view(accounting)["missing"] == [[2, 3]]
    feed(accounting, ("health", health(first_unsent=2, last=5)))
    got = view(accounting)
    assert (got["on_disk"], got["missing"], got["complete"]) == ([[2, 3], [5, 5]], [], True)
    feed(accounting, ("data/history", batch(2)), ("data/history", batch(3)), ("data", batch(5)))
    got = view(accounting)
    assert (got["on_disk"], got["received"]["seqs"]) == ([], [[1, 5]])


def test_a_backlog_on_disk_starts_the_account_at_its_first_seq() -> None:
    accounting = Accounting()
    feed(accounting, ("data", batch(50)), ("health", health(first_unsent=20, last=50)))
    got = view(accounting)
    assert (got["since_seq"], got["on_disk"], got["missing"]) == (20, [[20, 49]], [])


def test_evicted_seqs_are_those_of_the_episode_that_never_arrived_with_their_time_span() -> None:
    accounting = Accounting()
    feed(accounting, *[("data", batch(seq)) for seq in (1, 2, 5, 9, 10)])
    episode = {
        "cause": "max_bytes",
        "first_seq": 3,
        "last_seq": 6,
        "batches": 3,
        "bytes": 300,
        "oldest_created_at": 900.0,
        "newest_created_at": 905.0,
    }
    feed(accounting, ("event", event("eviction_started", **episode)))
    feed(
        accounting,
        ("event", event("eviction_stopped", **{**episode, "last_seq": 8, "batches": 5})),
        ("health", health(first_unsent=None, last=10)),
    )
    got = view(accounting)
    (evicted,) = got["evicted"]
    assert evicted["seqs"] == [[3, 4], [6, 8]] and evicted["batches"] == 5
    assert (evicted["oldest_created_at"], evicted["newest_created_at"]) == (900.0, 905.0)
    assert not evicted["active"]
    assert got["missing"] == [] and got["counts"]["evicted"] == 5 and not got["complete"]


def test_an_eviction_in_health_is_merged_with_the_same_episode_from_the_events() -> None:
    accounting = Accounting()
    episode = {"cause": "max_age", "first_seq": 1, "last_seq": 4, "batches": 4}
    feed(accounting, ("event", event("eviction_started", **episode)))
    feed(
        accounting,
        ("health", health(first_unsent=7, last=8, eviction={**episode, "active": True})),
        ("data", batch(5)),
        ("data", batch(6)),
    )
    got = view(accounting)
    assert len(got["evicted"]) == 1 and got["evicted"][0]["active"]
    assert got["evicted"][0]["seqs"] == [[1, 4]] and got["on_disk"] == [[7, 8]]
    assert got["missing"] == []


def test_a_clean_stop_and_restart_is_complete() -> None:
    accounting = Accounting()
    feed(
        accounting,
        ("status", status(A, "online", ts=990.0)),
        ("health", health(A, first_unsent=None, last=0, boot_first=1)),
        *[("data", batch(seq, A)) for seq in (1, 2, 3)],
        ("status", status(A, "offline", "stopped", ts=1005.0)),
        ("status", status(B, "online", ts=1010.0)),
        ("health", health(B, ts=1020.0, uptime=10.0, first_unsent=None, last=4, boot_first=4)),
        ("data", batch(4, B)),
    )
    got = view(accounting)
    assert [(b["boot_id"], b["state"]) for b in got["boots"]] == [(A, "stopped"), (B, "running")]
    assert got["complete"] and got["lost_at_crash"] == [] and got["skipped"] == []


def test_a_crash_shows_the_boots_unbatched_tail_and_the_seq_jump_is_skipped_not_missing() -> None:
    accounting = Accounting()
    feed(
        accounting,
        ("status", status(A, "online", ts=990.0)),
        ("health", health(A, ts=1000.0, first_unsent=9, last=10, boot_first=1, pending=37)),
        *[("data", batch(seq, A)) for seq in range(1, 9)],
        # killed: the broker's last will, then a new boot whose seqs jumped the lease
        ("status", status(A, "offline", "connection lost", ts=990.0)),
        ("status", status(B, "online", ts=1010.0)),
        (
            "health",
            health(B, ts=1012.0, uptime=2.0, first_unsent=9, last=1_000_010, boot_first=1_000_011),
        ),
    )
    got = view(accounting)
    assert got["on_disk"] == [[9, 10]] and got["missing"] == []
    assert got["skipped"] == [[11, 1_000_010]]
    (crash,) = got["lost_at_crash"]
    assert crash["boot_id"] == A and crash["unbatched_readings"] == 37
    assert crash["seqs"] == [] and crash["next_boot_started_at"] == 1010.0
    assert crash["newest_reading_ms"] == 1_795_000_000_000 + 8
    assert not got["complete"]
    # the backlog of the dead boot arrives under its own boot id; seq 10 never does
    feed(
        accounting,
        ("data/history", batch(9, A)),
        ("data", batch(1_000_011, B)),
        (
            "health",
            health(
                B, ts=1013.0, uptime=3.0, first_unsent=None, last=1_000_011, boot_first=1_000_011
            ),
        ),
    )
    got = view(accounting)
    assert got["lost_at_crash"][0]["seqs"] == [[10, 10]]
    assert got["missing"] == [] and got["on_disk"] == []
    assert got["counts"] == {
        "received": 10,
        "on_disk": 0,
        "evicted": 0,
        "lost_at_crash": 1,
        "missing": 0,
    }


def test_a_gateway_that_lost_its_link_is_gone_not_crashed_until_another_boot_appears() -> None:
    accounting = Accounting()
    feed(
        accounting,
        ("status", status(A, "online")),
        ("status", status(A, "offline", "connection lost")),
    )
    assert view(accounting)["boots"][0]["state"] == "gone"
    feed(accounting, ("status", status(A, "online", ts=1100.0)))
    assert view(accounting)["boots"][0]["state"] == "running"


def test_a_late_last_will_of_an_old_boot_does_not_make_it_the_present_one() -> None:
    accounting = Accounting()
    feed(
        accounting,
        ("health", health(B, ts=1020.0, uptime=5.0, first_unsent=None, last=3, boot_first=3)),
        ("status", status(A, "offline", "connection lost", ts=900.0)),
    )
    states = {b["boot_id"]: b["state"] for b in view(accounting)["boots"]}
    assert states == {A: "crashed", B: "running"}


def test_boots_known_only_from_their_batches_are_earlier_ones() -> None:
    accounting = Accounting()
    feed(
        accounting,
        ("health", health(B, first_unsent=3, last=20, boot_first=11)),
        ("data/history", batch(3, A)),
        ("data/history", batch(4, A)),
    )
    got = view(accounting)
    assert {b["boot_id"]: b["state"] for b in got["boots"]} == {A: "earlier", B: "running"}
    assert got["skipped"] == [[5, 10]] and got["on_disk"] == [[11, 20]]


def test_a_payload_that_does_not_decode_is_counted_and_raised() -> None:
    accounting = Accounting()
    with pytest.raises(DecodeError):
        accounting.receive(f"city/{GW}/data", b"\x93garbage")
    assert view(accounting)["received"]["undecodable"] == 1


def test_messages_that_are_not_json_objects_or_belong_elsewhere_are_ignored() -> None:
    accounting = Accounting()
    for topic, payload in [
        (f"city/{GW}/health", b"not json"),
        (f"city/{GW}/status", b"[1, 2]"),
        (f"city/{GW}/status", b""),
        (f"city/{GW}/health", json.dumps({"boot_id": 7, "ts": "x"}).encode()),
        (f"city/{GW}/event", json.dumps({"boot_id": A, "kind": "eviction_started"}).encode()),
        (f"city/{GW}/device/pump", b"{}"),
        ("elsewhere/x/data", b"\x00"),
    ]:
        assert accounting.receive(topic, payload) is None
    assert accounting.gateways[GW].unreadable == 2
    assert view(accounting)["complete"]
