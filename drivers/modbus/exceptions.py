"""Modbus exception codes: their names and what they usually mean on site (pure).

A device that answers with an exception is there and talking: it refuses this one
request. The name is the specification's (Modbus Application Protocol 1.1b3, 7);
the meaning is what a technician should check first. The driver logs the name; the
commissioning tools (`probe`, `scan`) print both.
"""

from __future__ import annotations

from typing import Final

EXCEPTION_NAMES: Final = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

EXCEPTION_MEANINGS: Final = {
    1: "the device does not serve this kind of read: wrong table (input vs holding "
    "registers, coils vs discrete inputs)",
    2: "this register is not in the device's map: check the address, and whether the "
    "datasheet counts from 1 (register 30001 is input register 0)",
    3: "the device refuses the request as asked: often too many registers in one read, "
    "or a read that starts or ends inside a multi-register value",
    4: "the device failed while answering: an internal fault (see its display or manual)",
    5: "the device accepted the request and needs more time: read again later",
    6: "the device is busy with a long-running command: read again shortly",
    8: "the device found a parity error in its own memory: it needs service",
    10: "the TCP gateway has no path to this unit id: check its serial port and its "
    "routing of unit ids",
    11: "the serial device behind the TCP gateway did not answer: check its unit id, its "
    "line settings and the wiring",
}

GATEWAY_EXCEPTIONS: Final = frozenset({10, 11})
"""Said by a gateway on the device's behalf: the unit itself did not answer."""


def exception_name(code: int) -> str:
    """'illegal data address' for 2; 'unknown' for a code the specification does not name."""
    return EXCEPTION_NAMES.get(code, "unknown")


def describe_exception(code: int) -> str:
    """'exception 2 (illegal data address): this register is not in the device's map: ...'."""
    meaning = EXCEPTION_MEANINGS.get(code, "a code the Modbus specification does not define")
    return f"exception {code} ({exception_name(code)}): {meaning}"
