"""`edge-gateway scan`: which unit ids answer on a line, and at which serial settings.

Each unit id gets one cheap read that most devices answer (one holding register at
0, `--register` to choose): values, or a Modbus exception of its own, prove a device
is there; a garbled answer says something is there, or the line is noisy. Behind a
Modbus TCP gateway, exceptions 10 and 11 are the gateway saying nobody answered, and
count as nothing.

On a serial bus, `--serial-settings auto` tries the common settings in order
(drivers/modbus/scanning.py) and stops after the first at which a device answers;
`all` tries every one. The wait for each answer follows from the baud rate, the
silence between frames is kept as the driver keeps it, and `--max-time` bounds the
whole scan: what it left untried is said.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.commands.common import (
    EXIT_CONFIG,
    EXIT_ENVIRONMENT,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    positive_seconds,
    setup_logging,
)
from gateway.commands.modbus_args import (
    EXIT_CODES_EPILOG,
    BadArgumentsError,
    add_line_arguments,
    complain,
    interrupted,
    line_settings,
    transport_of,
)

if TYPE_CHECKING:
    from drivers.modbus.driver import Transport
    from drivers.modbus.interpret import Start
    from drivers.modbus.probing import ModbusLine, Outcome
    from drivers.serial_port import LineSettings
    from gateway.commands.output import Progress

NAME = "scan"
HELP = (
    "find the unit ids that answer on a bus or behind a TCP gateway, and with "
    "--serial-settings auto the baud rate and parity"
)
ORDER = 35

TCP_TIMEOUT = 1.0  # a gateway answers for a missing unit only after its own serial timeout
DEFAULT_MAX_TIME = 300.0

_EXIT_CODES = EXIT_CODES_EPILOG.format(
    ok="at least one device answered (the table lists them)",
    failure="no device answered (garbled answers alone do not count), or the line\n"
    "       failed during the scan",
)

EPILOG = f"""\
examples:
  edge-gateway scan --serial /dev/ttyUSB0 --baud 19200 --parity E
  edge-gateway scan --serial /dev/ttyUSB0 --serial-settings auto --units 1-10
  edge-gateway scan --tcp 10.0.0.5 --units 1-32
  edge-gateway scan --serial rfc2217://10.0.0.9:4002 --serial-settings auto --json

A full scan of unit ids 1-247 takes about 30 s at 9600 baud when nothing answers
(each unit waits for its answer: the frames' time on the line plus 100 ms), and up to
1 s a unit behind a TCP gateway. --serial-settings auto tries 9600, 19200, 38400,
115200, 4800, 2400 and 57600 baud, each as 8N1, 8E1, 8O1 and 8N2, and stops after the
first setting at which a device answers; narrow --units to try them all quickly.
--max-time stops the scan; the answer says what was not tried.

{_EXIT_CODES}"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument(
        "--units",
        default="1-247",
        help="the unit ids to try, e.g. 1-10 or 1,5,20-30 (1-247)",
    )
    parser.add_argument(
        "--register",
        default="40001",
        help="the register each unit is asked for, as a datasheet number (40001: holding "
        "register 0; 30001: input register 0)",
    )
    parser.add_argument(
        "--serial-settings",
        choices=["given", "auto", "all"],
        default="given",
        help="with --serial: 'given' uses --baud/--parity/--stopbits; 'auto' tries the "
        "common settings until devices answer; 'all' tries every common setting",
    )
    parser.add_argument(
        "--max-time",
        type=positive_seconds,
        default=DEFAULT_MAX_TIME,
        metavar="SECONDS",
        help=f"stop after this long and say what was not tried ({DEFAULT_MAX_TIME:g})",
    )
    add_line_arguments(
        parser,
        timeout_help="seconds to wait for each answer (on a serial line: the frames' time at "
        f"the baud rate plus 100 ms, about 0.12 s at 9600; over TCP {TCP_TIMEOUT:g})",
    )


@dataclass(slots=True)
class Found:
    """A unit id that answered, and how."""

    unit: int
    settings: LineSettings | None  # None over TCP
    outcome: Outcome
    late: bool = False  # its answer came after the timeout, during the next unit's


