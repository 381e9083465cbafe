"""What `probe` and `scan` share on the command line: where the device is, and how a
Modbus line's problems become exit codes and sentences.

Where: ``--tcp HOST[:PORT]`` (Modbus TCP, port 502), ``--serial PORT`` with its line
settings (Modbus RTU; a device path, or a pyserial URL such as ``rfc2217://host:port``
for a serial device server speaking RFC 2217), or ``--rtu-over-tcp HOST[:PORT]`` (RTU
frames over a plain TCP socket, port 4001).

The CLI imports every module of this package to list the commands, so this one
imports nothing heavy at import time: the drivers are imported when a command runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from gateway.commands.common import positive_seconds

if TYPE_CHECKING:
    from drivers.modbus.driver import Transport
    from drivers.serial_port import LineSettings

TCP_PORT = 502
RTU_OVER_TCP_PORT = 4001

EXIT_CODES_EPILOG = """exit codes:
  0    {ok}
  1    {failure}
  2    bad arguments (the command line cannot be done as written)
  3    the machine is in the way: the serial port does not exist, another program holds
       it (named), or this user may not open it (the fix is named: the dialout group)
  130  interrupted (Ctrl-C); the port or connection is closed
  143  stopped by SIGTERM, as by Ctrl-C (a scan still says what it found)
"""


def add_line_arguments(parser: argparse.ArgumentParser, *, timeout_help: str) -> None:
    """The arguments that say where the device is and how to talk to it."""
    where = parser.add_argument_group("where (exactly one)")
    choice = where.add_mutually_exclusive_group(required=True)
    choice.add_argument(
        "--tcp",
        metavar="HOST[:PORT]",
        help=f"a Modbus TCP device or gateway (port {TCP_PORT} unless given)",
    )
    choice.add_argument(
        "--serial",
        metavar="PORT",
        help="Modbus RTU on a serial port, e.g. /dev/ttyUSB0, or a pyserial URL such as "
        "rfc2217://HOST:PORT (a serial device server speaking RFC 2217)",
    )
    choice.add_argument(
        "--rtu-over-tcp",
        metavar="HOST[:PORT]",
        help="RTU frames over TCP: a serial device server in raw mode "
        f"(port {RTU_OVER_TCP_PORT} unless given)",
    )
    line = parser.add_argument_group("serial line (with --serial)")
    line.add_argument("--baud", type=int, default=9600, metavar="RATE", help="baud rate (9600)")
    line.add_argument("--parity", choices=["N", "E", "O"], default="N", help="parity (N)")
    line.add_argument("--stopbits", type=int, choices=[1, 2], default=1, help="stop bits (1)")
    line.add_argument("--bytesize", type=int, choices=[7, 8], default=8, help="data bits (8)")
    parser.add_argument("--timeout", type=positive_seconds, metavar="SECONDS", help=timeout_help)
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object with the same facts, for scripts and test rigs",
    )


class BadArgumentsError(ValueError):
    """The command line asks for something that cannot be done as written (exit 2)."""


def line_settings(args: argparse.Namespace) -> LineSettings:
    from drivers.serial_port import LineSettings

    if not 50 <= args.baud <= 4_000_000:
        raise BadArgumentsError(f"--baud {args.baud}: a baud rate is 50 to 4000000")
    return LineSettings(args.baud, args.bytesize, args.parity, args.stopbits)


def transport_of(args: argparse.Namespace, settings: LineSettings | None = None) -> Transport:
    """The line the command line names; `settings` replace the serial line's."""
    from drivers.modbus.probing import network_transport, serial_transport

    if args.serial is not None:
        return serial_transport(args.serial, settings or line_settings(args))
    if args.tcp is not None:
        return network_transport("tcp", *_host_port(args.tcp, TCP_PORT, "--tcp"))
    host_port = _host_port(args.rtu_over_tcp, RTU_OVER_TCP_PORT, "--rtu-over-tcp")
    return network_transport("rtu_over_tcp", *host_port)


def _host_port(text: str, default: int, option: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if not colon or "]" in port or (":" in host and not host.endswith("]")):
        host, port = text, str(default)  # no port, or a bare IPv6 address
    host = host.strip("[]")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise BadArgumentsError(f"{option} {text!r}: write HOST or HOST:PORT (port 1-65535)")
    return host, int(port)


def interrupted() -> bool:
    """Whether Ctrl-C is cancelling the running task, even where a library below swallowed
    the cancellation and carried on."""
    import asyncio

    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def complain(command: str, message: str) -> None:
    """One sentence on stderr, as every command says what stopped it."""
    print(f"edge-gateway {command}: {message}", file=sys.stderr)
