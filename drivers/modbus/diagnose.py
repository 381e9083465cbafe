"""Say why bytes that came back for a Modbus request are not its answer (pure).

pymodbus drops frames whose ids do not match, and fails on frames it cannot
decode; either way the request ends without an answer. A technician needs to
know which rule the device broke, so the driver keeps the bytes that arrived and
asks `describe_tcp_answer`. (Modbus TCP has no checksum: these are protocol
violations, counted as `malformed`, never as CRC errors.) On a serial line the
bytes may also be damaged: `describe_rtu_answer` says whether a frame with a good
CRC is in them, and whose it is (`edge-gateway probe` prints it).
"""

from __future__ import annotations

import struct
from typing import Final

from pymodbus.framer.rtu import FramerRTU  # its CRC is the one the driver's frames are checked by

_MBAP: Final = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit id
_READ_FUNCTIONS: Final = frozenset({1, 2, 3, 4})


def describe_tcp_answer(data: bytes, *, transaction_id: int, unit: int, function: int) -> str:
    """A short phrase saying what is wrong with `data` as the answer to a request.

    `transaction_id`, `unit` and `function` are the request's. Only the first
    frame is judged (a device that sends two frames broke the rules with the first).
    """
    size = len(data)
    if size < _MBAP.size + 1:
        return f"{size} byte(s), shorter than a Modbus TCP frame (8 bytes at least)"
    tid, protocol, length, uid = _MBAP.unpack_from(data)
    if protocol != 0:
        return f"protocol id {protocol} instead of 0 (is this port speaking Modbus TCP?)"
    frame = length + 6
    if frame != size:
        return f"its header announces {frame} bytes but {size} arrived (a wrong length field)"
    if tid != transaction_id:
        return f"transaction id {tid} instead of {transaction_id}"
    if unit and uid != unit:
        return f"unit id {uid} instead of {unit}"
    code = data[_MBAP.size]
    if code & 0x7F != function:
        return f"function code {code} in answer to function {function}"
    if code in _READ_FUNCTIONS:
        if size < _MBAP.size + 2:
            return "no byte count"
        count = data[_MBAP.size + 1]
        carried = size - _MBAP.size - 2
        if count != carried:
            return f"byte count {count} but {carried} data byte(s)"
    return f"a {size}-byte frame that does not decode as the answer"


def describe_rtu_answer(data: bytes, *, unit: int, function: int) -> str:
    """A short phrase saying what is wrong with `data` as the RTU answer to a request.

    `unit` and `function` are the request's. A frame is looked for anywhere in `data`
    (noise before an answer is common on a bus): a read answer is unit, function, byte
    count, data, CRC; an exception answer unit, function | 0x80, code, CRC.
    """
    size = len(data)
    if size < _RTU_SHORTEST:
        return f"{size} byte(s), shorter than any Modbus RTU answer ({_RTU_SHORTEST} at least)"
    found = find_rtu_frame(data)
    if found is None:
        return (
            f"{size} byte(s) without a frame whose CRC checks: damaged on the line (a wrong "
            "baud rate or parity, noise, a missing bus terminator) or two slaves answering"
        )
    start, frame = found
    stray = f" after {start} stray byte(s)" if start else ""
    if frame[0] != unit:
        return (
            f"a valid answer from unit {frame[0]} instead of {unit}{stray} (another slave "
            "answered: two devices with one unit id, or one that answers every id)"
        )
    if frame[1] & 0x7F != function:
        return f"function code {frame[1]} in answer to function {function}{stray}"
    return f"a valid answer{stray}, with {size - start - len(frame)} byte(s) after it"


_RTU_SHORTEST: Final = 5  # unit, function, exception code (or byte count 0), CRC


def find_rtu_frame(data: bytes) -> tuple[int, bytes] | None:
    """The first (offset, frame) in `data` that is a whole RTU answer with a good CRC."""
    for start in range(len(data) - _RTU_SHORTEST + 1):
        function = data[start + 1]
        lengths = [_RTU_SHORTEST]
        if function in _READ_FUNCTIONS:
            lengths.append(_RTU_SHORTEST + data[start + 2])
        for length in lengths:
            frame = data[start : start + length]
            if len(frame) == length and _crc_ok(frame):
                return start, frame
    return None


def _crc_ok(frame: bytes) -> bool:
    return bool(FramerRTU.compute_CRC(frame[:-2]) == int.from_bytes(frame[-2:], "big"))
