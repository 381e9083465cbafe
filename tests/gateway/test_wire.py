"""Wire format: what the centre decodes is what the gateway read (docs/wire-format.md)."""

from __future__ import annotations

import contextlib
import itertools
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.wire_bench import float32_batch, mixed_batch
from drivers.core.model import Quality, Reading
from gateway.wire import (
    WIRE_VERSION,
    DecodeError,
    batch_to_json_lines,
    codec,
    decode_batch,
    encode_batch,
    iter_batches,
)
from gateway.wire.codec import Compress

GOLDEN = Path(__file__).parent / "golden"
IDENTITY = ("cab-0412", "00112233445566aa", 42)

# Quality codes by number, as on the wire (gateway/model.py names them).
SPIKE, COMM_ERROR, DEVICE_OFFLINE = 2, 4, 5

READINGS = [
    Reading("pump-7", "pressure", 1795430000000, 6.25),
    Reading("pump-7", "running", 1795430000000, True),
    Reading("pump-7", "count", 1795430000001, 4294967295),
    Reading("gauge", "tag", 1795430000002, "FG-204"),
    Reading("gauge", "temp", 1795430000003, -12),
]

# The v2 goldens: every value type, float32 and float64, nil values with bad qualities,
# a point name two devices share, a second poll cycle, and a timestamp going backwards.
READINGS_V2 = [
    Reading("pump-7", "pressure", 1795430000000, 6.25),
    Reading("pump-7", "running", 1795430000000, True),
    Reading("pump-7", "count", 1795430000000, 4294967295),
    Reading("pump-7", "flow", 1795430000000, 0.1),
    Reading("gauge", "tag", 1795430000013, "FG-204"),
    Reading("gauge", "temp", 1795430000013, -12),
    Reading("gauge", "pressure", 1795430000013, None, COMM_ERROR),
    Reading("pump-7", "pressure", 1795430001000, 6.5, SPIKE),
    Reading("pump-7", "running", 1795430001000, False),
    Reading("pump-7", "count", 1795430001000, 0),
    Reading("pump-7", "flow", 1795430001000, 0.2),
    Reading("gauge", "tag", 1795430000995, "FG-204"),
    Reading("gauge", "temp", 1795430000995, -13),
    Reading("gauge", "pressure", 1795430000995, None, DEVICE_OFFLINE),
]


def typed(readings: list[Reading]) -> list[tuple[type, Reading]]:
    """Readings with their value types: True == 1 == 1.0, but a bool must stay a bool."""
    return [(type(r.value), r) for r in readings]


def round_trip(readings: list[Reading], **options: Any) -> list[Reading]:
    return decode_batch(encode_batch(*IDENTITY, readings, **options)).readings


# --- version 2 ---------------------------------------------------------------------------


def test_a_batch_round_trips_in_version_2_with_its_identity_and_every_value_type() -> None:
    batch = decode_batch(encode_batch(*IDENTITY, READINGS_V2))
    assert WIRE_VERSION == 2
    assert (batch.version, batch.gateway_id, batch.boot_id, batch.seq) == (2, *IDENTITY)
    assert typed(batch.readings) == typed(READINGS_V2)


def test_the_v2_golden_file_is_what_the_encoder_writes_and_decodes_to_the_same_readings() -> None:
    payload = (GOLDEN / "batch-v2.msgpack").read_bytes()
    assert payload == encode_batch(*IDENTITY, READINGS_V2, compress="never")
    assert typed(decode_batch(payload).readings) == typed(READINGS_V2)


def test_the_compressed_v2_golden_file_decodes_and_matches_the_encoder_once_inflated() -> None:
    # zlib builds (zlib, zlib-ng) may choose other but equally valid deflate streams, so
    # the bytes compared are the envelope and the inflated body, not the deflate stream.
    payload = (GOLDEN / "batch-v2-compressed.msgpack").read_bytes()
    golden = msgpack.unpackb(payload)
    ours = msgpack.unpackb(encode_batch(*IDENTITY, READINGS_V2, compress="always"))
    assert golden["z"] == ours["z"] == 1
    assert zlib.decompress(golden.pop("b")) == zlib.decompress(ours.pop("b"))
    assert golden == ours
    assert typed(decode_batch(payload).readings) == typed(READINGS_V2)


