"""`edge-gateway listen`: what a serial instrument sends, as bytes, frames, fields and points.

For developing a line-protocol config against the live instrument: start with the raw
bytes (hex and text, each chunk with its time of arrival), add a framing until the
frames come out whole, add a parser until the fields are right, then try the device's
section of the config (`-c FILE --device NAME`), which shows each point's value and
quality as the gateway would publish it (the section's framing, parser, points and
processing). `--framing` and `--parser` take the keys of the config file's `framing`
and `parser` tables, so what works here is pasted into the config as it is.

The framer and parser are the config models' own (`build()`), and with `-c` the
frames go through the driver's own frame handling: what `listen` shows is what the
gateway will do. The port is opened exclusively, as the driver opens it: while the
running service holds it, `listen` names the holder and exits 3.

The helpers at the bottom (`open_exclusive`, `RecordingParser`, `quality_name`) serve
`check` too.
"""

from __future__ import annotations

import argparse
import codecs
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.commands.common import (
    EXIT_CONFIG,
    EXIT_ENVIRONMENT,
    EXIT_FAILURE,
    EXIT_OK,
    positive_seconds,
)

if TYPE_CHECKING:
    import serial

    from drivers.core.model import Reading
    from drivers.serial_line.driver import SerialLineDriver
    from drivers.serial_line.framing import Framer
    from drivers.serial_line.parsers import Field, Parser
    from gateway.pipeline.processing import Processing

NAME = "listen"
HELP = (
    "show what a serial instrument sends: raw bytes, frames cut by a framing, fields "
    "parsed by a parser, points as the gateway reads them"
)
ORDER = 45

