"""Wire format v1: what the centre decodes is what the gateway read."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from gateway.model import Reading
from gateway.wire import DecodeError, batch_to_json_lines, decode_batch, encode_batch, iter_batches

GOLDEN = Path(__file__).parent / "golden"

READINGS = [
    Reading("pump-7", "pressure", 1795430000000, 6.25),
    Reading("pump-7", "running", 1795430000000, True),
    Reading("pump-7", "count", 1795430000001, 4294967295),
    Reading("gauge", "tag", 1795430000002, "FG-204"),
    Reading("gauge", "temp", 1795430000003, -12),
]


def test_a_batch_round_trips_with_its_identity_and_every_value_type() -> None:
    batch = decode_batch(encode_batch("cab-0412", "00112233445566aa", 42, READINGS))
    assert (batch.version, batch.gateway_id, batch.boot_id, batch.seq) == (
        1,
        "cab-0412",
        "00112233445566aa",
        42,
    )
    assert batch.readings == READINGS
    assert type(batch.readings[1].value) is bool


def test_the_v1_golden_file_still_decodes_to_the_same_readings() -> None:
    payload = (GOLDEN / "batch-v1.msgpack").read_bytes()
    assert payload == encode_batch("cab-0412", "00112233445566aa", 42, READINGS)
    assert decode_batch(payload).readings == READINGS


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xc1garbage", "not a msgpack document"),
        (msgpack.packb([1, 2]), "expected a msgpack map"),
        (msgpack.packb({"v": 9}), "unsupported wire format version 9"),
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
    ],
)
def test_a_malformed_payload_gets_a_clear_error(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_batch(payload)


def test_json_lines_carry_the_batch_identity_for_deduplication() -> None:
    lines = list(batch_to_json_lines(decode_batch(encode_batch("g", "b", 7, READINGS[:1]))))
    assert lines == [
        '{"gateway_id":"g","boot_id":"b","seq":7,"device":"pump-7","point":"pressure",'
        '"ts_ms":1795430000000,"value":6.25,"quality":0}'
    ]


def test_payloads_stored_back_to_back_decode_one_after_another() -> None:
    stream = b"".join(encode_batch("g", "b", seq, READINGS) for seq in (1, 2, 3))
    assert [b.seq for b in iter_batches(stream)] == [1, 2, 3]
    with pytest.raises(DecodeError, match="trailing"):
        list(iter_batches(stream + encode_batch("g", "b", 4, READINGS)[:-3]))


def test_decode_command_turns_payload_files_and_stdin_into_json_lines(tmp_path: Path) -> None:
    golden = str(GOLDEN / "batch-v1.msgpack")
    from_file = subprocess.run(
        [sys.executable, "-m", "gateway", "decode", golden],
        capture_output=True,
        text=True,
        timeout=60,
    )
    from_stdin = subprocess.run(
        [sys.executable, "-m", "gateway", "decode"],
        input=(GOLDEN / "batch-v1.msgpack").read_bytes(),
        capture_output=True,
        timeout=60,
    )
    assert from_file.returncode == 0 and len(from_file.stdout.splitlines()) == 5
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
