"""Property tests: framers and parsers against random bytes, random chunking and noise.

Every framer must survive any byte stream cut into any chunks, keep its buffer
bounded, give the same outcome however the stream is chunked, and recover
every good frame from between noise that holds no start or delimiter bytes.
Every parser may only raise ParseError.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.serial_line.checksums import crc16_modbus, xor8
from drivers.serial_line.framing import (
    DelimiterFramer,
    Discard,
    FixedLengthFramer,
    Frame,
    FrameEvent,
    Framer,
    LengthFieldFramer,
)
from drivers.serial_line.parsers import (
    BinaryParser,
    DelimitedParser,
    NmeaParser,
    ParseError,
    Parser,
    RegexParser,
)

# About 10 s for the whole file: fewer examples per framer, more for single tests.
PER_SETUP = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(PER_SETUP, max_examples=200)


def without(*excluded: int, min_size: int = 0, max_size: int = 40) -> st.SearchStrategy[bytes]:
    """Random bytes that never contain the ``excluded`` byte values."""
    allowed = [b for b in range(256) if b not in excluded]
    return st.lists(st.sampled_from(allowed), min_size=min_size, max_size=max_size).map(bytes)


def crc_frame(payload: bytes) -> bytes:
    head = b"\xaa\x55" + bytes([len(payload)]) + payload
    return head + crc16_modbus(head).to_bytes(2, "little")


def xor_frame(payload: bytes) -> bytes:
    return b"\xaa" + payload + bytes([xor8(b"\xaa" + payload)])


def stx_frame(payload: bytes) -> bytes:
    return b"\x02" + len(payload).to_bytes(2, "little") + payload + b"\x03"


@dataclass(frozen=True)
class Setup:
    """A framer configuration, with good frames and noise it must tell apart."""

    name: str
    make: Callable[[], Framer]
    bound: int  # most bytes it may keep between feeds
    good: st.SearchStrategy[bytes]  # one good frame as on the wire
    noise: st.SearchStrategy[bytes]  # bytes between frames that hold no frame
    delimiter: bytes = b""  # not part of the frame the framer reports

    def __repr__(self) -> str:
        return self.name


CR, LF = 0x0D, 0x0A
SETUPS = [
    Setup(
        "crlf lines",
        lambda: DelimiterFramer(max_length=16),
        16 + 2,
        without(CR, LF, min_size=1, max_size=16).map(lambda b: b + b"\r\n"),
        # Without a start marker only an over-long line is recognisable noise.
        without(CR, LF, min_size=17, max_size=60).map(lambda b: b + b"\r\n") | st.just(b""),
        delimiter=b"\r\n",
    ),
    Setup(
        "short lf lines",
        lambda: DelimiterFramer(b"\n", max_length=4),
        4 + 1,
        without(LF, min_size=1, max_size=4).map(lambda b: b + b"\n"),
        without(LF, min_size=5, max_size=20).map(lambda b: b + b"\n") | st.just(b""),
        delimiter=b"\n",
    ),
    Setup(
        "nmea-like",
        lambda: DelimiterFramer(max_length=24, start=b"$"),
        24 + 2,
        without(CR, LF, ord("$"), max_size=23).map(lambda b: b"$" + b + b"\r\n"),
        without(CR, LF, ord("$"), max_size=80),
        delimiter=b"\r\n",
    ),
    Setup(
        "two-byte start",
        lambda: DelimiterFramer(b"\r\n", max_length=12, start=b"##"),
        12 + 2 + 2,
        without(CR, LF, ord("#"), max_size=10).map(lambda b: b"##" + b + b"\r\n"),
        without(CR, LF, ord("#"), max_size=40),
        delimiter=b"\r\n",
    ),
    Setup(
        "fixed",
        lambda: FixedLengthFramer(5),
        5,
        st.binary(min_size=5, max_size=5),
        st.just(b""),
    ),
    Setup(
        "fixed with sync",
        lambda: FixedLengthFramer(6, sync=b"\xaa\x55"),
        6,
        st.binary(min_size=4, max_size=4).map(lambda b: b"\xaa\x55" + b),
        without(0xAA),
    ),
    Setup(
        "fixed with sync and check",
        lambda: FixedLengthFramer(4, sync=b"\xaa", check=lambda f: xor8(f) == 0),
        4,
        st.binary(min_size=2, max_size=2).map(xor_frame),
        without(0xAA),
    ),
    Setup(
        "length field with CRC",
        lambda: LengthFieldFramer(
            start=b"\xaa\x55", length_offset=2, length_adjust=2, max_length=40
        ),
        40,
        st.binary(max_size=35).map(crc_frame),
        without(0xAA),
    ),
    Setup(
        "length field with CRC check",
        lambda: LengthFieldFramer(
            start=b"\xaa\x55",
            length_offset=2,
            length_adjust=2,
            max_length=40,
            check=lambda f: crc16_modbus(f) == 0,
        ),
        40,
        st.binary(max_size=35).map(crc_frame),
        without(0xAA),
    ),
    Setup(
        "length field little endian with end byte",
        lambda: LengthFieldFramer(
            start=b"\x02",
            length_offset=1,
            length_size=2,
            byteorder="little",
            length_adjust=1,
            end=b"\x03",
            max_length=30,
        ),
        30,
        st.binary(max_size=26).map(stx_frame),
        without(0x02),
    ),
]

# Random streams rich in the bytes framers care about.
MARKERS = [b"\r", b"\n", b"\r\n", b"$", b"#", b"##", b"\xaa", b"\xaa\x55", b"\x02", b"\x03"]
STREAMS = st.lists(st.sampled_from(MARKERS) | st.binary(max_size=12), max_size=80).map(b"".join)
CHUNK_SIZES = st.lists(st.integers(1, 50), min_size=1, max_size=20)


def chunked(stream: bytes, sizes: Sequence[int]) -> list[bytes]:
    chunks, pos, index = [], 0, 0
    while pos < len(stream):
        size = sizes[index % len(sizes)]
        chunks.append(stream[pos : pos + size])
        pos, index = pos + size, index + 1
    return chunks


def frames_and_junk(events: Sequence[FrameEvent]) -> tuple[list[bytes], bytes]:
    frames = [e.data for e in events if isinstance(e, Frame)]
    return frames, b"".join(e.data for e in events if isinstance(e, Discard))


@pytest.mark.parametrize("setup", SETUPS, ids=repr)
@PER_SETUP
@given(stream=STREAMS, sizes=CHUNK_SIZES)
def test_any_stream_in_any_chunks_is_framed_the_same_within_a_bounded_buffer(
    setup: Setup, stream: bytes, sizes: list[int]
) -> None:
    framer = setup.make()
    events: list[FrameEvent] = []
    for chunk in chunked(stream, sizes):
        events.extend(framer.feed(chunk))
        assert framer.buffered <= setup.bound
    assert frames_and_junk(events) == frames_and_junk(setup.make().feed(stream))
    if not isinstance(framer, DelimiterFramer):
        # Nothing is lost: every byte is in a frame, a discard, or still buffered.
        consumed = b"".join(event.data for event in events)
        assert consumed == stream[: len(stream) - framer.buffered]


@pytest.mark.parametrize("setup", SETUPS, ids=repr)
@PER_SETUP
@given(data=st.data(), sizes=CHUNK_SIZES)
def test_every_good_frame_between_noise_is_recovered_in_order(
    setup: Setup, data: st.DataObject, sizes: list[int]
) -> None:
    pairs = data.draw(st.lists(st.tuples(setup.noise, setup.good), max_size=12))
    stream = b"".join(noise + good for noise, good in pairs) + data.draw(setup.noise)
    framer = setup.make()
    events = [event for chunk in chunked(stream, sizes) for event in framer.feed(chunk)]
    expected = [good.removesuffix(setup.delimiter) for _, good in pairs]
    assert [e.data for e in events if isinstance(e, Frame)] == expected


@FUZZ
@given(data=st.data(), sizes=CHUNK_SIZES)
def test_with_a_check_false_start_bytes_in_noise_cost_no_good_frame(
    data: st.DataObject, sizes: list[int]
) -> None:
    goods = data.draw(st.lists(st.binary(max_size=35).map(crc_frame), max_size=8))
    noise = st.lists(st.sampled_from([b"\xaa", b"\xaa\x55", b"\x55"]) | st.binary(max_size=6))
    stream = b"".join(data.draw(noise.map(b"".join)) + good for good in goods)
    stream += b"\x00" * 40  # lets a false start near the end be rejected
    good_set = set(goods)
    framer = LengthFieldFramer(
        start=b"\xaa\x55",
        length_offset=2,
        length_adjust=2,
        max_length=40,
        check=good_set.__contains__,
    )
    events = [event for chunk in chunked(stream, sizes) for event in framer.feed(chunk)]
    assert [e.data for e in events if isinstance(e, Frame)] == goods


PARSERS: list[Parser] = [
    RegexParser(r"CH4=(?P<ch4>[-\d.]+);H2S=(?P<h2s>[-\d.]*)(;T=(?P<t>[-\d.]+))?"),
    RegexParser(r"(?P<all>.*)", encoding="utf-8"),
    DelimitedParser([None, "a", None, "b"]),
    DelimitedParser(["a", "b"], separator=";", encoding="latin-1"),
    NmeaParser({"time": 1, "fix": 6}, coordinates={"lat": (2, 3), "lon": (4, 5)}),
    NmeaParser(
        {"id": 0, "x": 3}, sentence="GGA", require_checksum=False, coordinates={"p": (1, 2)}
    ),
    BinaryParser(">HhI", ["a", "b", "c"], offset=3, checksum="crc16_modbus"),
    BinaryParser("<?e4sx", ["a", "b", "c"], checksum="crc16_ccitt", checksum_start=1, trailer=1),
    BinaryParser("!bBq", [None, "b", "c"], offset=1, checksum="xor8"),
    BinaryParser("<d", ["d"]),
]

NMEA_ALPHABET = b"$!GPNA,.*0123456789NSEWabcdef\r\n\xff "
NMEA_LIKE = st.lists(st.sampled_from(list(NMEA_ALPHABET)), max_size=60).map(bytes)


@FUZZ
@given(frame=st.binary(max_size=80) | NMEA_LIKE)
def test_parsers_only_ever_raise_parse_error(frame: bytes) -> None:
    for parser in PARSERS:
        for parse in (parser.parse, parser.parse_unverified):
            try:
                fields = parse(frame)
            except ParseError as err:
                assert err.kind in ("format", "checksum", "skip")
            else:
                assert all(isinstance(value, str | int | float | bool) for value in fields.values())