EPILOG = """\
examples:
  edge-gateway listen --port /dev/ttyUSB1 --baud 19200 --seconds 10
  edge-gateway listen --port /dev/ttyUSB1 --framing delimiter
  edge-gateway listen --port /dev/ttyUSB1 --framing 'kind="delimiter", delimiter="\\r\\n"' \\
      --parser "kind='regex', pattern='CH4=(?P<ch4>[-\\d.]+)'"
  edge-gateway listen --port /dev/ttyUSB2 --send 'R\\r\\n' --every 2 --framing delimiter
  edge-gateway listen -c /etc/edge-gateway/gateway.toml --device gas --frames 5

When nothing arrived in the first 5 s (or by the end of a shorter --seconds), or bytes
arrived but the framing cut no frame, a hint on stderr says what to check (line settings,
wiring, framing).

--framing and --parser take the keys of the config's framing and parser tables,
as a TOML inline table with or without braces (a kind alone takes its defaults).
Write regular expressions in single quotes (TOML literal strings: no escapes).

exit codes:
  0    listened as long as asked (--seconds, --frames)
  1    nothing arrived, or fewer frames than --frames before --seconds ran out
  2    bad input: a framing or parser that does not build, no such device, ...
  3    the port is missing, held by another program (named), or not permitted
  130  interrupted (Ctrl-C): the port is closed, a summary is printed on stderr
  143  stopped by SIGTERM (kill, a rig): as by Ctrl-C, summary and 'end' event included
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    where = parser.add_argument_group("where to listen (a port, or a device of a config)")
    where.add_argument(
        "--port",
        help="the serial device, e.g. /dev/ttyUSB1, or a serial device server's port, "
        "rfc2217://HOST:PORT",
    )
    where.add_argument(
        "-c",
        "--config",
        type=Path,
        help="a gateway config: listen as its device --device (port, line settings, "
        "framing, parser, points, processing)",
    )
    where.add_argument(
        "--device", help="the name of a serial_line device of --config (required with it)"
    )
    line = parser.add_argument_group("line settings (default 9600 8N1, or the device's)")
    line.add_argument("--baud", type=_positive_int, help="baud rate, e.g. 9600, 19200")
    line.add_argument("--parity", choices=["N", "E", "O"], help="parity: none, even, odd")
    line.add_argument("--bytesize", type=int, choices=[7, 8], help="data bits")
    line.add_argument("--stopbits", type=int, choices=[1, 2], help="stop bits")
    cut = parser.add_argument_group("frames and fields")
    cut.add_argument(
        "--framing",
        metavar="TOML",
        help="cut frames as the config's framing table does: a kind (delimiter, fixed, "
        'length_field) or its keys, e.g. \'kind="fixed", length=12, sync_hex="AA55"\'',
    )
    cut.add_argument(
        "--parser",
        metavar="TOML",
        help="parse each frame as the config's parser table does (regex, delimited, nmea, "
        "binary), e.g. \"kind='delimited', fields=['tag', 'flow', 'total']\" (needs a framing)",
    )
    cut.add_argument(
        "--raw",
        action="store_true",
        help="show the raw bytes too when a framing is given (always shown without one)",
    )
    poll = parser.add_argument_group("a polled instrument")
    send = poll.add_mutually_exclusive_group()
    send.add_argument(
        "--send",
        metavar="TEXT",
        help="send this every --every seconds; escapes \\r \\n \\t \\xNN are understood "
        "(default with -c: the device's poll_command)",
    )
    send.add_argument("--send-hex", metavar="HEX", help="send these bytes, e.g. '01 03 00 00'")
    poll.add_argument(
        "--every",
        type=positive_seconds,
        help="seconds between sends (default 1, or the device's poll_interval)",
    )
    stop = parser.add_argument_group("when to stop (default: Ctrl-C)")
    stop.add_argument("--seconds", type=positive_seconds, help="stop after this many seconds")
    stop.add_argument(
        "--frames", type=_positive_int, help="stop after this many frames (needs a framing)"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="one JSON object a line for each event (bytes, frame, discard, sent) and a "
        "last one with the totals (event 'end')",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


class BadInput(Exception):
    """What was asked cannot be done as written (exit 2); the message says why."""


def run(args: argparse.Namespace) -> int:
    from gateway.commands.common import setup_logging

    setup_logging("error")  # the driver's warnings are what this command shows, per frame
    try:
        setup = _setup(args)
    except BadInput as err:
        _say(f"edge-gateway listen: {err}")
        return EXIT_CONFIG
    return _listen(setup, args)


# --- what to listen to ------------------------------------------------------------------


@dataclass
class Setup:
    port_settings: dict[str, Any]
    framer: Framer | None
    parser: RecordingParser | None
    driver: SerialLineDriver | None  # with -c: its frame handling makes the readings
    processing: Processing | None
    units: dict[str, str | None]
    command: bytes | None
    every: float
    readings: list[Reading] = field(default_factory=list)  # what processing let through


def _setup(args: argparse.Namespace) -> Setup:
    if (args.port is None) == (args.config is None):
        raise BadInput("give --port, or -c FILE with --device NAME")
    if args.config is not None:
        setup = _device_setup(args)
    else:
        if args.device is not None:
            raise BadInput("--device names a device of a config: give -c FILE too")
        setup = _plain_setup(args)
    setup.port_settings = {
        "port": args.port or setup.port_settings["port"],
        "baudrate": args.baud or setup.port_settings["baudrate"],
        "bytesize": args.bytesize or setup.port_settings["bytesize"],
        "parity": args.parity or setup.port_settings["parity"],
        "stopbits": args.stopbits or setup.port_settings["stopbits"],
    }
    if args.send is not None:
        setup.command = _unescaped(args.send)
    elif args.send_hex is not None:
        setup.command = _hex(args.send_hex)
    if args.every is not None:
        setup.every = args.every
    if args.frames is not None and setup.framer is None:
        raise BadInput("--frames counts frames: give a --framing too")
    if args.parser is not None and setup.framer is None:
        raise BadInput("a parser reads frames: give a --framing too")
    return setup


def _plain_setup(args: argparse.Namespace) -> Setup:
    framer = _framing(args.framing).build() if args.framing is not None else None
    parser = RecordingParser(_parser(args.parser).build()) if args.parser is not None else None
    return Setup(
        port_settings={
            "port": args.port,
            "baudrate": 9600,
            "bytesize": 8,
            "parity": "N",
            "stopbits": 1,
        },
        framer=framer,
        parser=parser,
        driver=None,
        processing=None,
        units={},
        command=None,
        every=1.0,
    )


def _device_setup(args: argparse.Namespace) -> Setup:
    from drivers.serial_line.build import build_driver
    from drivers.serial_line.config import SerialLineDeviceConfig
    from gateway.errors import ConfigError
    from gateway.pipeline.processing import compile_processing
    from gateway.settings import load_config

    if args.device is None:
        raise BadInput("-c FILE needs --device NAME: the serial_line device to listen as")
    try:
        loaded = load_config(args.config)
    except ConfigError as err:
        raise BadInput(str(err)) from None
    found = [d for d in loaded.config.devices if d.name == args.device]
    if not found:
        names = ", ".join(d.name for d in loaded.config.devices)
        raise BadInput(f"{args.config} has no device {args.device!r}; its devices: {names}")
    device = found[0]
    if not isinstance(device, SerialLineDeviceConfig):
        raise BadInput(
            f"device {args.device!r} is {device.protocol}: listen shows what a serial line "
            "instrument sends; for a Modbus device use check (or probe)"
        )
    update: dict[str, Any] = {}
    if args.framing is not None:
        update["framing"] = _framing(args.framing)
    if args.parser is not None:
        update["parser"] = _parser(args.parser)
    if update:
        device = device.model_copy(update=update)
    setup = Setup(
        port_settings={
            "port": device.port,
            "baudrate": device.baudrate,
            "bytesize": device.bytesize,
            "parity": device.parity,
            "stopbits": device.stopbits,
        },
        framer=None,
        parser=None,
        driver=None,
        processing=None,
        units={p.name: p.unit for p in device.points},
        command=device.command_bytes(),
        every=device.poll_interval,
    )
    processing = compile_processing(loaded.config, setup.readings.extend, lambda event: None)
    driver = build_driver(device, processing.add)
    driver.parser = setup.parser = RecordingParser(driver.parser)
    setup.framer, setup.driver, setup.processing = driver.framer, driver, processing
    return setup


def _framing(text: str) -> Any:
    from drivers.serial_line.config import FramingConfig

    return _section("--framing", text, FramingConfig)


def _parser(text: str) -> Any:
    from drivers.serial_line.config import ParserConfig

    return _section("--parser", text, ParserConfig)


def _section(option: str, text: str, union: Any) -> Any:
    """A framing or parser config from a TOML inline table (or a bare kind), validated
    by the config's own model; BadInput naming the key and the reason."""
    import tomllib
    import typing

    from pydantic import ValidationError

    from gateway.settings import format_validation_errors

    body = text.strip()
    if body.isidentifier():
        body = f'kind = "{body}"'
    if not body.startswith("{"):
        body = "{" + body + "}"
    try:
        table = tomllib.loads(f"x = {body}")["x"]
    except tomllib.TOMLDecodeError as err:
        raise BadInput(
            f"{option} {text!r} is not a TOML inline table ({err}); e.g. "
            '\'kind="delimiter", delimiter="\\r\\n"\' (write regular expressions in '
            "single quotes)"
        ) from None
    members = typing.get_args(typing.get_args(union)[0])
    kinds = {typing.get_args(m.model_fields["kind"].annotation)[0]: m for m in members}
    model = kinds.get(table.get("kind"))
    if model is None:
        raise BadInput(
            f"{option}: kind {table.get('kind')!r} is not one of {', '.join(map(repr, kinds))}"
        )
    try:
        config = model.model_validate(table)
        config.build()
    except ValidationError as err:
        lines = format_validation_errors(err)
        raise BadInput("; ".join(f"{option} {line}" for line in lines)) from None
    except ValueError as err:
        raise BadInput(f"{option}: {err}") from None
    return config


