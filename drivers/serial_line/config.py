"""The serial line instrument sections of the config file (`protocol = "serial_line"`):
framing, parser and points, and what one instrument's section must satisfy.

Each framing and parser section builds its framer or parser (`build()`);
the device's validation builds them once, so a bad regex, struct layout or length
field is a config error with its key path, never a crash at run time. A point must
read a field its parser produces; an NMEA parser with field numbers must name its
sentence type (field 7 means something else in each).
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from drivers.core.config_types import (
    Bool,
    Duration,
    Float,
    Int,
    Loc,
    Name,
    Problems,
    StrictModel,
    WholeNumber,
    shown,
)
from drivers.core.processing import ProcessingConfig
from drivers.serial_line.build import (
    build_framer,
    build_parser,
    command_bytes,
    hex_bytes,
    text_bytes,
)
from drivers.serial_line.framing import Framer
from drivers.serial_line.parsers import Parser
from drivers.serial_port_config import SerialPortConfig

# --- framing ------------------------------------------------------------------------------------


class DelimiterFramingConfig(StrictModel):
    """Frames end with a delimiter (lines); optionally start with a marker ('$' for NMEA)."""

    kind: Literal["delimiter"]
    delimiter: str = Field("\r\n", min_length=1, description='TOML escapes: "\\r\\n"')
    start: str | None = Field(None, min_length=1, description="a frame begins with this")
    max_length: Int = Field(1024, ge=2, le=65536)

    def build(self) -> Framer:
        return build_framer(self)


class FixedFramingConfig(StrictModel):
    """Frames of a fixed number of bytes, optionally beginning with sync bytes."""

    kind: Literal["fixed"]
    length: Int = Field(ge=1, le=65536)
    sync_hex: str | None = Field(None, description="e.g. 'AA55'")

    def build(self) -> Framer:
        return build_framer(self)


class LengthFieldFramingConfig(StrictModel):
    """start bytes, a length field, the payload (and checksum, end bytes)."""

    kind: Literal["length_field"]
    start_hex: str = Field(description="e.g. 'AA55'")
    length_offset: Int = Field(ge=0, le=64, description="bytes from the frame start")
    length_size: Annotated[Literal[1, 2], WholeNumber] = 1
    byteorder: Literal["big", "little"] = "big"
    length_adjust: Int = Field(
        0, ge=-64, le=64, description="bytes the length field does not count (checksum, end)"
    )
    end_hex: str | None = None
    max_length: Int = Field(1024, ge=2, le=65536)

    def build(self) -> Framer:
        return build_framer(self)


# --- parsers ------------------------------------------------------------------------------------
# `produces()` names the fields the parser can produce, known before start (for a config
# whose `build()` succeeds).


class RegexParserConfig(StrictModel):
    kind: Literal["regex"]
    pattern: str = Field(description="named groups become fields, e.g. 'CH4=(?P<ch4>[-\\d.]+)'")
    encoding: str = "ascii"

    def build(self) -> Parser:
        return build_parser(self)

    def produces(self) -> tuple[str, ...]:
        return tuple(re.compile(self.pattern).groupindex)


class DelimitedParserConfig(StrictModel):
    kind: Literal["delimited"]
    fields: list[str] = Field(min_length=1, description="field names in order; '' skips one")
    separator: str = Field(",", min_length=1)
    encoding: str = "ascii"

    def build(self) -> Parser:
        return build_parser(self)

    def produces(self) -> tuple[str, ...]:
        return tuple(name for name in self.fields if name)


NmeaIndex = Annotated[Int, Field(ge=0, le=255)]


class NmeaParserConfig(StrictModel):
    kind: Literal["nmea"]
    sentence: str | None = Field(
        None,
        description="e.g. 'GGA' (any talker); others are skipped. Required with fields or "
        "coordinates: field numbers mean something else in each sentence type",
    )
    fields: dict[str, NmeaIndex] = Field(default_factory=dict, description="name -> comma index")
    coordinates: dict[str, tuple[NmeaIndex, NmeaIndex]] = Field(
        default_factory=dict, description="name -> [value index, hemisphere index]"
    )
    require_checksum: Bool = True

    @model_validator(mode="after")
    def _sentence_with_fields(self) -> NmeaParserConfig:
        if self.sentence is None and (self.fields or self.coordinates):
            keys = " and ".join(k for k in ("fields", "coordinates") if getattr(self, k))
            problems = Problems()
            problems.add(
                ("sentence",),
                f"required with {keys}: field numbers mean something else in each sentence "
                "type (GGA field 7 is the number of satellites, RMC field 7 the speed), so "
                "without it every sentence the receiver sends fills the same points; "
                'set e.g. sentence = "GGA"',
            )
            problems.raise_any(self)
        return self

    def build(self) -> Parser:
        return build_parser(self)

    def produces(self) -> tuple[str, ...]:
        return (*self.fields, *self.coordinates)


class BinaryParserConfig(StrictModel):
    kind: Literal["binary"]
    layout: str = Field(description="struct layout with byte order, e.g. '>HhI'")
    fields: list[str] = Field(min_length=1, description="names of the unpacked values; '' skips")
    offset: Int = Field(0, ge=0, le=65535, description="where the layout starts in the frame")
    checksum: Literal["crc16_modbus", "crc16_ccitt", "xor8"] | None = None
    checksum_start: Int = Field(0, ge=0, le=65535, description="first byte the checksum covers")

    def build(self) -> Parser:
        return build_parser(self)

    def produces(self) -> tuple[str, ...]:
        return tuple(name for name in self.fields if name)


FramingConfig = Annotated[
    DelimiterFramingConfig | FixedFramingConfig | LengthFieldFramingConfig,
    Field(discriminator="kind"),
]
ParserConfig = Annotated[
    RegexParserConfig | DelimitedParserConfig | NmeaParserConfig | BinaryParserConfig,
    Field(discriminator="kind"),
]


# --- the instrument ----------------------------------------------------------------------------


class SerialLinePointConfig(StrictModel):
    name: Name
    field: str | None = Field(None, description="parser field; defaults to the point name")
    type: Literal["float", "int", "bool", "string"] = "float"
    scale: Float = 1.0
    offset: Float = 0.0
    unit: str | None = None
    process: ProcessingConfig | None = None


def mode_problems(
    mode: str, poll_command: str | None, poll_command_hex: str | None
) -> list[tuple[Loc, str]]:
    """What does not fit between a device's mode and its poll command (a serial-line
    device of the gateway, and the simulator's instrument, take the same keys)."""
    found: list[tuple[Loc, str]] = []
    has_command = poll_command is not None or poll_command_hex is not None
    if mode == "polled" and not has_command:
        found.append((("mode",), "mode 'polled' needs poll_command or poll_command_hex"))
    if mode == "streaming" and has_command:
        key = "poll_command" if poll_command is not None else "poll_command_hex"
        found.append(((key,), f"{key} is only for mode 'polled'"))
    if poll_command is not None and poll_command_hex is not None:
        found.append((("poll_command_hex",), "set poll_command or poll_command_hex, not both"))
    return found


