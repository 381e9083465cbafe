"""Encode and decode data batches: pure functions, no I/O.

`docs/wire-format.md` is the specification; keep the two in step. In short:

Version 2 (what `encode_batch` writes) is a msgpack map, its envelope readable by
any msgpack decoder::

    {"v": 2, "gw": str, "boot": str, "seq": int, ["c": str,] ["tu": 1,] ["z": 1,] "b": body}

`"c"` names the config version the readings were taken under (the first 12 hex digits
of its SHA-256): its metadata is retained on `{prefix}/{id}/meta/{c}` (docs/topics.md).

`"tu": 1` (time unsynchronised) marks a batch whose readings were taken while the
gateway's clock was not known to be right (before NTP, or before a clock step).

where `body` is a map (or, when `"z": 1`, a bin holding the zlib-compressed msgpack of
that map)::

    {"s":  [str, ...],       # string table: every device and point name once
     "pd": [int, ...],       # point dictionary, per point: index in "s" of its device
     "pn": [int, ...],       #   ... and of its point name
     "o":  [first, count, ...],  # runs: `count` readings of points first, first+1, ...
     "t":  [int, ...],       # per reading: ts_ms minus the previous reading's (first: ts_ms)
     "x":  [value, ...],     # per reading: nil, bool, int, float32/float64 or str
     ["q": [index, code, ...]]}  # readings whose quality is not 0 (omitted if none)

Readings decode in exactly the order they were encoded.

Version 1 (still decoded; `encode_batch(..., version=1)` writes it) is a msgpack map::

    {"v": 1, "gw": str, "boot": str, "seq": int,
     "r": [[device: str, point: str, ts_ms: int, value, quality: int], ...]}
"""

from __future__ import annotations

import json
import zlib
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate, chain, count
from operator import sub
from typing import Any, Literal

import msgpack

from drivers.core.model import Reading, all_usable, invalid_reading, value_problem

WIRE_VERSION = 2
"""The version `encode_batch` writes by default; the decoder reads `_READABLE_VERSIONS`."""

_READABLE_VERSIONS = (1, 2)

Compress = Literal["auto", "never", "always"]

# Level 1 compresses gateway batches within 0.2-4.5 % of levels 6 and 9 in 55-70 % of
# level 6's time (bench/wire_bench.py): float32 noise, not search effort, sets the size.
_ZLIB_LEVEL = 1
# "auto" sends the compressed payload only when it is at most this share of the plain one.
_AUTO_MAX_RATIO = 0.9
# A compressed body expanding beyond this is refused (a zip bomb, or not a batch).
_MAX_BODY_BYTES = 64 << 20

_ZLIB = 1  # value of the envelope's "z" field for a zlib-compressed body

_ENVELOPE_KEYS = frozenset({"v", "gw", "boot", "seq", "c", "tu", "z", "b"})
_BODY_KEYS = frozenset({"s", "pd", "pn", "o", "t", "x", "q"})
_VALUE_TYPES = frozenset({bool, int, float, str, type(None)})

_READING_FIELDS = len(Reading._fields)
_MSGPACK_NAMES: dict[type, str] = {dict: "a map", list: "an array", bytes: "bin"}


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
    clock_synced: bool = True  # False: taken before the gateway's clock was known right
    config_hash: str | None = None  # the config version (its metadata: topics.md)


def encode_batch(
    gateway_id: str,
    boot_id: str,
    seq: int,
    readings: Sequence[Reading],
    *,
    version: int = WIRE_VERSION,
    compress: Compress = "auto",
    clock_synced: bool = True,
    config_hash: str | None = None,
) -> bytes:
    """Encode one batch; the decoder gives back `readings`, in the same order.

    Version 2 (the default) compresses the body with zlib when `compress` is
    "always", or when it is "auto" and that makes the payload at least 10 % smaller.
    Timestamps must lie in [0, 2**63) (msgpack cannot hold larger differences).
    A value that cannot go on the wire (`drivers.core.model.value_problem`: NaN, an
    integer beyond 64 bits, text that is not Unicode, ...) goes as no value with
    quality invalid_value: encoding never fails because of a value.
    Version 1 is never compressed (`compress` must not be "always") and cannot carry
    nil values.
    """
    if version == 2:
        return _encode_v2(gateway_id, boot_id, seq, readings, compress, clock_synced, config_hash)
    if version == 1:
        if compress == "always":
            raise ValueError("wire format version 1 has no compression")
        doc = {"v": 1, "gw": gateway_id, "boot": boot_id, "seq": seq, "r": readings}
        payload: bytes = msgpack.packb(doc, use_bin_type=True)
        return payload
    raise ValueError(f"cannot encode wire format version {version!r} (only 1 and 2)")


