"""Encode and decode data batches: pure functions, no I/O.

Version 1 (the only one so far) is a msgpack map::

    {"v": 1, "gw": str, "boot": str, "seq": int,
     "r": [[device: str, point: str, ts_ms: int, value, quality: int], ...]}

`docs/wire-format.md` is the specification; keep the two in step.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from gateway.model import Reading

WIRE_VERSION = 1

_READING_FIELDS = len(Reading._fields)


class DecodeError(ValueError):
    """A payload that is not a valid batch; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Batch:
    """A decoded batch. `(gateway_id, boot_id, seq)` identifies it uniquely."""

    version: int
    gateway_id: str
    boot_id: str
    seq: int
    readings: list[Reading]


def encode_batch(gateway_id: str, boot_id: str, seq: int, readings: Sequence[Reading]) -> bytes:
    """Encode one batch in wire format v1."""
    body = {"v": WIRE_VERSION, "gw": gateway_id, "boot": boot_id, "seq": seq, "r": readings}
    payload: bytes = msgpack.packb(body, use_bin_type=True)
    return payload


def decode_batch(payload: bytes) -> Batch:
    """Decode a batch of any supported version, or raise DecodeError saying why."""
    try:
        doc = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as err:
        raise DecodeError(f"not a msgpack document: {err}") from err
    return _from_doc(doc)


def iter_batches(stream: bytes) -> Iterator[Batch]:
    """Decode payloads stored back to back (e.g. `mosquitto_sub -N > capture.bin`)."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True)
    unpacker.feed(stream)
    while True:
        try:
            doc = next(unpacker)
        except StopIteration:
            break
        except (msgpack.FormatError, msgpack.StackError, ValueError) as err:
            raise DecodeError(f"not a msgpack document: {err}") from err
        yield _from_doc(doc)
    if unpacker.tell() != len(stream):
        raise DecodeError(f"{len(stream) - unpacker.tell()} trailing byte(s) are not a whole batch")


def _from_doc(doc: Any) -> Batch:
    if not isinstance(doc, dict):
        raise DecodeError(f"expected a msgpack map, got {type(doc).__name__}")
    version = doc.get("v")
    if version != WIRE_VERSION:
        raise DecodeError(f"unsupported wire format version {version!r} (this decoder reads 1)")
    gateway_id = _field(doc, "gw", str)
    boot_id = _field(doc, "boot", str)
    seq = _field(doc, "seq", int)
    rows = _field(doc, "r", list)
    readings = [_reading(i, row) for i, row in enumerate(rows)]
    return Batch(version, gateway_id, boot_id, seq, readings)


def batch_to_json_lines(batch: Batch) -> Iterator[str]:
    """One JSON object per reading, carrying the batch identity: for people and tools."""
    for r in batch.readings:
        yield json.dumps(
            {
                "gateway_id": batch.gateway_id,
                "boot_id": batch.boot_id,
                "seq": batch.seq,
                "device": r.device,
                "point": r.point,
                "ts_ms": r.ts_ms,
                "value": r.value,
                "quality": r.quality,
            },
            separators=(",", ":"),
        )


def _field(doc: dict[str, Any], key: str, kind: type) -> Any:
    if key not in doc:
        raise DecodeError(f"batch has no {key!r} field")
    value = doc[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DecodeError(f"batch field {key!r} should be {kind.__name__}, got {value!r}")
    return value


def _reading(index: int, row: Any) -> Reading:
    if not isinstance(row, list) or len(row) != _READING_FIELDS:
        raise DecodeError(f"reading {index} should be a list of {_READING_FIELDS} fields")
    device, point, ts_ms, value, quality = row
    if not (isinstance(device, str) and isinstance(point, str)):
        raise DecodeError(f"reading {index}: device and point must be strings")
    if not isinstance(ts_ms, int) or not isinstance(quality, int):
        raise DecodeError(f"reading {index}: ts_ms and quality must be integers")
    if not isinstance(value, bool | int | float | str):
        raise DecodeError(f"reading {index}: value {value!r} is not a number, bool or string")
    return Reading(device, point, ts_ms, value, quality)