def _unescaped(text: str) -> bytes:
    try:
        return codecs.decode(text, "unicode_escape").encode("latin-1")
    except (UnicodeDecodeError, UnicodeEncodeError) as err:
        raise BadInput(f"--send {text!r}: {err.reason}; use --send-hex for bytes") from None


def _hex(text: str) -> bytes:
    try:
        data = bytes.fromhex(text)
    except ValueError:
        raise BadInput(f"--send-hex {text!r} is not hex bytes, e.g. '01 03 00 00'") from None
    if not data:
        raise BadInput("--send-hex needs at least one byte")
    return data


# --- listening --------------------------------------------------------------------------


@dataclass
class Totals:
    bytes: int = 0
    chunks: int = 0
    frames: int = 0
    discards: int = 0
    not_parsed: int = 0
    sent: int = 0


def _listen(setup: Setup, args: argparse.Namespace) -> int:
    import termios
    import time

    import serial

    from drivers.serial_port import open_error
    from gateway.commands.output import Progress

    ps = setup.port_settings
    show = Show(args.json, setup.units)
    totals = Totals()
    started = time.monotonic()
    try:
        port = open_exclusive(ps)
    except ValueError as err:  # pyserial refuses the line settings
        _say(f"edge-gateway listen: {ps['port']}: {err}")
        return EXIT_CONFIG
    except (serial.SerialException, OSError, termios.error) as err:
        _say(f"edge-gateway listen: {open_error(ps['port'], err)}")
        return EXIT_ENVIRONMENT
    reason = "interrupted"
    hint_at: float | None = started + HINT_AFTER
    try:  # the port is open: from here on a Ctrl-C at any moment closes it and says the totals
        with port, Progress("listening", total=args.frames) as progress:
            last = started
            deadline = started + args.seconds if args.seconds is not None else None
            next_send = started if setup.command is not None else None
            if not args.json:
                _say(f"listening on {ps['port']} at {_line_text(ps)} (Ctrl-C stops)")
            live = progress if not _stdout_is_terminal() else None
            while True:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    reason = "seconds"
                    break
                if next_send is not None and now >= next_send:
                    assert setup.command is not None
                    port.write(setup.command)
                    totals.sent += 1
                    show.event("sent", now - started, now - last, setup.command)
                    next_send = max(next_send + setup.every, now)
                waits = [0.2]
                if deadline is not None:
                    waits.append(deadline - now)
                if next_send is not None:
                    waits.append(next_send - now)
                if hint_at is not None:
                    waits.append(hint_at - now)
                ready = wait_readable(port, max(0.0, min(waits)))
                if live is not None:
                    live.advance(0, f"{now - started:.0f}s, {totals.bytes} bytes")
                if hint_at is not None and now >= hint_at:
                    hint = silence_hint(setup, totals, HINT_AFTER, args.raw)
                    if hint is not None:
                        progress.say(hint)
                    hint_at = None
                if not ready:
                    continue
                data = read_available(port)
                if not data:
                    continue
                arrived = time.monotonic()
                totals.bytes += len(data)
                totals.chunks += 1
                if setup.framer is None or args.raw:
                    show.event("bytes", arrived - started, arrived - last, data)
                last = arrived
                if setup.framer is not None:
                    done = _frames(setup, data, show, totals, arrived - started, args.frames)
                    if live is not None:
                        live.advance(0, f"{totals.frames} frames")
                    if done:
                        reason = "frames"
                        break
    except KeyboardInterrupt:
        show.end(totals, time.monotonic() - started, reason)
        raise
    except (serial.SerialException, OSError) as err:  # a server ended the session, a USB unplug
        show.end(totals, time.monotonic() - started, "port lost")
        _say(f"edge-gateway listen: {ps['port']}: the port went away: {err}")
        return EXIT_ENVIRONMENT
    if hint_at is not None and reason == "seconds":  # a listen shorter than HINT_AFTER
        hint = silence_hint(setup, totals, time.monotonic() - started, args.raw)
        if hint is not None:
            _say(hint)
    show.end(totals, time.monotonic() - started, reason)
    if totals.bytes == 0:
        return EXIT_FAILURE
    if args.frames is not None and totals.frames < args.frames:
        return EXIT_FAILURE
    return EXIT_OK


