"""Completeness at the centre: every batch accounted for by `(gateway, boot, seq)`. Pure.

The README promises that every reading reaches the centre or is still on the gateway's
disk, and that everyone can see which. This module is how the centre sees it. Feed it
what arrives (`Accounting.receive(topic, payload)`: data batches, status, health and
events); it decodes and de-duplicates the batches and keeps, per gateway:

- the seqs **received** (as ranges), per boot, with the duplicates dropped;
- what the gateway says of itself: health's `buffer.first_unsent_seq`..`last_seq` (what
  is still **on disk**), `buffer.boot_first_seq` (where each boot's seqs begin), the
  eviction episodes of health and of the `eviction_*` events (seqs **evicted**, with the
  time span of their batches), `pipeline.readings_pending` (readings not yet in a batch);
- the boots it saw live (status, health, events) and how each ended: `stopped` (a clean
  stop writes the open batch to disk first), or `crashed` (a later boot appeared without
  a clean stop: the boot's unbatched tail is **lost at the crash**).

`completeness(gateway_id)` puts them together (docs/centre.md, "Completeness"). Every
seq from the first the centre knew of (`since_seq`) to the newest one known is exactly
one of: received; on disk; evicted; lost at a crash; skipped (between a boot's last seq
and the next boot's first: after an unclean stop seqs jump, buffer/DESIGN.md); or
missing (none of these as far as the centre can tell: still in flight, a batch whose CRC
failed on the gateway's disk, or delivered before the centre listened). The view is as
good as the messages seen: the gateway's figures are as of its last health report.

Seqs number batches per gateway and never repeat, across boots too; the boot in a
batch is the boot that made it (a backlog sent after a restart keeps its old boot id).
Nothing here does I/O or imports an MQTT client: a collector that gets its messages some
other way (a test rig, a file) uses it as it is.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Literal

from gateway.uplink.topics import Topics
from gateway.wire import Batch, DecodeError, decode_batch

__all__ = [
    "Accounting",
    "BootState",
    "Episode",
    "GatewayAccount",
    "MessageKind",
    "SeqSet",
    "json_object",
    "split_topic",
]

BootState = Literal["running", "stopped", "crashed", "gone", "earlier"]
"""running: the gateway's present boot; stopped: ended by a clean stop; crashed: a later
boot appeared without a clean stop; gone: the broker published its last will and no
later boot appeared yet; earlier: known only from its batches (a boot before the centre
listened)."""

MessageKind = Literal[
    "data", "status", "health", "event", "device", "alarms_active", "meta", "other"
]

_KINDS: tuple[tuple[str, MessageKind], ...] = (
    ("data", "data"),
    ("history", "data"),
    ("status", "status"),
    ("health", "health"),
    ("event", "event"),
    ("alarms_active", "alarms_active"),
)
_NAMED_KINDS: tuple[tuple[str, MessageKind], ...] = (("device", "device"), ("meta", "meta"))


def split_topic(prefix: str, topic: str) -> tuple[str, MessageKind] | None:
    """The gateway id and the kind of message of a topic of the scheme
    (gateway/uplink/topics.py), or None when `topic` is not under `{prefix}/`."""
    head = f"{prefix}/"
    if not topic.startswith(head):
        return None
    gateway_id = topic[len(head) :].split("/", 1)[0]
    if not gateway_id:
        return None
    topics = Topics(prefix, gateway_id)
    for attribute, kind in _KINDS:
        if topic == getattr(topics, attribute):
            return gateway_id, kind
    for method, kind in _NAMED_KINDS:
        head = getattr(topics, method)("")  # e.g. "{prefix}/{id}/device/"
        if topic.startswith(head) and len(topic) > len(head) and "/" not in topic[len(head) :]:
            return gateway_id, kind
    return gateway_id, "other"


# --- sets of seqs, as ranges -----------------------------------------------------------------


class SeqSet:
    """A set of integers kept as sorted, disjoint, non-adjacent inclusive ranges: a
    gateway's million seqs received in order are one range."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for low, high in ranges:
            self.add_range(low, high)

    def add(self, seq: int) -> bool:
        """Add one number; False when it was there already."""
        starts, ends = self._starts, self._ends
        if ends and seq == ends[-1] + 1:  # the next in order: the common case
            ends[-1] = seq
            return True
        i = bisect_right(starts, seq) - 1
        if i >= 0 and seq <= ends[i]:
            return False
        left = i >= 0 and ends[i] == seq - 1
        right = i + 1 < len(starts) and starts[i + 1] == seq + 1
        if left and right:
            ends[i] = ends[i + 1]
            del starts[i + 1], ends[i + 1]
        elif left:
            ends[i] = seq
        elif right:
            starts[i + 1] = seq
        else:
            starts.insert(i + 1, seq)
            ends.insert(i + 1, seq)
        return True

    def add_range(self, low: int, high: int) -> None:
        """Add `low`..`high` (inclusive; nothing when `high < low`)."""
        if high < low:
            return
        starts, ends = self._starts, self._ends
        i = bisect_left(ends, low - 1)  # the first range that ends at or after low - 1
        j = bisect_right(starts, high + 1)  # ranges before j start at or before high + 1
        if i < j:
            low, high = min(low, starts[i]), max(high, ends[j - 1])
        starts[i:j] = [low]
        ends[i:j] = [high]

    def __contains__(self, seq: object) -> bool:
        if not isinstance(seq, int):
            return False
        i = bisect_right(self._starts, seq) - 1
        return i >= 0 and seq <= self._ends[i]

    def __len__(self) -> int:
        return sum(high - low + 1 for low, high in self)

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self._starts, self._ends, strict=True)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SeqSet) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"SeqSet({list(self)!r})"

    __hash__ = None  # type: ignore[assignment]  # mutable

    @property
    def low(self) -> int | None:
        return self._starts[0] if self._starts else None

    @property
    def high(self) -> int | None:
        return self._ends[-1] if self._ends else None

    def ranges(self) -> list[list[int]]:
        """As JSON: `[[first, last], ...]`."""
        return [[low, high] for low, high in self]

    def minus(self, *others: SeqSet) -> SeqSet:
        """The numbers of this set in none of `others`."""
        result = self
        for other in others:
            result = result._minus(other)
        return result

    def _minus(self, other: SeqSet) -> SeqSet:
        out = SeqSet()
        o_starts, o_ends = other._starts, other._ends
        j = 0
        for low, high in self:
            while j < len(o_starts) and o_ends[j] < low:
                j += 1
            k, cursor = j, low
            while k < len(o_starts) and o_starts[k] <= high:
                if o_starts[k] > cursor:
                    out._starts.append(cursor)
                    out._ends.append(o_starts[k] - 1)
                cursor = max(cursor, o_ends[k] + 1)
                k += 1
            if cursor <= high:
                out._starts.append(cursor)
                out._ends.append(high)
        return out

    def within(self, low: int, high: int) -> SeqSet:
        """The numbers of this set from `low` to `high` (inclusive)."""
        out = SeqSet()
        for start, end in self:
            start, end = max(start, low), min(end, high)
            if start <= end:
                out._starts.append(start)
                out._ends.append(end)
        return out

    def union(self, *others: SeqSet) -> SeqSet:
        out = SeqSet(self)
        for other in others:
            for low, high in other:
                out.add_range(low, high)
        return out


