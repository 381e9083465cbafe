"""Remote commands, carried out: every verb the gateway answers, and its reply.

The uplink hands each payload that came on `{prefix}/{id}/cmd/{verb}` to
`Remote.handle`, one at a time. The gate (gateway/control/gate.py) judges it first:
refused payloads get a `refused` reply with the code and reason, and nothing is done.
An accepted command is carried out here and its outcome recorded in the audit log.

The verbs (docs/operations.md has their bodies and results):

- `ping`: the gateway's identity and uptime;
- `health`: the full health report, now;
- `read` (`{"device": NAME, "point": NAME?}`): the values of the device's next poll, as
  its driver read them (no extra request on the line: on an RS-485 bus an
  out-of-schedule read would disturb every device's timing);
- `reload`: the config file again, through the flashing path (gateway/flashing.py);
- `config-apply` (`{"config": TOML text}`): a new config, through the same path; the
  reply comes once the health window has closed: committed or rolled back, and why;
- `config-rollback` (`{"to": HASH?}`): back to a config kept on this gateway (the last
  committed before the running one by default);
- `log-level` (`{"level": "debug"|"info"|"warning"|"error", "for": SECONDS?}`): for a
  bounded time (600 s by default, at most `[commands] log_level_max`), then back.

The verbs that change the gateway (`CHANGING`) are carried out only when the gateway
could check the command's age: while its clock is unsynchronised, a command signed
long ago and held back in transit could otherwise still act (replay.py, rule 4).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

from gateway.control import Accepted, CommandGate, Refused
from gateway.flashing import Applied
from gateway.wire.messages import Command, Reply, encode

log = logging.getLogger("gateway.control")

VERBS = ("ping", "health", "read", "reload", "config-apply", "config-rollback", "log-level")
# Verbs that change the gateway: carried out only when the command's age could be
# checked (gateway/control/replay.py, rule 4); the others only look.
CHANGING = frozenset({"reload", "config-apply", "config-rollback", "log-level"})
UNCHECKED = (
    "the gateway's clock is not synchronised, so the command's age cannot be checked: a "
    "command that changes the gateway is carried out only when it can be; send it again "
    "once NTP has set the clock (ping, health and read work meanwhile; on site, "
    "'edge-gateway apply' needs no clock)"
)
LEVELS = ("debug", "info", "warning", "error")
DEFAULT_LOG_LEVEL_FOR = 600.0
MAX_READ_WAIT = 120.0
REFUSAL_EVENT_QUIET = 60.0  # one command_refused event per code in this long


class BadBody(ValueError):
    """The command's body does not fit its verb."""


class Operated(Protocol):
    """What the verbs need of the gateway (gateway/app.py's `Gateway`)."""

    def ping(self) -> dict[str, Any]: ...

    def health(self) -> dict[str, Any]: ...

    async def read_device(self, device: str, point: str | None) -> dict[str, Any]: ...

    async def apply_config(self, raw: bytes | None, source: str) -> Applied: ...

    async def rollback_config(self, to: str | None, source: str) -> Applied: ...

    def set_log_level(self, level: str, seconds: float) -> dict[str, Any]: ...

    def event(self, kind: Any, message: str, **data: Any) -> None: ...