@dataclass(slots=True)
class Scan:
    """One scan: what it tries, and what it found so far (also when stopped early)."""

    transport: Transport
    settings: list[LineSettings]  # empty over TCP
    units: list[int]
    start: Start
    timeout: float | None
    max_time: float
    stop_at_first: bool
    found: list[Found] = field(default_factory=list)
    tried: list[tuple[LineSettings | None, list[int]]] = field(default_factory=list)
    gateway_refused: int = 0  # exceptions 10/11 of a TCP gateway: nobody there
    stopped_by: str | None = None  # 'max_time', 'interrupted', or the line's failure
    failed_local: bool = False
    elapsed: float = 0.0

    async def run(self) -> None:
        from gateway.commands.output import Progress

        started = time.monotonic()
        total = len(self.units) * max(1, len(self.settings))
        with Progress("scanning", total=total) as progress:
            try:
                lines: list[LineSettings | None] = [*self.settings] or [None]  # None: TCP
                for settings in lines:
                    if not await self._scan_line(settings, started, progress):
                        break
                    if self.stop_at_first and any(
                        f.settings == settings and f.outcome.present for f in self.found
                    ):
                        break
            except asyncio.CancelledError:  # Ctrl-C: say what was found so far
                self.stopped_by = "interrupted"
            finally:
                self.elapsed = time.monotonic() - started

    async def _scan_line(
        self, settings: LineSettings | None, started: float, progress: Progress
    ) -> bool:
        """Every unit at these settings; False when the scan must stop."""
        from drivers.modbus.probing import LineUnusableError, ModbusLine
        from drivers.modbus.scanning import answer_timeout

        transport = self.transport
        timeout = self.timeout or TCP_TIMEOUT
        if settings is not None:
            transport = _with_settings(transport, settings)
            timeout = self.timeout or answer_timeout(settings)
        asked: list[int] = []
        self.tried.append((settings, asked))
        line = ModbusLine(transport, timeout)
        try:
            await line.open()
            for unit in self.units:
                if time.monotonic() - started >= self.max_time:
                    self.stopped_by = "max_time"
                    return False
                outcome = await self._read(line, unit)
                if interrupted():
                    raise asyncio.CancelledError
                asked.append(unit)
                progress.advance(1, f"{settings or ''} unit {unit}")
                if outcome.answer == "connection":
                    self.stopped_by = outcome.detail
                    return False
                self._record(settings, outcome, asked)
        except LineUnusableError as err:
            self.stopped_by = str(err)
            self.failed_local = err.local
            return False
        finally:
            line.close()
        return True

    async def _read(self, line: ModbusLine, unit: int) -> Outcome:
        outcome = await line.read(unit, self.start.table, self.start.address, 1)
        if outcome.answer == "connection":  # a connection dropped: one more try on a new one
            outcome = await line.read(unit, self.start.table, self.start.address, 1)
        return outcome

    def _record(self, settings: LineSettings | None, outcome: Outcome, asked: list[int]) -> None:
        if outcome.answer == "gateway":
            self.gateway_refused += 1
        elif outcome.answer in ("data", "exception"):
            self.found.append(Found(outcome.unit, settings, outcome))
        elif outcome.answer == "garbled":
            other = outcome.other_unit
            if other is not None and other in asked[:-1] and not self._has(other, settings):
                # A valid answer of a unit asked before: it answered after its timeout.
                from drivers.modbus.probing import Outcome as LateOutcome

                why = (
                    f"answered after the timeout, while unit {outcome.unit} was asked: "
                    "give it a longer --timeout"
                )
                late = LateOutcome(other, "data", why)
                self.found.append(Found(other, settings, late, late=True))
            else:
                self.found.append(Found(outcome.unit, settings, outcome))

    def _has(self, unit: int, settings: LineSettings | None) -> bool:
        return any(f.unit == unit and f.settings == settings for f in self.found)

    @property
    def present(self) -> list[Found]:
        return [f for f in self.found if f.outcome.present]


def _with_settings(transport: Transport, settings: LineSettings) -> Transport:
    from drivers.modbus.probing import serial_transport

    return serial_transport(transport.serial_port, settings)


def run(args: argparse.Namespace) -> int:
    from drivers.modbus.probing import LineUnusableError, check_line_opens

    setup_logging("warning")  # pymodbus' every failed attempt is not news here
    try:
        scan = _scan_of(args)
    except (BadArgumentsError, ValueError) as err:
        complain(NAME, str(err))
        return EXIT_CONFIG
    try:
        check_line_opens(scan.transport, scan.timeout or TCP_TIMEOUT)
    except LineUnusableError as err:
        scan.stopped_by = str(err)
        scan.failed_local = err.local
        return _report(args, scan)
    if not args.json:
        print(_plan(scan), file=sys.stderr)
    try:
        asyncio.run(scan.run())
    except KeyboardInterrupt:  # Ctrl-C outside the scan's own reads (e.g. while connecting)
        scan.stopped_by = "interrupted"
    return _report(args, scan)


