"""Simulated line-protocol instruments on a pseudo-terminal.

A `LineInstrument` writes realistic frames on its own (`period`) or answers a
poll command (`command`), through the master side of a `PtyPort`; the gateway
opens `instrument.path` with pyserial as it would `/dev/ttyUSB1` (or, given a
`SerialDevicePort`, it talks on a real serial port). Tests and rigs can make it
silent, make it send garbage between frames (`noise`), or give it a `WireFault`
(drivers/sim/faults.py): silent, late frames, a broken checksum (the `corrupt`
function it was given), random bytes instead of frames, frames back to back (flood).
With `lossy`, what the line has no room for is dropped instead of waited for, as a
real instrument talking to nobody does: a simulator that runs for days never stalls.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import struct
from collections.abc import Callable

from drivers.serial_line.checksums import crc16_modbus, xor8
from drivers.sim.faults import WireFault
from drivers.sim.serial_link import PtyPort, SerialDevicePort

MakeFrame = Callable[[int], bytes]


class LineInstrument:
    def __init__(
        self,
        make_frame: MakeFrame,
        *,
        period: float | None = None,
        command: bytes | None = None,
        reply_delay: float = 0.0,
        port: PtyPort | SerialDevicePort | None = None,
        corrupt: Callable[[bytes], bytes] | None = None,
        lossy: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        if (period is None) == (command is None):
            raise ValueError("a simulated instrument either streams (period) or answers (command)")
        self.make_frame = make_frame
        self.period = period
        self.command = command
        self.reply_delay = reply_delay
        self.port = port or PtyPort()
        self.corrupt = corrupt  # a frame with a wrong checksum, for the fault "crc"
        self.lossy = lossy
        self.rng = rng or random.Random()
        self.silent = False
        self.fault: WireFault | None = None
        self.noise: bytes = b""  # written before every frame while set
        self.frames_sent = 0
        self.polls_seen = 0
        self._rx = bytearray()
        self._task: asyncio.Task[None] | None = None

    @property
    def path(self) -> str:
        return self.port.path

    def send(self, data: bytes) -> None:
        """Put raw bytes on the line (a frame, garbage, half a frame)."""
        self.port.write(data)

    def _fault_is(self, kind: str) -> bool:
        return self.fault is not None and self.fault.kind == kind

    @property
    def _delay(self) -> float:
        return self.fault.millis / 1000 if self.fault and self.fault.kind == "delay" else 0.0

    def _frame(self) -> bytes:
        self.frames_sent += 1
        frame = self.make_frame(self.frames_sent)
        if self._fault_is("crc") and self.corrupt is not None:
            return self.corrupt(frame)
        if self._fault_is("garbage"):
            return self.rng.randbytes(len(frame))
        return frame

    def _emit(self) -> None:
        if self.silent or self._fault_is("silent"):
            return
        data = self.noise + self._frame()
        if self.lossy:
            self.port.offer(data)
        else:
            self.port.write(data)

    async def _run(self) -> None:
        """Streaming: a frame every period (late by a delay fault); either mode: frames
        back to back while flooding."""
        while True:
            if self._fault_is("flood"):
                await self._flood()
            elif self.period is None:
                await asyncio.sleep(0.05)
            else:
                await asyncio.sleep(self.period + self._delay)
                self._emit()

    async def _flood(self) -> None:
        pending = b""
        while self._fault_is("flood"):
            pending = pending or self._frame()
            written = self.port.offer(pending)
            pending = pending[written:]
            await asyncio.sleep(0.002 if pending else 0)

    def _on_command_bytes(self) -> None:
        assert self.command is not None
        self._rx += self.port.read_available()
        while (at := self._rx.find(self.command)) >= 0:
            del self._rx[: at + len(self.command)]
            self.polls_seen += 1
            delay = self.reply_delay + self._delay
            if delay:
                asyncio.get_running_loop().call_later(delay, self._emit)
            else:
                self._emit()
        del self._rx[: max(0, len(self._rx) - 256)]

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sim-line-instrument")
        if self.command is not None:
            asyncio.get_running_loop().add_reader(self.port.master, self._on_command_bytes)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.command is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.port.master)
        self.port.close()

    async def __aenter__(self) -> LineInstrument:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# --- realistic frames (n = 1, 2, 3 ... so tests can check that none went missing) ----------


def gas_detector_line(n: int) -> bytes:
    """`CH4=12.5;H2S=3;T=21.4;N=7\\r\\n` — a methane / H2S detector printing lines."""
    ch4 = 10 + 5 * math.sin(n / 10)
    return f"CH4={ch4:.2f};H2S={n % 7};T=21.4;N={n}\r\n".encode()


def nmea_gga(n: int) -> bytes:
    """A GPS fix sentence with a correct checksum; the seconds field counts n."""
    body = f"GPGGA,1235{n % 60:02d},4807.038,N,01131.000,E,1,08,0.9,{545 + n % 10}.4,M,46.9,M,,"
    return f"${body}*{xor8(body.encode()):02X}\r\n".encode()


def flow_meter_csv(n: int) -> bytes:
    """A polled flow meter's reply: `FLOW,<m3/h>,<total m3>,<n>\\r\\n`."""
    return f"FLOW,{12.5 + n % 3:.1f},{1000 + n},{n}\r\n".encode()


def binary_level_frame(n: int, *, corrupt: bool = False) -> bytes:
    """AA 55, length, payload (>H level in mm, >h temp x10, >I counter), CRC-16/Modbus (LE)."""
    payload = struct.pack(">HhI", 1200 + n % 50, 215, n)
    body = b"\xaa\x55" + bytes([len(payload)]) + payload
    crc = crc16_modbus(body)
    if corrupt:
        crc ^= 0x0101
    return body + crc.to_bytes(2, "little")
