"""Serial line configs into drivers, once, at start-up: one driver per instrument and
port, with the framer and parser its config sections build.

Pure of pydantic: the daemon builds from the config's records (gateway/loaded.py), and
the config's own validation builds through the same functions (`build_framer`,
`build_parser`), so a section that validates is one that builds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from drivers.base import ReadingSink
from drivers.core.words import shown
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

if TYPE_CHECKING:
    from drivers.serial_line.config import FramingConfig, ParserConfig, SerialLineDeviceConfig


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


def build_framer(cfg: FramingConfig) -> Framer:
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


def build_parser(cfg: ParserConfig) -> Parser:
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


def command_bytes(cfg: SerialLineDeviceConfig) -> bytes | None:
    """The bytes of a polled instrument's request (`poll_command` or `poll_command_hex`)."""
    if cfg.poll_command_hex is not None:
        return hex_bytes(cfg.poll_command_hex, "poll_command_hex")
    if cfg.poll_command is not None:
        return text_bytes(cfg.poll_command, "poll_command")
    return None


def build_driver(cfg: SerialLineDeviceConfig, sink: ReadingSink) -> SerialLineDriver:
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


def build(devices: Sequence[SerialLineDeviceConfig], sink: ReadingSink) -> list[SerialLineDriver]:
    return [build_driver(cfg, sink) for cfg in devices]