HINT_AFTER = 5.0  # seconds of listening before a hint on stderr (or the end, if sooner)


def _line_text(ps: dict[str, Any]) -> str:
    """'9600 8N1': the line settings as technicians write them."""
    return f"{ps['baudrate']} {ps['bytesize']}{ps['parity']}{ps['stopbits']}"


def silence_hint(setup: Setup, totals: Totals, seconds: float, raw: bool) -> str | None:
    """What to check when nothing came (or no frame was cut) in `seconds`; None when
    all is well. Said once, on stderr, for the person at the port."""
    ps = setup.port_settings
    if totals.bytes == 0:
        asked = (
            f"{totals.sent} request(s) sent and not one byte back"
            if totals.sent
            else "nothing received"
        )
        ask = (
            "Does the instrument take this request (its manual; --send)?"
            if totals.sent
            else "Is the instrument powered, and does it send on its own (some only answer "
            "a request: --send)?"
        )
        return (
            f"hint: {asked} in {seconds:.2g}s on {ps['port']} at {_line_text(ps)}. {ask} Check "
            "the baud rate, data bits, parity and stop bits against its manual, and the "
            "wiring: RS-232 TX to RX and a common ground; RS-485 A and B (D+ and D-) not "
            "swapped, and the bus terminated."
        )
    if setup.framer is not None and totals.frames == 0:
        see = "" if raw else " (--raw shows the bytes as they arrive)"
        return (
            f"hint: {totals.bytes} bytes in {seconds:.2g}s but not one frame cut: the "
            f"framing does not match what the instrument sends{see}; {totals.discards} "
            "discard(s) so far. If the bytes look like noise, check the baud rate and "
            "parity."
        )
    return None


