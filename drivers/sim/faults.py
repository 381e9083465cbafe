"""What a simulated device can do wrong, switched on and off while it runs (pure).

A `WireFault` is one misbehaviour. Set on a simulated Modbus unit (`SimulatedDevice.fault`,
or per point with `SimulatedDevice.fault_points`) or on a line instrument
(`LineInstrument.fault`), it changes what goes on the wire:

===========  ==========================================================================
fault        on the wire
===========  ==========================================================================
silent       no answer (a Modbus request times out; a line instrument says nothing)
exception N  a Modbus exception answer with code N (1-255) instead of the data
delay N      the answer (a streaming instrument's frame) N milliseconds late
crc          the answer's checksum is wrong (Modbus RTU CRC, an NMEA or binary frame's)
txid         a Modbus TCP answer carries another transaction id than its request
garbage      random bytes, as many as the answer would have had, instead of it
drop         the TCP connection is closed instead of answering
flood        bytes without pause, as fast as the line takes them: junk on a Modbus
             connection or bus, frames back to back from a line instrument
===========  ==========================================================================

`broken_answer` breaks a Modbus answer frame (MBAP or RTU) the way a fault says.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from typing import Final, Literal, get_args

from drivers.serial_line.checksums import crc16_modbus

__all__ = ["FAULT_KINDS", "FaultKind", "WireFault", "broken_answer"]

FaultKind = Literal["silent", "exception", "delay", "crc", "txid", "garbage", "drop", "flood"]
FAULT_KINDS: Final[tuple[FaultKind, ...]] = get_args(FaultKind)
ANSWER_FAULTS: Final = frozenset({"exception", "crc", "txid", "garbage", "drop"})
"""The faults that change (or replace) one answer frame."""

_MBAP: Final = struct.Struct(">HHHB")  # transaction, protocol, length, unit


@dataclass(frozen=True, slots=True)
class WireFault:
    kind: FaultKind
    code: int = 0
    """exception: the Modbus exception code (1-255)."""
    millis: int = 0
    """delay: milliseconds."""

    def __str__(self) -> str:
        if self.kind == "exception":
            return f"exception {self.code}"
        if self.kind == "delay":
            return f"delay {self.millis}"
        return self.kind


def broken_answer(frame: bytes, fault: WireFault, *, rtu: bool, rng: random.Random) -> bytes:
    """`frame` (a Modbus answer, MBAP or RTU) as `fault` breaks it: b"" for no answer."""
    if fault.kind == "exception":
        return exception_answer(frame, fault.code, rtu=rtu)
    if fault.kind == "garbage":
        return rng.randbytes(len(frame))
    if fault.kind == "crc" and rtu and len(frame) > 2:
        return frame[:-2] + bytes(b ^ 0xFF for b in frame[-2:])
    if fault.kind == "txid" and not rtu and len(frame) >= 2:
        return other_transaction(frame)
    if fault.kind in ("drop", "silent"):
        return b""
    return frame


def exception_answer(frame: bytes, code: int, *, rtu: bool) -> bytes:
    """The exception answer `code` to the request `frame` answers (its function, unit and
    transaction)."""
    if rtu:
        body = bytes((frame[0], frame[1] | 0x80, code & 0xFF))
        return body + crc16_modbus(body).to_bytes(2, "little")
    tid, _protocol, _length, unit = _MBAP.unpack_from(frame)
    return _MBAP.pack(tid, 0, 3, unit) + bytes((frame[7] | 0x80, code & 0xFF))


def other_transaction(frame: bytes) -> bytes:
    """An MBAP frame with another transaction id than the one it carries."""
    tid = int.from_bytes(frame[:2], "big")
    return ((tid + 7) & 0xFFFF).to_bytes(2, "big") + frame[2:]
