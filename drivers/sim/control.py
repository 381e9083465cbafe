"""The simulator's control interface: one-line text commands on a local Unix socket.

Any harness (a shell with `socat`, Python, a test) connects to the socket that
`edge-gateway simulate` prints at start, writes a command and a newline, and reads one
line back. A connection may carry any number of commands, one after another.

    fault TARGET KIND [N]    switch a fault on (KIND: silent, exception N, delay N,
                             crc, txid, garbage, drop, flood; N: the exception code
                             1-255, or the delay in milliseconds 0-600000)
    clear [TARGET]           faults off (a device: its own and its points'; none: all)
    set DEVICE.POINT VALUE   the point holds VALUE (a number, true/false, or text)
    unset DEVICE.POINT       the point follows its value from the file again
    status                   the whole simulator as one JSON object
    help                     the commands

TARGET is a device (`meter`) or one of its points (`meter.voltage`). Every reply is
one line: `ok` and what now holds, `error` and why nothing changed, or for `status`
a JSON object. What a fault does on the wire: drivers/sim/faults.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from drivers.sim.faults import FAULT_KINDS, FaultKind, WireFault
from drivers.sim.values import Scalar

__all__ = ["HELP", "CommandError", "ControlServer", "Controllable", "answer", "parse_command"]

HELP: Final = (
    "commands: fault TARGET silent|exception N|delay N|crc|txid|garbage|drop|flood; "
    "clear [TARGET]; set DEVICE.POINT VALUE; unset DEVICE.POINT; status; help "
    "(TARGET: a device or DEVICE.POINT)"
)
MAX_DELAY_MS: Final = 600_000
_MAX_LINE: Final = 4096

log = logging.getLogger(__name__)


class CommandError(Exception):
    """A command that is refused; the message says why (the reply is `error <message>`)."""


@dataclass(frozen=True, slots=True)
class Command:
    verb: str
    target: str | None = None
    fault: WireFault | None = None
    value: Scalar | None = None


def parse_command(line: str) -> Command:
    """The command of one line; CommandError saying what is wrong with it."""
    words = line.split()
    if not words:
        raise CommandError(f"empty command; {HELP}")
    verb, args = words[0].lower(), words[1:]
    if verb in ("status", "help"):
        _arity(verb, args, 0, 0)
        return Command(verb)
    if verb == "clear":
        _arity(verb, args, 0, 1)
        return Command(verb, args[0] if args else None)
    if verb == "unset":
        _arity(verb, args, 1, 1)
        return Command(verb, args[0])
    if verb == "set":
        parts = line.strip().split(None, 2)
        if len(parts) < 3:
            raise CommandError("set needs DEVICE.POINT and a value, e.g. set meter.voltage 231.5")
        return Command(verb, parts[1], value=parse_value(parts[2]))
    if verb == "fault":
        _arity(verb, args, 2, 3)
        return Command(verb, args[0], fault=_fault(args[1:]))
    raise CommandError(f"unknown command {words[0]!r}; {HELP}")


def _arity(verb: str, args: list[str], least: int, most: int) -> None:
    if least <= len(args) <= most:
        return
    usage = {
        "status": "status",
        "help": "help",
        "clear": "clear [TARGET]",
        "unset": "unset DEVICE.POINT",
        "fault": "fault TARGET KIND [N]",
    }[verb]
    raise CommandError(f"usage: {usage}")


def _fault(words: list[str]) -> WireFault:
    kind = words[0].lower()
    if kind not in FAULT_KINDS:
        raise CommandError(f"no fault {words[0]!r}; faults: {', '.join(FAULT_KINDS)}")
    fault_kind: FaultKind = kind  # checked just above
    if kind == "exception":
        code = _whole(words, "exception needs its code, 1-255, e.g. fault meter exception 2")
        if not 1 <= code <= 255:
            raise CommandError(f"exception code {code} is not 1-255")
        return WireFault(fault_kind, code=code)
    if kind == "delay":
        millis = _whole(words, "delay needs milliseconds, e.g. fault meter delay 300")
        if not 0 <= millis <= MAX_DELAY_MS:
            raise CommandError(f"delay {millis} is not 0-{MAX_DELAY_MS} milliseconds")
        return WireFault(fault_kind, millis=millis)
    if len(words) > 1:
        raise CommandError(f"{kind} takes no number")
    return WireFault(fault_kind)


def _whole(words: list[str], usage: str) -> int:
    if len(words) != 2:
        raise CommandError(usage)
    try:
        return int(words[1], 16 if words[1].lower().startswith("0x") else 10)  # 2, 0x0B
    except ValueError:
        raise CommandError(f"{words[1]!r} is not a whole number; {usage}") from None


def parse_value(text: str) -> Scalar:
    """A value as typed: true/false, a whole number, a number, or text (quotes optional)."""
    word = text.strip()
    if word.lower() in ("true", "false"):
        return word.lower() == "true"
    if len(word) >= 2 and word[0] == word[-1] and word[0] in "\"'":
        return word[1:-1]
    try:
        return int(word, 10)
    except ValueError:
        pass
    try:
        number = float(word)
    except ValueError:
        return word
    if not math.isfinite(number):
        raise CommandError(f"{word!r} is not a finite number")
    return number


class Controllable(Protocol):
    """What the control interface acts on (drivers/sim/serve.py's `Simulation`); each
    method returns what now holds, or raises CommandError."""

    def set_fault(self, target: str, fault: WireFault) -> str: ...

    def clear(self, target: str | None) -> str: ...

    def hold(self, target: str, value: Scalar) -> str: ...

    def release(self, target: str) -> str: ...

    def status(self) -> dict[str, Any]: ...


def answer(simulation: Controllable, line: str) -> str:
    """The one-line reply to one command line."""
    try:
        command = parse_command(line)
        if command.verb == "status":
            return json.dumps(simulation.status(), separators=(",", ":"), default=str)
        if command.verb == "help":
            return f"ok {HELP}"
        if command.verb == "fault":
            assert command.target is not None and command.fault is not None
            done = simulation.set_fault(command.target, command.fault)
        elif command.verb == "clear":
            done = simulation.clear(command.target)
        elif command.verb == "set":
            assert command.target is not None and command.value is not None
            done = simulation.hold(command.target, command.value)
        else:
            assert command.target is not None
            done = simulation.release(command.target)
    except CommandError as err:
        return f"error {err}"
    log.info("control: %s", done)  # what a harness changed, for the rig's log
    return f"ok {done}"


class ControlSocketError(Exception):
    """The control socket cannot be made at its path (in use, or something else is there)."""


class ControlServer:
    """Serves `answer` on a Unix socket at `path` (mode 0600), removed at stop."""

    def __init__(self, path: Path, simulation: Controllable) -> None:
        self.path = path
        self.simulation = simulation
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        _clear_stale_socket(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=_MAX_LINE
            )
            self.path.chmod(0o600)
        except OSError as err:
            raise ControlSocketError(
                f"cannot make the control socket {self.path}: {err.strerror or err}"
            ) from err

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        with contextlib.suppress(OSError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # longer than a command can be
                    writer.write(f"error a command is one line of at most {_MAX_LINE}\n".encode())
                    break
                if not line:
                    break
                text = line.decode("utf-8", "replace").strip()
                if not text:
                    continue
                writer.write((answer(self.simulation, text) + "\n").encode())
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass  # the harness went away, or the simulator stops
        finally:
            if task is not None:
                self._handlers.discard(task)
            with contextlib.suppress(Exception):
                writer.close()


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket left by a simulator that is gone; refuse a live one or another file."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    except OSError as err:
        raise ControlSocketError(f"cannot use {path}: {err.strerror or err}") from err
    if not stat.S_ISSOCK(mode):
        raise ControlSocketError(f"{path} exists and is not a socket; name another --control")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # nobody listens: left behind
        return
    finally:
        probe.close()
    raise ControlSocketError(f"{path} is the control socket of a running simulator")
