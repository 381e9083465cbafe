"""Line instruments' frames: written from a simulator file's frame table, or from a
gateway config's framing and parser, and read back by the gateway's own (pure)."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter

from drivers.serial_line.checksums import xor8
from drivers.serial_line.config import FramingConfig, ParserConfig
from drivers.serial_line.framing import Frame
from drivers.serial_line.parsers import ParseError
from drivers.sim.line_frames import (
    BinaryFrameConfig,
    FrameConfig,
    NmeaFrameConfig,
    NotInvertible,
    frame_for,
    frame_reads_back,
    nmea_degrees,
)

FRAME: TypeAdapter[FrameConfig] = TypeAdapter(FrameConfig)
FRAMING: TypeAdapter[FramingConfig] = TypeAdapter(FramingConfig)
PARSER: TypeAdapter[ParserConfig] = TypeAdapter(ParserConfig)

LEVEL_FRAMING = {
    "kind": "length_field",
    "start_hex": "AA55",
    "length_offset": 2,
    "length_size": 1,
    "length_adjust": 2,
}
LEVEL_PARSER = {
    "kind": "binary",
    "layout": ">HhI",
    "fields": ["level", "temp", "n"],
    "offset": 3,
    "checksum": "crc16_modbus",
}
LEVEL_FRAME = {
    "kind": "binary",
    "start_hex": "AA55",
    "length_size": 1,
    "length_adjust": 2,
    "layout": ">HhI",
    "fields": ["level", "temp", "n"],
    "checksum": "crc16_modbus",
}


def test_a_text_frame_is_its_template_with_the_fields_values() -> None:
    frame = FRAME.validate_python({"kind": "text", "template": "CH4={ch4:.2f};H2S={h2s}\r\n"})
    assert frame.encode({"ch4": 12.345, "h2s": 3}) == b"CH4=12.35;H2S=3\r\n"


def test_an_nmea_frame_carries_a_checksum_the_gateway_verifies_and_crc_breaks() -> None:
    frame = FRAME.validate_python(
        {
            "kind": "nmea",
            "template": "GPGGA,{utc},{lat:lat},{lon:lon},1,08,0.9,{alt:.1f},M,46.9,M,,",
        }
    )
    assert isinstance(frame, NmeaFrameConfig)
    values = {"utc": "123519", "lat": 48.1173, "lon": -11.5167, "alt": 545.4}
    written = frame.encode(values)
    body = b"GPGGA,123519,4807.0380,N,01131.0020,W,1,08,0.9,545.4,M,46.9,M,,"
    assert written == b"$" + body + b"*%02X\r\n" % xor8(body)
    parser = PARSER.validate_python(
        {
            "kind": "nmea",
            "sentence": "GGA",
            "fields": {"alt": 9},
            "coordinates": {"lat": [2, 3], "lon": [4, 5]},
        }
    ).build()
    fields = parser.parse(written)
    assert fields["lat"] == pytest.approx(48.1173) and fields["lon"] == pytest.approx(-11.5167)
    with pytest.raises(ParseError) as refused:
        parser.parse(frame.corrupt(written))
    assert refused.value.kind == "checksum"


def test_nmea_degrees_never_write_sixty_minutes() -> None:
    assert nmea_degrees(47.99999999, "lat") == "4800.0000,N"
    assert nmea_degrees(-0.5, "lon") == "00030.0000,W"


def test_a_binary_frame_is_read_back_by_the_gateways_length_field_framing_and_parser() -> None:
    frame = FRAME.validate_python(LEVEL_FRAME)
    written = frame.encode({"level": 1234, "temp": 215, "n": 7})
    assert written[:3] == bytes.fromhex("AA5508") and len(written) == 13
    framer = FRAMING.validate_python(LEVEL_FRAMING).build()
    parser = PARSER.validate_python(LEVEL_PARSER).build()
    (first,) = [e for e in framer.feed(written) if isinstance(e, Frame)]
    assert parser.parse(first.data) == {"level": 1234, "temp": 215, "n": 7}
    with pytest.raises(ParseError) as refused:
        parser.parse(frame.corrupt(written))
    assert refused.value.kind == "checksum"


def test_a_binary_value_that_does_not_fit_its_code_is_held_at_the_codes_limit() -> None:
    frame = FRAME.validate_python({"kind": "binary", "layout": ">Hb", "fields": ["a", "b"]})
    assert frame.encode({"a": 70000.4, "b": -300}) == bytes.fromhex("FFFF80")


def test_a_binary_layout_and_its_fields_must_agree() -> None:
    with pytest.raises(ValueError, match="packs 3 values; 2 fields are named"):
        BinaryFrameConfig.model_validate({"kind": "binary", "layout": ">HhI", "fields": ["a", "b"]})
    with pytest.raises(ValueError, match="must start with a byte order"):
        BinaryFrameConfig.model_validate(
            {"kind": "binary", "layout": "HhI", "fields": ["a", "b", "c"]}
        )


@pytest.mark.parametrize(
    ("framing", "parser", "types"),
    [
        (
            {"kind": "delimiter", "delimiter": "\r\n"},
            {
                "kind": "regex",
                "pattern": r"CH4=(?P<ch4>[-\d.]+);H2S=(?P<h2s>\d+);T=[-\d.]+;N=(?P<n>\d+)",
            },
            {"ch4": "float", "h2s": "int", "n": "int"},
        ),
        (
            {"kind": "delimiter", "delimiter": "\n", "start": "#"},
            {"kind": "delimited", "fields": ["tag", "", "flow", "total"], "separator": ";"},
            {"tag": "string", "flow": "float", "total": "int"},
        ),
        (
            {"kind": "delimiter", "delimiter": "\r\n", "start": "$"},
            {
                "kind": "nmea",
                "sentence": "RMC",
                "fields": {"speed": 7},
                "coordinates": {"lat": [3, 4], "lon": [5, 6]},
            },
            {"speed": "float", "lat": "float", "lon": "float"},
        ),
        (LEVEL_FRAMING, LEVEL_PARSER, {"level": "int", "temp": "int", "n": "int"}),
        (
            {"kind": "fixed", "length": 9, "sync_hex": "7E"},
            {"kind": "binary", "layout": "<hHf", "fields": ["t", "", "p"], "offset": 1},
            {"t": "int", "p": "float"},
        ),
    ],
    ids=["regex", "delimited", "nmea", "length-field", "fixed"],
)
def test_frames_written_for_a_gateway_config_are_read_back_by_its_framing_and_parser(
    framing: dict[str, object], parser: dict[str, object], types: dict[str, str]
) -> None:
    built_framing = FRAMING.validate_python(framing)
    built_parser = PARSER.validate_python(parser)
    frame = FRAME.validate_python(frame_for(built_framing, built_parser, types))
    sample = {"float": 12.5, "int": 7, "string": "FM1"}
    values = {name: sample[kind] for name, kind in types.items()}
    assert frame_reads_back(frame, built_framing, built_parser, values) is None


def test_a_regex_the_simulator_cannot_write_is_said_to_be_so() -> None:
    framing = FRAMING.validate_python({"kind": "delimiter"})
    parser = PARSER.validate_python({"kind": "regex", "pattern": r"(?<=T=)(?P<t>\d+)"})
    with pytest.raises(NotInvertible, match="uses assert"):
        frame_for(framing, parser, {"t": "int"})


def test_a_frame_the_gateway_would_not_read_is_caught_by_reading_it_back() -> None:
    framing = FRAMING.validate_python({"kind": "delimiter"})
    parser = PARSER.validate_python({"kind": "regex", "pattern": r"V=(?P<v>[A-F]+)"})
    frame = FRAME.validate_python(frame_for(framing, parser, {"v": "float"}))  # writes V=12.50
    wrong = frame_reads_back(frame, framing, parser, {"v": 12.5})
    assert wrong is not None and "V=12.50" in wrong