# --- what one gateway said and sent ---------------------------------------------------------


@dataclass(slots=True)
class Boot:
    """One run of the gateway process, as far as the centre saw it."""

    boot_id: str
    received: SeqSet = field(default_factory=SeqSet)
    batches: int = 0
    readings: int = 0
    duplicates: int = 0
    live: bool = False  # seen in a status, health or event, not only in batches
    first_seq: int | None = None  # health's buffer.boot_first_seq
    reported_last_seq: int | None = None  # health's buffer.last_seq, at its last report
    readings_pending: int | None = None  # health's pipeline.readings_pending, likewise
    newest_reading_ms: int | None = None  # of the readings received from this boot
    started_at: float | None = None  # its health: ts - uptime_s
    first_ts: float | None = None  # the earliest ts of its live messages
    last_seen: float | None = None  # the latest ts of its live messages
    status: str | None = None  # its last status: "online" or "offline"
    status_reason: str | None = None

    @property
    def begins(self) -> float:
        """When it started, as well as the centre can tell (for ordering boots)."""
        for when in (self.started_at, self.first_ts):
            if when is not None:
                return when
        return -math.inf

    @property
    def last_seq(self) -> int | None:
        """The highest seq known to be this boot's: reported or received."""
        known = [s for s in (self.reported_last_seq, self.received.high) if s is not None]
        return max(known) if known else None

    @property
    def start_seq(self) -> int | None:
        return self.first_seq if self.first_seq is not None else self.received.low

    def seen(self, ts: float | None) -> None:
        self.live = True
        if ts is None:
            return
        self.first_ts = ts if self.first_ts is None else min(self.first_ts, ts)
        self.last_seen = ts if self.last_seen is None else max(self.last_seen, ts)


