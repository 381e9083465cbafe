"""Config flashing: every new config goes through one path, and comes back if it breaks
what worked.

A config reaches the running gateway four ways: SIGHUP (`systemctl reload`, the file
edited in place), `edge-gateway apply FILE` (a technician on site: the file is handed
over beside the buffer, then SIGHUP), the `reload` and `config-apply` commands, and
`edge-gateway config rollback`. All of them call `Gateway.apply_config`, which:

1. **validates** the candidate (a config with problems is refused: the running one
   stays, untouched; history says `refused` with the errors);
2. **keeps it aside** in `<state dir>/configs/<hash>.toml` (0600), with the running one;
3. **switches** in the running process (drivers replaced; the open batch, the buffer,
   the alarm and processing state of unchanged points kept);
4. watches a **health window** (`HealthWindow`): the broker is reached again if it was
   connected before, and every device that answered before answers again (one that
   was fully online must be fully online: a config that makes a device refuse a
   register is a regression). The window closes as soon as all of that is true, or
   after "a few polls" of the slowest device (`window_seconds`);
5. **commits** (history `committed`; the config file the service was started with
   now holds the candidate, written atomically, so a restart runs it too), or **rolls
   back** to the config that ran before (switched in again, written back to the file,
   history `rolled_back` with the reason, an event `config_rolled_back`).

What worked before is the yardstick, so a change made while the uplink is down is not
rolled back for a broker it could not reach either.

History (`config-history.json`, TinyDB on the atomic storage of gateway/state.py) holds
the last `HISTORY_SIZE` attempts: hash, source, time, outcome, reason, previous hash.
`edge-gateway config history` reads it; `config rollback` hands a kept config back.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tinydb import TinyDB

from drivers.base import DeviceHealth
from gateway.state import FILE_MODE, fsync_directory, make_directory, open_state

if TYPE_CHECKING:  # the daemon runs on the config's records (gateway/loaded.py)
    from gateway.settings import GatewayConfig

log = logging.getLogger("gateway.flashing")

HISTORY_FILE = "config-history.json"
CONFIGS_DIR = "configs"
INCOMING_FILE = "incoming.toml"  # `edge-gateway apply` hands a file to the service here
HISTORY_SIZE = 100
TABLE = "history"
MIN_WINDOW = 5.0
MAX_WINDOW = 300.0
POLLS = 3  # "answers again within a few polls"

Outcome = Literal["applying", "committed", "rolled_back", "refused"]
FINAL: frozenset[str] = frozenset({"committed", "rolled_back", "refused"})


def state_dir(config: GatewayConfig) -> Path:
    """Where the small state lives: beside the data buffer (/var/lib/edge-gateway)."""
    return config.buffer.path.parent


def sha256_hash(raw: bytes) -> str:
    """The config hash as everything shows it (12 hex digits of the SHA-256)."""
    return hashlib.sha256(raw).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Applied:
    """How a config went through the flashing path."""

    outcome: Literal["committed", "rolled_back", "refused"]
    config_hash: str | None  # None: the file could not even be read
    previous: str  # the config running before
    reason: str | None  # refused / rolled back: why; committed: a note, if any
    window_s: float  # how long the health window could last

    def result(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "config_hash": self.config_hash,
            "previous": self.previous,
            "reason": self.reason,
            "window_s": round(self.window_s, 1),
        }


# --- history ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    id: int  # increasing; the CLI waits for the entry of its hash newer than it started
    hash: str
    source: str  # sighup, apply, command <key>, rollback, start
    ts: float  # unix time the attempt started
    outcome: Outcome
    previous: str | None  # the config running before
    reason: str | None = None  # refused / rolled back: why; committed: notes
    finished: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ConfigHistory:
    """The history of configs tried on this gateway (one writer: the daemon)."""

    def __init__(self, db: TinyDB, *, size: int = HISTORY_SIZE) -> None:
        self.db = db
        self.size = size
        self.write_errors = 0

    @classmethod
    def open(cls, directory: Path) -> ConfigHistory:
        return cls(open_state(directory / HISTORY_FILE))

    def entries(self) -> list[HistoryEntry]:
        docs = sorted(self.db.table(TABLE).all(), key=lambda d: d.get("id", 0))
        return [e for e in (_entry(d) for d in docs) if e is not None]

    def last_committed(self, *, before: str | None = None) -> HistoryEntry | None:
        """The newest committed (or started) config other than `before`."""
        for entry in reversed(self.entries()):
            if entry.outcome == "committed" and entry.hash != before:
                return entry
        return None

    def record(self, entry: HistoryEntry) -> HistoryEntry:
        """Add an attempt (its `id` is assigned here); errors are logged, not raised."""
        entries = self.entries()
        entry = _replace(entry, id=(entries[-1].id + 1) if entries else 1)
        self._write([*entries, entry])
        return entry

    def finish(self, entry: HistoryEntry, outcome: Outcome, reason: str | None) -> HistoryEntry:
        done = _replace(entry, outcome=outcome, reason=reason, finished=time.time())
        self._write([done if e.id == entry.id else e for e in self.entries()])
        return done

    def _write(self, entries: Sequence[HistoryEntry]) -> None:
        kept = list(entries)[-self.size :]
        try:
            self.db.storage.write({TABLE: {str(e.id): e.to_json() for e in kept}})
        except OSError as err:
            self.write_errors += 1
            log.warning(
                "cannot write the config history (%s); the config is applied all the same", err
            )


def read_history(directory: Path) -> list[HistoryEntry]:
    """The history as the daemon last wrote it (for the CLI; never writes)."""
    path = directory / HISTORY_FILE
    if not path.exists():
        return []
    return ConfigHistory(TinyDB(path, storage=_ReadOnly)).entries()


class _ReadOnly:
    """A TinyDB storage that reads the daemon's file and refuses to write it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def read(self) -> dict[str, dict[str, Any]] | None:
        import json

        try:
            doc = json.loads(Path(self.path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        raise OSError("the config history is written by the gateway only")

    def close(self) -> None:
        pass


def _entry(doc: dict[str, Any]) -> HistoryEntry | None:
    try:
        return HistoryEntry(**doc)
    except TypeError:
        return None  # written by another version: skipped, not fatal


def _replace(entry: HistoryEntry, **changes: Any) -> HistoryEntry:
    return HistoryEntry(**{**entry.to_json(), **changes})


# --- kept configs ----------------------------------------------------------------------------


class KeptConfigs:
    """Config files kept aside by hash in `<state dir>/configs/` (0600), the candidates
    and the ones that ran; pruned to those the history still names."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory / CONFIGS_DIR

    def path(self, config_hash: str) -> Path:
        return self.directory / f"{config_hash}.toml"

    def keep(self, raw: bytes) -> Path:
        path = self.path(sha256_hash(raw))
        if not path.exists():
            make_directory(self.directory)  # durably: keep() returned means kept
            write_atomically(path, raw)
        return path

    def read(self, config_hash: str) -> bytes | None:
        try:
            return self.path(config_hash).read_bytes()
        except OSError:
            return None

    def prune(self, keep: Iterable[str]) -> None:
        wanted = set(keep)
        with contextlib.suppress(OSError):
            for path in self.directory.glob("*.toml"):
                if path.stem not in wanted:
                    path.unlink()


def write_atomically(path: Path, raw: bytes, mode: int = FILE_MODE) -> None:
    """Temp file, fsync, rename over, fsync the directory: whole or absent at a power cut."""
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, raw)
        os.fsync(fd)
    finally:
        os.close(fd)
    temp.replace(path)
    fsync_directory(path.parent)


# --- the health window -----------------------------------------------------------------------


def one_poll_seconds(device: object) -> float:
    """The longest a device can take to deliver its next readings: a poll interval and
    every attempt timing out, or a streaming device's stale_after."""
    poll = getattr(device, "poll_interval", None)
    timeout = getattr(device, "timeout", None) or 0.0
    retries = getattr(device, "retries", None) or 0
    stale = getattr(device, "stale_after", None)
    longest = 0.0
    if poll is not None:
        longest = poll + timeout * (retries + 1)
    if stale is not None and (poll is None or getattr(device, "mode", "") == "streaming"):
        longest = max(longest, stale)
    return longest


def window_seconds(config: GatewayConfig, *, reconnects: bool) -> float:
    """How long a new config has to show it works: a few polls of its slowest device,
    and a reconnect to the broker when its [mqtt] section or gateway id changed."""
    mqtt = config.mqtt
    longest = 2 * mqtt.connect_timeout + mqtt.reconnect_max if reconnects else 0.0
    for device in config.devices:
        longest = max(longest, POLLS * one_poll_seconds(device))
    return min(max(longest, MIN_WINDOW), MAX_WINDOW)


@dataclass(frozen=True, slots=True)
class Baseline:
    """What worked before the switch: the yardstick of the window."""

    broker: bool  # the uplink was connected
    devices: dict[str, str]  # name: state, for devices that answered (online/degraded)


def baseline(uplink_state: str, devices: Iterable[DeviceHealth]) -> Baseline:
    return Baseline(
        uplink_state in ("online", "denied"),
        {d.name: d.state for d in devices if d.state in ("online", "degraded")},
    )


class HealthWindow:
    """Judges a new config against the baseline: `missing()` lists what does not work
    yet (empty: it may commit)."""

    def __init__(
        self,
        before: Baseline,
        uplink_state: Callable[[], str],
        devices: Callable[[], Iterable[DeviceHealth]],
    ) -> None:
        self.before = before
        self.uplink_state = uplink_state
        self.devices = devices
        self.broker_seen = False

    def missing(self) -> list[str]:
        problems: list[str] = []
        if self.uplink_state() in ("online", "denied"):
            self.broker_seen = True
        if self.before.broker and not self.broker_seen:
            problems.append(f"the broker is not reached (uplink {self.uplink_state()})")
        now = {d.name: d for d in self.devices()}
        for name, was in sorted(self.before.devices.items()):
            health = now.get(name)
            if health is None:
                continue  # removed by the new config: nothing to compare
            if was == "online" and health.state != "online":
                why = f": {health.last_error}" if health.last_error else ""
                problems.append(f"device {name!r} was online and is {health.state}{why}")
            elif was == "degraded" and health.state not in ("online", "degraded"):
                why = f": {health.last_error}" if health.last_error else ""
                problems.append(f"device {name!r} answered before and is {health.state}{why}")
        return problems
