"""Framers: table cases, each also fed split at every byte boundary, plus bounds and reset."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from drivers.serial_line.checksums import crc16_modbus, xor8
from drivers.serial_line.framing import (
    CHECK_FAILED,
    END_MISSING,
    INTERRUPTED,
    NO_START,
    DelimiterFramer,
    Discard,
    FixedLengthFramer,
    Frame,
    FrameEvent,
    Framer,
    LengthFieldFramer,
)

TOO_LONG_8 = "frame longer than 8 bytes"


def feed_all(framer: Framer, chunks: Sequence[bytes]) -> list[FrameEvent]:
    return [event for chunk in chunks for event in framer.feed(chunk)]


def outcome(events: Sequence[FrameEvent]) -> tuple[list[bytes], bytes]:
    """Frames in order, and all discarded bytes: what must not depend on the chunking."""
    frames = [e.data for e in events if isinstance(e, Frame)]
    return frames, b"".join(e.data for e in events if isinstance(e, Discard))


def crc_frame(payload: bytes) -> bytes:
    """``AA 55 <len> <payload> <crc16 lo hi>``, the CRC covering everything before it."""
    head = b"\xaa\x55" + bytes([len(payload)]) + payload
    return head + crc16_modbus(head).to_bytes(2, "little")


def xor_frame(payload: bytes) -> bytes:
    """``AA <payload> <xor8>``: the XOR of the whole frame is zero."""
    head = b"\xaa" + payload
    return head + bytes([xor8(head)])


def xor_ok(frame: bytes) -> bool:
    return xor8(frame) == 0


def crc_ok(frame: bytes) -> bool:
    return crc16_modbus(frame) == 0


def binary() -> LengthFieldFramer:
    return LengthFieldFramer(start=b"\xaa\x55", length_offset=2, length_adjust=2, max_length=32)


def stx_etx() -> LengthFieldFramer:
    """``02 <len> <payload> 03``."""
    return LengthFieldFramer(
        start=b"\x02", length_offset=1, length_adjust=1, end=b"\x03", max_length=32
    )


F1, F2, F3 = crc_frame(b"\x01\x02\x03"), crc_frame(b""), crc_frame(b"\xaa\x55\x09\x10")
LOST_BYTE = F1[:4] + F1[5:]  # F1 with one payload byte dropped on the line

# (framer factory, stream, expected events when fed in one chunk)
CASES = [
    # --- DelimiterFramer, no start marker -------------------------------------------
    pytest.param(
        DelimiterFramer,
        b"CH4=12.5;H2S=3;T=21.4\r\n",
        [Frame(b"CH4=12.5;H2S=3;T=21.4")],
        id="delimiter: one gas detector line",
    ),
    pytest.param(
        DelimiterFramer,
        b"a=1\r\nb=2\r\nc=3\r\n",
        [Frame(b"a=1"), Frame(b"b=2"), Frame(b"c=3")],
        id="delimiter: several lines in one chunk",
    ),
    pytest.param(
        DelimiterFramer,
        b"\r\n\r\na\r\n\r\n",
        [Frame(b"a")],
        id="delimiter: empty lines are skipped silently",
    ),
    pytest.param(
        DelimiterFramer,
        b"a\r\nbc",
        [Frame(b"a")],
        id="delimiter: a partial line waits for its delimiter",
    ),
    pytest.param(
        lambda: DelimiterFramer(b"\n"),
        b"1.5,2\r\n\n3\n",
        [Frame(b"1.5,2\r"), Frame(b"3")],
        id="delimiter: a one-byte delimiter leaves a carriage return in the frame",
    ),
    pytest.param(
        lambda: DelimiterFramer(max_length=8),
        b"01234567\r\n",
        [Frame(b"01234567")],
        id="delimiter: a frame of exactly max_length is kept",
    ),
    pytest.param(
        lambda: DelimiterFramer(max_length=8),
        b"012345678\r\nok\r\n",
        [Discard(b"012345678", TOO_LONG_8), Frame(b"ok")],
        id="delimiter: an over-long line is discarded and the next one kept",
    ),
    pytest.param(
        lambda: DelimiterFramer(max_length=8),
        b"x" * 100 + b"\r\nok\r\n",
        [Discard(b"x" * 100, TOO_LONG_8), Frame(b"ok")],
        id="delimiter: a long burst of noise is one discard",
    ),
    # --- DelimiterFramer with a start marker ----------------------------------------
    pytest.param(
        lambda: DelimiterFramer(start=b"$"),
        b"\x00\xff noise$GPGGA,1*00\r\n",
        [Discard(b"\x00\xff noise", NO_START), Frame(b"$GPGGA,1*00")],
        id="start: junk before the start marker is discarded",
    ),
    pytest.param(
        lambda: DelimiterFramer(start=b"$"),
        b"$A*00\r\njunk\r\n\r\n$B*00\r\n",
        [Frame(b"$A*00"), Discard(b"junk", NO_START), Frame(b"$B*00")],
        id="start: a line without start marker is discarded, empty lines skipped",
    ),
    pytest.param(
        lambda: DelimiterFramer(start=b"$"),
        b"$GPGGA,12$GPRMC,1*00\r\n",
        [Discard(b"$GPGGA,12", INTERRUPTED), Frame(b"$GPRMC,1*00")],
        id="start: a frame that lost its delimiter gives way to the next one",
    ),
    pytest.param(
        lambda: DelimiterFramer(start=b"$"),
        b"x$y$$GPRMC*00\r\n",
        [Discard(b"x$y$", INTERRUPTED), Frame(b"$GPRMC*00")],
        id="start: false start bytes inside junk",
    ),
    pytest.param(
        lambda: DelimiterFramer(max_length=8, start=b"$"),
        b"$12345678\r\n$ok\r\n",
        [Discard(b"$12345678", TOO_LONG_8), Frame(b"$ok")],
        id="start: an over-long frame is discarded and the next one kept",
    ),
    pytest.param(
        lambda: DelimiterFramer(max_length=8, start=b"$"),
        b"$" + b"x" * 50 + b"$ok\r\n",
        [Discard(b"$" + b"x" * 50, INTERRUPTED), Frame(b"$ok")],
        id="start: an over-long frame without delimiter gives way to the next start",
    ),
    pytest.param(
        lambda: DelimiterFramer(start=b"##"),
        b"x#y##A\r\n",
        [Discard(b"x#y", NO_START), Frame(b"##A")],
        id="start: a two-byte start marker",
    ),
    # --- FixedLengthFramer ------------------------------------------------------------
    pytest.param(
        lambda: FixedLengthFramer(4),
        b"abcdefghij",
        [Frame(b"abcd"), Frame(b"efgh")],
        id="fixed: every length bytes make a frame",
    ),
    pytest.param(
        lambda: FixedLengthFramer(4, sync=b"\xaa"),
        b"\x01\x02\xaa\x01\x02\x03\xaa\x04\x05\x06",
        [Discard(b"\x01\x02", NO_START), Frame(b"\xaa\x01\x02\x03"), Frame(b"\xaa\x04\x05\x06")],
        id="fixed: junk before the sync byte is discarded",
    ),
    pytest.param(
        lambda: FixedLengthFramer(4, sync=b"\xaa\x55"),
        b"\x55\xaa\x00\xaa\x55\x01\x02",
        [Discard(b"\x55\xaa\x00", NO_START), Frame(b"\xaa\x55\x01\x02")],
        id="fixed: a two-byte sync",
    ),
    pytest.param(
        lambda: FixedLengthFramer(4, sync=b"\xaa", check=xor_ok),
        b"\x11\xaa\x22" + xor_frame(b"\x01\x02") + xor_frame(b"\x03\x04"),
        [
            Discard(b"\x11", NO_START),
            Discard(b"\xaa", CHECK_FAILED),
            Discard(b"\x22", NO_START),
            Frame(xor_frame(b"\x01\x02")),
            Frame(xor_frame(b"\x03\x04")),
        ],
        id="fixed: with a check, a false sync byte in junk costs one byte",
    ),
    pytest.param(
        lambda: FixedLengthFramer(4, check=xor_ok),
        b"\x01\x02" + xor_frame(b"\x01\x02"),
        [Discard(b"\x01\x02", CHECK_FAILED), Frame(xor_frame(b"\x01\x02"))],
        id="fixed: with a check and no sync, the framer slides to the first good frame",
    ),
    # --- LengthFieldFramer --------------------------------------------------------------
    pytest.param(binary, F1, [Frame(F1)], id="length: one frame"),
    pytest.param(
        binary,
        F1 + F2 + F3,
        [Frame(F1), Frame(F2), Frame(F3)],
        id="length: several frames in one chunk, start bytes inside a payload",
    ),
    pytest.param(
        binary,
        b"\x00\xaa\x01" + F1 + b"\x55\x55" + F2,
        [Discard(b"\x00\xaa\x01", NO_START), Frame(F1), Discard(b"\x55\x55", NO_START), Frame(F2)],
        id="length: junk before and between frames is discarded",
    ),
    pytest.param(
        binary,
        b"\x01\xaa\x55\x30\x02" + F1,
        [
            Discard(b"\x01", NO_START),
            Discard(b"\xaa", "length field 48 exceeds max_length 32 (frame of 53 bytes)"),
            Discard(b"\x55\x30\x02", NO_START),
            Frame(F1),
        ],
        id="length: a false start with a length field too large costs one byte",
    ),
    pytest.param(
        lambda: LengthFieldFramer(start=b"\x02", length_offset=1, length_adjust=-2),
        b"\x02\x01\x02\x03z",
        [
            Discard(b"\x02", "length field 1 is too small (frame of 1 bytes, at least 2 needed)"),
            Discard(b"\x01", NO_START),
            Frame(b"\x02\x03z"),
        ],
        id="length: a length field too small is a false start",
    ),
    pytest.param(
        stx_etx,
        b"\x02\x02abX\x02\x02cd\x03",
        [
            Discard(b"\x02", END_MISSING),
            Discard(b"\x02", "length field 97 exceeds max_length 32 (frame of 100 bytes)"),
            Discard(b"abX", NO_START),
            Frame(b"\x02\x02cd\x03"),
        ],
        id="length: an end byte mismatch is a false start",
    ),
    pytest.param(
        lambda: LengthFieldFramer(
            start=b"\x7e", length_offset=1, length_size=2, byteorder="little"
        ),
        b"\x7e\x03\x00abc\x7e\x00\x00",
        [Frame(b"\x7e\x03\x00abc"), Frame(b"\x7e\x00\x00")],
        id="length: a two-byte little-endian length field",
    ),
    pytest.param(
        binary,
        LOST_BYTE + F2,
        [Frame(LOST_BYTE + F2[:1]), Discard(F2[1:], NO_START)],
        id="length: without a check, a frame that lost a byte swallows the next start",
    ),
    pytest.param(
        lambda: LengthFieldFramer(
            start=b"\xaa\x55", length_offset=2, length_adjust=2, max_length=32, check=crc_ok
        ),
        LOST_BYTE + F2,
        [Discard(LOST_BYTE[:1], CHECK_FAILED), Discard(LOST_BYTE[1:], NO_START), Frame(F2)],
        id="length: with a CRC check, a frame that lost a byte costs only itself",
    ),
]


@pytest.mark.parametrize(("make", "stream", "expected"), CASES)
def test_stream_fed_in_one_chunk_gives_the_expected_events(
    make: Callable[[], Framer], stream: bytes, expected: list[FrameEvent]
) -> None:
    assert make().feed(stream) == expected


@pytest.mark.parametrize(("make", "stream", "expected"), CASES)
def test_stream_fed_byte_by_byte_gives_the_same_frames_and_discards(
    make: Callable[[], Framer], stream: bytes, expected: list[FrameEvent]
) -> None:
    chunks = [stream[i : i + 1] for i in range(len(stream))]
    assert outcome(feed_all(make(), chunks)) == outcome(expected)


@pytest.mark.parametrize(("make", "stream", "expected"), CASES)
def test_stream_split_in_two_at_every_point_gives_the_same_frames_and_discards(
    make: Callable[[], Framer], stream: bytes, expected: list[FrameEvent]
) -> None:
    for split in range(len(stream) + 1):
        events = feed_all(make(), [stream[:split], stream[split:]])
        assert outcome(events) == outcome(expected), f"split at {split}"


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: DelimiterFramer(max_length=8), id="delimiter"),
        pytest.param(lambda: DelimiterFramer(max_length=8, start=b"$"), id="delimiter with start"),
        pytest.param(lambda: FixedLengthFramer(8, sync=b"\xaa"), id="fixed with sync"),
        pytest.param(binary, id="length field"),
    ],
)
def test_reset_drops_a_partial_frame(make: Callable[[], Framer]) -> None:
    framer = make()
    good = {
        DelimiterFramer: b"$good\r\n",
        FixedLengthFramer: b"\xaa1234567",
        LengthFieldFramer: F1,
    }[type(framer)]
    assert framer.feed(good[:4]) == []
    assert framer.buffered > 0
    framer.reset()
    assert framer.buffered == 0
    frames, _ = outcome(framer.feed(good))
    assert frames == [good.rstrip(b"\r\n")]


def test_reset_ends_the_skipping_of_an_over_long_line() -> None:
    framer = DelimiterFramer(max_length=8)
    framer.feed(b"x" * 20)
    framer.reset()
    assert framer.feed(b"ok\r\n") == [Frame(b"ok")]


@pytest.mark.parametrize(
    ("make", "bound"),
    [
        pytest.param(lambda: DelimiterFramer(max_length=64), 64 + 1, id="delimiter"),
        pytest.param(
            lambda: DelimiterFramer(max_length=64, start=b"$"), 64 + 1, id="delimiter with start"
        ),
        pytest.param(lambda: FixedLengthFramer(64, sync=b"\x00"), 63, id="fixed with sync"),
        pytest.param(
            lambda: LengthFieldFramer(start=b"\x00", length_offset=1, max_length=64),
            63,
            id="length field",
        ),
    ],
)
def test_a_megabyte_of_noise_keeps_the_buffer_bounded(
    make: Callable[[], Framer], bound: int
) -> None:
    framer = make()
    noise = bytes(range(256)) * 16 + b"$" * 300 + b"\x00" * 300
    for _ in range(256):
        framer.feed(noise)
        assert framer.buffered <= bound


def test_one_feed_of_noise_gives_few_discards_not_one_per_byte() -> None:
    noise = bytes(b for b in range(256) if b != 0xAA) * 4
    events = binary().feed(noise + F1)
    assert events == [Discard(noise, NO_START), Frame(F1)]


def test_a_partial_start_marker_at_the_end_of_a_chunk_is_kept() -> None:
    framer = binary()
    assert framer.feed(b"\x01\x02\xaa") == [Discard(b"\x01\x02", NO_START)]
    assert framer.buffered == 1
    assert framer.feed(F1[1:]) == [Frame(F1)]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DelimiterFramer(b""), "delimiter must not be empty"),
        (lambda: DelimiterFramer(max_length=0), "max_length must be at least 1"),
        (lambda: DelimiterFramer(start=b""), "start marker must not be empty"),
        (lambda: DelimiterFramer(start=b"$\r\n"), "contains the delimiter"),
        (lambda: DelimiterFramer(max_length=1, start=b"##"), "longer than max_length 1"),
        (lambda: FixedLengthFramer(0), "frame length must be at least 1"),
        (lambda: FixedLengthFramer(4, sync=b""), "sync bytes must not be empty"),
        (lambda: FixedLengthFramer(2, sync=b"abc"), "longer than the frame length 2"),
        (lambda: LengthFieldFramer(start=b"", length_offset=1), "start marker must not be empty"),
        (
            lambda: LengthFieldFramer(start=b"\x02", length_offset=1, end=b""),
            "end marker must not be empty",
        ),
        (
            lambda: LengthFieldFramer(start=b"\x02", length_offset=1, length_size=3),
            "length_size must be 1 or 2",
        ),
        (
            lambda: LengthFieldFramer(start=b"\x02", length_offset=1, byteorder="middle"),  # type: ignore[arg-type]
            "byteorder must be 'big' or 'little'",
        ),
        (
            lambda: LengthFieldFramer(start=b"\xaa\x55", length_offset=1),
            "length_offset 1 overlaps the 2-byte start marker",
        ),
        (
            lambda: LengthFieldFramer(start=b"\x02", length_offset=1, end=b"\x03", max_length=2),
            "max_length 2 is below the minimal frame of 3",
        ),
        (
            lambda: LengthFieldFramer(start=b"\x02", length_offset=1, length_adjust=-300),
            "length_adjust -300 leaves no length field value",
        ),
    ],
)
def test_impossible_framer_settings_are_refused_with_a_reason(
    make: Callable[[], Framer], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make()