def test_the_envelope_reads_with_plain_msgpack_even_when_the_body_is_compressed() -> None:
    doc = msgpack.unpackb(encode_batch(*IDENTITY, float32_batch(500)))
    assert {k: doc[k] for k in ("v", "gw", "boot", "seq", "z")} == {
        "v": 2,
        "gw": "cab-0412",
        "boot": "00112233445566aa",
        "seq": 42,
        "z": 1,
    }
    body = msgpack.unpackb(zlib.decompress(doc["b"]))
    assert body["s"][:2] == ["pump-station-00", "pump-station-01"]
    assert len(body["pd"]) == len(body["pn"]) == len(body["t"]) == len(body["x"]) == 500


@pytest.mark.parametrize("size", [500, 2000])
def test_float32_points_polled_every_second_cost_at_most_6_bytes_per_reading(size: int) -> None:
    readings = float32_batch(size)
    payload = encode_batch(*IDENTITY, readings)
    assert len(payload) / size <= 6.0
    assert decode_batch(payload).readings == readings


def test_auto_leaves_a_batch_uncompressed_when_zlib_saves_less_than_a_tenth() -> None:
    small = encode_batch(*IDENTITY, READINGS_V2[:1])
    assert "z" not in msgpack.unpackb(small)
    assert small == encode_batch(*IDENTITY, READINGS_V2[:1], compress="never")
    always = encode_batch(*IDENTITY, READINGS_V2[:1], compress="always")
    assert len(always) > len(small)
    assert decode_batch(always).readings == READINGS_V2[:1]


def test_float32_values_travel_as_float32_and_others_as_float64() -> None:
    readings = [
        Reading("d", "a", 1, 6.25),
        Reading("d", "b", 1, 0.1),
        Reading("d", "c", 1, 3.4028234663852886e38),  # the largest float32
        Reading("d", "e", 1, 1e300),  # beyond float32
    ]
    payload = encode_batch(*IDENTITY, readings, compress="never")
    for single in (6.25, 3.4028234663852886e38):
        assert b"\xca" + struct.pack(">f", single) in payload
    for double in (0.1, 1e300):
        assert b"\xcb" + struct.pack(">d", double) in payload
    assert decode_batch(payload).readings == readings


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_a_number_that_is_not_finite_travels_as_no_value_with_quality_invalid_value(
    number: float,
) -> None:
    (reading,) = round_trip([Reading("d", "p", 1, number)])
    assert reading.value is None and reading.quality == Quality.INVALID_VALUE


def test_nil_values_with_a_bad_quality_round_trip() -> None:
    readings = [
        Reading("plc", "level", 1000, None, COMM_ERROR),
        Reading("plc", "level", 2000, 1.5, 0),
        Reading("plc", "level", 3000, None, DEVICE_OFFLINE),
    ]
    assert round_trip(readings) == readings
    body = msgpack.unpackb(encode_batch(*IDENTITY, readings, compress="never"))["b"]
    assert body["x"] == [None, 1.5, None] and body["q"] == [0, COMM_ERROR, 2, DEVICE_OFFLINE]


def test_a_batch_with_only_good_readings_carries_no_quality_field() -> None:
    body = msgpack.unpackb(encode_batch(*IDENTITY, READINGS, compress="never"))["b"]
    assert "q" not in body


def test_readings_come_back_in_exactly_the_order_they_were_encoded() -> None:
    readings = float32_batch(2000) + mixed_batch(500)
    random.Random(7).shuffle(readings)
    assert typed(round_trip(readings)) == typed(readings)


def test_a_steady_poll_cycle_costs_one_run_however_many_points_it_has() -> None:
    body = msgpack.unpackb(encode_batch(*IDENTITY, float32_batch(500), compress="never"))["b"]
    assert body["o"] == [0, 500]


def test_extreme_and_backward_timestamps_round_trip() -> None:
    readings = [
        Reading("d", "p", 2**63 - 1, 1),
        Reading("d", "p", 0, 2),
        Reading("d", "q", 1795430000000, 3),
        Reading("d", "p", 1795429999000, 4),
    ]
    assert round_trip(readings) == readings


@pytest.mark.parametrize("compress", ["auto", "never", "always"])
def test_an_empty_batch_and_a_single_reading_round_trip(compress: Compress) -> None:
    assert round_trip([], compress=compress) == []
    assert round_trip(READINGS[:1], compress=compress) == READINGS[:1]