@dataclass(slots=True)
class Episode:
    """A run of evictions (health's `buffer.eviction`, the `eviction_*` events): every seq
    from `first_seq` to `last_seq` was evicted unless it was delivered."""

    boot_id: str
    first_seq: int
    last_seq: int
    batches: int
    cause: str
    oldest_created_at: float | None  # the time span of the batches lost
    newest_created_at: float | None
    active: bool

    def merge(self, other: Episode) -> None:
        self.last_seq = max(self.last_seq, other.last_seq)
        self.batches = max(self.batches, other.batches)
        self.cause = other.cause if other.batches >= self.batches else self.cause
        self.oldest_created_at = _least(self.oldest_created_at, other.oldest_created_at)
        newest = [t for t in (self.newest_created_at, other.newest_created_at) if t is not None]
        self.newest_created_at = max(newest) if newest else None
        self.active = self.active and other.active


class GatewayAccount:
    """Everything the centre knows of one gateway's seqs (module docstring)."""

    def __init__(self, gateway_id: str) -> None:
        self.gateway_id = gateway_id
        self.boots: dict[str, Boot] = {}
        self.received = SeqSet()  # every boot's
        self.batches = 0
        self.readings = 0
        self.duplicates = 0
        self.undecodable = 0  # data payloads that did not decode
        self.unreadable = 0  # status, health or event payloads that were not JSON objects
        self.episodes: dict[int, Episode] = {}  # by first_seq: an episode's never changes
        self.since_seq: int | None = None
        self.first_unsent_seq: int | None = None  # as of the newest health report
        self.last_seq: int | None = None  # likewise: the last seq handed out
        self.corrupt_batches = 0  # likewise: batches the gateway's disk lost to bit rot
        self.health_ts: float | None = None

    def boot(self, boot_id: str) -> Boot:
        found = self.boots.get(boot_id)
        if found is None:
            found = self.boots[boot_id] = Boot(boot_id)
        return found

    def _since(self, seq: int | None) -> None:
        if seq is not None and seq > 0:
            self.since_seq = seq if self.since_seq is None else min(self.since_seq, seq)

    # --- what arrives ------------------------------------------------------------------------

    def add_batch(self, batch: Batch) -> bool:
        """A decoded batch; False for a duplicate of one already received."""
        boot = self.boot(batch.boot_id)
        if not boot.received.add(batch.seq):
            boot.duplicates += 1
            self.duplicates += 1
            return False
        self.received.add(batch.seq)
        self._since(batch.seq)
        boot.batches += 1
        self.batches += 1
        count = len(batch.readings)
        boot.readings += count
        self.readings += count
        if count:
            newest = max(r.ts_ms for r in batch.readings)
            boot.newest_reading_ms = max(boot.newest_reading_ms or newest, newest)
        return True

    def add_status(self, doc: Mapping[str, Any]) -> None:
        boot_id, ts = _text(doc, "boot_id"), _number(doc, "ts")
        if boot_id is None:
            return
        boot = self.boot(boot_id)
        state = _text(doc, "state")
        if state not in ("online", "offline"):
            return
        if state == "online" and boot.status == "offline" and boot.status_reason == "stopped":
            return  # a retained birth seen after the goodbye: the goodbye stands
        boot.seen(ts)
        boot.status, boot.status_reason = state, _text(doc, "reason")

    def add_health(self, doc: Mapping[str, Any]) -> None:
        boot_id, ts = _text(doc, "boot_id"), _number(doc, "ts")
        if boot_id is None or ts is None:
            return
        boot = self.boot(boot_id)
        boot.seen(ts)
        uptime = _number(doc, "uptime_s")
        if uptime is not None:
            boot.started_at = ts - uptime
        buffer = doc.get("buffer")
        buffer = buffer if isinstance(buffer, Mapping) else {}
        pipeline = doc.get("pipeline")
        pipeline = pipeline if isinstance(pipeline, Mapping) else {}
        first_unsent, last = _int(buffer, "first_unsent_seq"), _int(buffer, "last_seq")
        if _int(buffer, "boot_first_seq") is not None:
            boot.first_seq = _int(buffer, "boot_first_seq")
        if last is not None:
            boot.reported_last_seq = max(boot.reported_last_seq or 0, last)
        boot.readings_pending = _int(pipeline, "readings_pending")
        eviction = buffer.get("eviction")
        if isinstance(eviction, Mapping):
            self._episode(boot_id, eviction, active=eviction.get("active") is not False)
        if self.health_ts is not None and ts < self.health_ts:
            return  # an older report than the one the disk figures are from
        self.health_ts = ts
        self.first_unsent_seq, self.last_seq = first_unsent, last
        self.corrupt_batches = _int(buffer, "corrupt_batches") or 0
        self._since(first_unsent)  # a backlog: accounting starts at its first seq

    def add_event(self, doc: Mapping[str, Any]) -> None:
        boot_id = _text(doc, "boot_id")
        if boot_id is None:
            return
        self.boot(boot_id).seen(_number(doc, "ts"))
        kind, data = doc.get("kind"), doc.get("data")
        if kind in ("eviction_started", "eviction_stopped") and isinstance(data, Mapping):
            self._episode(boot_id, data, active=kind == "eviction_started")

    def _episode(self, boot_id: str, doc: Mapping[str, Any], *, active: bool) -> None:
        first, last = _int(doc, "first_seq"), _int(doc, "last_seq")
        if first is None or last is None or last < first:
            return
        episode = Episode(
            boot_id,
            first,
            last,
            _int(doc, "batches") or 0,
            _text(doc, "cause") or "max_bytes",
            _number(doc, "oldest_created_at"),
            _number(doc, "newest_created_at"),
            active,
        )
        known = self.episodes.get(first)
        if known is None:
            self.episodes[first] = episode
        else:
            known.merge(episode)

    # --- what it adds up to ------------------------------------------------------------------

    def current_boot(self) -> Boot | None:
        """The boot that started last among those seen live."""
        live = [boot for boot in self.boots.values() if boot.live]
        return max(live, key=lambda boot: boot.begins) if live else None

    def boot_state(self, boot: Boot, current: Boot | None) -> BootState:
        if not boot.live:
            return "earlier"
        if boot.status == "offline" and boot.status_reason == "stopped":
            return "stopped"
        if boot is not current:
            return "crashed"
        if boot.status == "offline" and boot.status_reason == "connection lost":
            return "gone"
        return "running"

    def _skipped(self) -> SeqSet:
        """Seqs between one boot's last known seq and the next boot's first, when that
        boot's first seq is known (its health): never handed out, as far as can be told."""
        ordered = sorted(
            (boot for boot in self.boots.values() if boot.start_seq is not None),
            key=lambda boot: boot.start_seq or 0,
        )
        skipped = SeqSet()
        for before, after in pairwise(ordered):
            if after.first_seq is None or before.last_seq is None:
                continue
            skipped.add_range(before.last_seq + 1, after.first_seq - 1)
        return skipped

    def completeness(self) -> dict[str, Any]:
        """The completeness view as one JSON object (docs/centre.md, "Completeness")."""
        since = self.since_seq
        known = [
            s
            for s in (
                self.received.high,
                self.last_seq,
                *(e.last_seq for e in self.episodes.values()),
                *(b.last_seq for b in self.boots.values()),
            )
            if s is not None
        ]
        top = max(known) if known else None
        window = SeqSet([(since, top)]) if since is not None and top is not None else SeqSet()
        skipped = self._skipped().minus(self.received)
        on_disk = SeqSet()
        if self.first_unsent_seq is not None and self.last_seq is not None:
            on_disk = SeqSet([(self.first_unsent_seq, self.last_seq)]).minus(self.received, skipped)
        evicted_all = SeqSet()
        evicted: list[dict[str, Any]] = []
        for episode in sorted(self.episodes.values(), key=lambda e: e.first_seq):
            seqs = SeqSet([(episode.first_seq, episode.last_seq)]).minus(
                self.received, on_disk, evicted_all
            )
            if len(seqs) > episode.batches and since is not None:
                seqs = seqs.within(since, episode.last_seq)  # some went before we listened
            evicted_all = evicted_all.union(seqs)
            evicted.append(
                {
                    "boot_id": episode.boot_id,
                    "seqs": seqs.ranges(),
                    "batches": episode.batches,
                    "cause": episode.cause,
                    "oldest_created_at": episode.oldest_created_at,
                    "newest_created_at": episode.newest_created_at,
                    "active": episode.active,
                }
            )
        current = self.current_boot()
        lost_all = SeqSet()
        lost: list[dict[str, Any]] = []
        boots: list[dict[str, Any]] = []
        for boot in sorted(self.boots.values(), key=lambda b: (b.begins, b.start_seq or 0)):
            state = self.boot_state(boot, current)
            boots.append(_boot_json(boot, state))
            if state != "crashed":
                continue
            seqs = SeqSet()
            if boot.start_seq is not None and boot.last_seq is not None:
                seqs = (
                    SeqSet([(boot.start_seq, boot.last_seq)])
                    .minus(self.received, on_disk, evicted_all, skipped)
                    .within(since if since is not None else boot.start_seq, boot.last_seq)
                )
            lost_all = lost_all.union(seqs)
            later = [b.begins for b in self.boots.values() if b.live and b.begins > boot.begins]
            lost.append(
                {
                    "boot_id": boot.boot_id,
                    "seqs": seqs.ranges(),
                    "unbatched_readings": boot.readings_pending,
                    "newest_reading_ms": boot.newest_reading_ms,
                    "last_seen": boot.last_seen,
                    "next_boot_started_at": min(later) if later else None,
                }
            )
        missing = window.minus(self.received, on_disk, evicted_all, skipped, lost_all)
        received = self.received.within(window.low or 0, window.high or -1)
        counts = {
            "received": len(received),
            "on_disk": len(on_disk),
            "evicted": len(evicted_all),
            "lost_at_crash": len(lost_all),
            "missing": len(missing),
        }
        return {
            "gateway_id": self.gateway_id,
            "complete": not (missing or evicted_all or lost_all or lost),
            "since_seq": since,
            "last_seq": top,
            "counts": counts,
            "received": {
                "batches": self.batches,
                "readings": self.readings,
                "duplicates": self.duplicates,
                "undecodable": self.undecodable,
                "seqs": self.received.ranges(),
            },
            "on_disk": on_disk.ranges(),
            "evicted": evicted,
            "lost_at_crash": lost,
            "skipped": skipped.within(window.low or 0, window.high or -1).ranges(),
            "missing": missing.ranges(),
            "corrupt_batches": self.corrupt_batches,
            "boots": boots,
        }


