"""The frames a simulated line instrument sends, as a simulator file writes them, and the
frames that a gateway config's framing and parser read (pure, no I/O).

Three kinds (the `frame` table of a `serial_line` device in a simulator file):

- `text`: a template in Python's format syntax, each `{field}` (with an optional
  format spec, `{ch4:.2f}`) replaced by the value of the point reading that field:
  `"CH4={ch4:.2f};H2S={h2s}\\r\\n"`.
- `nmea`: the sentence between `$` and `*` as a template (`"GPGGA,{time},{lat:lat},..."`);
  the simulator adds `$`, the XOR checksum and `\\r\\n`. The specs `lat` and `lon`
  write signed degrees as NMEA does: `4807.0380,N` (two fields: value, hemisphere).
- `binary`: `start_hex`, a length field of `length_size` bytes (0: none) whose value
  makes the frame `len(start) + length_size + value + length_adjust` bytes long (the
  gateway's length_field framing), the values packed with a struct `layout`, a
  trailing `checksum` over the bytes from `checksum_start`, then `end_hex`.

`frame_for(framing, parser, types)` turns a gateway config's serial_line section
into one of these; `frame_reads_back` checks the result with the gateway's own
framer and parser.
"""

from __future__ import annotations

import importlib
import re
import string
import struct
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from drivers.core.config_types import Int, Problems, StrictModel, WholeNumber, shown
from drivers.serial_line.checksums import TRAILING_CHECKSUMS, ChecksumName, xor8
from drivers.serial_line.config import (
    BinaryParserConfig,
    DelimitedParserConfig,
    DelimiterFramingConfig,
    FixedFramingConfig,
    FramingConfig,
    LengthFieldFramingConfig,
    NmeaParserConfig,
    ParserConfig,
    RegexParserConfig,
)
from drivers.sim.values import Scalar

__all__ = ["BinaryFrameConfig", "FrameConfig", "NmeaFrameConfig", "TextFrameConfig", "frame_for"]