def _scan_of(args: argparse.Namespace) -> Scan:
    from drivers.modbus.interpret import parse_start
    from drivers.modbus.scanning import COMMON_SETTINGS, parse_units

    if args.serial is None and args.serial_settings != "given":
        raise BadArgumentsError("--serial-settings auto and all need --serial")
    start = parse_start(args.register, None)
    if start.table.is_bit_table:
        raise BadArgumentsError(
            f"--register {args.register}: ask for a holding or input register "
            "(40001, 30001): every device has registers, not every one has coils"
        )
    units = parse_units(args.units)
    settings: list[LineSettings] = []
    if args.serial is not None:
        given = line_settings(args)
        settings = [given] if args.serial_settings == "given" else list(COMMON_SETTINGS)
    transport = transport_of(args, settings[0] if settings else None)
    return Scan(
        transport,
        settings,
        units,
        start,
        args.timeout,
        args.max_time,
        stop_at_first=args.serial_settings != "all",
    )


def _plan(scan: Scan) -> str:
    """What the scan will do and how long it may take, before it starts (on stderr)."""
    from drivers.modbus.probing import describe_line
    from drivers.modbus.scanning import answer_timeout, format_units, scan_seconds

    units = f"unit ids {format_units(scan.units)}"
    if not scan.settings:
        seconds = scan_seconds(len(scan.units), scan.timeout or TCP_TIMEOUT)
        where = describe_line(scan.transport)
    else:
        seconds = sum(
            scan_seconds(len(scan.units), scan.timeout or answer_timeout(s), s)
            for s in scan.settings
        )
        where = (
            describe_line(scan.transport)
            if len(scan.settings) == 1
            else f"{scan.transport.serial_port} at up to {len(scan.settings)} settings"
        )
    bound = min(seconds, scan.max_time)
    return f"scanning {where}, {units}, {scan.start.describe()}: up to {bound:.0f} s (Ctrl-C stops)"


def _report(args: argparse.Namespace, scan: Scan) -> int:
    if scan.stopped_by not in (None, "max_time", "interrupted"):
        code = EXIT_ENVIRONMENT if scan.failed_local else EXIT_FAILURE
    elif scan.stopped_by == "interrupted":
        code = EXIT_INTERRUPTED
    else:
        code = EXIT_OK if scan.present else EXIT_FAILURE
    if args.json:
        from gateway.commands.output import print_json

        print_json(_document(scan))
        return code
    if scan.found:
        _print_found(scan)
    for line in _notes(scan):
        print(line)
    summary = _summary(scan)
    if code == EXIT_OK:
        print(summary)
    else:
        complain(NAME, summary)
    return code


def _print_found(scan: Scan) -> None:
    from gateway.commands.output import print_table

    serial = bool(scan.settings)  # the settings column; over TCP the summary names the line
    rows = [
        (
            f.unit,
            *([str(f.settings)] if serial else []),
            _answer_of(f),
            f"{f.outcome.latency_ms} ms" if f.outcome.latency_ms is not None else "",
            _detail_of(scan, f),
        )
        for f in scan.found
    ]
    columns = ["unit", *(["settings"] if serial else []), "answer", "latency", "detail"]
    print_table(columns, rows)


def _answer_of(found: Found) -> str:
    from drivers.modbus.exceptions import exception_name

    outcome = found.outcome
    if found.late:
        return "late"
    if outcome.answer == "exception" and outcome.code is not None:
        return f"exception {outcome.code} ({exception_name(outcome.code)})"
    return outcome.answer


def _detail_of(scan: Scan, found: Found) -> str:
    outcome = found.outcome
    if outcome.answer == "data" and outcome.values and not found.late:
        value = outcome.values[0]
        return f"{scan.start.table} {scan.start.address} = 0x{value:04X} ({value})"
    if outcome.answer == "exception":
        return "a device is there (it refused this register)"
    return outcome.detail


def _notes(scan: Scan) -> list[str]:
    from drivers.modbus.probing import describe_line

    notes = []
    if scan.gateway_refused:
        notes.append(
            f"the gateway at {describe_line(scan.transport)} answered exception 10 or 11 for "
            f"{scan.gateway_refused} unit id(s): no device answered behind it there"
        )
    if scan.transport.kind == "tcp" and len(scan.present) >= 3:
        answered = {f.unit for f in scan.present}
        alike = len({tuple(f.outcome.values) for f in scan.present}) == 1
        if answered == set(scan.tried[0][1]) and alike:
            notes.append(
                "every unit id answered alike: the device probably ignores the unit id (one "
                "device, not a gateway); use the unit id its manual gives, often 1 or 255"
            )
    if any(f.late for f in scan.found):
        notes.append("some devices answer slower than --timeout: give a longer one")
    untried = _untried(scan)
    if untried:
        reason = (
            f"--max-time {scan.max_time:g} s ran out"
            if scan.stopped_by == "max_time"
            else "interrupted"
            if scan.stopped_by == "interrupted"
            else "the line failed"
        )
        notes.append(f"not tried ({reason}): {untried}")
    return notes


