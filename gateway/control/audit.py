"""The audit log of remote commands: every one accepted or refused, the last N kept.

Each entry (`AuditEntry`) says when (the gateway's clock, and whether it was
synchronised), which verb, which key (as claimed: `authenticated` says whether the
signature was checked and held), the nonce, the outcome (`accepted`, `refused`, and
for accepted commands later `ok` or `failed`), the refusal's code and the reason in
words. It lives in a TinyDB state file (gateway/state.py: 0600, whole or absent at a
power cut), bounded to the last `size` entries; `tail(n)` gives the newest for the
health report.

Writes, and what a power cut can lose:

- an **accepted** command's entry is written before `record` returns (the gate
  records it before the command is acted on), and so is its outcome (`finish`);
- **refusals** are held in memory and written together, at most once per
  `refusal_write_interval` (default 10 s), by the next write or by `flush()`: anyone
  who can publish on the broker can send refused payloads by the thousand, and each
  write rewrites the whole file on an SD card. A power cut loses at most that
  interval of refusals; `tail` shows them meanwhile.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from tinydb import Query, TinyDB

from drivers.core.clock import Clock
from gateway.state import open_state, storage_of

log = logging.getLogger("gateway.control.audit")

DEFAULT_SIZE = 500  # entries kept: about 100 kB on disk
REFUSAL_WRITE_INTERVAL = 10.0  # seconds between writes of held-back refusals
MAX_TEXT = 300  # characters of a reason (or a claimed key id) kept

Outcome = Literal["accepted", "refused", "ok", "failed"]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    ts: float  # the gateway's unix time when it judged the command
    synchronised: bool  # whether the gateway's clock was synchronised then
    verb: str  # the topic's verb
    key_id: str | None  # as the command claims it
    authenticated: bool  # the signature was checked with that trusted key and held
    nonce: str | None
    issued_at: int | None
    outcome: Outcome
    code: str | None  # the refusal's code
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["ts"] = round(self.ts, 3)
        return doc


class AuditLog:
    """The last `size` commands judged, on disk (module docstring). Not thread-safe."""

    def __init__(
        self,
        db: TinyDB,
        clock: Clock,
        *,
        size: int = DEFAULT_SIZE,
        refusal_write_interval: float = REFUSAL_WRITE_INTERVAL,
    ) -> None:
        if size < 1:
            raise ValueError(f"the audit log keeps at least 1 entry, not {size}")
        self.clock = clock
        self.size = size
        self.refusal_write_interval = refusal_write_interval
        self._table = db.table("audit")
        self._storage = storage_of(db)
        self._held: list[AuditEntry] = []
        self._last_write = float("-inf")  # monotonic
        self.write_errors = 0
        self.last_error: str | None = None

    @classmethod
    def open(cls, path: Path, clock: Clock, *, size: int = DEFAULT_SIZE) -> AuditLog:
        return cls(open_state(path), clock, size=size)

    @property
    def set_aside(self) -> int:
        """Unreadable audit files moved aside in this run."""
        return len(self._storage.set_aside)

    def record(self, entry: AuditEntry) -> None:
        """Keep `entry`: written now if accepted (raises OSError if it cannot be, and
        keeps nothing of it), held back with the other refusals otherwise."""
        entry = _bounded(entry)
        self._held.append(entry)
        if entry.outcome == "accepted":
            try:
                self._write()
            except OSError:  # not stored: the caller refuses the command, and records that
                self._held = [held for held in self._held if held is not entry]
                raise
        else:
            self._held = self._held[-self.size :]
            if self.clock.monotonic() - self._last_write >= self.refusal_write_interval:
                self._write_logged()

    def finish(self, nonce: str, outcome: Literal["ok", "failed"], reason: str | None) -> None:
        """Record how an accepted command ended (raises OSError if it cannot be written)."""
        self._write()  # what was held first, in order
        entry = Query()
        self._table.update(
            {"outcome": outcome, "reason": _cut(reason)},
            (entry.nonce == nonce) & (entry.outcome == "accepted"),
        )

    def flush(self) -> None:
        """Write the refusals held back, if any (errors are logged and counted)."""
        if self._held:
            self._write_logged()

    def tail(self, n: int = 10) -> list[AuditEntry]:
        """The newest `n` entries, oldest first, including refusals not yet written."""
        if n <= 0:
            return []
        stored = [_entry(doc) for doc in self._table.all()[-n:]]
        return [*stored, *self._held][-n:]

    def _write_logged(self) -> None:
        try:
            self._write()
        except OSError as err:
            self.write_errors += 1
            self.last_error = f"{err.strerror or err}"
            log.warning("cannot write the command audit log (%s); kept in memory", err)

    def _write(self) -> None:
        self._last_write = self.clock.monotonic()
        if not self._held:
            return
        held, self._held = self._held, []
        try:
            self._table.insert_multiple(entry.to_json() for entry in held)
        except BaseException:
            self._held = held + self._held
            raise
        ids = [doc.doc_id for doc in self._table.all()]  # in insertion order
        if len(ids) > self.size:
            try:
                self._table.remove(doc_ids=ids[: len(ids) - self.size])
            except OSError as err:  # stored all the same; the bound holds at the next write
                log.warning("cannot trim the command audit log (%s)", err)


def _cut(text: str | None) -> str | None:
    if text is None or len(text) <= MAX_TEXT:
        return text
    return text[: MAX_TEXT - 3] + "..."


def _bounded(entry: AuditEntry) -> AuditEntry:
    """Text from outside (a claimed key id, a reason quoting a payload) kept short."""
    key_id, reason = _cut(entry.key_id), _cut(entry.reason)
    if key_id is entry.key_id and reason is entry.reason:
        return entry
    doc = asdict(entry)
    doc.update(key_id=key_id, reason=reason)
    return AuditEntry(**doc)


def _entry(doc: dict[str, Any]) -> AuditEntry:
    return AuditEntry(
        ts=float(doc.get("ts", 0.0)),
        synchronised=bool(doc.get("synchronised", False)),
        verb=str(doc.get("verb", "")),
        key_id=doc.get("key_id"),
        authenticated=bool(doc.get("authenticated", False)),
        nonce=doc.get("nonce"),
        issued_at=doc.get("issued_at"),
        outcome=doc.get("outcome", "refused"),
        code=doc.get("code"),
        reason=doc.get("reason"),
    )