# --- every gateway --------------------------------------------------------------------------


class Accounting:
    """The completeness of every gateway on a broker (module docstring).

    `receive(topic, payload)` takes any message of the topic scheme under `prefix` (what
    is not data, status, health or an event is ignored) and returns a data batch the first
    time it arrives, None otherwise; `completeness()` is the view of every gateway."""

    def __init__(self, prefix: str = "city") -> None:
        self.prefix = prefix
        self.gateways: dict[str, GatewayAccount] = {}

    def gateway(self, gateway_id: str) -> GatewayAccount:
        found = self.gateways.get(gateway_id)
        if found is None:
            found = self.gateways[gateway_id] = GatewayAccount(gateway_id)
        return found

    def receive(self, topic: str, payload: bytes) -> Batch | None:
        """One message as it arrived. A data batch received for the first time is
        returned; a duplicate or any other message gives None. A data payload that does
        not decode is counted (`undecodable`) and its DecodeError raised."""
        where = split_topic(self.prefix, topic)
        if where is None:
            return None
        gateway_id, kind = where
        if kind == "data":
            try:
                batch = decode_batch(payload)
            except DecodeError:
                self.gateway(gateway_id).undecodable += 1
                raise
            return batch if self.add_batch(batch) else None
        if kind in ("status", "health", "event"):
            doc = json_object(payload)
            if doc is None:
                if payload:  # an empty payload clears a retained message: not a fault
                    self.gateway(gateway_id).unreadable += 1
                return None
            account = self.gateway(_text(doc, "gateway_id") or gateway_id)
            {
                "status": account.add_status,
                "health": account.add_health,
                "event": account.add_event,
            }[kind](doc)
        return None

    def add_batch(self, batch: Batch) -> bool:
        """A batch decoded elsewhere; False for a duplicate."""
        return self.gateway(batch.gateway_id).add_batch(batch)

    def completeness(self, gateway_id: str | None = None) -> list[dict[str, Any]]:
        """The view of one gateway, or of every gateway in the order of their ids."""
        if gateway_id is not None:
            found = self.gateways.get(gateway_id)
            return [] if found is None else [found.completeness()]
        return [self.gateways[name].completeness() for name in sorted(self.gateways)]


# --- helpers ---------------------------------------------------------------------------------


def _boot_json(boot: Boot, state: BootState) -> dict[str, Any]:
    return {
        "boot_id": boot.boot_id,
        "state": state,
        "first_seq": boot.start_seq,
        "last_seq": boot.last_seq,
        "batches": boot.batches,
        "readings": boot.readings,
        "duplicates": boot.duplicates,
        "started_at": boot.started_at,
        "last_seen": boot.last_seen,
    }


def json_object(payload: bytes) -> dict[str, Any] | None:
    """A JSON object (what status, health, events and states are), or None for anything
    else: not JSON, or JSON that is not an object."""
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def _text(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    return value if isinstance(value, str) else None


def _int(doc: Mapping[str, Any], key: str) -> int | None:
    value = doc.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(doc: Mapping[str, Any], key: str) -> float | None:
    value = doc.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _least(a: float | None, b: float | None) -> float | None:
    known = [t for t in (a, b) if t is not None]
    return min(known) if known else None
