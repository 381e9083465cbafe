"""The gate every remote command passes: accepted (and recorded), or refused with a reason.

`CommandGate.check(verb, payload)` takes the verb of the topic a payload came on
(`{prefix}/{id}/cmd/{verb}`) and the payload, and answers `Accepted` or `Refused`. It
never raises for anything in the payload. The checks, in this order (each refusal's
code in brackets; gateway/control/refusals.py lists them):

1. the payload is a well-formed envelope (gateway/control/signing.py) [malformed];
2. the signed verb is the topic's [wrong_verb];
3. the key it names is trusted here (gateway/control/keys.py) [unknown_key];
4. the signature verifies over the whole command [bad_signature];
5. it is signed for this gateway [wrong_gateway], for a verb it has [unknown_verb];
6. it is fresh: within the time window, its nonce never accepted
   (gateway/control/replay.py) [expired, from_the_future, replayed];
7. its nonce, then its audit entry, are on disk [not_recorded].

Only then is it `Accepted`: act on it, then call `finish()` with how it ended. So a
payload nobody trusted signed learns nothing beyond steps 1-4, and every reason for
the later refusals concerns a genuinely signed command.

Every command judged goes to the audit log (gateway/control/audit.py). Refusals are
counted by code (`health()`) and logged once per burst of the same (key, code): the
first is logged as a warning, the rest counted until `BURST_QUIET` seconds pass
without one (or `BURST_REPEAT` since the burst was last logged), when the next is
logged with how many came between. Unauthenticated refusals share one burst per code,
whatever key they claim, so that random key ids cannot flood the log or the memory.

`check`, `finish` and `flush` write state files with fsync (milliseconds on an SD
card): from the event loop, call them through `asyncio.to_thread`. They are
thread-safe.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from drivers.core.clock import Clock
from drivers.core.words import shown
from gateway.control.audit import DEFAULT_SIZE, AuditEntry, AuditLog
from gateway.control.keys import DEFAULT_TRUSTED_KEYS, TrustedKeys, TrustReport
from gateway.control.refusals import REFUSAL_CODES, UNAUTHENTICATED, Refusal, RefusalCode
from gateway.control.replay import DEFAULT_WINDOW, ReplayGuard
from gateway.control.signing import MAX_PAYLOAD, parse, verify
from gateway.wire.messages import Command, Reply

log = logging.getLogger("gateway.control")

BURST_QUIET = 60.0  # seconds without a refusal of the same (key, code) end its burst
BURST_REPEAT = 600.0  # seconds after which a burst still going is logged again
NONCES_FILE = "command-nonces.json"
AUDIT_FILE = "command-audit.json"


@dataclass(frozen=True, slots=True)
class Accepted:
    """A command to carry out. Its nonce and its audit entry are on disk already."""

    command: Command
    gateway_id: str
    time_checked: bool  # False: accepted while the clock was unsynchronised (replay.py)
    note: str | None

    def reply(
        self,
        outcome: Literal["ok", "failed"],
        *,
        ts: float,
        result: dict[str, Any] | None = None,
        reason: str | None = None,
    ) -> Reply:
        return Reply(
            outcome,
            self.command.verb,
            self.gateway_id,
            self.command.nonce,
            ts,
            reason=reason,
            result=result,
            note=self.note,
        )


@dataclass(frozen=True, slots=True)
class Refused:
    """A payload not acted on, and why."""

    refusal: Refusal
    verb: str  # the topic's verb
    gateway_id: str  # this gateway's
    nonce: str | None  # None when the payload was too malformed to name one
    key_id: str | None  # as claimed

    @property
    def code(self) -> RefusalCode:
        return self.refusal.code

    def reply(self, *, ts: float) -> Reply:
        return Reply(
            "refused",
            self.verb,
            self.gateway_id,
            self.nonce,
            ts,
            code=self.refusal.code,
            reason=self.refusal.reason,
        )


@dataclass(frozen=True, slots=True)
class CommandsHealth:
    """The gate's section of the health report."""

    accepted: int
    refused: dict[str, int]  # by refusal code, every code present
    trusted_keys: int
    key_problems: int  # key files refused at the last (re)load
    nonces_remembered: int
    state_set_aside: int  # unreadable state files moved aside in this run
    audit_write_errors: int
    audit_tail: list[dict[str, Any]]  # the newest audit entries, oldest first

    def to_json(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "refused": dict(self.refused),
            "trusted_keys": self.trusted_keys,
            "key_problems": self.key_problems,
            "nonces_remembered": self.nonces_remembered,
            "state_set_aside": self.state_set_aside,
            "audit_write_errors": self.audit_write_errors,
            "audit_tail": list(self.audit_tail),
        }


