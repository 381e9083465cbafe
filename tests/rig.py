"""The test rig: a private mosquitto, a persistent subscriber, the gateway as a process.

Imported by tests as `import rig` (pyproject puts tests/ on pythonpath); the
fixtures in conftest.py hand out its parts.

Everything listens on 127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from gateway.devtools.broker import Mosquitto
from gateway.wire import Batch, decode_batch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    mosquitto = Mosquitto(tmp_path / "broker")
    mosquitto.start()
    yield mosquitto
    mosquitto.kill()


class Subscriber:
    """What the city centre sees: a persistent QoS 1 subscription that survives broker restarts."""

    def __init__(
        self,
        broker: Mosquitto,
        topic: str = "#",
        *,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.broker = broker
        self.topic = topic
        self.messages: list[tuple[str, bytes]] = []
        self.arrived: list[float] = []  # time.time() at which each message arrived
        self._lock = threading.Lock()
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=f"centre-{uuid.uuid4().hex[:8]}",
            clean_session=False,
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.connect_async("127.0.0.1", broker.port, keepalive=10)
        self.client.loop_start()
        self.wait(lambda: self.subscribed, 10, "subscriber never connected")

    subscribed = False

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        client.subscribe(self.topic, qos=1)
        self.subscribed = True

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self.arrived.append(time.time())

    def on(self, suffix: str) -> list[bytes]:
        with self._lock:
            return [p for t, p in self.messages if t.endswith(suffix)]

    def data_messages(self) -> list[tuple[str, bytes]]:
        """Data batches as they arrived: live (`/data`) and backlog (`/data/history`)."""
        with self._lock:
            return [(t, p) for t, p in self.messages if t.endswith(("/data", "/data/history"))]

    def all_batches(self) -> list[Batch]:
        """Every data batch as it arrived, both lanes, duplicates included."""
        return [decode_batch(p) for _, p in self.data_messages()]

    def batches(self) -> list[Batch]:
        """What the centre keeps: the first copy of each (gateway_id, boot_id, seq), in seq
        order (seq grows across restarts, so this is the order they were produced).

        Delivery is at-least-once: a batch whose PUBACK was lost is sent again; and the
        live and history lanes interleave on the wire.
        """
        unique: dict[tuple[str, int], Batch] = {}
        for batch in self.all_batches():
            unique.setdefault((batch.gateway_id, batch.seq), batch)
        return [unique[key] for key in sorted(unique)]

    def lane_seqs(self) -> dict[str, list[int]]:
        """Seqs per topic in arrival order: each lane must be in order on its own."""
        lanes: dict[str, list[int]] = {}
        for topic, payload in self.data_messages():
            lanes.setdefault(topic.rsplit("/", 1)[-1], []).append(decode_batch(payload).seq)
        return lanes

    def readings(self, device: str | None = None, point: str | None = None) -> list[Any]:
        return [
            r
            for b in self.batches()
            for r in b.readings
            if (device is None or r.device == device) and (point is None or r.point == point)
        ]

    @staticmethod
    def wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s: {what}")

    async def wait_async(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s: {what}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def subscriber(broker: Mosquitto) -> Iterator[Subscriber]:
    sub = Subscriber(broker)
    yield sub
    sub.close()


class GatewayProcess:
    """`edge-gateway run -c FILE` as a child process, as systemd would run it."""

    def __init__(self, workdir: Path, config_text: str) -> None:
        self.env: dict[str, str] = {}  # extra environment (NOTIFY_SOCKET, ...)
        self.workdir = workdir
        self.config = workdir / "gateway.toml"
        self.config.write_text(config_text)
        self.log_path = workdir / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        log = self.log_path.open("ab")
        log.write(f"----- run {self.runs} -----\n".encode())
        log.flush()
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=REPO,
            env=env,
        )
        log.close()

    def stop(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # a hung stop fails the test, and leaves no orphan behind
            self.proc.wait(10)
            raise
        finally:
            self.proc = None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[Callable[[str], GatewayProcess]]:
    made: list[GatewayProcess] = []

    def make(config_text: str) -> GatewayProcess:
        gp = GatewayProcess(tmp_path, config_text)
        made.append(gp)
        return gp

    yield make
    for gp in made:
        gp.cleanup()


class TcpProxy:
    """A TCP relay on loopback between the gateway and a server, that can fail like a link.

    `blackhole()` keeps every connection open but carries nothing either way, and
    accepts new connections that go nowhere: the usual cellular failure, with no
    reset. `restore()` carries traffic again for new connections. `reset()` aborts
    every connection at once.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.blackholed = False
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        if self.blackholed:
            await _drain_forever(reader)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.append(up_writer)
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if self.blackholed:
                    continue  # swallowed: the peer never hears of it
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def blackhole(self) -> None:
        self.blackholed = True

    def restore(self) -> None:
        self.blackholed = False

    def reset(self) -> None:
        for writer in self._writers:
            transport = writer.transport
            transport.abort()
        self._writers.clear()

    async def stop(self) -> None:
        self.reset()
        if self._server is not None:
            self._server.close()


async def _drain_forever(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


def gateway_config(
    *,
    broker_port: int,
    buffer_path: Path,
    devices: str,
    gateway_id: str = "test-gw",
    max_readings: int = 50,
    max_age: str = "200ms",
    extra_mqtt: str = "",
) -> str:
    """A small config for tests: fast batches, fast reconnects."""
    return f"""
[gateway]
id = "{gateway_id}"
log_level = "info"

[mqtt]
host = "127.0.0.1"
port = {broker_port}
reconnect_min = "100ms"
reconnect_max = "500ms"
health_interval = "1s"
{extra_mqtt}

[buffer]
path = "{buffer_path}"
max_bytes = "50MB"

[batch]
max_readings = {max_readings}
max_age = "{max_age}"

{devices}
"""


def modbus_device(
    name: str,
    port: int,
    unit: int,
    points: str,
    *,
    interval: str = "100ms",
    timeout: str = "300ms",
    backoff_max: str = "1s",
) -> str:
    """A Modbus TCP device on loopback, polled fast, no retries."""
    where = f'protocol = "modbus_tcp"\nhost = "127.0.0.1"\nport = {port}'
    return _modbus_section(name, where, unit, points, interval, timeout, backoff_max)


def rtu_device(
    name: str,
    serial_port: str,
    unit: int,
    points: str,
    *,
    interval: str = "100ms",
    timeout: str = "200ms",
    backoff_max: str = "1s",
) -> str:
    """A Modbus RTU slave on a serial port (one end of a NullModem), 19200 8N1."""
    where = f'protocol = "modbus_rtu"\nport = "{serial_port}"\nbaudrate = 19200'
    return _modbus_section(name, where, unit, points, interval, timeout, backoff_max)


def _modbus_section(
    name: str, where: str, unit: int, points: str, interval: str, timeout: str, backoff_max: str
) -> str:
    return f"""
[[devices]]
name = "{name}"
{where}
unit = {unit}
poll_interval = "{interval}"
timeout = "{timeout}"
retries = 0
backoff_max = "{backoff_max}"
points = [
{points}
]
"""
