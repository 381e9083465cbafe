"""Replay protection and the time window of signed commands.

A command is fresh when its `issued_at` lies within `window` seconds (default 300)
either side of the gateway's clock and its nonce has never been accepted. The rules:

1. **Nonces are remembered, on disk, for as long as a command carrying them could
   still be accepted**, and forgotten after. The store keeps a *horizon*: the time
   below which it has forgotten nonces. Any command issued before the horizon is
   refused (`expired`), whatever the clock says, so forgetting a nonce can never reopen
   a replay: not after a restart, not after the clock steps back. Each accepted nonce
   is written (gateway/state.py: whole or absent at a power cut) before the command is
   acted on; a nonce that cannot be written refuses the command (`not_recorded`).
2. **A store that was lost starts with its horizon at the present** (first start, a
   file deleted or set aside as unreadable): commands issued before it was opened are
   refused, since their nonces are unknown. A command issued the same second as such a
   start may be refused too; send it again. With the clock unsynchronised at that
   moment (it may be a year ahead), the horizon is set at the first moment it is
   synchronised instead; until then only nonces protect (a double fault: state lost
   and no NTP).
3. **With the clock synchronised** (NTP has set it, `Clock.synchronised()`): older than
   `window` is `expired`, further ahead than `window` is `from_the_future`.
4. **With the clock unsynchronised** (a Raspberry Pi has no real-time clock: after a
   boot it runs from a stale time until NTP steps it), the age of a command cannot be
   judged. The gateway then knows only a lower bound of the true time: the last time it
   saw its clock synchronised (kept on disk with the nonces, at each accepted command
   and at each `checkpoint()`, hourly) plus the monotonic time elapsed since this run
   read it. A command issued more than `window` before that bound is certainly stale
   and refused as `expired`; any later one is accepted **on its new nonce alone**, and
   the reply and the audit log say so (`Fresh.time_checked` is False, with a note).

   What an attacker holding an old signed command can do then: not replay a command
   this gateway accepted (rule 1); not use one issued more than `window` before the
   gateway last knew the time (rule 4). What remains: a command signed for this
   gateway that it never received (held back in transit, or never delivered), issued
   after that moment, can be delivered late, once, while the clock is unsynchronised.
   The verbs decide what that may do: one that changes the gateway can refuse to act
   when `time_checked` is False (the operator resends once NTP has set the clock).
   Refusing every command while unsynchronised instead would leave a technician unable
   to ask a gateway that has no NTP what is wrong with it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinydb import TinyDB
from tinydb.table import Document

from buffer.episodes import format_time
from drivers.core.clock import Clock
from gateway.clock import format_span
from gateway.control.refusals import Refusal
from gateway.state import open_state, storage_of
from gateway.wire.messages import Command

log = logging.getLogger("gateway.control.replay")

DEFAULT_WINDOW = 300.0  # seconds either side of the gateway's clock
CHECKPOINT_INTERVAL = 3600.0  # seconds between writes of the last synchronised time
_DOC_ID = 1


@dataclass(frozen=True, slots=True)
class Fresh:
    """A command that may be acted on, once its nonce is remembered."""

    time_checked: bool  # False: the clock was unsynchronised (rule 4 of the module)
    note: str | None  # for the reply and the audit when time_checked is False


class ReplayGuard:
    """Nonces and the time window (the module docstring states the rules).

    `judge` only looks; `remember` makes an accepted nonce durable and must succeed
    before the command is acted on. Not thread-safe: one caller at a time (the gate
    holds a lock around judge and remember)."""

    def __init__(self, db: TinyDB, clock: Clock, *, window: float = DEFAULT_WINDOW) -> None:
        if not 0 < window <= 86400:
            raise ValueError(f"the time window must be within (0, 86400] seconds, not {window}")
        self.clock = clock
        self.window = window
        self._table = db.table("replay")
        self._storage = storage_of(db)
        self.path = self._storage.path
        self._floor_mono = clock.monotonic()
        doc = self._table.get(doc_id=_DOC_ID)
        state = _valid_state(doc)
        if state is None:
            if doc is not None:
                log.warning(
                    "the nonce store %s held something unusable: starting afresh, refusing "
                    "commands issued before now (or before the clock is synchronised)",
                    self.path,
                )
            # Rule 2; an unsynchronised clock may be a year ahead, so the horizon waits
            # for the first synchronised reading (lower_bound()).
            synchronised = clock.synchronised()
            self._horizon = float(math.floor(clock.time())) if synchronised else 0.0
            self._horizon_pending = not synchronised
            self._floor_wall = clock.time() if synchronised else 0.0
            self._nonces: dict[str, int] = {}
        else:
            self._horizon, self._horizon_pending, self._floor_wall, self._nonces = state
        self._floor_saved = self._floor_wall

    @classmethod
    def open(cls, path: Path, clock: Clock, *, window: float = DEFAULT_WINDOW) -> ReplayGuard:
        return cls(open_state(path), clock, window=window)

    @property
    def remembered(self) -> int:
        """Nonces remembered now."""
        return len(self._nonces)

    @property
    def set_aside(self) -> int:
        """Unreadable nonce files moved aside in this run."""
        return len(self._storage.set_aside)

    @property
    def horizon(self) -> float:
        """Commands issued before this unix time are refused: their nonces are forgotten."""
        return self._horizon

    def lower_bound(self) -> float:
        """The true time is at least this: the last synchronised time + monotonic elapsed."""
        if self.clock.synchronised():
            self._floor_wall, self._floor_mono = self.clock.time(), self.clock.monotonic()
            if self._horizon_pending:
                self._horizon = max(self._horizon, float(math.floor(self._floor_wall)))
                self._horizon_pending = False
        return self._floor_wall + max(0.0, self.clock.monotonic() - self._floor_mono)

    def judge(self, command: Command) -> Fresh | Refusal:
        issued = command.issued_at
        lower = self.lower_bound()
        when, window = format_time(issued), format_span(self.window)
        if command.nonce in self._nonces:
            return Refusal(
                "replayed",
                f"nonce {command.nonce} was accepted already (a command issued at "
                f"{format_time(self._nonces[command.nonce])}): this is a replay, or the "
                "sender reused a nonce",
            )
        if issued < self._horizon:
            return Refusal(
                "expired",
                f"issued at {when}, before {format_time(self._horizon)}: this gateway keeps "
                "no nonces of commands that old, so it cannot tell a replay",
            )
        if self.clock.synchronised():
            age = self.clock.time() - issued
            if age > self.window:
                return Refusal(
                    "expired",
                    f"issued {format_span(age)} ago (at {when}); commands are accepted for "
                    f"{window} either side of the gateway's clock",
                )
            if -age > self.window:
                return Refusal(
                    "from_the_future",
                    f"issued {format_span(-age)} ahead of the gateway's clock (at {when}), "
                    f"more than the {window} allowed: is the sender's clock right?",
                )
            return Fresh(True, None)
        if issued < lower - self.window:
            return Refusal(
                "expired",
                f"issued at {when}, at least {format_span(lower - issued)} ago: the gateway's "
                f"clock is not synchronised, but it last knew the time as {format_time(lower)} "
                f"or later, and commands are accepted for {window}",
            )
        return Fresh(
            False,
            "accepted on its new nonce alone: the gateway's clock is not synchronised (no "
            f"NTP yet), so only that it was issued after {format_time(lower - self.window)} "
            "could be checked",
        )

    def remember(self, command: Command) -> None:
        """Store the nonce durably (and forget those now beyond the horizon). Raises
        OSError when it cannot be written; nothing is changed then."""
        self._write(extra=(command.nonce, command.issued_at))

    def checkpoint(self) -> bool:
        """Write the last synchronised time if it moved on by an hour; True if written.
        Raises OSError when it cannot be written."""
        lower = self.lower_bound()
        if not self.clock.synchronised() or lower - self._floor_saved < CHECKPOINT_INTERVAL:
            return False
        self._write(extra=None)
        return True

    def _write(self, extra: tuple[str, int] | None) -> None:
        lower = self.lower_bound()
        horizon = max(self._horizon, math.floor(lower - self.window))
        nonces = {nonce: at for nonce, at in self._nonces.items() if at >= horizon}
        if extra is not None:
            nonces[extra[0]] = extra[1]
        doc = {
            "horizon": horizon,
            "horizon_pending": self._horizon_pending,
            "floor": lower,
            "nonces": nonces,
        }
        self._table.upsert(Document(doc, doc_id=_DOC_ID))
        self._horizon, self._nonces, self._floor_saved = horizon, nonces, lower


def _valid_state(doc: Any) -> tuple[float, bool, float, dict[str, int]] | None:
    if not isinstance(doc, dict):
        return None
    horizon, floor, nonces = doc.get("horizon"), doc.get("floor"), doc.get("nonces")
    pending = doc.get("horizon_pending", False)
    if not (
        isinstance(horizon, int | float)
        and isinstance(pending, bool)
        and isinstance(floor, int | float)
        and isinstance(nonces, dict)
        and all(isinstance(n, str) and isinstance(t, int) for n, t in nonces.items())
    ):
        return None
    return float(horizon), pending, float(floor), dict(nonces)
