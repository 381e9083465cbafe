"""A Modbus TCP device that answers wrongly on purpose: malformed frames for tests and rigs.

pymodbus' own server only answers correctly, so this one speaks the protocol by
hand (MBAP header, read functions 1-4) and can break each answer in a chosen way:

``None``                   a correct answer
``"wrong_length"``         the MBAP length field does not match the bytes sent
``"lying_byte_count"``     the PDU's byte count promises more data than it carries
``"short_data"``           byte count and data agree, but hold fewer registers than asked
``"wrong_function"``       the answer carries another function code than the request
``"wrong_transaction"``    the answer carries another transaction id
``"wrong_unit"``           the answer comes from another unit id
``"undecodable"``          a function code no Modbus client knows (0x55)
``"garbage"``              random bytes instead of a frame
``"exception"``            Modbus exception `exception_code` for every request
``"silent"``               no answer at all

`fault_at` limits the fault to requests that cover that register address; the
rest are answered correctly (one bad point beside good ones). Register values
are `value_of(address)` (default: the address itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from collections.abc import Callable
from typing import Literal, get_args

from drivers.sim.faults import other_transaction

Fault = Literal[
    "wrong_length",
    "lying_byte_count",
    "short_data",
    "wrong_function",
    "wrong_transaction",
    "wrong_unit",
    "undecodable",
    "garbage",
    "exception",
    "silent",
]
FAULTS: tuple[Fault, ...] = get_args(Fault)
_MBAP = struct.Struct(">HHHB")  # transaction, protocol, length, unit


class FaultyModbusTcpServer:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        fault: Fault | None = None,
        fault_at: int | None = None,
        exception_code: int = 2,
        value_of: Callable[[int], int] = lambda address: address & 0xFFFF,
    ) -> None:
        self.host = host
        self.port = port
        self.fault = fault
        self.fault_at = fault_at
        self.exception_code = exception_code
        self.value_of = value_of
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._connections):
                writer.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FaultyModbusTcpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        self._connections.add(writer)
        try:
            while True:
                header = await reader.readexactly(_MBAP.size)
                tid, _protocol, length, unit = _MBAP.unpack(header)
                pdu = await reader.readexactly(max(0, length - 1))
                self.requests += 1
                answer = self._answer(tid, unit, pdu)
                if answer:
                    writer.write(answer)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            # The server is stopping. End normally: Python 3.11's stream callback would
            # log a traceback for a handler task that ends cancelled.
            pass
        finally:
            if task is not None:
                self._handlers.discard(task)
            self._connections.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    def _answer(self, tid: int, unit: int, pdu: bytes) -> bytes:
        if len(pdu) < 5:
            return b""
        function = pdu[0]
        address, count = struct.unpack(">HH", pdu[1:5])
        fault = self.fault
        if self.fault_at is not None and not address <= self.fault_at < address + count:
            fault = None
        if fault == "silent":
            return b""
        if fault == "garbage":
            return os.urandom(11)
        if fault == "exception" or function not in (1, 2, 3, 4):
            return _frame(tid, unit, bytes((function | 0x80, self.exception_code)))
        if function in (1, 2):
            bits = bytearray((count + 7) // 8)
            for i in range(count):
                if self.value_of(address + i) & 1:
                    bits[i // 8] |= 1 << (i % 8)
            data = bytes(bits)
        else:
            data = b"".join(struct.pack(">H", self.value_of(address + i)) for i in range(count))
        body = bytes((function, len(data))) + data
        if fault == "lying_byte_count":
            body = bytes((function, len(data) + 6)) + data
        elif fault == "short_data":
            body = bytes((function, len(data) - 2)) + data[:-2] if len(data) > 2 else body[:2]
        elif fault == "wrong_function":
            body = bytes((3 if function != 3 else 4,)) + body[1:]
        elif fault == "undecodable":
            body = b"\x55" + body[1:]
        frame = _frame(tid, unit, body)
        if fault == "wrong_length":
            frame = frame[:4] + struct.pack(">H", len(body) + 1 - 3) + frame[6:]
        elif fault == "wrong_transaction":
            frame = other_transaction(frame)
        elif fault == "wrong_unit":
            frame = frame[:6] + bytes(((unit + 1) & 0xFF,)) + frame[7:]
        return frame


def _frame(tid: int, unit: int, body: bytes) -> bytes:
    return _MBAP.pack(tid, 0, len(body) + 1, unit) + body