@dataclass(slots=True)
class _Burst:
    logged_at: float  # monotonic
    last: float
    suppressed: int = 0


@dataclass(slots=True)
class _Counts:
    accepted: int = 0
    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REFUSAL_CODES, 0))


class CommandGate:
    """Judges every command payload (module docstring). Build it with `open()`."""

    def __init__(
        self,
        gateway_id: str,
        keys: TrustedKeys,
        guard: ReplayGuard,
        audit: AuditLog,
        clock: Clock,
        *,
        verbs: Collection[str] | None = None,
        max_payload: int = MAX_PAYLOAD,
    ) -> None:
        self.gateway_id = gateway_id
        self.keys = keys
        self.guard = guard
        self.audit = audit
        self.clock = clock
        self.verbs = frozenset(verbs) if verbs is not None else None
        self.max_payload = max_payload
        self.counts = _Counts()
        self._bursts: dict[tuple[str | None, RefusalCode], _Burst] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        gateway_id: str,
        *,
        state_dir: Path,
        clock: Clock,
        keys_dir: Path = DEFAULT_TRUSTED_KEYS,
        window: float = DEFAULT_WINDOW,
        audit_size: int = DEFAULT_SIZE,
        verbs: Collection[str] | None = None,
    ) -> CommandGate:
        """The gate of a gateway: trusted keys read from `keys_dir`; nonces and the audit
        log in `state_dir` (`command-nonces.json`, `command-audit.json`, 0600)."""
        keys = TrustedKeys(keys_dir)
        keys.reload()
        guard = ReplayGuard.open(state_dir / NONCES_FILE, clock, window=window)
        audit = AuditLog.open(state_dir / AUDIT_FILE, clock, size=audit_size)
        return cls(gateway_id, keys, guard, audit, clock, verbs=verbs)

    # --- judging ----------------------------------------------------------------------

    def check(self, verb: str, payload: bytes) -> Accepted | Refused:
        """Accept (and record) or refuse the payload that came on the topic of `verb`."""
        with self._lock:
            return self._check(verb, payload)

    def _check(self, verb: str, payload: bytes) -> Accepted | Refused:
        envelope = parse(payload, max_bytes=self.max_payload)
        if isinstance(envelope, Refusal):
            return self._refuse(envelope, verb, None)
        command = envelope.command
        if command.verb != verb:
            return self._refuse(
                Refusal(
                    "wrong_verb",
                    f"the command is signed for the verb '{command.verb}' but was published "
                    f"on the topic of {_quoted(verb)}",
                ),
                verb,
                command,
            )
        key = self.keys.get(command.key_id)
        if key is None:
            return self._refuse(
                Refusal(
                    "unknown_key",
                    f"no key '{command.key_id}' is trusted on this gateway (install "
                    f"{command.key_id}.pub in {self.keys.directory} and reload)",
                ),
                verb,
                command,
            )
        if not verify(envelope, key.key):
            return self._refuse(
                Refusal(
                    "bad_signature",
                    f"the signature does not verify with key '{key.key_id}' "
                    f"({key.fingerprint}): the command was changed after it was signed, or "
                    "signed with another key",
                ),
                verb,
                command,
            )
        if command.gateway_id != self.gateway_id:
            return self._refuse(
                Refusal(
                    "wrong_gateway",
                    f"the command is signed for gateway '{command.gateway_id}'; this is "
                    f"'{self.gateway_id}'",
                ),
                verb,
                command,
            )
        if self.verbs is not None and command.verb not in self.verbs:
            return self._refuse(
                Refusal(
                    "unknown_verb",
                    f"this gateway has no verb '{command.verb}' (it has: "
                    f"{', '.join(sorted(self.verbs))})",
                ),
                verb,
                command,
            )
        fresh = self.guard.judge(command)
        if isinstance(fresh, Refusal):
            return self._refuse(fresh, verb, command)
        try:
            self.guard.remember(command)
        except OSError as err:
            return self._not_recorded(verb, command, f"its nonce ({err.strerror or err})")
        try:
            self.audit.record(self._entry(verb, command, "accepted", None, fresh.note, True))
        except OSError as err:
            return self._not_recorded(verb, command, f"its audit entry ({err.strerror or err})")
        self.counts.accepted += 1
        self._bursts = {k: b for k, b in self._bursts.items() if k[0] != command.key_id}
        log.info(
            "accepted command '%s' (nonce %s) signed with key '%s'%s",
            command.verb,
            command.nonce,
            command.key_id,
            f"; {fresh.note}" if fresh.note else "",
        )
        return Accepted(command, self.gateway_id, fresh.time_checked, fresh.note)

    def _not_recorded(self, verb: str, command: Command, what: str) -> Refused:
        return self._refuse(
            Refusal(
                "not_recorded",
                f"the gateway could not write {what} to {self.guard.path.parent}, so the "
                "command could be replayed: not carried out (send it again once the disk "
                "is fixed)",
            ),
            verb,
            command,
        )

    def _refuse(
        self,
        refusal: Refusal,
        verb: str,
        command: Command | None,
    ) -> Refused:
        code = refusal.code
        authenticated = code not in UNAUTHENTICATED  # the signature held
        self.counts.refused[code] += 1
        key_id = command.key_id if command is not None else None
        self._log_refusal(refusal, verb, key_id, authenticated)
        entry = self._entry(verb, command, "refused", refusal, None, authenticated)
        self.audit.record(entry)  # held back: never raises
        nonce = command.nonce if command is not None else None
        return Refused(refusal, verb, self.gateway_id, nonce, key_id)

    def _entry(
        self,
        verb: str,
        command: Command | None,
        outcome: Literal["accepted", "refused"],
        refusal: Refusal | None,
        note: str | None,
        authenticated: bool,
    ) -> AuditEntry:
        return AuditEntry(
            ts=self.clock.time(),
            synchronised=self.clock.synchronised(),
            verb=verb,
            key_id=command.key_id if command is not None else None,
            authenticated=authenticated,
            nonce=command.nonce if command is not None else None,
            issued_at=command.issued_at if command is not None else None,
            outcome=outcome,
            code=refusal.code if refusal is not None else None,
            reason=refusal.reason if refusal is not None else note,
        )

    def _log_refusal(
        self, refusal: Refusal, verb: str, key_id: str | None, authenticated: bool
    ) -> None:
        now = self.clock.monotonic()
        bucket = (key_id if authenticated else None, refusal.code)
        burst = self._bursts.get(bucket)
        in_burst = burst is not None and now - burst.last < BURST_QUIET
        if burst is not None and in_burst and now - burst.logged_at < BURST_REPEAT:
            burst.suppressed += 1
            burst.last = now
            return
        since = (
            f" ({burst.suppressed} more like it since the last such message)"
            if burst is not None and burst.suppressed
            else ""
        )
        if authenticated:
            who = f"signed with key '{key_id}'"
        elif key_id is not None:
            who = f"not authenticated, claims key {shown(key_id)}"
        else:
            who = "not authenticated"
        log.warning(
            "refused a command on the topic of %s (%s, %s): %s%s",
            _quoted(verb),
            refusal.code,
            who,
            refusal.reason,
            since,
        )
        self._bursts[bucket] = _Burst(logged_at=now, last=now)

    # --- upkeep and health ------------------------------------------------------------

    def finish(
        self, accepted: Accepted, outcome: Literal["ok", "failed"], reason: str | None = None
    ) -> None:
        """Record in the audit log how an accepted command ended (errors logged)."""
        with self._lock:
            try:
                self.audit.finish(accepted.command.nonce, outcome, reason)
            except OSError as err:
                self.audit.write_errors += 1
                log.warning("cannot record the outcome of a command in the audit log (%s)", err)

    def flush(self) -> None:
        """Write held-back refusals and (hourly) the last synchronised time; call it
        every health report or so, and at stop. Errors are logged, never raised."""
        with self._lock:
            self.audit.flush()
            try:
                self.guard.checkpoint()
            except OSError as err:
                log.warning("cannot write the command nonce store (%s)", err)

    def reload_keys(self) -> TrustReport:
        """Read the trusted keys again (SIGHUP)."""
        with self._lock:
            return self.keys.reload()

    def health(self, tail: int = 5) -> CommandsHealth:
        with self._lock:
            set_aside = self.audit.set_aside + self.guard.set_aside
            return CommandsHealth(
                accepted=self.counts.accepted,
                refused=dict(self.counts.refused),
                trusted_keys=len(self.keys),
                key_problems=len(self.keys.report.problems),
                nonces_remembered=self.guard.remembered,
                state_set_aside=set_aside,
                audit_write_errors=self.audit.write_errors,
                audit_tail=[entry.to_json() for entry in self.audit.tail(tail)],
            )


def _quoted(verb: str) -> str:
    """The topic's verb, as it came (anything): quoted and cut short."""
    return shown(verb)
