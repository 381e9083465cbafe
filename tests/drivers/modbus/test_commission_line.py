"""Wrong line settings, simulated truthfully: what a UART makes of bytes sent at other
settings, the RFC 2217 line that garbles by it, and what a garbled RTU answer was."""

from __future__ import annotations

import asyncio

import pytest
import serial
from pymodbus.framer.rtu import FramerRTU

from drivers.modbus.diagnose import describe_rtu_answer, find_rtu_frame
from drivers.serial_port import LineSettings
from drivers.sim.rfc2217_line import Rfc2217Line, uart_receive


def _rtu(body: bytes) -> bytes:
    return body + FramerRTU.compute_CRC(body).to_bytes(2, "big")


def test_a_garbled_rtu_answer_is_explained_and_a_frame_inside_it_is_found() -> None:
    answer = _rtu(bytes([7, 3, 2, 0, 70]))
    assert find_rtu_frame(b"\x00\xff" + answer) == (2, answer)
    assert "from unit 7 instead of 8" in describe_rtu_answer(answer, unit=8, function=3)
    assert "after 2 stray byte(s)" in describe_rtu_answer(b"\0\xff" + answer, unit=7, function=3)
    damaged = describe_rtu_answer(answer[:-1] + b"\0", unit=7, function=3)
    assert "without a frame whose CRC checks" in damaged and "baud rate or parity" in damaged
    assert "shorter than any Modbus RTU answer" in describe_rtu_answer(b"\1\3", unit=1, function=3)


REQUEST = _rtu(bytes([1, 3, 0, 0, 0, 1]))


@pytest.mark.parametrize(
    ("sent", "read"),
    [
        (LineSettings(9600), LineSettings(9600)),
        (LineSettings(19200, parity="E"), LineSettings(19200, parity="E")),
        (LineSettings(9600, stopbits=2), LineSettings(9600)),  # one stop bit is checked
        (LineSettings(9600), LineSettings(9600, stopbits=2)),
        (LineSettings(4800, bytesize=7, parity="O"), LineSettings(4800, bytesize=7, parity="O")),
    ],
)
def test_a_uart_reads_what_was_sent_at_its_own_settings(
    sent: LineSettings, read: LineSettings
) -> None:
    mask = (1 << read.bytesize) - 1
    assert uart_receive(REQUEST, sent, read) == [(b & mask, False) for b in REQUEST]


@pytest.mark.parametrize(
    ("sent", "read"),
    [
        (LineSettings(9600), LineSettings(19200)),
        (LineSettings(19200), LineSettings(9600)),
        (LineSettings(9600), LineSettings(9600, parity="E")),
        (LineSettings(9600, parity="E"), LineSettings(9600, parity="O")),
        (LineSettings(9600, parity="E"), LineSettings(9600)),
    ],
)
def test_a_uart_at_the_wrong_baud_rate_or_parity_sees_errors_in_a_request(
    sent: LineSettings, read: LineSettings
) -> None:
    received = uart_receive(REQUEST, sent, read)
    assert any(error for _, error in received)
    assert bytes(b for b, error in received if not error) != REQUEST


def test_a_receiver_without_parity_takes_the_bytes_of_an_even_parity_sender() -> None:
    """Linux in raw mode delivers them (with framing errors it does not check): the
    answer of an 8E1 device reaches an 8N1 master intact."""
    answer = _rtu(bytes([1, 3, 2, 0, 70]))
    received = uart_receive(answer, LineSettings(9600, parity="E"), LineSettings(9600))
    assert bytes(b for b, _ in received) == answer


def _talk(url: str, bus_path: str, client: LineSettings) -> tuple[bytes, bytes]:
    """What the bus hears of b'hello' from a client at `client`, and what the client
    hears of b'world' from the bus (each read bounded by its timeout)."""
    bus = serial.Serial(bus_path, timeout=0.3)
    port = serial.serial_for_url(
        url,
        baudrate=client.baudrate,
        parity=client.parity,
        stopbits=client.stopbits,
        timeout=0.3,
    )
    try:
        port.write(b"hello")
        heard_by_bus = bus.read(5)
        bus.write(b"world")
        heard_by_client = port.read(5)
    finally:
        port.close()
        bus.close()
    return heard_by_bus, heard_by_client


@pytest.mark.rig  # a TCP server, a pty and a client thread
async def test_an_rfc2217_line_passes_bytes_at_its_settings_and_garbles_or_drops_them_otherwise() -> (
    None
):
    async with Rfc2217Line(LineSettings(19200, parity="E")) as line:
        assert line.url.startswith("rfc2217://127.0.0.1:")
        right = await asyncio.to_thread(
            _talk, line.url, line.bus_path, LineSettings(19200, parity="E")
        )
        assert right == (b"hello", b"world")
        assert line.dropped == 0
        slow = await asyncio.to_thread(
            _talk, line.url, line.bus_path, LineSettings(9600, parity="E")
        )
        assert slow[0] != b"hello" and slow[1] != b"world"
        assert line.dropped > 0
        dropped = line.dropped
        no_parity = await asyncio.to_thread(_talk, line.url, line.bus_path, LineSettings(19200))
        assert no_parity[0] == b""  # every character of the request broke the bus's framing
        assert line.dropped > dropped
        assert no_parity[1] == b"world"  # a master without parity does not check it
        assert line.connections == 3