class _Formatter(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        if format_spec in ("lat", "lon"):
            return nmea_degrees(float(value), format_spec)
        return str(super().format_field(value, format_spec))


_FORMATTER = _Formatter()


def nmea_degrees(degrees: float, axis: str) -> str:
    """Signed degrees as NMEA writes them: '4807.0380,N' (lat), '01131.0000,E' (lon)."""
    hemisphere = ("N" if degrees >= 0 else "S") if axis == "lat" else "E" if degrees >= 0 else "W"
    whole, minutes = divmod(round(abs(degrees) * 600000), 600000)  # in 1/10000 minutes
    width = 2 if axis == "lat" else 3
    return f"{whole:0{width}d}{minutes / 10000:07.4f},{hemisphere}"


def template_fields(template: str) -> list[str]:
    """The fields a template names; ValueError for a template Python cannot format."""
    try:
        parts = list(_FORMATTER.parse(template))
    except ValueError as err:
        raise ValueError(f"{shown(template)} is not a template: {err}") from None
    names = []
    for _literal, name, _spec, _conversion in parts:
        if name is None:
            continue
        if not name or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ValueError(
                f"{{{name}}} is not a field: write a point's field name in braces, e.g. {{ch4}}"
            )
        names.append(name)
    return names


class _TemplateFrame(StrictModel):
    template: str = Field(min_length=1)

    def fields(self) -> list[str]:
        return template_fields(self.template)

    def _text(self, values: Mapping[str, Scalar]) -> str:
        return _FORMATTER.vformat(self.template, (), values)


class TextFrameConfig(_TemplateFrame):
    """A text frame: the template with the fields' values (no checksum)."""

    kind: Literal["text"]
    has_checksum: ClassVar[bool] = False

    def encode(self, values: Mapping[str, Scalar]) -> bytes:
        return self._text(values).encode("latin-1", "replace")

    def corrupt(self, frame: bytes) -> bytes:
        return frame


class NmeaFrameConfig(_TemplateFrame):
    """An NMEA-0183 sentence: `$`, the template, `*`, the XOR checksum in hex, CR LF."""

    kind: Literal["nmea"]
    has_checksum: ClassVar[bool] = True

    def encode(self, values: Mapping[str, Scalar]) -> bytes:
        body = self._text(values).encode("ascii", "replace")
        return b"$" + body + f"*{xor8(body):02X}\r\n".encode()

    def corrupt(self, frame: bytes) -> bytes:
        star = frame.rfind(b"*")
        if star < 0:
            return frame
        wrong = int(frame[star + 1 : star + 3] or b"0", 16) ^ 0x5A
        return frame[: star + 1] + f"{wrong:02X}".encode() + frame[star + 3 :]


_HEX = re.compile(r"^(?:[0-9A-Fa-f]{2})+$")


class BinaryFrameConfig(StrictModel):
    """start, length field, struct-packed values, checksum, end."""

    kind: Literal["binary"]
    start_hex: str | None = Field(None, description="bytes that begin the frame, e.g. 'AA55'")
    length_size: Annotated[Literal[0, 1, 2], WholeNumber] = Field(
        0, description="bytes of a length field after the start bytes (0: none)"
    )
    length_byteorder: Literal["big", "little"] = "big"
    length_adjust: Int = Field(
        0, ge=-64, le=64, description="bytes the length field does not count (checksum, end)"
    )
    layout: str = Field(description="struct layout with byte order, e.g. '>HhI'")
    fields: list[str] = Field(min_length=1, description="the field each value is; '' for a 0")
    checksum: ChecksumName | None = None
    checksum_start: Int = Field(0, ge=0, le=65535, description="first byte the checksum covers")
    end_hex: str | None = None

    @property
    def has_checksum(self) -> bool:
        return self.checksum is not None

    @model_validator(mode="after")
    def _packable(self) -> BinaryFrameConfig:
        problems = Problems()
        for key in ("start_hex", "end_hex"):
            text = getattr(self, key)
            if text is not None and not _HEX.match(text):
                problems.add((key,), f"{shown(text)} is not hex bytes, e.g. 'AA55'")
        try:
            count = len(_unpacked_zeros(self.layout))
        except ValueError as err:
            problems.add(("layout",), str(err))
        else:
            if count != len(self.fields):
                problems.add(
                    ("fields",),
                    f"the layout {self.layout!r} packs {count} values; {len(self.fields)} "
                    "fields are named",
                )
        problems.raise_any(self)
        return self

    def fields_named(self) -> list[str]:
        return [name for name in self.fields if name]

    def encode(self, values: Mapping[str, Scalar]) -> bytes:
        packer = struct.Struct(self.layout)
        zeros = packer.unpack(bytes(packer.size))
        row = [
            _fit(values.get(name, zero) if name else zero, zero)
            for name, zero in zip(self.fields, zeros, strict=True)
        ]
        payload = _pack(packer, row)
        start = bytes.fromhex(self.start_hex or "")
        end = bytes.fromhex(self.end_hex or "")
        size = TRAILING_CHECKSUMS[self.checksum].size if self.checksum else 0
        head = start
        if self.length_size:
            total = len(start) + self.length_size + len(payload) + size + len(end)
            value = total - len(start) - self.length_size - self.length_adjust
            head += (value % (1 << 8 * self.length_size)).to_bytes(
                self.length_size, self.length_byteorder
            )
        body = head + payload
        if self.checksum is not None:
            check = TRAILING_CHECKSUMS[self.checksum]
            body += check.compute(body[self.checksum_start :]).to_bytes(check.size, check.byteorder)
        return body + end

    def corrupt(self, frame: bytes) -> bytes:
        if self.checksum is None:
            return frame
        size = TRAILING_CHECKSUMS[self.checksum].size
        at = len(frame) - len(bytes.fromhex(self.end_hex or "")) - size
        return frame[:at] + bytes(b ^ 0xA5 for b in frame[at : at + size]) + frame[at + size :]


def _unpacked_zeros(layout: str) -> tuple[Any, ...]:
    if not layout or layout[0] not in "<>!":
        raise ValueError(
            f"layout {layout!r} must start with a byte order: '<' little, '>' or '!' big endian"
        )
    try:
        packer = struct.Struct(layout)
    except struct.error as err:
        raise ValueError(f"invalid struct layout {layout!r}: {err}") from None
    return packer.unpack(bytes(packer.size))


def _fit(value: Scalar, zero: Any) -> Any:
    """`value` as the struct code of `zero` takes it: an int, a float, a bool or bytes."""
    if isinstance(zero, bytes):
        return str(value).encode("latin-1", "replace")
    if isinstance(zero, bool):
        return bool(value)
    if isinstance(zero, int):
        return round(float(value)) if not isinstance(value, str) else 0
    return float(value) if not isinstance(value, str) else 0.0


def _pack(packer: struct.Struct, row: list[Any]) -> bytes:
    """The row packed; integers that do not fit are held at the code's limits."""
    try:
        return packer.pack(*row)
    except struct.error:
        fitted = []
        for i, value in enumerate(row):
            if isinstance(value, int) and not isinstance(value, bool):
                fitted.append(_clamped(packer.format, i, value))
            else:
                fitted.append(value)
        return packer.pack(*fitted)


def _clamped(layout: str, index: int, value: int) -> int:
    codes = [c for c in re.sub(r"\d+[sp]|[<>!=@x\d]", "", layout) if c.isalpha() or c == "?"]
    code = codes[index] if index < len(codes) else "q"
    size = struct.calcsize("<" + code) * 8
    if code.isupper():
        return min(max(value, 0), (1 << size) - 1)
    return min(max(value, -(1 << (size - 1))), (1 << (size - 1)) - 1)


FrameConfig = Annotated[
    TextFrameConfig | NmeaFrameConfig | BinaryFrameConfig, Field(discriminator="kind")
]


def frame_fields(frame: TextFrameConfig | NmeaFrameConfig | BinaryFrameConfig) -> list[str]:
    """The fields a frame carries."""
    if isinstance(frame, BinaryFrameConfig):
        return frame.fields_named()
    return frame.fields()


# --- a gateway config's framing and parser, the other way round ------------------------


class NotInvertible(ValueError):
    """The simulator cannot write frames that this framing and parser read."""


def frame_for(
    framing: FramingConfig, parser: ParserConfig, types: Mapping[str, str]
) -> dict[str, Any]:
    """The `frame` table of a simulated instrument whose frames `framing` cuts and `parser`
    reads (`types`: each field's point type); NotInvertible saying why there is none."""
    if isinstance(parser, NmeaParserConfig):
        return {"kind": "nmea", "template": _nmea_template(parser, types)}
    if isinstance(parser, BinaryParserConfig):
        return _binary_frame(framing, parser)
    if not isinstance(framing, DelimiterFramingConfig):
        raise NotInvertible(f"a text parser behind {framing.kind} framing")
    if isinstance(parser, DelimitedParserConfig):
        body = parser.separator.join(_slot(f, types) if f else "" for f in parser.fields)
    else:
        body = _regex_template(parser, types)
    return {"kind": "text", "template": (framing.start or "") + body + framing.delimiter}


def frame_reads_back(
    frame: TextFrameConfig | NmeaFrameConfig | BinaryFrameConfig,
    framing: FramingConfig,
    parser: ParserConfig,
    values: Mapping[str, Scalar],
) -> str | None:
    """None when the gateway's own framer and parser read every field of `values` from the
    frame written with them; otherwise what they made of it."""
    from drivers.serial_line.framing import Frame
    from drivers.serial_line.parsers import ParseError

    written = frame.encode(values)
    frames = [e.data for e in framing.build().feed(written * 2) if isinstance(e, Frame)]
    if not frames:
        return f"its framing finds no frame in {written!r}"
    try:
        fields = parser.build().parse(frames[0])
    except ParseError as err:
        return f"its parser refuses {frames[0]!r}: {err.message}"
    missing = [name for name in values if name not in fields]
    if missing:
        return f"its parser finds no {', '.join(missing)} in {frames[0]!r}"
    return None


def _slot(name: str, types: Mapping[str, str]) -> str:
    return "{" + name + (":.2f" if types.get(name, "float") == "float" else "") + "}"


def _nmea_template(parser: NmeaParserConfig, types: Mapping[str, str]) -> str:
    slots: dict[int, str] = {}
    for name, index in parser.fields.items():
        slots[index] = _slot(name, types)
    for name, (value_index, hemisphere_index) in parser.coordinates.items():
        if hemisphere_index != value_index + 1:
            raise NotInvertible(f"coordinates {name!r}: the hemisphere is not the next field")
        axis = "lat" if "lat" in name.lower() else "lon"
        slots[value_index] = "{" + name + ":" + axis + "}"
        slots[hemisphere_index] = ""  # written with the value: '4807.0380,N'
    if 0 in slots:
        raise NotInvertible("a field at index 0, the sentence's address")
    talker = "GP" + (parser.sentence or "TXT")
    parts = [talker]
    index = 1
    last = max(slots, default=0)
    while index <= last:
        slot = slots.get(index)
        if slot != "":
            parts.append(slot or "")
        index += 1
    return ",".join(parts)


def _binary_frame(framing: FramingConfig, parser: BinaryParserConfig) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "kind": "binary",
        "layout": parser.layout,
        "fields": list(parser.fields),
        "checksum": parser.checksum,
        "checksum_start": parser.checksum_start,
    }
    if isinstance(framing, LengthFieldFramingConfig):
        start = bytes.fromhex(framing.start_hex)
        if framing.length_offset != len(start):
            raise NotInvertible("a length field that does not follow the start bytes")
        frame |= {
            "start_hex": framing.start_hex,
            "length_size": framing.length_size,
            "length_byteorder": framing.byteorder,
            "length_adjust": framing.length_adjust,
            "end_hex": framing.end_hex,
        }
        head = len(start) + framing.length_size
    elif isinstance(framing, FixedFramingConfig):
        frame["start_hex"] = framing.sync_hex
        head = len(bytes.fromhex(framing.sync_hex or ""))
    else:
        frame["end_hex"] = framing.delimiter.encode("latin-1").hex().upper()
        head = len(framing.start or "")
        if framing.start:
            frame["start_hex"] = framing.start.encode("latin-1").hex().upper()
    if parser.offset != head:
        raise NotInvertible(
            f"values at offset {parser.offset}, not right after the {head}-byte head"
        )
    return {key: value for key, value in frame.items() if value is not None}


