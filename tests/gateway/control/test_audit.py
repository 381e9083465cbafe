"""The audit log: the last N commands, on disk; refusals written in groups."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.core.clock import ManualClock
from gateway.control import AuditEntry, AuditLog
from gateway.control.audit import REFUSAL_WRITE_INTERVAL
from gateway.state import AtomicJSONStorage


def entry(n: int, outcome: str = "accepted", reason: str | None = None) -> AuditEntry:
    return AuditEntry(
        ts=1_795_430_000.0 + n,
        synchronised=True,
        verb="ping",
        key_id="ops",
        authenticated=outcome == "accepted",
        nonce=f"{n:032x}",
        issued_at=1_795_430_000 + n,
        outcome=outcome,  # type: ignore[arg-type]
        code=None if outcome == "accepted" else "bad_signature",
        reason=reason,
    )


def test_the_audit_log_keeps_the_last_n_entries_and_survives_a_restart(tmp_path: Path) -> None:
    clock = ManualClock()
    audit = AuditLog.open(tmp_path / "audit.json", clock, size=5)
    for n in range(12):
        audit.record(entry(n))
    assert [e.nonce for e in audit.tail(10)] == [f"{n:032x}" for n in range(7, 12)]
    reopened = AuditLog.open(tmp_path / "audit.json", clock, size=5)
    assert reopened.tail(10) == audit.tail(10)
    assert reopened.tail(2) == audit.tail(10)[-2:]
    assert reopened.tail(0) == []


async def test_refusals_are_written_together_at_most_once_per_interval(tmp_path: Path) -> None:
    clock = ManualClock()
    audit = AuditLog.open(tmp_path / "audit.json", clock)
    audit.record(entry(0, "refused"))  # the first is written at once
    for n in range(1, 50):
        audit.record(entry(n, "refused"))
    on_disk = AuditLog.open(tmp_path / "audit.json", clock)
    assert len(on_disk.tail(100)) == 1  # the other 49 are held back ...
    assert len(audit.tail(100)) == 50  # ... but shown
    await clock.advance(REFUSAL_WRITE_INTERVAL)
    audit.record(entry(50, "refused"))
    assert len(AuditLog.open(tmp_path / "audit.json", clock).tail(100)) == 51


def test_an_accepted_command_writes_the_refusals_held_before_it_in_order(tmp_path: Path) -> None:
    clock = ManualClock()
    audit = AuditLog.open(tmp_path / "audit.json", clock)
    audit.record(entry(0, "refused"))
    audit.record(entry(1, "refused"))
    audit.record(entry(2))
    stored = AuditLog.open(tmp_path / "audit.json", clock).tail(10)
    assert [e.outcome for e in stored] == ["refused", "refused", "accepted"]


def test_flush_writes_what_was_held_back(tmp_path: Path) -> None:
    clock = ManualClock()
    audit = AuditLog.open(tmp_path / "audit.json", clock)
    audit.record(entry(0, "refused"))
    audit.record(entry(1, "refused"))
    audit.flush()
    assert len(AuditLog.open(tmp_path / "audit.json", clock).tail(10)) == 2


def test_finish_records_how_an_accepted_command_ended(tmp_path: Path) -> None:
    clock = ManualClock()
    audit = AuditLog.open(tmp_path / "audit.json", clock)
    audit.record(entry(0))
    audit.record(entry(0, "refused"))  # a replay of it
    audit.finish(f"{0:032x}", "failed", "device pump-7 did not answer")
    accepted, replay = AuditLog.open(tmp_path / "audit.json", clock).tail(10)
    assert accepted.outcome == "failed" and accepted.reason == "device pump-7 did not answer"
    assert replay.outcome == "refused"


def test_long_text_from_outside_is_kept_short(tmp_path: Path) -> None:
    audit = AuditLog.open(tmp_path / "audit.json", ManualClock())
    audit.record(entry(0, reason="x" * 10_000))
    (stored,) = audit.tail(1)
    assert stored.reason is not None and len(stored.reason) <= 300


def test_an_accepted_entry_that_cannot_be_written_raises_and_is_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    audit = AuditLog.open(tmp_path / "audit.json", ManualClock())

    def full(self: AtomicJSONStorage, data: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(AtomicJSONStorage, "write", full)
    with pytest.raises(OSError, match="No space"):
        audit.record(entry(0))
    assert audit.tail(10) == []
    audit.record(entry(1, "refused"))  # a refusal never raises: counted, kept in memory
    audit.flush()
    assert audit.write_errors >= 1 and [e.outcome for e in audit.tail(10)] == ["refused"]
