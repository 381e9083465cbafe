"""Checksums used by serial instruments (pure, no I/O).

=================  =========================================  ===========  ============
function           algorithm                                  check value  on the wire
=================  =========================================  ===========  ============
``crc16_modbus``   CRC-16/MODBUS: poly 0x8005 reflected         ``0x4B37``   low byte
                   (0xA001), init 0xFFFF, no final XOR                       first
``crc16_ccitt``    CRC-16/CCITT-FALSE: poly 0x1021, init        ``0x29B1``   high byte
                   0xFFFF, not reflected, no final XOR                       first
``xor8``           XOR of all bytes (NMEA-0183, many simple     ``0x31``     one byte
                   binary protocols)
=================  =========================================  ===========  ============

The check value is the checksum of ``b"123456789"``. CRC-16/MODBUS runs on a
precomputed 256-entry table; CRC-16/CCITT-FALSE is exactly what the standard
library's :func:`binascii.crc_hqx` computes (in C) when started at 0xFFFF.

:data:`TRAILING_CHECKSUMS` describes each algorithm as a checksum carried in the
last bytes of a frame: its size, its byte order on the wire and its name in
messages. Parsers use it to verify frames.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

__all__ = [
    "TRAILING_CHECKSUMS",
    "ChecksumName",
    "TrailingChecksum",
    "crc16_ccitt",
    "crc16_modbus",
    "xor8",
]


def _reflected_table(poly: int) -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_MODBUS_TABLE: Final = _reflected_table(0xA001)


def crc16_modbus(data: bytes) -> int:
    """CRC-16/MODBUS of ``data``; transmitted low byte first."""
    crc = 0xFFFF
    table = _MODBUS_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def crc16_ccitt(data: bytes) -> int:
    """CRC-16/CCITT-FALSE of ``data``; transmitted high byte first."""
    return binascii.crc_hqx(data, 0xFFFF)


def xor8(data: bytes) -> int:
    """XOR of all bytes of ``data`` (0 for no bytes)."""
    # Fold the bytes as one big integer: halve its width with one XOR per step,
    # so the work happens in C rather than one Python operation per byte.
    value = int.from_bytes(data, "little")
    width = len(data)
    while width > 1:
        half = (width + 1) // 2
        bits = 8 * half
        value = (value >> bits) ^ (value & ((1 << bits) - 1))
        width = half
    return value


ChecksumName = Literal["crc16_modbus", "crc16_ccitt", "xor8"]
"""Configuration names of the supported checksums."""


@dataclass(frozen=True, slots=True)
class TrailingChecksum:
    """A checksum carried in the last ``size`` bytes of a frame."""

    label: str
    """Name for messages, e.g. ``CRC-16/Modbus``."""
    size: int
    byteorder: Literal["big", "little"]
    compute: Callable[[bytes], int]

    def describe(self, value: int) -> str:
        """``value`` in hex, as wide as the checksum: ``0x4B37``, ``0x31``."""
        return f"0x{value:0{2 * self.size}X}"


TRAILING_CHECKSUMS: Final[Mapping[ChecksumName, TrailingChecksum]] = MappingProxyType(
    {
        "crc16_modbus": TrailingChecksum("CRC-16/Modbus", 2, "little", crc16_modbus),
        "crc16_ccitt": TrailingChecksum("CRC-16/CCITT-FALSE", 2, "big", crc16_ccitt),
        "xor8": TrailingChecksum("XOR-8", 1, "big", xor8),
    }
)