class SerialLineDeviceConfig(SerialPortConfig):
    """An instrument with its own line protocol (not Modbus)."""

    network_ports: ClassVar[bool] = True  # rfc2217://HOST:PORT: on a serial device server

    name: Name
    protocol: Literal["serial_line"]
    mode: Literal["streaming", "polled"] = Field(
        "streaming", description="streaming: it talks on its own; polled: we send poll_command"
    )
    poll_command: str | None = Field(None, description="text with TOML escapes, e.g. 'R\\r\\n'")
    poll_command_hex: str | None = None
    poll_interval: Duration = 1.0
    timeout: Duration = Field(1.0, description="polled: wait this long for the reply")
    stale_after: Duration = Field(
        10.0, description="streaming: silence this long marks the instrument offline"
    )
    backoff_max: Duration = 60.0
    max_input_rate: Int | None = Field(
        None,
        ge=10,
        le=100_000_000,
        description="bytes per second accepted from the port; default: twice what the line "
        "can carry at its baud rate (a real UART never reaches it; a virtual COM port has no "
        "such limit); the excess is shed and counted",
    )
    framing: FramingConfig
    parser: ParserConfig
    points: list[SerialLinePointConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _coherent(self) -> SerialLineDeviceConfig:
        problems = Problems()
        problems.extend(mode_problems(self.mode, self.poll_command, self.poll_command_hex))
        try:
            hex_bytes(self.poll_command_hex, "poll_command_hex")
        except ValueError as err:
            problems.add(("poll_command_hex",), str(err))
        try:
            text_bytes(self.poll_command or "", "poll_command")
        except ValueError as err:
            problems.add(("poll_command",), str(err))
        try:
            self.framing.build()
        except ValueError as err:
            problems.add(("framing",), str(err))
        try:
            self.parser.build()
        except ValueError as err:
            problems.add(("parser",), str(err))
        else:
            produced = self.parser.produces()
            for j, point in enumerate(self.points):
                if (point.field or point.name) not in produced:
                    problems.add(*_unproduced_field(j, point, produced))
        problems.raise_any(self)
        return self

    def command_bytes(self) -> bytes | None:
        return command_bytes(self)


def _unproduced_field(
    index: int, point: SerialLinePointConfig, produced: tuple[str, ...]
) -> tuple[Loc, str]:
    offer = f"the parser produces {', '.join(map(repr, produced))}"
    if point.field is not None:
        return (
            ("points", index, "field"),
            f"{shown(point.field)} is not a field of the parser; {offer}",
        )
    return (
        ("points", index, "name"),
        f"the point reads the field {point.name!r} (its name, as no `field` is set), which "
        f"the parser does not produce; {offer}: set `field` to one of them",
    )
