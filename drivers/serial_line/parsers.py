"""Frame parsers: one frame in, named raw fields out (pure, no I/O).

A parser is built once from configuration; construction problems (a bad
regular expression, a bad struct layout, an unknown encoding) raise
:class:`ValueError` naming what is wrong. :meth:`Parser.parse` then only ever
raises :class:`ParseError`, whatever the bytes. Its ``kind`` is

* ``"checksum"`` for a frame that arrived garbled (the driver counts those
  apart, and may still read it with :meth:`Parser.parse_unverified`),
* ``"skip"`` for a frame that is fine but not for this parser: an NMEA
  sentence of another type than the one configured
  (:class:`WrongSentenceError`), not a fault,
* ``"format"`` for anything else.

Field values are raw: the text parsers return ``str`` (stripped of white
space; a field whose text is empty is left out of the result, as "no value"),
:class:`BinaryParser` returns ``int``, ``float`` or ``bool`` per struct code
(``str`` for ``s``/``c``/``p`` codes), and :func:`nmea_coordinate` fields are
``float`` degrees. Scaling and conversion to readings happen downstream.

Binary checksums
----------------
:class:`BinaryParser` verifies a checksum carried at the end of the frame::

    frame = [head ...][covered ...............][checksum][trailer]
             ^0        ^checksum_start          ^size     ^trailer bytes

The checksum covers ``frame[checksum_start : len(frame) - trailer - size]``
and is stored in the ``size`` bytes after that (``size`` and byte order per
:data:`~drivers.serial_line.checksums.TRAILING_CHECKSUMS`: CRC-16/Modbus two
bytes low first, CRC-16/CCITT-FALSE two bytes high first, XOR-8 one byte).
``trailer`` counts bytes after the checksum it does not cover, e.g. an end
marker.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping, Sequence
from typing import Final, Literal, Protocol

from drivers.serial_line.checksums import TRAILING_CHECKSUMS, ChecksumName, xor8

__all__ = [
    "BinaryParser",
    "DelimitedParser",
    "Field",
    "NmeaParser",
    "ParseError",
    "Parser",
    "RegexParser",
    "WrongSentenceError",
    "nmea_coordinate",
]

Field = str | int | float | bool
"""A raw field value."""

ParseErrorKind = Literal["format", "checksum", "skip"]


class ParseError(ValueError):
    """A frame that cannot be parsed; ``kind`` tells garbled, skipped and malformed apart."""

    def __init__(self, kind: ParseErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: Final = kind
        self.message: Final = message


class WrongSentenceError(ParseError):
    """An NMEA sentence of another type than configured (``kind`` ``"skip"``): not a fault."""

    def __init__(self, sentence: str, expected: str) -> None:
        super().__init__("skip", f"sentence {sentence} is not {expected}, skipped")
        self.sentence: Final = sentence
        self.expected: Final = expected


class Parser(Protocol):
    """Turns one frame into named raw fields, or raises :class:`ParseError`."""

    def parse(self, frame: bytes) -> dict[str, Field]: ...

    def parse_unverified(self, frame: bytes) -> dict[str, Field]:
        """Like :meth:`parse` without checking the checksum: for frames that failed it."""
        ...


def _check_encoding(encoding: str) -> None:
    try:
        "".encode(encoding)  # LookupError also for bytes-to-bytes codecs such as "hex"
    except LookupError as err:
        raise ValueError(f"unknown text encoding {encoding!r}") from err


def _decode(frame: bytes, encoding: str) -> str:
    try:
        return frame.decode(encoding)
    except ValueError as err:  # UnicodeDecodeError and codec-specific errors
        raise ParseError("format", f"frame is not valid {encoding} text: {err}") from err


def _excerpt(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _check_names(names: Sequence[str | None]) -> list[str]:
    named = [name for name in names if name is not None]
    if not named:
        raise ValueError("no field is named; name at least one")
    duplicates = sorted({name for name in named if named.count(name) > 1})
    if duplicates:
        raise ValueError(f"field names used twice: {', '.join(duplicates)}")
    if "" in named:
        raise ValueError("field names must not be empty")
    return named


class RegexParser:
    """Fields from the named groups of ``re.search(pattern, text)``.

    Groups that did not take part in the match, or matched only white space,
    are left out.
    """

    __slots__ = ("_regex", "encoding", "pattern")

    def __init__(self, pattern: str, *, encoding: str = "ascii") -> None:
        try:
            regex = re.compile(pattern)
        except re.error as err:
            raise ValueError(f"invalid regular expression {pattern!r}: {err}") from err
        if not regex.groupindex:
            raise ValueError(f"regular expression {pattern!r} has no named group (?P<name>...)")
        _check_encoding(encoding)
        self.pattern: Final = pattern
        self.encoding: Final = encoding
        self._regex: Final = regex

    def parse(self, frame: bytes) -> dict[str, Field]:
        text = _decode(frame, self.encoding)
        match = self._regex.search(text)
        if match is None:
            raise ParseError("format", f"frame {_excerpt(text)} does not match {self.pattern!r}")
        fields: dict[str, Field] = {}
        for name, value in match.groupdict().items():
            if value is not None:
                value = value.strip()
                if value:
                    fields[name] = value
        return fields

    def parse_unverified(self, frame: bytes) -> dict[str, Field]:
        """The same as :meth:`parse`: there is no checksum to skip."""
        return self.parse(frame)


class DelimitedParser:
    """Fields split by ``separator``: part ``i`` is named ``fields[i]`` (``None``: ignored).

    Parts beyond the named ones are ignored; fewer parts than the last named
    field needs is a ``"format"`` error. Each part is stripped of ``strip``.
    """

    __slots__ = ("_needed", "_slots", "encoding", "fields", "separator", "strip")

    def __init__(
        self,
        fields: Sequence[str | None],
        *,
        separator: str = ",",
        encoding: str = "ascii",
        strip: str = " \t\r\n",
    ) -> None:
        _check_names(fields)
        if not separator:
            raise ValueError("separator must not be empty")
        _check_encoding(encoding)
        self.fields: Final = tuple(fields)
        self.separator: Final = separator
        self.encoding: Final = encoding
        self.strip: Final = strip
        self._slots: Final = tuple(
            (index, name) for index, name in enumerate(fields) if name is not None
        )
        self._needed: Final = self._slots[-1][0] + 1

    def parse(self, frame: bytes) -> dict[str, Field]:
        parts = _decode(frame, self.encoding).split(self.separator)
        if len(parts) < self._needed:
            raise ParseError(
                "format",
                f"expected at least {self._needed} fields separated by {self.separator!r}, "
                f"got {len(parts)}",
            )
        fields: dict[str, Field] = {}
        for index, name in self._slots:
            value = parts[index].strip(self.strip)
            if value:
                fields[name] = value
        return fields

    def parse_unverified(self, frame: bytes) -> dict[str, Field]:
        """The same as :meth:`parse`: there is no checksum to skip."""
        return self.parse(frame)


_COORDINATE: Final = re.compile(r"([0-9]*)([0-9]{2}(?:\.[0-9]*)?)")
_HEMISPHERES: Final = {"N": (1, 90), "S": (-1, 90), "E": (1, 180), "W": (-1, 180)}


def nmea_coordinate(value: str, hemisphere: str) -> float:
    """Signed decimal degrees from an NMEA ``ddmm.mmmm``/``dddmm.mmmm`` value and N/S/E/W.

    South and west are negative. Raises :class:`ValueError` for a malformed
    value, minutes of 60 or more, an unknown hemisphere, or more than 90 (N/S)
    or 180 (E/W) degrees.
    """
    sign_and_limit = _HEMISPHERES.get(hemisphere.strip().upper())
    if sign_and_limit is None:
        raise ValueError(f"hemisphere {hemisphere!r} is not one of N, S, E, W")
    match = _COORDINATE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"coordinate {value!r} is not of the form ddmm.mmmm")
    degrees = int(match[1] or "0")
    minutes = float(match[2])
    if minutes >= 60:
        raise ValueError(f"coordinate {value!r} has {minutes} minutes, 60 or more")
    sign, limit = sign_and_limit
    result = degrees + minutes / 60
    if result > limit:
        raise ValueError(f"coordinate {value!r} is more than {limit} degrees")
    return sign * result


_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")


class NmeaParser:
    """Fields of an NMEA-0183 sentence: ``$GPGGA,123519,4807.038,N,...*47``.

    ``fields`` maps a name to an index in the comma-separated list, where
    index 0 is the address field (``GPGGA``). ``coordinates`` maps a name to
    the indices of a ``ddmm.mmmm`` value and its hemisphere, producing signed
    degrees. Empty fields and indices past the end of the sentence are left
    out (receivers without a fix send empty fields; newer NMEA versions add
    fields at the end). ``sentence`` keeps only one sentence type, whatever
    the talker (``GGA`` matches ``$GPGGA`` and ``$GNGGA``); other sentences
    raise :class:`WrongSentenceError`. A trailing ``\\r``/``\\n`` is tolerated.
    """

    __slots__ = ("coordinates", "fields", "require_checksum", "sentence")

    def __init__(
        self,
        fields: Mapping[str, int],
        *,
        sentence: str | None = None,
        require_checksum: bool = True,
        coordinates: Mapping[str, tuple[int, int]] | None = None,
    ) -> None:
        coordinates = dict(coordinates or {})
        _check_names([*fields, *coordinates])
        indices = [*fields.values(), *(i for pair in coordinates.values() for i in pair)]
        if any(index < 0 for index in indices):
            raise ValueError(f"NMEA field indices must not be negative, got {indices}")
        if sentence is not None and not (sentence.isascii() and sentence.isalnum()):
            raise ValueError(f"sentence type {sentence!r} is not a word like 'GGA'")
        self.fields: Final = dict(fields)
        self.coordinates: Final = coordinates
        self.sentence: Final = None if sentence is None else sentence.upper()
        self.require_checksum: Final = require_checksum

    def parse(self, frame: bytes) -> dict[str, Field]:
        return self._parse(frame, verify=True)

    def parse_unverified(self, frame: bytes) -> dict[str, Field]:
        """Like :meth:`parse`, but neither checks nor requires the checksum."""
        return self._parse(frame, verify=False)

    def _parse(self, frame: bytes, *, verify: bool) -> dict[str, Field]:
        frame = frame.rstrip(b"\r\n")
        if frame[:1] not in (b"$", b"!"):
            raise ParseError("format", f"NMEA sentence must start with '$' or '!': {frame[:20]!r}")
        star = frame.rfind(b"*")
        if star >= 0:
            body = frame[1:star]
            if verify:
                self._verify(body, frame[star + 1 :])
        elif verify and self.require_checksum:
            raise ParseError("checksum", "NMEA checksum missing (no '*hh' at the end)")
        else:
            body = frame[1:]
        parts = _decode(body, "ascii").split(",")
        address = parts[0]
        if self.sentence is not None and self.sentence not in (address[2:], address):
            raise WrongSentenceError(address[2:] if len(address) == 5 else address, self.sentence)
        fields: dict[str, Field] = {}
        for name, index in self.fields.items():
            value = parts[index].strip() if index < len(parts) else ""
            if value:
                fields[name] = value
        for name, (value_index, hemisphere_index) in self.coordinates.items():
            if max(value_index, hemisphere_index) >= len(parts):
                continue
            value, hemisphere = parts[value_index], parts[hemisphere_index]
            if value.strip() and hemisphere.strip():
                try:
                    fields[name] = nmea_coordinate(value, hemisphere)
                except ValueError as err:
                    raise ParseError("format", f"{name}: {err}") from err
        return fields

    @staticmethod
    def _verify(body: bytes, carried: bytes) -> None:
        text = carried.decode("ascii", "replace")
        if len(text) != 2 or not _HEX_DIGITS.issuperset(text):
            raise ParseError("checksum", f"NMEA checksum {text!r} is not two hex digits")
        computed = xor8(body)
        if int(text, 16) != computed:
            raise ParseError(
                "checksum", f"NMEA checksum {text.upper()} expected, computed {computed:02X}"
            )


_BYTE_ORDER_PREFIXES: Final = "<>!"
_MAX_LAYOUT_SIZE: Final = 65536


class BinaryParser:
    """Fields unpacked with a struct ``layout`` from ``frame[offset:]``.

    ``layout`` must start with an explicit byte order (``<``, ``>`` or ``!``);
    ``fields`` names the unpacked values in order (``None``: ignored). Longer
    frames are fine; a shorter one is a ``"format"`` error. With ``checksum``
    the frame is verified first; see the module docstring for what the
    checksum covers.
    """

    __slots__ = (
        "_checksum",
        "_slots",
        "_struct",
        "_text",
        "checksum_start",
        "fields",
        "layout",
        "offset",
        "trailer",
    )

    def __init__(
        self,
        layout: str,
        fields: Sequence[str | None],
        *,
        offset: int = 0,
        checksum: ChecksumName | None = None,
        checksum_start: int = 0,
        trailer: int = 0,
    ) -> None:
        if not layout or layout[0] not in _BYTE_ORDER_PREFIXES:
            raise ValueError(
                f"layout {layout!r} must start with a byte order: '<' little, '>' or '!' big endian"
            )
        try:
            layout_struct = struct.Struct(layout)
        except (struct.error, ValueError) as err:
            raise ValueError(f"invalid struct layout {layout!r}: {err}") from err
        if layout_struct.size > _MAX_LAYOUT_SIZE:
            raise ValueError(
                f"layout {layout!r} covers {layout_struct.size} bytes, "
                f"more than a frame of {_MAX_LAYOUT_SIZE} can hold"
            )
        values = layout_struct.unpack(bytes(layout_struct.size))
        if len(fields) != len(values):
            raise ValueError(
                f"layout {layout!r} unpacks {len(values)} values but {len(fields)} fields are given"
            )
        _check_names(fields)
        if offset < 0 or checksum_start < 0 or trailer < 0:
            raise ValueError(
                f"offset, checksum_start and trailer must not be negative, "
                f"got {offset}, {checksum_start}, {trailer}"
            )
        if checksum is None:
            if checksum_start or trailer:
                raise ValueError("checksum_start and trailer need a checksum")
        elif checksum not in TRAILING_CHECKSUMS:
            raise ValueError(
                f"unknown checksum {checksum!r}, expected one of {', '.join(TRAILING_CHECKSUMS)}"
            )
        self.layout: Final = layout
        self.fields: Final = tuple(fields)
        self.offset: Final = offset
        self.checksum_start: Final = checksum_start
        self.trailer: Final = trailer
        self._checksum: Final = None if checksum is None else TRAILING_CHECKSUMS[checksum]
        self._struct: Final = layout_struct
        self._slots: Final = tuple(
            (index, name) for index, name in enumerate(fields) if name is not None
        )
        self._text: Final = any(isinstance(value, bytes) for value in values)

    def parse(self, frame: bytes) -> dict[str, Field]:
        problem = self._checksum_problem(frame)
        if problem is not None:
            raise problem
        return self.parse_unverified(frame)

    def parse_unverified(self, frame: bytes) -> dict[str, Field]:
        """Like :meth:`parse` without checking the checksum."""
        needed = self.offset + self._struct.size
        if len(frame) < needed:
            raise ParseError(
                "format",
                f"frame of {len(frame)} bytes is too short for layout {self.layout!r} "
                f"at offset {self.offset} ({needed} bytes needed)",
            )
        try:
            values = self._struct.unpack_from(frame, self.offset)
        except struct.error as err:  # pragma: no cover - the length check above prevents it
            raise ParseError("format", f"frame does not fit layout {self.layout!r}: {err}") from err
        fields: dict[str, Field] = {}
        for index, name in self._slots:
            value = values[index]
            fields[name] = _text(value) if self._text and isinstance(value, bytes) else value
        return fields

    def checksum_ok(self, frame: bytes) -> bool:
        """Whether ``frame`` carries a correct checksum (always true without one).

        Fits the ``check`` of :class:`~drivers.serial_line.framing.LengthFieldFramer`.
        """
        return self._checksum_problem(frame) is None

    def _checksum_problem(self, frame: bytes) -> ParseError | None:
        checksum = self._checksum
        if checksum is None:
            return None
        stored_at = len(frame) - self.trailer - checksum.size
        if stored_at < self.checksum_start:
            return ParseError(
                "format",
                f"frame of {len(frame)} bytes is too short to carry a {checksum.label} "
                f"from byte {self.checksum_start} on",
            )
        computed = checksum.compute(frame[self.checksum_start : stored_at])
        stored = int.from_bytes(frame[stored_at : stored_at + checksum.size], checksum.byteorder)
        if computed == stored:
            return None
        return ParseError(
            "checksum",
            f"{checksum.label} {checksum.describe(computed)} expected, "
            f"frame carries {checksum.describe(stored)}",
        )


def _text(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("ascii", "replace")
