"""The JSON messages the gateway publishes beside its data batches: pure, no I/O.

Every message has a type here and one encoder (`encode`); docs/topics.md describes
each and docs/schemas/<name>.schema.json is its JSON Schema, which a test checks
real messages against (tests/gateway/test_messages.py). The parts of the gateway
build these types; nothing else writes JSON to the broker.

- `Status` on `{prefix}/{id}/status` (retained; birth, goodbye and last will);
- `Health` on `{prefix}/{id}/health` (periodic);
- `AlarmMessage` on `{prefix}/{id}/alarm` (raised / cleared, kept on disk until acked);
- `CommandEnvelope` on `{prefix}/{id}/cmd/{verb}`: what the centre sends, a `Command` and
  its Ed25519 signature (the rules, and the bytes signed: gateway/control/signing.py);
- `Reply` on `{prefix}/{id}/reply/{verb}` (or the MQTT 5 response topic): the answer.

Like the batch codec, this module imports nothing beyond the standard library, so
the centre can read what gateways send with `gateway.wire` alone.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "SCHEMAS",
    "AlarmMessage",
    "AlarmsHealth",
    "BufferHealth",
    "ClockHealth",
    "Command",
    "CommandEnvelope",
    "DenialHealth",
    "EvictionHealth",
    "Health",
    "Identity",
    "PipelineHealth",
    "ReloadsHealth",
    "Reply",
    "Status",
    "UplinkHealth",
    "encode",
    "to_json",
]

SCHEMAS = {
    "status": "status",
    "health": "health",
    "alarm": "alarm",
    "command": "command",
    "reply": "reply",
}
"""Message name -> the stem of its schema file in docs/schemas/."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is speaking: in every status and health message (and every batch)."""

    gateway_id: str
    boot_id: str  # 16 hex digits, new at every start
    version: str
    config_hash: str  # first 12 hex digits of the SHA-256 of the config file


@dataclass(frozen=True, slots=True)
class Status:
    """Retained: 'online' on every connect, 'offline' on a clean stop, a reconfiguration,
    or (as the MQTT last will) when the gateway vanishes."""

    state: Literal["online", "offline"]
    identity: Identity
    ts: float  # unix time the message was made
    reason: str | None = None  # offline only: "stopped", "reconfigured", "connection lost"

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"state": self.state, **dataclasses.asdict(self.identity)}
        doc["ts"] = round(self.ts, 3)
        if self.reason is not None:
            doc["reason"] = self.reason
        return doc


@dataclass(frozen=True, slots=True)
class AlarmMessage:
    """An alarm raised or cleared; `seq` numbers the alarm lane (apart from batches)."""

    gateway_id: str
    boot_id: str
    seq: int
    alarm: str
    device: str
    point: str
    state: Literal["raised", "cleared"]
    ts_ms: int  # the time of the reading that changed the state
    value: float | None
    severity: str
    message: str  # for people: "gas-3/ch4 = 21.4 %LEL is above 20 for 5s (raised)"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- remote commands ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """A remote command, as signed: every field is covered by the signature."""

    verb: str  # also the last level of the topic it is published on
    gateway_id: str  # the one gateway that may act on it
    issued_at: int  # unix time (s, an integer) at which the sender made it
    nonce: str  # 16 random bytes as 32 lowercase hex digits: never used twice
    body: dict[str, Any]  # the verb's arguments ({} for none)
    key_id: str  # the signer's key: <key_id>.pub in the gateway's trusted-keys directory

    def to_json(self) -> dict[str, Any]:
        return {
            "verb": self.verb,
            "gateway_id": self.gateway_id,
            "issued_at": self.issued_at,
            "nonce": self.nonce,
            "body": self.body,
            "key_id": self.key_id,
        }


@dataclass(frozen=True, slots=True)
class CommandEnvelope:
    """What is published on `{prefix}/{id}/cmd/{verb}`: a command and its signature."""

    command: Command
    signature: str  # base64 (RFC 4648, padded) of the 64-byte Ed25519 signature

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command.to_json(), "signature": self.signature}