class Remote:
    """Judges and carries out commands; `handle` is the uplink's `on_command`."""

    def __init__(
        self, gate: CommandGate, gateway: Operated, *, log_level_max: float = 3600.0
    ) -> None:
        self.gate = gate
        self.gateway = gateway
        self.log_level_max = log_level_max
        self._refusal_events: dict[str, float] = {}
        self._verbs: dict[
            str, Callable[[Command], Awaitable[tuple[bool, dict[str, Any], str | None]]]
        ] = {
            "ping": self._ping,
            "health": self._health,
            "read": self._read,
            "reload": self._reload,
            "config-apply": self._config_apply,
            "config-rollback": self._config_rollback,
            "log-level": self._log_level,
        }

    async def handle(self, verb: str, payload: bytes) -> bytes:
        judged = await asyncio.to_thread(self.gate.check, verb, payload)
        if isinstance(judged, Refused):
            self._refused(judged)
            return encode(judged.reply(ts=time.time()))
        return encode(await self._carry_out(judged))

    async def _carry_out(self, accepted: Accepted) -> Reply:
        command = accepted.command
        log.info("command %s (nonce %s) from key %s", command.verb, command.nonce, command.key_id)
        ok: bool
        result: dict[str, Any]
        reason: str | None
        try:
            if command.verb in CHANGING and not accepted.time_checked:
                ok, result, reason = False, {}, UNCHECKED
            else:
                ok, result, reason = await self._verbs[command.verb](command)
        except BadBody as err:
            ok, result, reason = False, {}, f"bad body: {err}"
        except Exception:  # a bug: said once with its traceback, answered as failed
            log.exception("command %s failed unexpectedly", command.verb)
            ok, result, reason = False, {}, "internal error (logged on the gateway)"
        outcome: Literal["ok", "failed"] = "ok" if ok else "failed"
        if not ok:
            log.warning("command %s (nonce %s) failed: %s", command.verb, command.nonce, reason)
        await asyncio.to_thread(self.gate.finish, accepted, outcome, reason)
        return accepted.reply(outcome, ts=time.time(), result=result or None, reason=reason)

    def _refused(self, refused: Refused) -> None:
        """An event for the first refusal of each code in a while (the gate logs and
        counts every one; a flood of junk must not flood the event topic)."""
        now = time.monotonic()
        code = str(refused.code)
        if now - self._refusal_events.get(code, -REFUSAL_EVENT_QUIET) < REFUSAL_EVENT_QUIET:
            return
        self._refusal_events[code] = now
        self.gateway.event(
            "command_refused",
            f"a command {refused.verb!r} was refused: {refused.refusal.reason}",
            verb=refused.verb,
            code=code,
            key_id=refused.key_id,
        )

    # --- the verbs: each returns (ok, result, reason) --------------------------------------

    async def _ping(self, command: Command) -> tuple[bool, dict[str, Any], str | None]:
        return True, self.gateway.ping(), None

    async def _health(self, command: Command) -> tuple[bool, dict[str, Any], str | None]:
        return True, self.gateway.health(), None

    async def _read(self, command: Command) -> tuple[bool, dict[str, Any], str | None]:
        device = _text(command.body, "device", required=True)
        point = _text(command.body, "point", required=False)
        assert device is not None
        result = await self.gateway.read_device(device, point)
        return "error" not in result, result, result.get("error")

    async def _reload(self, command: Command) -> tuple[bool, dict[str, Any], str | None]:
        return _applied(await self.gateway.apply_config(None, _source(command)))

    async def _config_apply(self, command: Command) -> tuple[bool, dict[str, Any], str | None]:
        text = _text(command.body, "config", required=True)
        assert text is not None
        return _applied(await self.gateway.apply_config(text.encode(), _source(command)))

    async def _config_rollback(self, command: Command) -> tuple[bool, dict[str, Any], str | None]:
        to = _text(command.body, "to", required=False)
        return _applied(await self.gateway.rollback_config(to, _source(command)))

    async def _log_level(self, command: Command) -> tuple[bool, dict[str, Any], str | None]:
        level = _text(command.body, "level", required=True)
        if level not in LEVELS:
            raise BadBody(f"level must be one of {', '.join(LEVELS)}, not {level!r}")
        seconds = command.body.get("for", DEFAULT_LOG_LEVEL_FOR)
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds <= 0:
            raise BadBody("'for' must be a whole number of seconds above 0")
        if seconds > self.log_level_max:
            raise BadBody(
                f"'for' is at most {self.log_level_max:g} s here ([commands] log_level_max)"
            )
        return True, self.gateway.set_log_level(level, float(seconds)), None


def _source(command: Command) -> str:
    return f"command {command.verb} by {command.key_id}"


def _applied(applied: Applied) -> tuple[bool, dict[str, Any], str | None]:
    ok = applied.outcome == "committed"
    return ok, applied.result(), None if ok else f"{applied.outcome}: {applied.reason}"


def _text(body: dict[str, Any], key: str, *, required: bool) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise BadBody(f"{key!r} is missing")
        return None
    if not isinstance(value, str) or not value:
        raise BadBody(f"{key!r} must be a non-empty string")
    return value
