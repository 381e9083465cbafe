"""`edge-gateway probe`: read registers from a device named on the command line and show
every way they can be read.

For the technician at a cabinet with a datasheet and no config yet: which table and
0-based address a datasheet number means (it is printed with every answer), the raw
registers one a line (address beside value, as mbpoll prints them), and every
interpretation side by side (drivers/modbus/interpret.py): int16/uint16 per register,
int32/uint32/float32 in the four byte orders per pair, float64 per four, the block as
text. A Modbus exception is named with what it usually means, and an answer that is
no answer is explained (drivers/modbus/diagnose.py).
"""

from __future__ import annotations

import argparse
import asyncio
import math
from typing import TYPE_CHECKING, Any

from gateway.commands.common import (
    EXIT_CONFIG,
    EXIT_ENVIRONMENT,
    EXIT_FAILURE,
    EXIT_OK,
    setup_logging,
)
from gateway.commands.modbus_args import (
    EXIT_CODES_EPILOG,
    BadArgumentsError,
    add_line_arguments,
    complain,
    interrupted,
    transport_of,
)

if TYPE_CHECKING:
    from drivers.modbus.decode import Value
    from drivers.modbus.driver import Transport
    from drivers.modbus.interpret import Interpretation, Start
    from drivers.modbus.probing import ModbusLine, Outcome

NAME = "probe"
HELP = (
    "read registers of a device named on the command line: raw, and every way to read "
    "them (types, byte orders, text)"
)
ORDER = 30

DEFAULT_TIMEOUT = 1.0

_EXIT_CODES = EXIT_CODES_EPILOG.format(
    ok="the device answered with data",
    failure="the read failed: no answer, a Modbus exception, a garbled answer, or\n"
    "       nothing listens at HOST:PORT",
)

