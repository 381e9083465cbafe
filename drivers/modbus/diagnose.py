"""Say why bytes that came back for a Modbus TCP request are not its answer (pure).

pymodbus drops frames whose ids do not match, and fails on frames it cannot
decode; either way the request ends without an answer. A technician needs to
know which rule the device broke, so the driver keeps the bytes that arrived and
asks `describe_tcp_answer`. (Modbus TCP has no checksum: these are protocol
violations, counted as `malformed`, never as CRC errors.)
"""

from __future__ import annotations

import struct
from typing import Final

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