def test_the_encoder_refuses_options_it_cannot_honour() -> None:
    with pytest.raises(ValueError, match="version 3"):
        encode_batch(*IDENTITY, READINGS, version=3)
    with pytest.raises(ValueError, match="version 1 has no compression"):
        encode_batch(*IDENTITY, READINGS, version=1, compress="always")
    with pytest.raises(ValueError, match="compress must be"):
        encode_batch(*IDENTITY, READINGS, compress="sometimes")  # type: ignore[arg-type]


NAMES = st.sampled_from(["pump-7", "gauge", "p", ""]) | st.text(max_size=3)
VALUES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.floats(width=32, allow_nan=False, allow_infinity=False)
    | st.text(max_size=5)
)
STAMPS = st.integers(1795430000000, 1795430005000) | st.integers(0, 2**63 - 1)
READING_LISTS = st.lists(
    st.builds(Reading, NAMES, NAMES, STAMPS, VALUES, st.integers(-(2**31), 2**31)),
    max_size=40,
)


@given(READING_LISTS, st.sampled_from(["auto", "never", "always"]))
def test_any_reading_list_round_trips_through_version_2(
    readings: list[Reading], compress: Compress
) -> None:
    assert typed(round_trip(readings, compress=compress)) == typed(readings)


def test_the_plain_msgpack_decoder_in_the_docs_reads_both_v2_goldens() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "wire-format.md").read_text()
    snippet = doc.split("```python\n", 1)[1].split("```", 1)[0]
    for name in ("batch-v2.msgpack", "batch-v2-compressed.msgpack"):
        payload = (GOLDEN / name).read_bytes()
        scope = {"msgpack": msgpack, "zlib": zlib, "itertools": itertools, "payload": payload}
        exec(snippet, scope)
        assert typed([Reading(*r) for r in scope["readings"]]) == typed(READINGS_V2)


# --- version 1 -----------------------------------------------------------------------------


def test_version_1_is_still_written_on_request_and_round_trips() -> None:
    batch = decode_batch(encode_batch(*IDENTITY, READINGS, version=1))
    assert (batch.version, batch.gateway_id, batch.boot_id, batch.seq) == (1, *IDENTITY)
    assert typed(batch.readings) == typed(READINGS)


def test_the_v1_golden_file_still_decodes_to_the_same_readings() -> None:
    payload = (GOLDEN / "batch-v1.msgpack").read_bytes()
    assert payload == encode_batch(*IDENTITY, READINGS, version=1)
    assert decode_batch(payload).readings == READINGS


# --- malformed payloads ----------------------------------------------------------------


GOOD_BODY = {
    "s": ["d", "p"],
    "pd": [0],
    "pn": [1],
    "o": [0, 1, 0, 1],  # two runs of one reading each, both of point 0
    "t": [5, 1],
    "x": [1.5, None],
    "q": [1, 4],
}


def v2(body: Any = None, **envelope: Any) -> bytes:
    """A v2 payload: GOOD_BODY unless `body` is given, envelope fields overridden."""
    doc = {"v": 2, "gw": "g", "boot": "b", "seq": 1, "b": GOOD_BODY if body is None else body}
    return bytes(msgpack.packb(doc | envelope))


def body(**changes: Any) -> dict[str, Any]:
    """GOOD_BODY with fields changed, or removed where the change is `...`."""
    return {k: v for k, v in (GOOD_BODY | changes).items() if v is not ...}


def zipped(document: Any, tail: bytes = b"") -> bytes:
    return zlib.compress(msgpack.packb(document)) + tail