def decode_batch(payload: bytes) -> Batch:
    """Decode a batch of any supported version, or raise DecodeError saying why."""
    return _from_doc(_unpack(payload))


def iter_batches(stream: bytes) -> Iterator[Batch]:
    """Decode payloads stored back to back (e.g. `mosquitto_sub -N > capture.bin`)."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True)
    unpacker.feed(stream)
    end = 0  # where the last whole document ended (tell() moves into a partial one)
    while True:
        try:
            doc = next(unpacker)
        except StopIteration:
            break
        except (msgpack.FormatError, msgpack.StackError, ValueError) as err:
            raise DecodeError(f"at byte {end}: not a msgpack document: {err}") from err
        end = unpacker.tell()
        yield _from_doc(doc)
    if end != len(stream):
        raise DecodeError(
            f"the last {len(stream) - end} byte(s), from byte {end}, are not a whole batch "
            "(a truncated payload?)"
        )


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
                **(_UNSYNCED if not batch.clock_synced else {}),
            },
            separators=(",", ":"),
        )


_UNSYNCED = {"time_unsynchronised": True}


# --- version 2: encoding ---------------------------------------------------------------


def _encode_v2(
    gateway_id: str,
    boot_id: str,
    seq: int,
    readings: Sequence[Reading],
    compress: Compress,
    clock_synced: bool,
    config_hash: str | None,
) -> bytes:
    if compress not in ("auto", "never", "always"):
        raise ValueError(f"compress must be 'auto', 'never' or 'always', not {compress!r}")
    packer = msgpack.Packer()
    fields: tuple[object, ...] = ("v", 2, "gw", gateway_id, "boot", boot_id, "seq", seq)
    if config_hash is not None:
        fields += ("c", config_hash)
    if not clock_synced:
        fields += ("tu", 1)
    head = b"".join(map(packer.pack, fields))
    keys = len(fields) // 2 + 1  # and "b"
    if not all_usable([r.value for r in readings]):
        readings = _representable(readings)
    body = _pack_body(readings, packer)
    plain = b"".join((packer.pack_map_header(keys), head, packer.pack("b"), body))
    if compress == "never":
        return plain
    deflated = zlib.compress(body, _ZLIB_LEVEL)
    envelope = (packer.pack_map_header(keys + 1), head, packer.pack("z"), packer.pack(_ZLIB))
    squeezed = b"".join((*envelope, packer.pack("b"), packer.pack(deflated)))
    if compress == "always" or len(squeezed) <= _AUTO_MAX_RATIO * len(plain):
        return squeezed
    return plain


def _representable(readings: Sequence[Reading]) -> list[Reading]:
    """The readings with every value msgpack cannot hold (or should not: NaN, inf) replaced
    by no value with quality invalid_value. The pipeline does this on the way in; the
    encoder does it again so that no reading can make a batch unencodable."""
    return [r if value_problem(r.value) is None else invalid_reading(r) for r in readings]


def _pack_body(readings: Sequence[Reading], packer: msgpack.Packer) -> bytes:
    if readings:
        devices, points, stamps, values, qualities = zip(*readings, strict=True)
    else:
        devices = points = stamps = values = qualities = ()
    # Point dictionary, in order of first appearance; each reading's point index.
    index: dict[tuple[str, str], int] = {}
    add_point = index.setdefault
    pids = [add_point(key, len(index)) for key in zip(devices, points, strict=True)]
    point_devices, point_names = zip(*index, strict=True) if index else ((), ())
    strings = dict(zip(dict.fromkeys(chain(point_devices, point_names)), count()))
    # Runs of readings whose points follow each other in the dictionary: a batch of
    # whole poll cycles in a steady order costs a few runs per cycle.
    breaks = [i for i, step in enumerate(map(sub, pids[1:], pids), 1) if step != 1]
    runs: list[int] = []
    for start, end in zip([0, *breaks], [*breaks, len(pids)], strict=True):
        if end > start:  # not the empty batch
            runs += (pids[start], end - start)
    deltas = [*stamps[:1], *map(sub, stamps[1:], stamps)]
    flagged = any(qualities)
    parts = [
        packer.pack_map_header(7 if flagged else 6),
        packer.pack("s"),
        packer.pack(list(strings)),
        packer.pack("pd"),
        packer.pack(list(map(strings.__getitem__, point_devices))),
        packer.pack("pn"),
        packer.pack(list(map(strings.__getitem__, point_names))),
        packer.pack("o"),
        packer.pack(runs),
        packer.pack("t"),
        packer.pack(deltas),
        packer.pack("x"),
        _pack_values(values, packer),
    ]
    if flagged:
        exceptions = [item for i, q in enumerate(qualities) if q for item in (i, q)]
        parts += (packer.pack("q"), packer.pack(exceptions))
    return b"".join(parts)


def _pack_values(values: Sequence[Any], packer: msgpack.Packer) -> bytes:
    """Values as a msgpack array; a float that float32 holds exactly goes as float32."""
    packed: bytes
    floats = [v for v in values if type(v) is float]
    if not floats:
        packed = packer.pack(values)
        return packed
    narrowed = array("f", floats).tolist()  # out-of-range floats become inf: not equal
    single = msgpack.Packer(use_single_float=True)
    if len(floats) == len(values) and narrowed == floats:
        packed = single.pack(values)
        return packed
    exact = iter([a == b for a, b in zip(narrowed, floats, strict=True)])
    items = [single.pack(v) if type(v) is float and next(exact) else packer.pack(v) for v in values]
    packed = packer.pack_array_header(len(values))
    return packed + b"".join(items)


# --- decoding --------------------------------------------------------------------------


def _unpack(data: bytes, what: str = "") -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as err:
        raise DecodeError(f"{what}not a msgpack document: {err}") from err


def _from_doc(doc: Any) -> Batch:
    if not isinstance(doc, dict):
        raise DecodeError(f"expected a msgpack map, got {type(doc).__name__}")
    version = doc.get("v")
    if version == 2 and type(version) is int:
        return _from_v2(doc)
    if version == 1 and type(version) is int:
        return _from_v1(doc)
    readable = " and ".join(map(str, _READABLE_VERSIONS))
    raise DecodeError(
        f"unsupported wire format version {version!r:.40} (this decoder reads {readable})"
    )


def _field(doc: dict[str, Any], key: str, kind: type, where: str = "batch") -> Any:
    if key not in doc:
        raise DecodeError(f"{where} has no {key!r} field")
    value = doc[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        shown = repr(value) if len(repr(value)) <= 60 else f"a {type(value).__name__}"
        expected = _MSGPACK_NAMES.get(kind, kind.__name__)
        raise DecodeError(f"{where} field {key!r} should be {expected}, got {shown}")
    return value


# --- version 1: decoding ---------------------------------------------------------------


def _from_v1(doc: dict[str, Any]) -> Batch:
    gateway_id = _field(doc, "gw", str)
    boot_id = _field(doc, "boot", str)
    seq = _field(doc, "seq", int)
    rows = _field(doc, "r", list)
    readings = [_v1_reading(i, row) for i, row in enumerate(rows)]
    return Batch(1, gateway_id, boot_id, seq, readings)


def _v1_reading(index: int, row: Any) -> Reading:
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


# --- version 2: decoding ---------------------------------------------------------------


def _from_v2(doc: dict[str, Any]) -> Batch:
    _reject_unknown(doc, _ENVELOPE_KEYS, "batch")
    gateway_id = _field(doc, "gw", str)
    boot_id = _field(doc, "boot", str)
    seq = _field(doc, "seq", int)
    config_hash = doc.get("c")
    if config_hash is not None and type(config_hash) is not str:
        raise DecodeError(f"batch field 'c' should be a config hash (str), got {config_hash!r:.40}")
    unsynced = doc.get("tu", 0)
    if unsynced not in (0, 1) or type(unsynced) is not int:
        raise DecodeError(
            f"batch field 'tu' should be 1 (time unsynchronised), got {unsynced!r:.40}"
        )
    compression = doc.get("z", 0)
    if compression == _ZLIB and type(compression) is int:
        body = _unpack(_inflate(_field(doc, "b", bytes)), "compressed body is ")
        if not isinstance(body, dict):
            raise DecodeError(f"compressed body should be a map, got {type(body).__name__}")
    elif compression == 0 and type(compression) is int:
        body = _field(doc, "b", dict)
    else:
        raise DecodeError(f"unknown compression 'z': {compression!r} (0: none, 1: zlib)")
    return Batch(
        2,
        gateway_id,
        boot_id,
        seq,
        _v2_readings(body),
        clock_synced=not unsynced,
        config_hash=config_hash,
    )


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        body = inflater.decompress(data, _MAX_BODY_BYTES)
    except zlib.error as err:
        raise DecodeError(f"compressed body is not zlib data: {err}") from err
    if inflater.unconsumed_tail or (len(body) >= _MAX_BODY_BYTES and not inflater.eof):
        raise DecodeError(f"compressed body expands beyond {_MAX_BODY_BYTES:,} bytes")
    if not inflater.eof:
        raise DecodeError("compressed body is truncated")
    if inflater.unused_data:
        raise DecodeError(f"{len(inflater.unused_data)} byte(s) follow the compressed body")
    return body


def _v2_readings(body: dict[str, Any]) -> list[Reading]:
    _reject_unknown(body, _BODY_KEYS, "body")
    strings: list[str] = _typed_list(body, "s", str)
    point_devices = _indices(body, "pd", len(strings), "string")
    point_names = _indices(body, "pn", len(strings), "string")
    if len(point_devices) != len(point_names):
        raise DecodeError(
            f"body 'pd' and 'pn' should describe the same points, "
            f"got {len(point_devices)} and {len(point_names)} entries"
        )
    devices = [strings[i] for i in point_devices]
    points = [strings[i] for i in point_names]
    runs = _pairs(body, "o")
    total = 0
    for i, (first, length) in enumerate(runs):
        if first < 0 or length < 1 or first + length > len(devices):
            raise DecodeError(
                f"body 'o': run {i} ({length} reading(s) from point {first}) should hold "
                f"at least one reading and stay within the {len(devices)} dictionary points"
            )
        total += length
    deltas: list[int] = _typed_list(body, "t", int)
    values: list[Any] = _field(body, "x", list, "body")
    if len(deltas) != total or len(values) != total:
        raise DecodeError(
            f"body 'o' has {total} reading(s) but 't' has {len(deltas)} "
            f"and 'x' has {len(values)}: they should match"
        )
    pids = list(chain.from_iterable(range(first, first + n) for first, n in runs))
    if not set(map(type, values)) <= _VALUE_TYPES:
        i = next(i for i, v in enumerate(values) if type(v) not in _VALUE_TYPES)
        raise DecodeError(
            f"reading {i} ({devices[pids[i]]}/{points[pids[i]]}): value of type "
            f"{type(values[i]).__name__} is not nil, a bool, a number or a string"
        )
    qualities = [0] * total
    if "q" in body:
        previous = -1
        for index, code in _pairs(body, "q"):
            if not previous < index < total or code == 0:
                raise DecodeError(
                    f"body 'q': exception ({index}, {code}) should name a reading after "
                    f"{previous} and before {total}, with a quality other than 0"
                )
            qualities[index] = code
            previous = index
    columns = (
        map(devices.__getitem__, pids),
        map(points.__getitem__, pids),
        accumulate(deltas),
        values,
        qualities,
    )
    return list(map(Reading._make, zip(*columns, strict=True)))


def _reject_unknown(doc: dict[str, Any], known: frozenset[str], where: str) -> None:
    unknown = doc.keys() - known
    if unknown:
        names = ", ".join(sorted(map(repr, unknown)))
        raise DecodeError(f"{where} has unknown field(s) {names} (version 2 knows {sorted(known)})")


def _typed_list(body: dict[str, Any], key: str, kind: type) -> Any:
    """`body[key]`, a list whose items are all exactly of type `kind` (bool is no int)."""
    items: list[Any] = _field(body, key, list, "body")
    if not set(map(type, items)) <= {kind}:
        i = next(i for i, item in enumerate(items) if type(item) is not kind)
        raise DecodeError(f"body {key!r}: item {i} ({items[i]!r:.40}) is not {kind.__name__}")
    return items


def _indices(body: dict[str, Any], key: str, bound: int, what: str) -> list[int]:
    """`body[key]`, a list of indices into a list of `bound` items."""
    items: list[int] = _typed_list(body, key, int)
    if items and not 0 <= min(items) <= max(items) < bound:
        i = next(i for i, v in enumerate(items) if not 0 <= v < bound)
        raise DecodeError(
            f"body {key!r}: point {i} refers to {what} {items[i]}, but there are {bound}"
        )
    return items


def _pairs(body: dict[str, Any], key: str) -> list[tuple[int, int]]:
    """`body[key]`, a flat list of integer pairs."""
    items: list[int] = _typed_list(body, key, int)
    if len(items) % 2:
        raise DecodeError(f"body {key!r} should hold pairs, got {len(items)} items")
    return list(zip(items[::2], items[1::2], strict=True))
