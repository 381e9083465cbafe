"""Parsers: fields from good frames, and every way a frame or a configuration can be wrong."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from drivers.serial_line.checksums import crc16_ccitt, crc16_modbus, xor8
from drivers.serial_line.parsers import (
    BinaryParser,
    DelimitedParser,
    Field,
    NmeaParser,
    ParseError,
    Parser,
    RegexParser,
    WrongSentenceError,
    nmea_coordinate,
)

GGA = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"
GAS = r"CH4=(?P<ch4>[-\d.]+);H2S=(?P<h2s>[-\d.]+)(;T=(?P<t>[-\d.]+))?"


def nmea(body: str) -> bytes:
    """``$<body>*hh`` with a correct checksum."""
    return f"${body}*{xor8(body.encode()):02X}".encode()


def gga_parser(**options: object) -> NmeaParser:
    return NmeaParser(
        {"time": 1, "fix": 6, "satellites": 7, "altitude": 9},
        coordinates={"lat": (2, 3), "lon": (4, 5)},
        **options,  # type: ignore[arg-type]
    )


def modbus_crc(data: bytes) -> bytes:
    return data + crc16_modbus(data).to_bytes(2, "little")


# A binary frame: AA 55 <len> then >HhI (0x1234, -2, 70000) and the Modbus CRC over it all.
PAYLOAD = bytes.fromhex("1234 FFFE 00011170")
BINARY = modbus_crc(b"\xaa\x55\x08" + PAYLOAD)


def binary_parser(**options: object) -> BinaryParser:
    return BinaryParser(
        ">HhI",
        ["status", "temperature", "counter"],
        offset=3,
        checksum="crc16_modbus",
        **options,  # type: ignore[arg-type]
    )


GOOD = [
    # --- RegexParser -----------------------------------------------------------------
    pytest.param(
        RegexParser(GAS),
        b"CH4=12.5;H2S=3;T=21.4",
        {"ch4": "12.5", "h2s": "3", "t": "21.4"},
        id="regex: gas detector line",
    ),
    pytest.param(
        RegexParser(GAS),
        b"CH4=12.5;H2S=3",
        {"ch4": "12.5", "h2s": "3"},
        id="regex: a group that did not take part is left out",
    ),
    pytest.param(
        RegexParser(r"T=(?P<t>[^;]*);RH=(?P<rh>[^;]*)"),
        b">> T= 21.4 ;RH=;",
        {"t": "21.4"},
        id="regex: values are stripped, empty ones left out, search not match",
    ),
    pytest.param(
        RegexParser(r"W=(?P<w>\S+)", encoding="latin-1"),
        b"W=12\xb0",
        {"w": "12\u00b0"},
        id="regex: another encoding",
    ),
    # --- DelimitedParser --------------------------------------------------------------
    pytest.param(
        DelimitedParser([None, "flow", "unit", "total"]),
        b"FLOW,12.5,m3/h,10234\r\n",
        {"flow": "12.5", "unit": "m3/h", "total": "10234"},
        id="delimited: flow meter CSV, ignored first field, trailing CRLF",
    ),
    pytest.param(
        DelimitedParser(["a", None, "c"], separator=";"),
        b" 1 ;x;\t3\t;extra;parts",
        {"a": "1", "c": "3"},
        id="delimited: other separator, parts stripped, extra parts ignored",
    ),
    pytest.param(
        DelimitedParser(["a", "b"]),
        b"1,",
        {"a": "1"},
        id="delimited: an empty part is left out",
    ),
    # --- NmeaParser ---------------------------------------------------------------------
    pytest.param(
        gga_parser(sentence="GGA"),
        GGA,
        {
            "time": "123519",
            "fix": "1",
            "satellites": "08",
            "altitude": "545.4",
            "lat": pytest.approx(48.1173),
            "lon": pytest.approx(11.516667),
        },
        id="nmea: GGA with coordinates",
    ),
    pytest.param(
        gga_parser(sentence="GGA"),
        nmea("GNGGA,0,3345.5,S,07030.0,W,1,08,0.9,545.4,M,46.9,M,,") + b"\r",
        {
            "time": "0",
            "fix": "1",
            "satellites": "08",
            "altitude": "545.4",
            "lat": pytest.approx(-33.758333),
            "lon": pytest.approx(-70.5),
        },
        id="nmea: GN talker matches GGA, south and west are negative, trailing CR",
    ),
    pytest.param(
        gga_parser(),
        nmea("GPGGA,123519,,,,,0,00,,,M,,M,,"),
        {"time": "123519", "fix": "0", "satellites": "00"},
        id="nmea: empty fields (no fix) are left out",
    ),
    pytest.param(
        NmeaParser({"id": 0, "status": 6, "mode": 7, "extra": 9}),
        b"$GPGLL,4916.45,N,12311.12,W,225444,A,*1d",
        {"id": "GPGLL", "status": "A"},
        id="nmea: index 0 is the address, empty or past the end left out, lower-case hex",
    ),
    pytest.param(
        NmeaParser({"payload": 5}),
        b"!AIVDM,1,1,,B,177KQJ5000G?tO`K>RA1wUbN0TKH,0*5C",
        {"payload": "177KQJ5000G?tO`K>RA1wUbN0TKH"},
        id="nmea: '!' sentences (AIS)",
    ),
    pytest.param(
        NmeaParser({"time": 1}, require_checksum=False),
        b"$GPZDA,201530.00,04,07,2002,00,00",
        {"time": "201530.00"},
        id="nmea: checksum not required",
    ),
    pytest.param(
        NmeaParser({"name": 0}, sentence="PGRME"),
        nmea("PGRME,15.0,M,45.0,M,25.0,M"),
        {"name": "PGRME"},
        id="nmea: a proprietary sentence matched by its whole address",
    ),
    # --- BinaryParser -------------------------------------------------------------------
    pytest.param(
        binary_parser(),
        BINARY,
        {"status": 0x1234, "temperature": -2, "counter": 70000},
        id="binary: layout after a header, CRC-16/Modbus",
    ),
    pytest.param(
        BinaryParser("<H?xf4s", [None, "alarm", "level", "tag"]),
        b"\x01\x00\x01\xff" + b"\x00\x00\xc0\x3f" + b"AB\x00\x00trailing",
        {"alarm": True, "level": 1.5, "tag": "AB"},
        id="binary: little endian, ignored field, pad byte, bool, float, string, longer frame",
    ),
    pytest.param(
        BinaryParser(">H", ["value"], offset=1, checksum="crc16_ccitt", checksum_start=1),
        b"\x02\x01\x02" + crc16_ccitt(b"\x01\x02").to_bytes(2, "big"),
        {"value": 0x0102},
        id="binary: CRC-16/CCITT high byte first, not covering the start byte",
    ),
    pytest.param(
        BinaryParser("!bb", ["a", "b"], checksum="xor8", trailer=1),
        b"\x05\xfb" + bytes([0x05 ^ 0xFB]) + b"\x03",
        {"a": 5, "b": -5},
        id="binary: XOR-8 followed by an end byte it does not cover",
    ),
]


@pytest.mark.parametrize(("parser", "frame", "expected"), GOOD)
def test_good_frame_gives_its_fields(
    parser: Parser, frame: bytes, expected: dict[str, Field]
) -> None:
    assert parser.parse(frame) == expected
    assert parser.parse_unverified(frame) == expected


BAD = [
    # --- RegexParser -----------------------------------------------------------------
    pytest.param(
        RegexParser(GAS),
        b"CH4=;H2S=3",
        "format",
        "'CH4=;H2S=3' does not match",
        id="regex: no match",
    ),
    pytest.param(
        RegexParser(GAS), b"CH4=1\xff", "format", "not valid ascii text", id="regex: not ASCII"
    ),
    pytest.param(
        RegexParser(GAS, encoding="utf-8"),
        b"\xc3(",
        "format",
        "not valid utf-8 text",
        id="regex: broken UTF-8",
    ),
    # --- DelimitedParser --------------------------------------------------------------
    pytest.param(
        DelimitedParser([None, "flow", "unit", "total"]),
        b"FLOW,12.5",
        "format",
        "expected at least 4 fields separated by ',', got 2",
        id="delimited: too few fields",
    ),
    pytest.param(
        DelimitedParser(["a"]), b"\x80", "format", "not valid ascii", id="delimited: not ASCII"
    ),
    # --- NmeaParser ---------------------------------------------------------------------
    pytest.param(
        gga_parser(),
        GGA[:-2] + b"4F",
        "checksum",
        "NMEA checksum 4F expected, computed 47",
        id="nmea: checksum mismatch",
    ),
    pytest.param(
        gga_parser(), GGA[:-3], "checksum", "NMEA checksum missing", id="nmea: checksum missing"
    ),
    pytest.param(
        gga_parser(),
        GGA[:-1],
        "checksum",
        "NMEA checksum '4' is not two hex digits",
        id="nmea: one checksum digit",
    ),
    pytest.param(
        gga_parser(),
        GGA[:-2] + b"ZZ",
        "checksum",
        "NMEA checksum 'ZZ' is not two hex digits",
        id="nmea: checksum not hex",
    ),
    pytest.param(
        gga_parser(),
        GGA[1:],
        "format",
        "must start with '\\$' or '!'",
        id="nmea: no dollar",
    ),
    pytest.param(gga_parser(), b"", "format", "must start with", id="nmea: empty frame"),
    pytest.param(
        gga_parser(sentence="GGA"),
        nmea("GPRMC,081836,A,3751.65,S,14507.36,E,000.0,360.0,130998,011.3,E"),
        "skip",
        "sentence RMC is not GGA, skipped",
        id="nmea: another sentence type is skipped",
    ),
    pytest.param(
        gga_parser(),
        nmea("GPGGA,1,4867.0,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"),
        "format",
        "lat: coordinate '4867.0' has 67.0 minutes",
        id="nmea: impossible coordinate names the field",
    ),
    pytest.param(
        gga_parser(),
        nmea("GPGGA,1,4807.038,X,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"),
        "format",
        "lat: hemisphere 'X' is not one of N, S, E, W",
        id="nmea: unknown hemisphere names the field",
    ),
    pytest.param(
        NmeaParser({"a": 1}, require_checksum=False),
        b"$GP\xffGGA,1",
        "format",
        "not valid ascii",
        id="nmea: not ASCII",
    ),
    # --- BinaryParser -------------------------------------------------------------------
    pytest.param(
        binary_parser(),
        BINARY[:-2] + b"\x34\x12",
        "checksum",
        f"CRC-16/Modbus 0x{crc16_modbus(BINARY[:-2]):04X} expected, frame carries 0x1234",
        id="binary: CRC mismatch names both values",
    ),
    pytest.param(
        BinaryParser(">H", ["a"], checksum="xor8"),
        b"\x01\x02\x00",
        "checksum",
        "XOR-8 0x03 expected, frame carries 0x00",
        id="binary: XOR-8 mismatch",
    ),
    pytest.param(
        binary_parser(),
        b"\xaa",
        "format",
        "frame of 1 bytes is too short to carry a CRC-16/Modbus from byte 0 on",
        id="binary: too short for the checksum",
    ),
    pytest.param(
        binary_parser(),
        modbus_crc(b"\xaa\x55\x02\x00\x01"),
        "format",
        "frame of 7 bytes is too short for layout '>HhI' at offset 3 \\(11 bytes needed\\)",
        id="binary: too short for the layout",
    ),
]


@pytest.mark.parametrize(("parser", "frame", "kind", "message"), BAD)
def test_bad_frame_raises_a_parse_error_saying_what_is_wrong(
    parser: Parser, frame: bytes, kind: str, message: str
) -> None:
    with pytest.raises(ParseError, match=message) as caught:
        parser.parse(frame)
    assert caught.value.kind == kind


def test_parse_error_is_a_value_error_carrying_its_kind_and_message() -> None:
    err = ParseError("checksum", "bad CRC")
    assert isinstance(err, ValueError)
    assert (err.kind, err.message, str(err)) == ("checksum", "bad CRC", "bad CRC")


def test_wrong_sentence_error_names_the_sentence_and_the_expected_one() -> None:
    with pytest.raises(WrongSentenceError) as caught:
        gga_parser(sentence="gga").parse(nmea("GPRMC,1"))
    assert (caught.value.sentence, caught.value.expected, caught.value.kind) == (
        "RMC",
        "GGA",
        "skip",
    )


def test_frames_that_fail_their_checksum_can_still_be_read_unverified() -> None:
    bad_nmea = GGA[:-2] + b"00"
    assert gga_parser().parse_unverified(bad_nmea)["altitude"] == "545.4"
    assert gga_parser().parse_unverified(GGA[:-3])["altitude"] == "545.4"
    bad_binary = BINARY[:-1] + b"\x00"
    assert binary_parser().parse_unverified(bad_binary)["counter"] == 70000


def test_checksum_ok_tells_good_binary_frames_from_garbled_ones() -> None:
    parser = binary_parser()
    assert parser.checksum_ok(BINARY)
    assert not parser.checksum_ok(BINARY[:-1] + b"\x00")
    assert not parser.checksum_ok(b"")
    assert BinaryParser(">H", ["a"]).checksum_ok(b"")


@pytest.mark.parametrize(
    ("value", "hemisphere", "expected"),
    [
        ("4807.038", "N", 48.1173),
        ("4807.038", "S", -48.1173),
        ("01131.000", "E", 11.516666666),
        ("01131.000", "W", -11.516666666),
        ("0000.0000", "N", 0.0),
        ("9000.000", "S", -90.0),
        ("18000", "e", 180.0),
        ("07.5", "N", 0.125),
    ],
)
def test_nmea_coordinate_gives_signed_decimal_degrees(
    value: str, hemisphere: str, expected: float
) -> None:
    assert math.isclose(nmea_coordinate(value, hemisphere), expected, abs_tol=1e-9)


@pytest.mark.parametrize(
    ("value", "hemisphere", "message"),
    [
        ("", "N", "not of the form ddmm.mmmm"),
        ("48x7.0", "N", "not of the form ddmm.mmmm"),
        ("1e5", "N", "not of the form ddmm.mmmm"),
        ("-4807.0", "N", "not of the form ddmm.mmmm"),
        ("\u0664807.0", "N", "not of the form ddmm.mmmm"),
        ("4860.0", "N", "60.0 minutes, 60 or more"),
        ("9000.001", "N", "more than 90 degrees"),
        ("18000.01", "W", "more than 180 degrees"),
        ("4807.038", "", "hemisphere '' is not one of N, S, E, W"),
        ("4807.038", "Q", "hemisphere 'Q' is not one of N, S, E, W"),
    ],
)
def test_nmea_coordinate_refuses_malformed_values(
    value: str, hemisphere: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        nmea_coordinate(value, hemisphere)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: RegexParser(r"(?P<a>\d+"), "invalid regular expression"),
        (lambda: RegexParser(r"(\d+)"), "has no named group"),
        (lambda: RegexParser(r"(?P<a>\d+)", encoding="klingon"), "unknown text encoding 'klingon'"),
        (lambda: RegexParser(r"(?P<a>\d+)", encoding="rot13"), "unknown text encoding 'rot13'"),
        (lambda: DelimitedParser([None, None]), "no field is named"),
        (lambda: DelimitedParser(["a", "b", "a"]), "field names used twice: a"),
        (lambda: DelimitedParser(["a", ""]), "field names must not be empty"),
        (lambda: DelimitedParser(["a"], separator=""), "separator must not be empty"),
        (lambda: NmeaParser({}), "no field is named"),
        (lambda: NmeaParser({"a": -1}), "indices must not be negative"),
        (lambda: NmeaParser({"a": 1}, coordinates={"a": (2, 3)}), "used twice: a"),
        (lambda: NmeaParser({"a": 1}, coordinates={"b": (2, -3)}), "must not be negative"),
        (lambda: NmeaParser({"a": 1}, sentence="G-A"), "not a word like 'GGA'"),
        (lambda: BinaryParser("HhI", ["a", "b", "c"]), "must start with a byte order"),
        (lambda: BinaryParser("=H", ["a"]), "must start with a byte order"),
        (lambda: BinaryParser("", []), "must start with a byte order"),
        (lambda: BinaryParser("<HX", ["a", "b"]), "invalid struct layout '<HX'"),
        (lambda: BinaryParser("<H\u00e9", ["a", "b"]), "invalid struct layout"),
        (lambda: BinaryParser("<99999999999999999999x", []), "invalid struct layout"),
        (lambda: BinaryParser("<100000s", ["a"]), "covers 100000 bytes"),
        (lambda: BinaryParser("<Hh", ["a"]), "unpacks 2 values but 1 fields are given"),
        (lambda: BinaryParser("<3Hx", ["a", "b"]), "unpacks 3 values but 2 fields are given"),
        (lambda: BinaryParser("<H", ["a"], offset=-1), "must not be negative"),
        (lambda: BinaryParser("<H", ["a"], checksum="crc32"), "unknown checksum 'crc32'"),  # type: ignore[arg-type]
        (lambda: BinaryParser("<H", ["a"], checksum_start=1), "need a checksum"),
        (lambda: BinaryParser("<H", ["a"], trailer=1), "need a checksum"),
    ],
)
def test_bad_parser_settings_are_refused_with_a_clear_message(
    make: Callable[[], Parser], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make()