def test_the_malformed_payload_fixtures_start_from_a_valid_batch() -> None:
    assert decode_batch(v2()).readings == [
        Reading("d", "p", 5, 1.5, 0),
        Reading("d", "p", 6, None, 4),
    ]
    assert decode_batch(v2(zipped(GOOD_BODY), z=1)) == decode_batch(v2())


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xc1garbage", "not a msgpack document"),
        (msgpack.packb([1, 2]), "expected a msgpack map"),
        (
            msgpack.packb({"v": 9}),
            r"unsupported wire format version 9 \(this decoder reads 1 and 2\)",
        ),
        (msgpack.packb({"v": "2"}), "unsupported wire format version '2'"),
        (msgpack.packb({"v": 1, "gw": "g", "boot": "b", "seq": 1}), "no 'r' field"),
        (
            msgpack.packb({"v": 1, "gw": "g", "boot": "b", "seq": "1", "r": []}),
            "'seq' should be int",
        ),
        (msgpack.packb({"v": 1, "gw": "g", "boot": "b", "seq": 1, "r": [[1, 2]]}), "reading 0"),
        (
            msgpack.packb(
                {"v": 1, "gw": "g", "boot": "b", "seq": 1, "r": [["d", "p", 1, None, 0]]}
            ),
            "reading 0: value None",
        ),
        # version 2: the envelope
        (msgpack.packb({"v": 2, "gw": "g", "boot": "b", "seq": 1}), "batch has no 'b' field"),
        (v2(extra=1), "batch has unknown field.* 'extra'"),
        (v2(gw=7), "batch field 'gw' should be str, got 7"),
        (v2(z=7), r"unknown compression 'z': 7 \(0: none, 1: zlib\)"),
        (v2(b"\x00", z=0), "batch field 'b' should be a map, got b'\\\\x00'"),
        (v2(z=1), "batch field 'b' should be bin"),
        (v2(b"not zlib", z=1), "compressed body is not zlib data"),
        (v2(zipped(GOOD_BODY)[:-5], z=1), "compressed body is truncated"),
        (v2(zipped(GOOD_BODY, b"++"), z=1), "2 byte.* follow the compressed body"),
        (v2(zlib.compress(b"\xc1"), z=1), "compressed body is not a msgpack document"),
        (v2(zipped([1, 2]), z=1), "compressed body should be a map, got list"),
        # version 2: the body
        (v2(body(y=1)), "body has unknown field.* 'y'"),
        (v2(body(t=...)), "body has no 't' field"),
        (v2(body(s=["d", 5])), r"body 's': item 1 \(5\) is not str"),
        (v2(body(pd=[7])), "body 'pd': point 0 refers to string 7, but there are 2"),
        (v2(body(pn=[1, 1])), "'pd' and 'pn' should describe the same points, got 1 and 2"),
        (v2(body(o=[0])), "body 'o' should hold pairs, got 1 items"),
        (v2(body(o=[0, 3])), r"run 0 \(3 reading\(s\) from point 0\) should hold at least one"),
        (v2(body(o=[0, 0, 0, 2])), r"run 0 \(0 reading\(s\) from point 0\)"),
        (v2(body(o=[0, 1, 1, 1])), r"run 1 \(1 reading\(s\) from point 1\) .* the 1 dictionary"),
        (v2(body(o=[-1, 2])), r"run 0 \(2 reading\(s\) from point -1\)"),
        (v2(body(t=[5])), "body 'o' has 2 reading.* but 't' has 1 and 'x' has 2"),
        (v2(body(t=[5, 1.0])), r"body 't': item 1 \(1.0\) is not int"),
        (v2(body(t=[True, 1])), r"body 't': item 0 \(True\) is not int"),
        (v2(body(x=[1.5, [1]])), "reading 1 \\(d/p\\): value of type list is not nil"),
        (v2(body(x=[b"\x01", 2])), "reading 0 \\(d/p\\): value of type bytes"),
        (
            v2(body(q=[2, 4])),
            r"body 'q': exception \(2, 4\) should name a reading after -1 and before 2",
        ),
        (v2(body(q=[1, 0])), r"exception \(1, 0\) .* with a quality other than 0"),
        (v2(body(q=[1, 4, 1, 5])), r"exception \(1, 5\) should name a reading after 1"),
        (v2(body(q=[1])), "body 'q' should hold pairs"),
    ],
    ids=lambda case: case[:50] if isinstance(case, str) else "",
)
def test_a_malformed_payload_gets_a_clear_error(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_batch(payload)


def test_a_compressed_body_that_would_expand_beyond_the_limit_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(codec, "_MAX_BODY_BYTES", 1000)
    with pytest.raises(DecodeError, match="compressed body expands beyond 1,000 bytes"):
        decode_batch(v2(zipped(body(s=["d" * 1000, "p"])), z=1))
    assert decode_batch(v2(zipped(body(s=["d" * 900, "p"])), z=1)).readings[0].device == "d" * 900


MSGPACK_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=4)
    | st.binary(max_size=4)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4))
    | st.builds(msgpack.Timestamp, st.integers(-(2**40), 2**40), st.integers(0, 999_999_999)),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=2), inner, max_size=4)
    ),
    max_leaves=12,
)
SMALL_INTS = st.lists(st.integers(-2, 6), max_size=8)
BODIES = st.fixed_dictionaries(
    {},
    optional={
        "s": st.lists(st.text(max_size=2), max_size=4) | MSGPACK_VALUES,
        "pd": SMALL_INTS | MSGPACK_VALUES,
        "pn": SMALL_INTS,
        "o": SMALL_INTS | MSGPACK_VALUES,
        "t": SMALL_INTS | MSGPACK_VALUES,
        "x": st.lists(MSGPACK_VALUES, max_size=6),
        "q": SMALL_INTS | MSGPACK_VALUES,
        "y": MSGPACK_VALUES,
    },
)
ALMOST_BATCHES = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 2]) | MSGPACK_VALUES},
    optional={
        "gw": st.text(max_size=2) | MSGPACK_VALUES,
        "boot": st.text(max_size=2),
        "seq": st.integers(-1, 9) | MSGPACK_VALUES,
        "z": st.sampled_from([0, 1]) | MSGPACK_VALUES,
        "b": BODIES | BODIES.map(zipped) | MSGPACK_VALUES,
        "r": st.lists(st.lists(MSGPACK_VALUES, max_size=6), max_size=3) | MSGPACK_VALUES,
    },
)


