"""Serial line configs into drivers, once, at start-up: one driver per instrument and
port, with the framer and parser its config sections build.

Pure of pydantic: the daemon builds from the config's records (gateway/loaded.py), and
the config's own validation builds through the same functions (`build_framer`,
`build_parser`), so a section that validates is one that builds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, Protocol

from drivers.base import ReadingSink
from drivers.core.words import shown
from drivers.serial_line.checksums import ChecksumName
from drivers.serial_line.driver import LinePoint, SerialLineDriver
from drivers.serial_line.framing import (
    DelimiterFramer,
    FixedLengthFramer,
    Framer,
    LengthFieldFramer,
)
from drivers.serial_line.parsers import (
    BinaryParser,
    DelimitedParser,
    NmeaParser,
    Parser,
    RegexParser,
)

# --- what the builders read of a config section (drivers/serial_line/config.py's models,
# or their records in the daemon: gateway/loaded.py) ----------------------------------------


class DelimiterSection(Protocol):
    """`kind = "delimiter"` framing."""

    @property
    def kind(self) -> Literal["delimiter"]: ...

    @property
    def delimiter(self) -> str: ...

    @property
    def start(self) -> str | None: ...

    @property
    def max_length(self) -> int: ...


class FixedSection(Protocol):
    """`kind = "fixed"` framing."""

    @property
    def kind(self) -> Literal["fixed"]: ...

    @property
    def length(self) -> int: ...

    @property
    def sync_hex(self) -> str | None: ...


class LengthFieldSection(Protocol):
    """`kind = "length_field"` framing."""

    @property
    def kind(self) -> Literal["length_field"]: ...

    @property
    def start_hex(self) -> str: ...

    @property
    def length_offset(self) -> int: ...

    @property
    def length_size(self) -> Literal[1, 2]: ...

    @property
    def byteorder(self) -> Literal["big", "little"]: ...

    @property
    def length_adjust(self) -> int: ...

    @property
    def end_hex(self) -> str | None: ...

    @property
    def max_length(self) -> int: ...


class RegexSection(Protocol):
    """`kind = "regex"` parser."""

    @property
    def kind(self) -> Literal["regex"]: ...

    @property
    def pattern(self) -> str: ...

    @property
    def encoding(self) -> str: ...


class DelimitedSection(Protocol):
    """`kind = "delimited"` parser."""

    @property
    def kind(self) -> Literal["delimited"]: ...

    @property
    def fields(self) -> Sequence[str]: ...

    @property
    def separator(self) -> str: ...

    @property
    def encoding(self) -> str: ...


class NmeaSection(Protocol):
    """`kind = "nmea"` parser."""

    @property
    def kind(self) -> Literal["nmea"]: ...

    @property
    def sentence(self) -> str | None: ...

    @property
    def fields(self) -> Mapping[str, int]: ...

    @property
    def coordinates(self) -> Mapping[str, tuple[int, int]]: ...

    @property
    def require_checksum(self) -> bool: ...


class BinarySection(Protocol):
    """`kind = "binary"` parser."""

    @property
    def kind(self) -> Literal["binary"]: ...

    @property
    def layout(self) -> str: ...

    @property
    def fields(self) -> Sequence[str]: ...

    @property
    def offset(self) -> int: ...

    @property
    def checksum(self) -> ChecksumName | None: ...

    @property
    def checksum_start(self) -> int: ...


FramingSection = DelimiterSection | FixedSection | LengthFieldSection
ParserSection = RegexSection | DelimitedSection | NmeaSection | BinarySection


class PointSection(Protocol):
    """A point of an instrument."""

    @property
    def name(self) -> str: ...

    @property
    def field(self) -> str | None: ...

    @property
    def type(self) -> Literal["float", "int", "bool", "string"]: ...

    @property
    def scale(self) -> float: ...

    @property
    def offset(self) -> float: ...


class InstrumentSection(Protocol):
    """A `protocol = "serial_line"` device."""

    @property
    def name(self) -> str: ...

    @property
    def port(self) -> str: ...

    @property
    def baudrate(self) -> int: ...

    @property
    def bytesize(self) -> int: ...

    @property
    def parity(self) -> str: ...

    @property
    def stopbits(self) -> int: ...

    @property
    def framing(self) -> FramingSection: ...

    @property
    def parser(self) -> ParserSection: ...

    @property
    def points(self) -> Sequence[PointSection]: ...

    @property
    def poll_command(self) -> str | None: ...

    @property
    def poll_command_hex(self) -> str | None: ...

    @property
    def poll_interval(self) -> float: ...

    @property
    def timeout(self) -> float: ...

    @property
    def stale_after(self) -> float: ...

    @property
    def backoff_max(self) -> float: ...

    @property
    def max_input_rate(self) -> int | None: ...


def hex_bytes(value: str | None, key: str) -> bytes | None:
    """The bytes of a `*_hex` key ('AA55'); ValueError naming the key."""
    if value is None:
        return None
    try:
        data = bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"{key} {shown(value)} is not hex bytes, e.g. 'AA55'") from None
    if not data:
        raise ValueError(f"{key} must not be empty")
    return data


def text_bytes(value: str, key: str) -> bytes:
    """The bytes of a text key (TOML escapes already applied); ValueError naming the key."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"{key} must be bytes 0-255 (use \\xNN escapes or a *_hex key)") from None