def _regex_template(parser: RegexParserConfig, types: Mapping[str, str]) -> str:
    """A template whose text the regex matches: its literal parts, a slot per named group."""
    sre: Any = importlib.import_module("re._parser")  # the standard library's own (no stubs)
    try:
        tree = sre.parse(parser.pattern)
    except re.error as err:
        raise NotInvertible(f"the pattern does not compile: {err}") from None
    names = {index: name for name, index in re.compile(parser.pattern).groupindex.items()}
    return _written(tree, names, types)


def _written(items: Sequence[Any], names: Mapping[int, str], types: Mapping[str, str]) -> str:
    c: Any = importlib.import_module("re._constants")
    out = []
    for op, arg in items:
        if op is c.LITERAL:
            out.append("{{" if chr(arg) == "{" else "}}" if chr(arg) == "}" else chr(arg))
        elif op is c.NOT_LITERAL:
            out.append("x" if chr(arg) != "x" else "y")
        elif op is c.AT:
            continue
        elif op is c.SUBPATTERN:
            group, _add, _remove, inner = arg
            if group in names:
                out.append(_slot(names[group], types))
            else:
                out.append(_written(inner, names, types))
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
            low, _high, inner = arg
            out.append(_written(inner, names, types) * low)
        elif op is c.BRANCH:
            out.append(_written(arg[1][0], names, types))
        elif op is c.IN:
            out.append(_one_of(arg, c))
        elif op is c.ANY:
            out.append("x")
        else:
            raise NotInvertible(f"the regular expression uses {str(op).lower()}")
    return "".join(out)


def _one_of(members: Sequence[Any], c: Any) -> str:
    """A character of a set `[...]`."""
    for op, arg in members:
        if op is c.LITERAL:
            return chr(arg)
        if op is c.RANGE:
            return chr(arg[0])
        if op is c.CATEGORY:
            return {c.CATEGORY_DIGIT: "0", c.CATEGORY_SPACE: " ", c.CATEGORY_WORD: "a"}.get(
                arg, "x"
            )
    raise NotInvertible("a character set the simulator cannot write")