def decodes_or_says_why(payload: bytes) -> None:
    """Garbage in gives a DecodeError, never another exception."""
    with contextlib.suppress(DecodeError):
        decode_batch(payload)
    with contextlib.suppress(DecodeError):
        list(iter_batches(payload))


@given(st.binary(max_size=200))
def test_random_bytes_give_a_decode_error_or_a_batch(payload: bytes) -> None:
    decodes_or_says_why(payload)


@given(MSGPACK_VALUES | ALMOST_BATCHES)
def test_random_msgpack_documents_give_a_decode_error_or_a_batch(document: Any) -> None:
    decodes_or_says_why(msgpack.packb(document))


@given(READING_LISTS, st.sampled_from(["never", "always"]), st.data())
def test_damaged_payloads_give_a_decode_error_or_a_batch(
    readings: list[Reading], compress: Compress, data: st.DataObject
) -> None:
    payload = bytearray(encode_batch(*IDENTITY, readings, compress=compress))
    for _ in range(data.draw(st.integers(1, 3))):
        payload[data.draw(st.integers(0, len(payload) - 1))] = data.draw(st.integers(0, 255))
    decodes_or_says_why(bytes(payload[: data.draw(st.integers(0, len(payload)))]))


# --- tools -------------------------------------------------------------------------------


def test_json_lines_carry_the_batch_identity_for_deduplication() -> None:
    lines = list(batch_to_json_lines(decode_batch(encode_batch("g", "b", 7, READINGS_V2[6:8]))))
    assert lines == [
        '{"gateway_id":"g","boot_id":"b","seq":7,"device":"gauge","point":"pressure",'
        '"ts_ms":1795430000013,"value":null,"quality":4}',
        '{"gateway_id":"g","boot_id":"b","seq":7,"device":"pump-7","point":"pressure",'
        '"ts_ms":1795430001000,"value":6.5,"quality":2}',
    ]


def test_payloads_stored_back_to_back_decode_one_after_another() -> None:
    kinds: list[tuple[int, int, Compress]] = [(1, 1, "never"), (2, 2, "never"), (3, 2, "always")]
    stream = b"".join(
        encode_batch("g", "b", seq, READINGS, version=version, compress=compress)
        for seq, version, compress in kinds
    )
    assert [(b.seq, b.version) for b in iter_batches(stream)] == [(1, 1), (2, 2), (3, 2)]
    with pytest.raises(DecodeError, match="not a whole batch"):
        list(iter_batches(stream + encode_batch("g", "b", 4, READINGS)[:-3]))


@pytest.mark.rig  # a process of its own
def test_decode_command_turns_payload_files_and_stdin_into_json_lines(tmp_path: Path) -> None:
    goldens = [str(GOLDEN / name) for name in ("batch-v1.msgpack", "batch-v2-compressed.msgpack")]
    from_file = subprocess.run(
        [sys.executable, "-m", "gateway", "decode", *goldens],
        capture_output=True,
        text=True,
        timeout=60,
    )
    from_stdin = subprocess.run(
        [sys.executable, "-m", "gateway", "decode"],
        input=b"".join(Path(g).read_bytes() for g in goldens),
        capture_output=True,
        timeout=60,
    )
    assert from_file.returncode == 0
    assert len(from_file.stdout.splitlines()) == len(READINGS) + len(READINGS_V2)
    assert from_stdin.stdout.decode() == from_file.stdout
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x01")
    failed = subprocess.run(
        [sys.executable, "-m", "gateway", "decode", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failed.returncode == 1 and "bad.bin: expected a msgpack map" in failed.stderr