def _frames(
    setup: Setup, data: bytes, show: Show, totals: Totals, at: float, wanted: int | None
) -> bool:
    """Frame `data`, parse and show each frame; True once `wanted` frames came."""
    from drivers.serial_line.framing import Discard
    from drivers.serial_line.parsers import ParseError

    assert setup.framer is not None
    for event in setup.framer.feed(data):
        if isinstance(event, Discard):
            totals.discards += 1
            show.event("discard", at, None, event.data, reason=event.reason)
            continue
        totals.frames += 1
        fields: dict[str, Field] | None = None
        error: str | None = None
        readings: list[Reading] | None = None
        if setup.driver is not None and setup.parser is not None:
            setup.parser.reset()
            setup.readings.clear()
            setup.driver.handle(event)
            fields, error = setup.parser.fields, setup.parser.error
            readings = list(setup.readings)
        elif setup.parser is not None:
            try:
                fields = setup.parser.parse(event.data)
            except ParseError as err:
                error = str(err)
        if error is not None:
            totals.not_parsed += 1
        show.event("frame", at, None, event.data, fields=fields, error=error, readings=readings)
        if wanted is not None and totals.frames >= wanted:
            return True
    return False


class Show:
    """Each event as a line for people (time, size, text, hex) or as JSON."""

    def __init__(self, as_json: bool, units: dict[str, str | None]) -> None:
        self.as_json = as_json
        self.units = units

    def event(
        self,
        kind: str,
        offset: float,
        gap: float | None,
        data: bytes,
        *,
        reason: str | None = None,
        fields: dict[str, Field] | None = None,
        error: str | None = None,
        readings: Sequence[Reading] | None = None,
    ) -> None:
        import datetime
        import json

        now = datetime.datetime.now().astimezone()
        if self.as_json:
            doc: dict[str, Any] = {
                "event": kind,
                "time": now.isoformat(timespec="milliseconds"),
                "offset_s": round(offset, 4),
                "length": len(data),
                "text": data.decode("latin-1"),
                "hex": data.hex(" "),
            }
            if reason is not None:
                doc["reason"] = reason
            if fields is not None:
                doc["fields"] = fields
            if error is not None:
                doc["error"] = error
            if readings is not None:
                doc["points"] = [self._point(r) for r in readings]
            print(json.dumps(doc), flush=True)
            return
        stamp = now.strftime("%H:%M:%S.%f")[:-3]
        since = f"+{gap:.3f}s" if gap is not None else ""
        lines = [f"{stamp} {since:>9} {kind:<7} {len(data):>4} B  {printable(data)}"]
        pad = " " * 33
        if reason is not None:
            lines.append(f"{pad}({reason})")
        lines.append(f"{pad}hex {data.hex(' ')}")
        if fields is not None:
            shown = " ".join(f"{k}={v!r}" for k, v in fields.items()) or "(none)"
            lines.append(f"{pad}fields {shown}")
        if error is not None:
            lines.append(f"{pad}not parsed: {error}")
        if readings is not None:
            points = ", ".join(_point_text(self._point(r)) for r in readings) or "(none)"
            lines.append(f"{pad}points {points}")
        print("\n".join(lines), flush=True)

    def _point(self, reading: Reading) -> dict[str, Any]:
        return {
            "point": reading.point,
            "value": reading.value,
            "unit": self.units.get(reading.point.split(".")[0]),
            "quality": quality_name(reading.quality),
        }

    def end(self, totals: Totals, seconds: float, reason: str) -> None:
        import json

        summary = (
            f"{totals.bytes} bytes in {totals.chunks} chunk(s), {totals.frames} frame(s), "
            f"{totals.discards} discard(s), {totals.not_parsed} not parsed, "
            f"{totals.sent} sent, in {seconds:.1f}s"
        )
        if self.as_json:
            doc = {"event": "end", "reason": reason, "seconds": round(seconds, 3)}
            print(json.dumps(doc | vars(totals)), flush=True)
        else:
            _say(summary)