@dataclass(frozen=True, slots=True)
class Reply:
    """The gateway's answer to a command: carried out (`ok`), not carried out because it
    was refused before anything was done (`refused`, with a `code`), or tried and failed
    (`failed`). `reason` says why in words; `result` is the verb's answer."""

    outcome: Literal["ok", "refused", "failed"]
    verb: str
    gateway_id: str
    nonce: str | None  # None only when the payload was too malformed to name one
    ts: float  # unix time of the reply, by the gateway's clock
    code: str | None = None  # refused: the refusal's code (bad_signature, expired, ...)
    reason: str | None = None
    result: dict[str, Any] | None = None
    note: str | None = None  # e.g. accepted while the gateway's clock was unsynchronised

    def to_json(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["ts"] = round(self.ts, 3)
        return doc


# --- health ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClockHealth:
    synchronised: bool  # the kernel says NTP has set the clock (or clock_sync = "assume")
    steps: int  # wall-clock steps seen since the start
    last_step_s: float | None  # the last one, seconds (negative: back)


@dataclass(frozen=True, slots=True)
class EvictionHealth:
    """The current (or last) run of evictions of the data buffer."""

    cause: str  # "max_bytes", "max_age" or "both"
    active: bool
    started_at: float
    ended_at: float | None
    first_seq: int
    last_seq: int
    batches: int
    bytes: int
    oldest_created_at: float  # the time range of the batches lost
    newest_created_at: float


@dataclass(frozen=True, slots=True)
class BufferHealth:
    open: bool  # False while a full disk keeps it from opening (data waits in memory)
    open_error: str | None
    batches: int
    bytes: int  # payload bytes
    disk_bytes: int  # every file of the buffer, as bounded by max_bytes
    max_bytes: int
    oldest_unsent_age_s: float | None  # never negative
    last_seq: int
    evicted_batches: int
    evicted_bytes: int
    evicted_by_age_batches: int
    recovered_from: str | None
    salvaged_batches: int
    unreadable_batches: int
    corrupt_batches: int  # dropped on read: their CRC-32 failed (bit rot on the card)
    corrupt_bytes: int
    eviction: EvictionHealth | None
    # What the centre needs to account for every seq (gateway/centre/accounting.py):
    first_unsent_seq: int | None = None  # the lowest seq on disk (not yet acknowledged)
    boot_first_seq: int | None = None  # the first seq this boot hands out; None: not open
    # Batches published from memory, neither acknowledged nor written to disk yet ([buffer]
    # write = "unacked"): a power cut loses them. Their seqs are within ..last_seq.
    in_memory_batches: int = 0
    # Since this boot, of the batches published from memory: acknowledged in time and never
    # written, and written because the broker had not acknowledged them in time (an outage:
    # what the SD card paid for).
    acked_from_memory: int = 0
    written_from_memory: int = 0


@dataclass(frozen=True, slots=True)
class DenialHealth:
    """A topic the broker currently refuses to store publishes on (MQTT 5)."""

    topic: str
    reason_code: int
    reason: str
    since: float
    refused: int


@dataclass(frozen=True, slots=True)
class UplinkHealth:
    state: str  # connecting, online, denied, offline, stopped
    protocol: str
    connected_since: float | None
    connects: int
    published_batches: int
    published_history_batches: int
    published_bytes: int
    published_alarms: int
    last_error: str | None
    last_reason_code: int | None
    denied: list[DenialHealth]
    refused_publishes: int
    session_takeovers: int
    takeover_since: float | None
    events_dropped: int = 0  # events and state changes dropped while offline (oldest first)
    commands: str = "off"  # the command subscription: off, pending, subscribed, refused: ...
    commands_received: int = 0
    commands_dropped: int = 0  # the queue was full, or the connection ended while waiting


@dataclass(frozen=True, slots=True)
class AlarmsHealth:
    events: int
    waiting: int
    evicted: int


@dataclass(frozen=True, slots=True)
class PipelineHealth:
    readings_in: int
    readings_pending: int
    batches_written: int
    readings_dropped: int
    batches_set_aside: int
    readings_set_aside: int


@dataclass(frozen=True, slots=True)
class ReloadsHealth:
    applied: int  # configs switched in (then committed or rolled back)
    refused: int  # configs refused before anything changed (problems in the file)
    last_error: str | None
    rolled_back: int = 0  # configs switched back out: they broke what worked before


@dataclass(frozen=True, slots=True)
class Health:
    """The periodic health report: every part's section, one snapshot."""

    identity: Identity
    ts: float
    uptime_s: float
    clock: ClockHealth
    buffer: BufferHealth
    uplink: UplinkHealth
    alarms: AlarmsHealth
    processing: dict[str, int]
    pipeline: PipelineHealth
    reloads: ReloadsHealth
    devices: list[dict[str, Any]] = field(default_factory=list)  # drivers' DeviceHealth
    commands: dict[str, Any] | None = None  # the command gate's section; None: off

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = dataclasses.asdict(self.identity)
        doc["ts"] = round(self.ts, 3)
        doc["uptime_s"] = round(self.uptime_s, 1)
        for name in ("clock", "buffer", "uplink", "alarms"):
            doc[name] = dataclasses.asdict(getattr(self, name))
        doc["processing"] = dict(self.processing)
        doc["pipeline"] = dataclasses.asdict(self.pipeline)
        doc["reloads"] = dataclasses.asdict(self.reloads)
        doc["devices"] = list(self.devices)
        doc["commands"] = self.commands
        return doc


Message = Status | Health | AlarmMessage | CommandEnvelope | Reply


def to_json(message: Message) -> dict[str, Any]:
    """The JSON document of a message, as its schema describes it."""
    return message.to_json()


def encode(message: Message) -> bytes:
    """The bytes published: compact JSON, UTF-8. Never NaN or infinities (not JSON)."""
    return json.dumps(to_json(message), separators=(",", ":"), allow_nan=False).encode()