def build_framer(cfg: FramingSection) -> Framer:
    """The framer of a `framing` section; ValueError when its settings do not build."""
    if cfg.kind == "delimiter":
        start = text_bytes(cfg.start, "start") if cfg.start is not None else None
        return DelimiterFramer(
            text_bytes(cfg.delimiter, "delimiter"), max_length=cfg.max_length, start=start
        )
    if cfg.kind == "fixed":
        return FixedLengthFramer(cfg.length, sync=hex_bytes(cfg.sync_hex, "sync_hex"))
    start = hex_bytes(cfg.start_hex, "start_hex")
    assert start is not None
    return LengthFieldFramer(
        start=start,
        length_offset=cfg.length_offset,
        length_size=cfg.length_size,
        byteorder=cfg.byteorder,
        length_adjust=cfg.length_adjust,
        end=hex_bytes(cfg.end_hex, "end_hex"),
        max_length=cfg.max_length,
    )


def build_parser(cfg: ParserSection) -> Parser:
    """The parser of a `parser` section; ValueError when its settings do not build."""
    if cfg.kind == "regex":
        return RegexParser(cfg.pattern, encoding=cfg.encoding)
    if cfg.kind == "delimited":
        return DelimitedParser(
            [f or None for f in cfg.fields], separator=cfg.separator, encoding=cfg.encoding
        )
    if cfg.kind == "nmea":
        return NmeaParser(
            cfg.fields,
            sentence=cfg.sentence,
            require_checksum=cfg.require_checksum,
            coordinates=cfg.coordinates,
        )
    return BinaryParser(
        cfg.layout,
        [f or None for f in cfg.fields],
        offset=cfg.offset,
        checksum=cfg.checksum,
        checksum_start=cfg.checksum_start,
    )


def command_bytes(cfg: InstrumentSection) -> bytes | None:
    """The bytes of a polled instrument's request (`poll_command` or `poll_command_hex`)."""
    if cfg.poll_command_hex is not None:
        return hex_bytes(cfg.poll_command_hex, "poll_command_hex")
    if cfg.poll_command is not None:
        return text_bytes(cfg.poll_command, "poll_command")
    return None


def build_driver(cfg: InstrumentSection, sink: ReadingSink) -> SerialLineDriver:
    return SerialLineDriver(
        cfg.name,
        {
            "port": cfg.port,
            "baudrate": cfg.baudrate,
            "bytesize": cfg.bytesize,
            "parity": cfg.parity,
            "stopbits": cfg.stopbits,
        },
        build_framer(cfg.framing),
        build_parser(cfg.parser),
        [LinePoint(p.name, p.field or p.name, p.type, p.scale, p.offset) for p in cfg.points],
        sink,
        command=command_bytes(cfg),
        poll_interval=cfg.poll_interval,
        timeout=cfg.timeout,
        stale_after=cfg.stale_after,
        backoff_max=cfg.backoff_max,
        max_input_rate=cfg.max_input_rate,
    )


def build(devices: Sequence[InstrumentSection], sink: ReadingSink) -> list[SerialLineDriver]:
    return [build_driver(cfg, sink) for cfg in devices]