EPILOG = f"""\
examples:
  edge-gateway probe --serial /dev/ttyUSB0 --baud 19200 --parity E --unit 3 30001 --count 4
  edge-gateway probe --tcp 10.0.0.5 --unit 1 40101 --count 2
  edge-gateway probe --rtu-over-tcp 10.0.0.9:4001 --unit 7 --table holding 100 --count 8
  edge-gateway probe --serial rfc2217://10.0.0.9:4002 --unit 2 300053 --count 2 --json

START is a datasheet number unless --table is given:
  00001-09999  coils (the leading 0 is needed: a bare 1-9999 names no table)
  10001-19999  discrete inputs
  30001-39999  input registers        300001-365536 the same, 6 digits
  40001-49999  holding registers      400001-465536 the same, 6 digits
so 30053 reads input register 52 (0-based). With --table, START is the 0-based
address as the device's protocol counts it. Every answer says which table and
0-based address were read.

{_EXIT_CODES}"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument(
        "start",
        metavar="START",
        help="the first register: a datasheet number (30001 = input register 0, 40001 = "
        "holding register 0, 300001, 10001, 00001), or with --table the 0-based address",
    )
    parser.add_argument(
        "--count",
        type=int,
        default=1,
        help="how many registers (1-125) or bits (1-2000) to read (1; 2 for a 32-bit value, "
        "4 for a 64-bit one)",
    )
    parser.add_argument(
        "--unit",
        type=int,
        default=1,
        help="the unit id (slave id) of the device: 1-247 on a serial bus, 0-255 over TCP (1)",
    )
    parser.add_argument(
        "--table",
        choices=["coil", "discrete_input", "holding", "input"],
        help="read this table, START being the 0-based address (default: the table of "
        "START's datasheet number)",
    )
    add_line_arguments(
        parser,
        timeout_help=f"seconds to wait for the answer ({DEFAULT_TIMEOUT:g})",
    )


def run(args: argparse.Namespace) -> int:
    from drivers.modbus.decode import Table
    from drivers.modbus.probing import LineUnusableError, check_line_opens

    setup_logging("warning")  # pymodbus' every failed attempt is not news here
    try:
        start = _start(args)
        transport = transport_of(args)
        _check_unit(args.unit, transport.kind)
    except (BadArgumentsError, ValueError) as err:
        complain(NAME, str(err))
        return EXIT_CONFIG
    timeout = args.timeout or DEFAULT_TIMEOUT
    try:
        check_line_opens(transport, timeout)
    except LineUnusableError as err:
        return _refused(args, transport, str(err), EXIT_ENVIRONMENT if err.local else EXIT_FAILURE)
    from drivers.modbus.probing import ModbusLine

    outcome = asyncio.run(_read(ModbusLine(transport, timeout), args.unit, start, args.count))
    if outcome.answer == "connection":
        return _refused(args, transport, outcome.detail, EXIT_FAILURE)
    interpretation = None
    if outcome.answer == "data":
        from drivers.modbus.interpret import interpret

        interpretation = interpret(Table(start.table), start.address, outcome.values)
    if args.json:
        from gateway.commands.output import print_json

        print_json(_document(transport, args.unit, start, args.count, outcome, interpretation))
    else:
        _print(transport, args.unit, start, args.count, outcome, interpretation)
    return EXIT_OK if outcome.answer == "data" else EXIT_FAILURE


def _start(args: argparse.Namespace) -> Start:
    from drivers.modbus.decode import Table
    from drivers.modbus.interpret import parse_start
    from drivers.modbus.plan import MAX_BITS, MAX_REGISTERS

    start = parse_start(args.start, Table(args.table) if args.table else None)
    limit = MAX_BITS if start.table.is_bit_table else MAX_REGISTERS
    what = "bits" if start.table.is_bit_table else "registers"
    if not 1 <= args.count <= limit:
        raise BadArgumentsError(f"--count {args.count}: one read takes 1 to {limit} {what}")
    if start.address + args.count > 0x10000:
        raise BadArgumentsError(
            f"{start.describe()} and {args.count - 1} more run past the last address, 65535"
        )
    return start


def _check_unit(unit: int, kind: str) -> None:
    if kind == "tcp":
        if not 0 <= unit <= 255:
            raise BadArgumentsError(f"--unit {unit}: a unit id is 0 to 255")
    elif not 1 <= unit <= 247:
        raise BadArgumentsError(
            f"--unit {unit}: a unit id on a serial bus is 1 to 247 (0 is the broadcast "
            "address, which no slave answers)"
        )


async def _read(line: ModbusLine, unit: int, start: Start, count: int) -> Outcome:
    from drivers.modbus.probing import LineUnusableError, Outcome
    from gateway.commands.output import Progress

    with Progress(f"reading unit {unit}", total=1) as progress:
        ticker = asyncio.create_task(_tick(progress))
        try:
            await line.open()
            outcome = await line.read(unit, start.table, start.address, count)
            if interrupted():
                raise asyncio.CancelledError
        except LineUnusableError as err:
            outcome = Outcome(unit, "connection", str(err))
        finally:
            ticker.cancel()
            line.close()
    return outcome


async def _tick(progress: Any) -> None:
    """Keep the progress line alive while one request waits (it draws after a second)."""
    while True:
        await asyncio.sleep(0.25)
        progress.advance(0, "waiting for the answer")


def _refused(args: argparse.Namespace, transport: Transport, message: str, code: int) -> int:
    from drivers.modbus.probing import describe_line

    if args.json:
        from gateway.commands.output import print_json

        print_json(
            {
                "ok": False,
                "line": describe_line(transport),
                "unit": args.unit,
                "answer": "connection",
                "error": message,
            }
        )
    else:
        complain(NAME, message)
    return code


def _where(transport: Transport, unit: int) -> str:
    from drivers.modbus.probing import describe_line

    return f"unit {unit} on {describe_line(transport)}"


def _print(
    transport: Transport,
    unit: int,
    start: Start,
    count: int,
    outcome: Outcome,
    interpretation: Interpretation | None,
) -> None:
    where = _where(transport, unit)
    what = "bit(s)" if start.table.is_bit_table else "register(s)"
    if interpretation is None:
        lines = _failure(transport, start, outcome) + (
            [f"note: {start.note}"] if start.note else []
        )
        complain(NAME, f"{where}, {start.describe()}:\n  " + "\n  ".join(lines))
        return
    if start.note:
        print(f"note: {start.note}")
    print(f"{where}: {start.describe()}, {count} {what}, answered in {outcome.latency_ms} ms")
    _print_interpretation(interpretation)


def _failure(transport: Transport, start: Start, outcome: Outcome) -> list[str]:
    """What went wrong, and what to check first: a line each."""
    from drivers.modbus.decode import Table
    from drivers.modbus.notation import datasheet_number
    from drivers.modbus.probing import describe_line

    if outcome.answer in ("exception", "gateway"):
        lines = [outcome.detail]
        if outcome.code in (1, 2) and not start.table.is_bit_table:
            other = Table.HOLDING if start.table is Table.INPUT else Table.INPUT
            number = datasheet_number(other, start.address)
            lines.append(f"if it is {other} register {start.address}: datasheet {number}")
        return lines
    if outcome.answer == "garbled":
        lines = [f"a garbled answer: {outcome.detail}"]
        if outcome.received:
            lines.append(f"{len(outcome.received)} byte(s) came: {_hex(outcome.received)}")
        if transport.kind == "rtu":
            lines.append(
                f"wrong line settings? edge-gateway scan --serial {transport.serial_port} "
                "--serial-settings auto"
            )
        return lines
    if transport.kind == "tcp":
        return [
            f"{outcome.detail} (the connection was accepted): check the unit id",
            f"edge-gateway scan --tcp {transport.host}:{transport.port} lists those that answer",
        ]
    hint = (
        f"edge-gateway scan --serial {transport.serial_port} --serial-settings auto finds them"
        if transport.kind == "rtu"
        else "they are set in the serial device server"
    )
    return [
        f"{outcome.detail} on {describe_line(transport)}",
        f"check the unit id, the line settings ({hint}), the wiring (A and B swapped?), "
        "the bus terminator and the device's power",
    ]


def _hex(data: bytes) -> str:
    return " ".join(f"{b:02X}" for b in data)


def _print_interpretation(result: Interpretation) -> None:
    from drivers.modbus.decode import register_count
    from drivers.modbus.interpret import ORDERS, shown
    from gateway.commands.output import print_table

    print()
    if result.table.is_bit_table:
        print_table(
            ["address", "datasheet", "value"],
            [(r.address, r.datasheet, r.value) for r in result.registers],
        )
        return
    print_table(
        ["address", "datasheet", "hex", "uint16", "int16", "text"],
        [(r.address, r.datasheet, r.hex, r.value, r.int16, r.text) for r in result.registers],
    )
    for size, title in ((2, "32-bit values"), (4, "64-bit values")):
        rows = [
            (
                f"{w.address}-{w.address + size - 1}",
                w.dtype,
                *(shown(v, w.dtype) for _, v in w.values),
            )
            for w in result.wide
            if register_count(w.dtype) == size
        ]
        if rows:
            print()
            print_table(["registers", "type", *ORDERS], rows, title=f"{title} in each byte order")
    print()
    print(f'text: "{result.text}"   bytes of each register swapped: "{result.text_swapped}"')
    if len(result.registers) < 2:
        print("(a 32-bit value needs --count 2, a 64-bit one --count 4)")


def _document(
    transport: Transport,
    unit: int,
    start: Start,
    count: int,
    outcome: Outcome,
    interpretation: Interpretation | None,
) -> dict[str, Any]:
    from drivers.modbus.exceptions import EXCEPTION_MEANINGS, exception_name
    from drivers.modbus.probing import describe_line

    document: dict[str, Any] = {
        "ok": outcome.answer == "data",
        "line": describe_line(transport),
        "transport": transport.kind,
        "unit": unit,
        "start": start.written,
        "table": str(start.table),
        "address": start.address,
        "datasheet": start.datasheet,
        "read": start.describe(),
        "note": start.note or None,
        "count": count,
        "answer": outcome.answer,
        "latency_ms": outcome.latency_ms,
        "error": None
        if outcome.answer == "data"
        else "; ".join(_failure(transport, start, outcome)),
        "exception": None,
        "received_hex": _hex(outcome.received) or None,
    }
    if outcome.code is not None:
        document["exception"] = {
            "code": outcome.code,
            "name": exception_name(outcome.code),
            "meaning": EXCEPTION_MEANINGS.get(outcome.code),
        }
    if interpretation is not None:
        document["registers"] = [
            {
                "address": r.address,
                "datasheet": r.datasheet,
                "value": r.value,
                "hex": r.hex,
                "int16": r.int16,
                "text": r.text,
            }
            for r in interpretation.registers
        ]
        document["values"] = [
            {
                "address": w.address,
                "type": str(w.dtype),
                **{str(order): _json_value(v) for order, v in w.values},
            }
            for w in interpretation.wide
        ]
        document["text"] = interpretation.text
        document["text_swapped"] = interpretation.text_swapped
    return document


def _json_value(value: Value) -> Value:
    """JSON has no NaN or infinity: those are given as the strings 'nan', 'inf', '-inf'."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
