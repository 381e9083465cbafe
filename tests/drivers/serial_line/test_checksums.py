"""Checksums: standard check values, real frames, and the fast versions against bitwise ones."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.serial_line.checksums import (
    TRAILING_CHECKSUMS,
    crc16_ccitt,
    crc16_modbus,
    xor8,
)

CHECK = b"123456789"


@pytest.mark.parametrize(
    ("checksum", "data", "expected"),
    [
        pytest.param(crc16_modbus, CHECK, 0x4B37, id="crc16_modbus check value"),
        pytest.param(crc16_ccitt, CHECK, 0x29B1, id="crc16_ccitt check value"),
        pytest.param(xor8, CHECK, 0x31, id="xor8 check value"),
        pytest.param(crc16_modbus, b"", 0xFFFF, id="crc16_modbus of nothing is its init"),
        pytest.param(crc16_ccitt, b"", 0xFFFF, id="crc16_ccitt of nothing is its init"),
        pytest.param(xor8, b"", 0x00, id="xor8 of nothing"),
        pytest.param(xor8, b"\x5a", 0x5A, id="xor8 of one byte"),
        pytest.param(xor8, b"\xff\x0f\xf0", 0x00, id="xor8 of bytes that cancel"),
    ],
)
def test_checksum_of_known_data(
    checksum: Callable[[bytes], int], data: bytes, expected: int
) -> None:
    assert checksum(data) == expected


def test_modbus_rtu_read_request_carries_crc_c5_cd() -> None:
    request = bytes.fromhex("01 03 00 00 00 0A")
    assert crc16_modbus(request).to_bytes(2, "little") == bytes.fromhex("C5 CD")


def test_modbus_rtu_frame_with_its_crc_appended_checks_to_zero() -> None:
    request = bytes.fromhex("01 03 00 00 00 0A C5 CD")
    assert crc16_modbus(request) == 0


def test_nmea_gga_sentence_checksum_is_47() -> None:
    sentence = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"
    body = sentence[1 : sentence.index(b"*")]
    assert f"{xor8(body):02X}" == "47"


def test_trailing_checksums_describe_size_and_byte_order_on_the_wire() -> None:
    modbus, ccitt, xor = (TRAILING_CHECKSUMS[n] for n in ("crc16_modbus", "crc16_ccitt", "xor8"))
    assert (modbus.size, modbus.byteorder, modbus.describe(0x4B37)) == (2, "little", "0x4B37")
    assert (ccitt.size, ccitt.byteorder, ccitt.describe(0x29B1)) == (2, "big", "0x29B1")
    assert (xor.size, xor.describe(0x31)) == (1, "0x31")


def _bitwise_crc16_modbus(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def _bitwise_crc16_ccitt(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc


def _bytewise_xor8(data: bytes) -> int:
    value = 0
    for byte in data:
        value ^= byte
    return value


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_fast_checksums_agree_with_the_bitwise_definitions(data: bytes) -> None:
    assert crc16_modbus(data) == _bitwise_crc16_modbus(data)
    assert crc16_ccitt(data) == _bitwise_crc16_ccitt(data)
    assert xor8(data) == _bytewise_xor8(data)
