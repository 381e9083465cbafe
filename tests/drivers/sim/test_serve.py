"""Serving a simulator file in-process: the parts the command-line tests leave out (a
real serial port, RTU over TCP, a polled binary instrument), on loopback and ptys."""

from __future__ import annotations

import asyncio
import os
import struct
import time
from pathlib import Path

import pytest
import serial

from drivers.serial_line.checksums import crc16_modbus
from drivers.sim.control import answer
from drivers.sim.scenario import parse_scenario
from drivers.sim.serial_link import PtyPort
from drivers.sim.serve import Simulation, SimulationError

pytestmark = pytest.mark.rig  # real ptys and sockets


def rtu_request(unit: int, function: int, address: int, count: int) -> bytes:
    body = struct.pack(">BBHH", unit, function, address, count)
    return body + crc16_modbus(body).to_bytes(2, "little")


def crc_ok(frame: bytes) -> bool:
    return len(frame) > 2 and crc16_modbus(frame[:-2]).to_bytes(2, "little") == frame[-2:]


async def read_for(read: object, size: int, seconds: float = 1.0) -> bytes:
    """Up to `size` bytes from a non-blocking fd (`int`) or a stream reader, within `seconds`."""
    got = b""
    deadline = time.monotonic() + seconds
    while len(got) < size and time.monotonic() < deadline:
        if isinstance(read, asyncio.StreamReader):
            try:
                chunk = await asyncio.wait_for(
                    read.read(size - len(got)), deadline - time.monotonic()
                )
            except TimeoutError:
                break
            if not chunk:
                break
            got += chunk
            continue
        assert isinstance(read, int)
        try:
            got += os.read(read, size - len(got))
        except BlockingIOError:
            await asyncio.sleep(0.005)
    return got


async def test_slaves_on_a_real_serial_port_answer_there() -> None:
    cable = PtyPort()  # its far end stands in for /dev/ttyUSB1; we are the gateway's side
    try:
        scenario = parse_scenario(
            f"""
[[devices]]
name = "meter"
protocol = "modbus_rtu"
port = "{cable.path}"
unit = 13
points = [{{ name = "voltage", table = "input", address = 0, type = "float32", value = 230.5 }}]
""".encode()
        )
        async with Simulation(scenario) as simulation:
            assert simulation.describe()[0]["path"] == cable.path
            assert simulation.describe()[0]["link"] is None
            os.write(cable.master, rtu_request(13, 4, 0, 2))
            frame = await read_for(cable.master, 9)
            assert frame[:3] == b"\x0d\x04\x04" and crc_ok(frame)
            assert struct.unpack(">f", frame[3:7]) == (230.5,)
    finally:
        cable.close()


async def test_a_serial_port_that_is_not_there_is_said_in_a_sentence(tmp_path: Path) -> None:
    scenario = parse_scenario(
        f'[[devices]]\nname = "m"\nprotocol = "modbus_rtu"\nport = "{tmp_path}/ttyUSB9"\n'
        'points = [{ name = "v", address = 0 }]\n'.encode()
    )
    with pytest.raises(SimulationError, match="ttyUSB9"):
        await Simulation(scenario).start()


async def test_rtu_over_tcp_answers_rtu_frames_and_breaks_them_as_asked() -> None:
    scenario = parse_scenario(
        b"""
[[devices]]
name = "pump9"
protocol = "modbus_rtu_over_tcp"
port = 0
unit = 7
points = [{ name = "speed", address = 0, type = "uint16", value = 1450 }]
"""
    )
    async with Simulation(scenario) as simulation:
        port = simulation.describe()[0]["port"]

        async def ask() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(rtu_request(7, 3, 0, 1))
            try:
                return await read_for(reader, 7)
            finally:
                writer.close()

        good = await ask()
        assert good[:5] == b"\x07\x03\x02\x05\xaa" and crc_ok(good)
        assert answer(simulation, "fault pump9 crc") == "ok pump9 crc"
        broken = await ask()
        assert broken[:5] == good[:5] and not crc_ok(broken)
        assert answer(simulation, "fault pump9 txid").startswith("error only Modbus TCP")
        assert answer(simulation, "fault pump9 drop") == "ok pump9 drop"
        assert await ask() == b""
        assert answer(simulation, "clear pump9") == "ok pump9 no fault"
        assert await ask() == good


async def test_a_polled_binary_instrument_answers_each_poll_and_a_delay_makes_it_late(
    tmp_path: Path,
) -> None:
    scenario = parse_scenario(
        f"""
[[devices]]
name = "level"
protocol = "serial_line"
link = "{tmp_path}/level"
mode = "polled"
poll_command_hex = "52 0D 0A"
frame = {{ kind = "binary", start_hex = "AA55", length_size = 1, length_adjust = 2, layout = ">HhI", fields = ["level", "temp", "n"], checksum = "crc16_modbus" }}
points = [
  {{ name = "level", type = "int", value = 1234 }},
  {{ name = "temp", scale = 0.1, value = 21.5 }},
  {{ name = "n", type = "int", value = {{ kind = "counter" }} }},
]
""".encode()
    )

    def poll() -> tuple[bytes, float]:
        with serial.Serial(f"{tmp_path}/level", timeout=2) as line:
            started = time.monotonic()
            line.write(b"R\r\n")
            return line.read(13), time.monotonic() - started

    async with Simulation(scenario) as simulation:
        first, _ = await asyncio.to_thread(poll)
        second, _ = await asyncio.to_thread(poll)
        assert first[:3] == bytes.fromhex("AA5508") and crc_ok(first)
        assert struct.unpack(">HhI", first[3:11]) == (1234, 215, 1)
        assert struct.unpack(">I", second[7:11]) == (2,)  # a frame per poll
        assert answer(simulation, "fault level delay 300") == "ok level delay 300"
        late, took = await asyncio.to_thread(poll)
        assert len(late) == 13 and took >= 0.3
        assert answer(simulation, "set level.level 99") == "ok level.level = 99"
        answer(simulation, "clear")
        held, _ = await asyncio.to_thread(poll)
        assert struct.unpack(">H", held[3:5]) == (99,)
    assert not await asyncio.to_thread(os.path.lexists, f"{tmp_path}/level")  # link gone