def _point_text(point: dict[str, Any]) -> str:
    unit = f" {point['unit']}" if point["unit"] else ""
    return f"{point['point']}={point['value']!r}{unit} ({point['quality']})"


def printable(data: bytes) -> str:
    """Bytes as text a terminal shows safely: printable ASCII as it is, \\r \\n \\t and
    \\xNN for the rest, between double quotes."""
    out = []
    for byte in data:
        if byte in _ESCAPES:
            out.append(_ESCAPES[byte])
        elif 32 <= byte < 127:
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02x}")
    return '"' + "".join(out) + '"'


_ESCAPES = {13: "\\r", 10: "\\n", 9: "\\t", 34: '\\"', 92: "\\\\"}


def _say(text: str) -> None:
    import sys

    print(text, file=sys.stderr, flush=True)


def _stdout_is_terminal() -> bool:
    import sys

    return sys.stdout.isatty()


# --- shared with check ------------------------------------------------------------------


def open_exclusive(settings: dict[str, Any]) -> serial.Serial:
    """The port opened as the drivers open it: exclusively (flock and TIOCEXCL), so a port
    the running service holds fails here with EBUSY or a lock error (`open_error` names
    the holder) instead of both readers losing bytes. A port on a serial device server
    (rfc2217://) is pyserial's client for it: the server decides who may connect."""
    import serial

    from drivers.serial_port import forbid_other_openers, is_rfc2217

    if is_rfc2217(settings["port"]):
        line = {key: value for key, value in settings.items() if key != "port"}
        return serial.serial_for_url(settings["port"], timeout=0, **line)
    port = serial.Serial(timeout=0, write_timeout=1.0, exclusive=True, **settings)
    forbid_other_openers(port.fileno())
    return port


def read_available(port: serial.SerialBase) -> bytes:
    """What has arrived; SerialException once a serial device server has ended the
    session (pyserial's RFC 2217 port: its queue taken whole, drivers/serial_port.py)."""
    import serial

    from drivers.serial_port import SERVER_CLOSED, is_rfc2217, take_queued

    if is_rfc2217(str(port.port)):
        data, _, ended = take_queued(port)
        if ended and not data:
            raise serial.SerialException(SERVER_CLOSED)
        return data
    read: bytes = port.read(max(1, port.in_waiting))
    return read


def wait_readable(port: serial.SerialBase, seconds: float) -> bool:
    """Whether bytes arrived within `seconds`: select() on a port's file descriptor; a
    port on a serial device server, which has none, is looked at every 10 ms."""
    import select
    import time

    from drivers.serial_port import reader_ended

    try:
        fd = port.fileno()
    except (AttributeError, OSError):  # pyserial's RFC 2217 port (its reader ended: readable)
        deadline = time.monotonic() + seconds
        while not port.in_waiting and not reader_ended(port):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(0.01, left))
        return True
    ready, _, _ = select.select([fd], [], [], seconds)
    return bool(ready)


class RecordingParser:
    """A parser that keeps what it last produced (fields) or why it could not (error),
    around the parser a config built: the driver parses through it unchanged."""

    def __init__(self, inner: Parser, on_fields: Callable[[dict[str, Field]], None] | None = None):
        self.inner = inner
        self.on_fields = on_fields
        self.fields: dict[str, Field] | None = None
        self.error: str | None = None

    def reset(self) -> None:
        self.fields = None
        self.error = None

    def parse(self, frame: bytes) -> dict[str, Field]:
        from drivers.serial_line.parsers import ParseError

        try:
            fields = self.inner.parse(frame)
        except ParseError as err:
            self.error = str(err)
            raise
        return self._got(fields)

    def parse_unverified(self, frame: bytes) -> dict[str, Field]:
        return self._got(self.inner.parse_unverified(frame))

    def _got(self, fields: dict[str, Field]) -> dict[str, Field]:
        self.fields = fields
        if self.on_fields is not None:
            self.on_fields(fields)
        return fields


def quality_name(quality: int) -> str:
    """'good', 'comm_error', ... as docs/wire-format.md names the codes."""
    from drivers.core.model import Quality

    try:
        return Quality(quality).name.lower()
    except ValueError:
        return str(quality)
