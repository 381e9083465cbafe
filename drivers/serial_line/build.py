"""Build framers and parsers from their config sections (once, at start-up).

Called by the config models' validation too, so a bad regex or struct layout is
a config error with a key path, not a crash at run time.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

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
    from gateway.settings import FramingConfig, ParserConfig


def build_framer(cfg: FramingConfig) -> Framer:
    from gateway.settings import (
        DelimiterFramingConfig,
        FixedFramingConfig,
        _hex_bytes,
        _text_bytes,
    )

    if isinstance(cfg, DelimiterFramingConfig):
        start = _text_bytes(cfg.start, "start") if cfg.start is not None else None
        return DelimiterFramer(
            _text_bytes(cfg.delimiter, "delimiter"), max_length=cfg.max_length, start=start
        )
    if isinstance(cfg, FixedFramingConfig):
        return FixedLengthFramer(cfg.length, sync=_hex_bytes(cfg.sync_hex, "sync_hex"))
    start_bytes = _hex_bytes(cfg.start_hex, "start_hex")
    assert start_bytes is not None
    return LengthFieldFramer(
        start=start_bytes,
        length_offset=cfg.length_offset,
        length_size=cfg.length_size,
        byteorder=cfg.byteorder,
        length_adjust=cfg.length_adjust,
        end=_hex_bytes(cfg.end_hex, "end_hex"),
        max_length=cfg.max_length,
    )


def parser_fields(cfg: ParserConfig) -> tuple[str, ...]:
    """The names of the fields the parser of `cfg` can produce, known before start.

    For a config that `build_parser` accepts: regex named groups, delimited and binary
    `fields` ('' skips one), NMEA `fields` and `coordinates` keys."""
    from gateway.settings import BinaryParserConfig, DelimitedParserConfig, RegexParserConfig

    if isinstance(cfg, RegexParserConfig):
        return tuple(re.compile(cfg.pattern).groupindex)
    if isinstance(cfg, DelimitedParserConfig | BinaryParserConfig):
        return tuple(name for name in cfg.fields if name)
    return (*cfg.fields, *cfg.coordinates)


def build_parser(cfg: ParserConfig) -> Parser:
    from gateway.settings import DelimitedParserConfig, NmeaParserConfig, RegexParserConfig

    if isinstance(cfg, RegexParserConfig):
        return RegexParser(cfg.pattern, encoding=cfg.encoding)
    if isinstance(cfg, DelimitedParserConfig):
        return DelimitedParser(
            [f or None for f in cfg.fields], separator=cfg.separator, encoding=cfg.encoding
        )
    if isinstance(cfg, NmeaParserConfig):
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