def _untried(scan: Scan) -> str:
    """What a stopped scan left out, in words ('' when nothing)."""
    from drivers.modbus.scanning import format_units

    if scan.stopped_by is None or not scan.tried:
        return ""
    parts = []
    if scan.tried:
        settings, asked = scan.tried[-1]
        rest = [u for u in scan.units if u not in asked]
        if rest:
            at = f" at {settings}" if settings is not None else ""
            parts.append(f"unit ids {format_units(rest)}{at}")
    untouched = scan.settings[len(scan.tried) :]
    if untouched:
        names = ", ".join(str(s) for s in untouched)
        parts.append(f"{len(untouched)} setting(s): {names}")
    return "; ".join(parts)


def _summary(scan: Scan) -> str:
    from drivers.modbus.probing import describe_line
    from drivers.modbus.scanning import format_units

    present = scan.present
    tried_units = format_units(scan.units)
    took = f"in {scan.elapsed:.1f} s"
    if scan.stopped_by not in (None, "max_time", "interrupted"):
        return scan.stopped_by or ""
    if present:
        units = format_units(sorted({f.unit for f in present}))
        where = describe_line(scan.transport)
        at = sorted({str(f.settings) for f in present if f.settings is not None})
        if scan.settings:
            where = f"{scan.transport.serial_port} at {', '.join(at)}"
        return f"{len(present)} device(s) answered on {where}: unit(s) {units} ({took})"
    if scan.stopped_by == "interrupted":
        return f"interrupted after {scan.elapsed:.1f} s; no device had answered"
    garbled = [f for f in scan.found if f.outcome.answer == "garbled"]
    heard = (
        f"; only garbled answers ({len(garbled)}): something is there, at other settings "
        "or on a noisy line"
        if garbled
        else ""
    )
    if not scan.settings:
        return (
            f"no unit answered on {describe_line(scan.transport)} (unit ids {tried_units} "
            f"{took}){heard}: check the unit ids, and that the gateway's serial side is wired "
            "and set to the devices' line settings"
        )
    if len(scan.tried) == 1 and len(scan.settings) == 1:
        return (
            f"no unit answered on {describe_line(scan.transport)} (unit ids {tried_units} "
            f"{took}){heard}: wrong baud rate or parity? --serial-settings auto tries the common "
            "ones; else check the wiring (A and B swapped?), the bus terminator and the "
            "devices' power"
        )
    first, last = scan.tried[0][0], scan.tried[-1][0]
    return (
        f"no unit answered at any of the {len(scan.tried)} setting(s) tried ({first} to {last}; "
        f"unit ids {tried_units} {took}){heard}: check the wiring (A and B swapped?), the bus "
        "terminator and the devices' power, and --timeout for slow devices"
    )


def _document(scan: Scan) -> dict[str, Any]:
    from drivers.modbus.exceptions import exception_name
    from drivers.modbus.probing import describe_line
    from drivers.modbus.scanning import format_units

    def settings_fields(settings: LineSettings | None) -> dict[str, Any]:
        if settings is None:
            return {"settings": None}
        return {
            "settings": str(settings),
            "baudrate": settings.baudrate,
            "bytesize": settings.bytesize,
            "parity": settings.parity,
            "stopbits": settings.stopbits,
        }

    found = [
        {
            "unit": f.unit,
            **settings_fields(f.settings),
            "answer": "late" if f.late else f.outcome.answer,
            "present": f.outcome.present,
            "code": f.outcome.code,
            "exception": exception_name(f.outcome.code) if f.outcome.code is not None else None,
            "value": f.outcome.values[0] if f.outcome.values else None,
            "latency_ms": f.outcome.latency_ms,
            "detail": _detail_of(scan, f),
        }
        for f in scan.found
    ]
    present_settings = sorted({str(f.settings) for f in scan.present if f.settings is not None})
    return {
        "ok": bool(scan.present) and scan.stopped_by in (None, "max_time"),
        "line": describe_line(scan.transport) if not scan.settings else scan.transport.serial_port,
        "transport": scan.transport.kind,
        "register": {
            "table": str(scan.start.table),
            "address": scan.start.address,
            "datasheet": scan.start.datasheet,
        },
        "units": format_units(scan.units),
        "settings_tried": [str(s) for s, _ in scan.tried if s is not None],
        "found": found,
        "present_units": sorted({f.unit for f in scan.present}),
        "found_at": present_settings,
        "gateway_refused": scan.gateway_refused,
        "complete": scan.stopped_by is None,
        "stopped_by": scan.stopped_by,
        "not_tried": _untried(scan) or None,
        "elapsed_s": round(scan.elapsed, 3),
        "message": _summary(scan),
    }
