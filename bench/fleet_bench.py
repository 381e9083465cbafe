"""Fleet scale: many gateways' uplinks against one mosquitto, and a centre consumer group.

What runs is the gateway's own code, many gateways per process: each simulated cabinet
has a real `MqttUplink` (the default `[mqtt]` settings, only host and port set, and the
certificates with `--tls`; MQTT 5, the command subscription on, as a commissioned
gateway) over a real `Store` around a real
`DurableQueue` (SQLite, `synchronous = "full"`, in a temporary directory), and a producer
that appends a batch of `--readings` float32 readings (two devices, sine plus noise,
encoded with `gateway.wire`) every `--interval`, at a random phase. Each cabinet also
publishes what a gateway publishes besides data: the retained birth status (and its last
will), a health report every 30 s (the real `Health` message), and at every connect the
retained state of its two devices, its active alarms and its config metadata. Not
simulated: the alarm lane (a second buffer per gateway; idle, it costs the broker
nothing), device polling and the batcher (the producer stands in for them).

The cabinets run `--procs` worker processes (spawned, one event loop each); a private
mosquitto (`gateway.devtools.broker.Mosquitto`, its rig settings, `autosave_interval`
raised to Debian's default 1800 s) takes them all; RLIMIT_NOFILE is raised to its hard
limit first (mosquitto and the workers inherit it). The centre is `--consumers` paho
clients (MQTT 5, persistent sessions) sharing `$share/<group>/city/+/data/#`: each
decodes every batch it gets.

Phases, each measured: the cold start (every cabinet connects at once); a steady
window of `--duration` at the data rate (broker CPU and RSS from /proc, per gateway;
the workers' own cost); a retained fan-out probe (a new client subscribing to
`city/+/status`, then to every retained topic); a broker restart (SIGTERM, `--outage`
seconds down, started again on the same port: the time until every cabinet is back
and the connects per second, from the uplinks' own log of each attempt); then the
drain and the accounting of every batch against what the consumer group received.

    .venv/bin/python bench/fleet_bench.py                # 1,000 gateways, 50 readings / 5 s
    .venv/bin/python bench/fleet_bench.py --tls          # the gateways over mutual TLS
    .venv/bin/python bench/fleet_bench.py --gateways 4000 --procs 4 --interval 60s
    .venv/bin/python bench/fleet_bench.py --gateways 20 --duration 5s --outage 0s --json

Prints a table (or one JSON object with --json); asserts nothing. Record the figures
in docs/performance.md with the command line and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib.metadata
import json
import logging
import math
import multiprocessing
import os
import platform
import random
import re
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.wire_bench import POINT_NAMES, as_float32  # noqa: E402
from buffer import DurableQueue  # noqa: E402
from drivers.base import DeviceHealth  # noqa: E402
from drivers.core.config_types import parse_duration  # noqa: E402
from drivers.core.model import Reading  # noqa: E402
from drivers.sim.modbus import free_tcp_port  # noqa: E402
from gateway import __version__  # noqa: E402
from gateway.devtools.broker import Mosquitto, find_mosquitto  # noqa: E402
from gateway.store import Store  # noqa: E402
from gateway.uplink.config import MqttConfig, TlsConfig  # noqa: E402
from gateway.uplink.mqtt import MqttUplink  # noqa: E402
from gateway.uplink.topics import Topics  # noqa: E402
from gateway.wire import decode_batch, encode_batch  # noqa: E402
from gateway.wire.events import ActiveAlarms, DeviceState, Metadata, encode_json  # noqa: E402
from gateway.wire.messages import (  # noqa: E402
    AlarmsHealth,
    ClockHealth,
    Health,
    Identity,
    PipelineHealth,
    ReloadsHealth,
    encode,
)

PREFIX = "city"
GROUP = "centre"
CONFIG_HASH = "f1ee7be9c0de"
BUFFER_BYTES = 16 << 20
DEVICES = ("pump-station", "flood-gauge")
TICKS = os.sysconf("SC_CLK_TCK")
TASK_TAG = "cabinet:"  # the name of each uplink's task: tells the log which cabinet spoke
FDS_PER_CABINET = 8  # socket, database, WAL, shm, lock, seq file, and slack
SETTLE_TIMEOUT = 120.0  # seconds to wait for every cabinet to connect, or to drain


# --- /proc -------------------------------------------------------------------------------


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """user + system CPU of a process (or of one of its threads)."""
    where = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(where).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def listen_drops() -> int:
    """Connects a listening socket dropped, machine-wide (TcpExt ListenDrops, which counts
    the ListenOverflows too): a burst of connects beyond the accept queue."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            row = dict(zip(names.split()[1:], map(int, values.split()[1:]), strict=True))
            return row.get("ListenDrops", 0)
    return 0


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


# --- one cabinet (in a worker) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Load:
    port: int
    interval: float
    readings: int
    sync: str
    pki: str | None  # mutual TLS with the certificates there (`make_pki`), or plain TCP


def _tls(pki: str | None) -> TlsConfig | None:
    if pki is None:
        return None
    where = Path(pki)
    return TlsConfig(
        ca_file=where / "ca.crt", cert_file=where / "client.crt", key_file=where / "client.key"
    )


def make_pki(where: Path) -> None:
    """A CA (EC P-256) and the server's and a client's certificates it signed: every
    cabinet presents the client certificate (mutual TLS), the broker checks it."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=where, check=True, capture_output=True, timeout=60)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=fleet-ca")
    (where / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        openssl(
            "req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}"
        )
        openssl(
            *("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key"),
            *("-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", "san.ext"),
        )


class Cabinet:
    """One simulated gateway: its buffer, its uplink, and a producer of batches."""

    def __init__(self, index: int, root: Path, load: Load) -> None:
        self.index = index
        self.gateway_id = f"cab{index:06d}"
        self.load = load
        self.rnd = random.Random(index)
        self.identity = Identity(self.gateway_id, secrets.token_hex(8), __version__, CONFIG_HASH)
        self.topics = Topics(PREFIX, self.gateway_id)
        queue = DurableQueue(
            root / self.gateway_id / "buffer.db",
            max_bytes=BUFFER_BYTES,
            synchronous="full" if load.sync == "full" else "normal",
        )
        self.store = Store(queue)
        self.uplink = MqttUplink(
            MqttConfig(host="127.0.0.1", port=load.port, tls=_tls(load.pki)),
            self.topics,
            self.store,
            identity=self.identity,
            health=self.health,
        )
        self.uplink.retained = self.retained
        self.uplink.on_command = self.command  # subscribed, as a gateway with [commands]
        self.started = time.monotonic()
        self.producing = True
        self.produced = 0
        points = [(d, p) for d in DEVICES for p in POINT_NAMES]
        self.points = [points[i % len(points)] for i in range(load.readings)]
        rnd = self.rnd
        self.shapes = [
            (rnd.uniform(1, 100), rnd.uniform(0.05, 0.3), rnd.uniform(60, 600), rnd.random())
            for _ in self.points
        ]
        self.devices = [
            DeviceHealth(f"{d}-{index}", f"unit {u} at 10.20.{index % 250}.5:502", "online")
            for u, d in enumerate(DEVICES, 1)
        ]

    def batch(self) -> list[Reading]:
        now = time.time()
        readings = []
        for n, ((device, point), (mean, swing, period, phase)) in enumerate(
            zip(self.points, self.shapes, strict=True)
        ):
            ts = now + 0.009 * DEVICES.index(device)
            wave = math.sin(2 * math.pi * (phase + ts / period))
            value = mean * (1 + swing * wave) + self.rnd.gauss(0, mean * 0.002)
            readings.append(Reading(device, point, int(ts * 1000), as_float32(value)))
            self.devices[n % len(DEVICES)].readings += 1
        return readings

    async def produce(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(self.rnd.uniform(0, self.load.interval))
        due = loop.time()
        while True:
            if self.producing:
                await self.store.append(partial(self.encode, self.batch()))
                self.produced += 1
            due += self.load.interval
            await asyncio.sleep(max(0.0, due - loop.time()))

    def encode(self, readings: list[Reading], seq: int) -> bytes:
        """The batch's payload, made on the buffer's thread once its seq is known."""
        gateway, boot = self.identity.gateway_id, self.identity.boot_id
        return encode_batch(gateway, boot, seq, readings, config_hash=CONFIG_HASH)

    def health(self) -> bytes:
        now = time.time()
        report = Health(
            identity=self.identity,
            ts=now,
            uptime_s=time.monotonic() - self.started,
            clock=ClockHealth(True, 0, None),
            buffer=self.store.health(now, BUFFER_BYTES),
            uplink=self.uplink.health(),
            alarms=AlarmsHealth(0, 0, 0),
            processing={"alarm_events": 0, "invalid_values": 0},
            pipeline=PipelineHealth(self.produced * len(self.points), 0, self.produced, 0, 0, 0),
            reloads=ReloadsHealth(0, 0, None),
            devices=[d.as_dict() for d in self.devices],
        )
        return encode(report)

    def retained(self) -> list[tuple[str, bytes]]:
        now = time.time()
        states = [
            (
                self.topics.device(d.name),
                encode_json(
                    DeviceState(self.gateway_id, d.name, "online", self.started, None, now)
                ),
            )
            for d in self.devices
        ]
        devices = [
            {
                "name": d.name,
                "protocol": "modbus_tcp",
                "host": f"10.20.{self.index % 250}.5",
                "unit": u,
                "poll_interval": 5.0,
                "points": [
                    {"name": p, "address": 2 * i, "type": "float32"}
                    for i, (device, p) in enumerate(self.points)
                    if device == DEVICES[u - 1]
                ],
            }
            for u, d in enumerate(self.devices, 1)
        ]
        return [
            *states,
            (self.topics.alarms_active, encode_json(ActiveAlarms(self.gateway_id, now, []))),
            (
                self.topics.meta(CONFIG_HASH),
                encode_json(Metadata(self.gateway_id, CONFIG_HASH, now, devices)),
            ),
        ]

    async def command(self, verb: str, payload: bytes) -> bytes:
        return b""  # no centre sends commands in this bench


# --- a worker process ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    first: int
    count: int
    root: str
    load: Load
    connect_threads: int


@dataclass(slots=True)
class Snapshot:
    online: int = 0
    connects: int = 0
    on_disk: int = 0
    published: int = 0
    events: list[tuple[float, int, str]] = field(default_factory=list)  # time, cabinet, kind
    said: dict[str, int] = field(default_factory=dict)  # warnings, numbers masked: count
    errors: list[str] = field(default_factory=list)
    loop_lag_s: float = 0.0  # the longest a worker's event loop ran late since the last one

    def merge(self, other: Snapshot) -> None:
        self.loop_lag_s = max(self.loop_lag_s, other.loop_lag_s)
        self.online += other.online
        self.connects += other.connects
        self.on_disk += other.on_disk
        self.published += other.published
        self.events += other.events
        for template, n in other.said.items():
            self.said[template] = self.said.get(template, 0) + n
        self.errors += other.errors


class UplinkLog(logging.Handler):
    """What the uplinks say, counted: each connect and each failed attempt with its time
    and cabinet (the task that logged it), and every warning (its numbers masked)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.events: list[tuple[float, int, str]] = []
        self.said: collections.Counter[str] = collections.Counter()
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name != "gateway.uplink":
            return
        template = str(record.msg)
        kind = None
        if template.startswith("connected to MQTT broker"):
            kind = "connected"
        elif template.startswith(("cannot reach the MQTT broker", "connect attempt failed")):
            kind = "failed"
        if kind is not None:
            self.events.append((record.created, self._cabinet(), kind))
        if record.levelno >= logging.WARNING:
            said = re.sub(r"\d+(\.\d+)?", "N", record.getMessage())
            self.said[said if len(said) <= 200 else said[:197] + "..."] += 1
        if record.levelno >= logging.ERROR and len(self.errors) < 5:
            self.errors.append(self.format(record))

    @staticmethod
    def _cabinet() -> int:
        try:
            task = asyncio.current_task()
        except RuntimeError:
            return -1
        name = task.get_name() if task is not None else ""
        return int(name[len(TASK_TAG) :]) if name.startswith(TASK_TAG) else -1

    def take(self) -> tuple[list[tuple[float, int, str]], dict[str, int], list[str]]:
        events, self.events = self.events, []
        errors, self.errors = self.errors, []
        return events, dict(self.said), errors


def worker_main(conn: Connection, spec: WorkerSpec) -> None:
    tally = UplinkLog()
    uplink_log = logging.getLogger("gateway.uplink")
    uplink_log.setLevel(logging.DEBUG)
    uplink_log.addHandler(tally)
    uplink_log.propagate = False
    logging.getLogger("gateway.uplink.client").setLevel(logging.WARNING)  # paho's chatter
    asyncio.run(Worker(conn, spec, tally).run())


class Worker:
    def __init__(self, conn: Connection, spec: WorkerSpec, tally: UplinkLog) -> None:
        self.conn = conn
        self.spec = spec
        self.tally = tally
        self.cabinets: list[Cabinet] = []
        self.lag = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        # aiomqtt runs each TCP connect on the loop's default executor (6 threads here);
        # a real gateway has that pool to itself, so give the cabinets a wider one.
        loop.set_default_executor(ThreadPoolExecutor(self.spec.connect_threads, "connect"))
        commands: asyncio.Queue[str] = asyncio.Queue()

        def receive() -> None:
            try:
                commands.put_nowait(self.conn.recv())
            except EOFError:  # the bench went away
                loop.remove_reader(self.conn.fileno())
                commands.put_nowait("finish")

        loop.add_reader(self.conn.fileno(), receive)
        rss_before = status_kib(os.getpid(), "VmRSS")
        root = Path(self.spec.root)
        first, count = self.spec.first, self.spec.count
        self.cabinets = [Cabinet(i, root, self.spec.load) for i in range(first, first + count)]
        self.conn.send(rss_before)
        await commands.get()  # "start"
        async with asyncio.TaskGroup() as tg:
            runs = [
                tg.create_task(c.uplink.run(), name=f"{TASK_TAG}{c.index}") for c in self.cabinets
            ]
            producers = [
                tg.create_task(c.produce(), name=f"produce-{c.index}") for c in self.cabinets
            ]
            producers.append(tg.create_task(self.watch_lag(), name="lag"))
            while (command := await commands.get()) != "finish":
                if command == "snapshot":
                    self.conn.send(self.snapshot())
            await self.finish(runs, producers)
        for cabinet in self.cabinets:
            cabinet.store.close()
        self.conn.send(
            {c.gateway_id: (c.identity.boot_id, c.store.stats.last_seq) for c in self.cabinets}
        )

    async def watch_lag(self) -> None:
        """How late the loop wakes up: a busy worker delays every cabinet in it (a bench
        artefact that a gateway, alone on its machine, does not have)."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + 0.05
            await asyncio.sleep(0.05)
            self.lag = max(self.lag, loop.time() - due)

    def snapshot(self) -> Snapshot:
        events, said, errors = self.tally.take()
        lag, self.lag = self.lag, 0.0
        return Snapshot(
            online=sum(c.uplink.state in ("online", "denied") for c in self.cabinets),
            connects=sum(c.uplink.connects for c in self.cabinets),
            on_disk=sum(c.store.stats.batches for c in self.cabinets),
            published=sum(c.uplink.health().published_batches for c in self.cabinets),
            events=events,
            said=said,
            errors=errors,
            loop_lag_s=lag,
        )

    async def finish(
        self, runs: list[asyncio.Task[None]], producers: list[asyncio.Task[None]]
    ) -> None:
        """Stop producing, let every uplink send what is on disk, then stop them (each
        says goodbye: the retained 'offline' status)."""
        for cabinet in self.cabinets:
            cabinet.producing = False
        deadline = time.monotonic() + SETTLE_TIMEOUT
        # The uplinks offer no "drained" event: poll their buffers' counters.
        drained = False
        while not drained and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            drained = not any(c.store.stats.batches for c in self.cabinets)
        for cabinet in self.cabinets:
            cabinet.uplink.stop()
        await asyncio.wait(runs, timeout=SETTLE_TIMEOUT)
        for task in producers:
            task.cancel()


# --- the centre: a consumer group ------------------------------------------------------


class Consumer:
    """One member of the centre's consumer group: a shared subscription to every data
    topic, a persistent session (it survives a broker restart), every batch decoded."""

    def __init__(self, index: int, port: int) -> None:
        self.name = f"centre-{index}"
        self.lock = threading.Lock()
        self.batches: list[tuple[str, str, int]] = []  # gateway, boot, seq
        self.arrivals: list[float] = []
        self.thread_id: int | None = None  # paho's network thread, for its CPU time
        self.subscribed = threading.Event()
        self.subscribed_at: list[float] = []  # every SUBACK: after a broker restart too
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=self.name, protocol=paho.MQTTv5
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        # Back within a second of a broker restart: what gateways publish before the
        # group subscribes again is lost (see measure_restart).
        self.client.reconnect_delay_set(0.1, 1.0)  # type: ignore[arg-type]
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", port, keepalive=30, properties=properties)
        self.client.loop_start()

    def _on_connect(self, client: paho.Client, *_: object) -> None:
        self.thread_id = threading.get_native_id()
        client.subscribe(f"$share/{GROUP}/{PREFIX}/+/data/#", qos=1)

    def _on_subscribe(self, *_: object) -> None:
        self.subscribed_at.append(time.time())
        self.subscribed.set()

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        batch = decode_batch(bytes(msg.payload))
        with self.lock:
            self.batches.append((batch.gateway_id, batch.boot_id, batch.seq))
            self.arrivals.append(time.time())

    def count(self) -> int:
        with self.lock:
            return len(self.batches)

    def cpu(self) -> float:
        return 0.0 if self.thread_id is None else cpu_seconds(os.getpid(), self.thread_id)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def received(consumers: list[Consumer]) -> int:
    """Distinct batches the group has received."""
    seen: set[tuple[str, str, int]] = set()
    for c in consumers:
        with c.lock:
            seen.update(c.batches)
    return len(seen)


def wait_for_group(consumers: list[Consumer], expected: int) -> None:
    """Until the group has `expected` distinct batches, or nothing new came for 3 s."""
    last, quiet_since = -1, time.monotonic()
    while (now := received(consumers)) < expected:
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since > 3.0:
            return
        time.sleep(0.1)


def retained_fanout(port: int, topic: str, expected: int, timeout: float) -> tuple[int, float]:
    """A fresh client subscribes to `topic`: how many retained messages it gets, and how
    long until the `expected`-th arrived (or `timeout`)."""
    done = threading.Event()
    got = [0]

    def on_message(client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        if msg.retain:
            got[0] += 1
            if got[0] >= expected:
                done.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        started = time.monotonic()
        client.subscribe(topic, qos=1)
        done.wait(timeout)
        took = time.monotonic() - started
        time.sleep(0.2)  # any beyond the expected count
        return got[0], took
    finally:
        client.loop_stop()
        client.disconnect()


# --- the fleet, from the bench's side --------------------------------------------------


class Fleet:
    def __init__(self, args: argparse.Namespace, load: Load, root: Path) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        share, extra = divmod(args.gateways, args.procs)
        first = 0
        for n in range(args.procs):
            count = share + (n < extra)
            ours, theirs = context.Pipe()
            spec = WorkerSpec(first, count, str(root), load, args.connect_threads)
            proc = context.Process(target=worker_main, args=(theirs, spec), name=f"fleet-{n}")
            proc.start()
            self.pipes.append(ours)
            self.procs.append(proc)
            first += count
        self.rss_empty_kib = sum(pipe.recv() for pipe in self.pipes)  # before the cabinets
        self.events: list[tuple[float, int, str]] = []
        self.said: dict[str, int] = {}
        self.errors: list[str] = []
        self.max_lag = 0.0  # the workers' longest loop lag since `lag_since_last` was read

    def lag_since_last(self) -> float:
        lag, self.max_lag = self.max_lag, 0.0
        return lag

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def start(self) -> float:
        started = time.time()
        for pipe in self.pipes:
            pipe.send("start")
        return started

    def snapshot(self) -> Snapshot:
        for pipe in self.pipes:
            pipe.send("snapshot")
        total = Snapshot()
        for pipe in self.pipes:
            total.merge(pipe.recv())
        self.events += total.events
        self.max_lag = max(self.max_lag, total.loop_lag_s)
        self.said = total.said
        self.errors += total.errors
        return total

    def wait(self, until: Callable[[Snapshot], bool], timeout: float) -> Snapshot:
        deadline = time.monotonic() + timeout
        while True:
            snap = self.snapshot()
            if until(snap) or time.monotonic() > deadline:
                return snap
            time.sleep(0.1)

    def connected_since(self, since: float) -> int:
        """Cabinets that connected at or after `since` (as of the last snapshot)."""
        return len(first_connects(self.events, since, math.inf))

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    def rss_kib(self) -> int:
        return sum(status_kib(pid, "VmRSS") for pid in self.pids)

    def finish(self) -> dict[str, tuple[str, int]]:
        for pipe in self.pipes:
            pipe.send("finish")
        sent: dict[str, tuple[str, int]] = {}
        for pipe in self.pipes:
            sent.update(pipe.recv())
        for proc in self.procs:
            proc.join(30)
        return sent

    def kill(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
                proc.join(5)


# --- figures ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Storm:
    """Connects of the whole fleet after `since`: how long until every cabinet was
    connected, and how they were spread."""

    back: int  # cabinets connected after `since`
    all_back_s: float | None  # None: not every cabinet came back
    p50_s: float | None
    p90_s: float | None
    first_s: float | None
    peak_connects_per_s: int  # the busiest 1-second window
    peak_connects_per_100ms: int
    failed_attempts: int  # refused or timed-out connect attempts after `since`
    reconnects_beyond_one: int  # cabinets that connected more than once (a drop after)


def storm(
    events: Iterable[tuple[float, int, str]], since: float, gateways: int, until: float
) -> Storm:
    window = [(t, cabinet, kind) for t, cabinet, kind in events if since <= t <= until]
    connects = sorted(t for t, _, kind in window if kind == "connected")
    per_cabinet = collections.Counter(cabinet for _, cabinet, kind in window if kind == "connected")
    failed = sum(kind == "failed" for *_, kind in window)
    back = sorted(t - since for t in first_connects(window, since, until).values())
    return Storm(
        back=len(back),
        all_back_s=back[-1] if len(back) >= gateways else None,
        p50_s=back[len(back) // 2] if back else None,
        p90_s=back[int(len(back) * 0.9)] if back else None,
        first_s=back[0] if back else None,
        peak_connects_per_s=_busiest(connects, 1.0),
        peak_connects_per_100ms=_busiest(connects, 0.1),
        failed_attempts=failed,
        reconnects_beyond_one=sum(n > 1 for n in per_cabinet.values()),
    )


def first_connects(
    events: Iterable[tuple[float, int, str]], since: float, until: float
) -> dict[int, float]:
    """Each cabinet's first connect in [since, until]."""
    firsts: dict[int, float] = {}
    for t, cabinet, kind in events:
        if kind == "connected" and since <= t <= until:
            firsts[cabinet] = min(t, firsts.get(cabinet, t))
    return firsts


def _busiest(times: list[float], window: float) -> int:
    """The most of `times` (sorted) inside any window of `window` seconds."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] < t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def consumer_figures(consumers: list[Consumer], since: float, until: float) -> list[dict[str, Any]]:
    rows = []
    for c in consumers:
        with c.lock:
            arrivals = sorted(t for t in c.arrivals if since <= t <= until)
        rows.append(
            {
                "consumer": c.name,
                "batches": len(arrivals),
                "per_s": len(arrivals) / max(1e-9, until - since),
                "peak_per_s": _busiest(arrivals, 1.0),
            }
        )
    return rows


def accounting(consumers: list[Consumer], sent: dict[str, tuple[str, int]]) -> dict[str, Any]:
    """Every batch the cabinets stored (seqs 1..last) against what the group received."""
    expected = {(gw, boot, seq) for gw, (boot, last) in sent.items() for seq in range(1, last + 1)}
    deliveries: collections.Counter[tuple[str, str, int]] = collections.Counter()
    takers: dict[tuple[str, str, int], set[str]] = collections.defaultdict(set)
    per_consumer = {}
    for c in consumers:
        with c.lock:
            batches = list(c.batches)
        per_consumer[c.name] = len(batches)
        for key in batches:
            deliveries[key] += 1
            takers[key].add(c.name)
    received = set(deliveries)
    total = sum(deliveries.values())
    return {
        "batches_stored": len(expected),
        "received_once_or_more": len(received & expected),
        "missing": len(expected - received),
        "unknown": len(received - expected),
        "deliveries": total,
        "duplicates": total - len(received),
        "duplicates_to_two_consumers": sum(len(t) > 1 for t in takers.values()),
        "missing_first": sorted(expected - received)[:10],
        "per_consumer": per_consumer,
    }


def machine() -> dict[str, str]:
    def fact(*command: str) -> str:
        return subprocess.run(command, capture_output=True, text=True, check=False).stdout.strip()

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in fact("lscpu").splitlines()
            if line.startswith("Model name")
        ),
        platform.processor(),
    )
    mosquitto = find_mosquitto() or "mosquitto"
    return {
        "cpu": model,
        "nproc": fact("nproc"),
        "memory": fact("sh", "-c", "free -h | awk '/Mem:/ {print $2}'"),
        "kernel": fact("uname", "-srm"),
        "mosquitto": fact(mosquitto, "-h").splitlines()[0] if mosquitto else "",
        "openssl": fact("openssl", "version"),
        "python": platform.python_version(),
        "paho": importlib.metadata.version("paho-mqtt"),
        "aiomqtt": importlib.metadata.version("aiomqtt"),
    }


def raise_nofile(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(
            f"this needs about {needed} open files per process and the hard limit is {hard}; "
            "raise it (ulimit -Hn, or LimitNOFILE= in a unit) or run fewer gateways"
        )
    if soft != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


_T0 = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {text}", file=sys.stderr, flush=True)


# --- the run ---------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    gateways = args.gateways
    per_proc = math.ceil(gateways / args.procs)
    nofile = raise_nofile(max(gateways + 256, per_proc * FDS_PER_CABINET + 256))
    result: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", "bench/fleet_bench.py", *sys.argv[1:]]),
        "machine": machine(),
        "load": {
            "gateways": gateways,
            "procs": args.procs,
            "interval_s": args.interval,
            "readings_per_batch": args.readings,
            "readings_per_s": gateways * args.readings / args.interval,
            "batches_per_s": gateways / args.interval,
            "consumers": args.consumers,
            "buffer": f"DurableQueue (SQLite), synchronous={args.sync}",
            "uplink": "mutual TLS (EC P-256)" if args.tls else "plain TCP",
            "nofile": nofile,
        },
    }
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        root = Path(args.workdir or tmp)
        settings = f"autosave_interval {args.autosave}\nmax_connections -1\n"
        pki: Path | None = None
        gateways_port: int | None = None  # the plain listener, unless --tls
        if args.tls:
            pki = root / "pki"
            pki.mkdir(parents=True, exist_ok=True)
            make_pki(pki)
            gateways_port = free_tcp_port()
            settings += (
                f"listener {gateways_port} 127.0.0.1\ncafile {pki / 'ca.crt'}\n"
                f"certfile {pki / 'server.crt'}\nkeyfile {pki / 'server.key'}\n"
                "require_certificate true\n"
            )
        broker = Mosquitto(root / "broker", extra_config=settings)
        broker.start()
        fleet: Fleet | None = None
        consumers: list[Consumer] = []
        try:
            assert broker.proc is not None
            pid = broker.proc.pid
            consumers = [Consumer(i, broker.port) for i in range(args.consumers)]
            for c in consumers:
                c.subscribed.wait(10)
            rss_idle = status_kib(pid, "VmRSS")
            say(f"building {gateways} cabinets in {args.procs} process(es) ...")
            load = Load(
                gateways_port or broker.port,
                args.interval,
                args.readings,
                args.sync,
                None if pki is None else str(pki),
            )
            fleet = Fleet(args, load, root / "cabinets")
            say("connecting ...")
            cpu0, drops0 = cpu_seconds(pid), listen_drops()
            t_start = fleet.start()
            snap = fleet.wait(lambda s: s.online >= gateways, SETTLE_TIMEOUT)
            t_connected = time.time()
            result["cold_start"] = asdict(storm(fleet.events, t_start, gateways, t_connected))
            result["cold_start"]["broker_cpu_s"] = cpu_seconds(pid) - cpu0
            result["cold_start"]["listen_drops"] = listen_drops() - drops0
            if snap.online < gateways:
                raise SystemExit(f"only {snap.online} of {gateways} cabinets connected")
            say(f"all connected; warming up {args.warmup:g}s, then {args.duration:g}s measured ...")
            time.sleep(args.warmup)
            steady = measure_steady(args, fleet, consumers, pid)
            steady["broker_idle_rss_kib"] = rss_idle
            steady["broker_rss_per_gateway_kib"] = (steady["broker_rss_kib"] - rss_idle) / gateways
            steady["workers_rss_per_gateway_kib"] = (
                fleet.rss_kib() - fleet.rss_empty_kib
            ) / gateways
            result["steady"] = steady
            result["retained"] = measure_retained(broker.port, gateways)
            if args.outage > 0:
                result["restart"] = measure_restart(args, broker, fleet, consumers)
            # The storm figures come from the uplinks' log lines: check them against the
            # uplinks' own counters (a reworded log line would silently empty them).
            logged = sum(kind == "connected" for *_, kind in fleet.events)
            result["uplink_connects"] = {"counted": fleet.snapshot().connects, "logged": logged}
            if logged != result["uplink_connects"]["counted"]:
                say(f"connects logged and counted differ: {result['uplink_connects']}")
            say("draining and stopping the cabinets ...")
            t_finish = time.time()
            sent = fleet.finish()
            expected = sum(last for _, last in sent.values())
            wait_for_group(consumers, expected)
            result["accounting"] = accounting(consumers, sent)
            result["accounting"]["drain_and_stop_s"] = time.time() - t_finish
            result["consumers_overall"] = consumer_figures(consumers, t_start, time.time())
            result["consumer_cpu_us_per_batch"] = [
                1e6 * c.cpu() / max(1, c.count()) for c in consumers
            ]
            result["uplink_said"] = fleet.said
            result["uplink_errors"] = fleet.errors
        finally:
            if fleet is not None:
                fleet.kill()
            for c in consumers:
                c.close()
            broker.stop()
            shutil.rmtree(root / "cabinets", ignore_errors=True)
    return result


def measure_steady(
    args: argparse.Namespace, fleet: Fleet, consumers: list[Consumer], pid: int
) -> dict[str, Any]:
    fleet.snapshot()
    fleet.lag_since_last()
    c0, w0, t0 = cpu_seconds(pid), fleet.cpu(), time.time()
    cc0 = [c.cpu() for c in consumers]
    p0 = fleet.snapshot().published
    deadline = time.monotonic() + args.duration
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(1.0, left))
        fleet.snapshot()  # keeps the loop lag's maximum
    snap = fleet.snapshot()
    c1, w1, t1 = cpu_seconds(pid), fleet.cpu(), time.time()
    elapsed = t1 - t0
    return {
        "seconds": elapsed,
        "batches_published_per_s": (snap.published - p0) / elapsed,
        "broker_cpu_pct": 100 * (c1 - c0) / elapsed,
        "broker_cpu_pct_per_1000_gateways": 100 * (c1 - c0) / elapsed * 1000 / args.gateways,
        "broker_rss_kib": status_kib(pid, "VmRSS"),
        "broker_hwm_kib": status_kib(pid, "VmHWM"),
        "workers_cpu_pct": 100 * (w1 - w0) / elapsed,
        "workers_cpu_ms_per_gateway_s": 1000 * (w1 - w0) / elapsed / args.gateways,
        "workers_rss_kib": fleet.rss_kib(),
        "workers_loop_lag_max_s": fleet.lag_since_last(),
        "on_disk_at_end": snap.on_disk,
        "consumers": consumer_figures(consumers, t0, t1),
        "consumers_cpu_pct": [
            100 * (c.cpu() - before) / elapsed for c, before in zip(consumers, cc0, strict=True)
        ],
    }


def measure_retained(port: int, gateways: int) -> dict[str, Any]:
    say("retained fan-out ...")
    statuses, status_s = retained_fanout(port, f"{PREFIX}/+/status", gateways, 30)
    every = gateways * (2 + len(DEVICES) + 1)  # status, devices, alarms, meta
    everything, every_s = retained_fanout(port, f"{PREFIX}/#", every, 60)
    return {
        "status_messages": statuses,
        "status_s": status_s,
        "all_retained_messages": everything,
        "all_retained_s": every_s,
    }


def measure_restart(
    args: argparse.Namespace, broker: Mosquitto, fleet: Fleet, consumers: list[Consumer]
) -> dict[str, Any]:
    gateways = args.gateways
    say(f"restarting the broker ({args.outage:g}s down) ...")
    fleet.snapshot()
    t_stop = time.time()
    broker.stop()
    t_stopped = time.time()
    time.sleep(args.outage)
    t_starting, drops0 = time.time(), listen_drops()
    broker.start()
    t_listening = time.time()
    # The broker listened between the two: the first cabinet may be back before start()
    # noticed (it polls every 50 ms).
    fleet.snapshot()
    t_back = min(
        first_connects(fleet.events, t_starting, t_listening).values(), default=t_listening
    )
    assert broker.proc is not None
    pid = broker.proc.pid
    cpu0, w0 = cpu_seconds(pid), fleet.cpu()
    fleet.lag_since_last()
    fleet.wait(lambda s: fleet.connected_since(t_back) >= gateways, SETTLE_TIMEOUT)
    t_all = time.time()
    drops = listen_drops() - drops0
    cpu_storm, workers_storm = cpu_seconds(pid) - cpu0, fleet.cpu() - w0
    lag_storm = fleet.lag_since_last()
    snap = fleet.wait(lambda s: s.on_disk <= gateways, SETTLE_TIMEOUT)  # live batch at most
    t_drained = time.time()
    figures = asdict(storm(fleet.events, t_back, gateways, t_all))
    resubscribed = [
        min(t for t in c.subscribed_at if t >= t_starting)
        for c in consumers
        if any(t >= t_starting for t in c.subscribed_at)
    ]
    down = [e for e in fleet.events if t_stop <= e[0] < t_back and e[2] == "failed"]
    figures.update(
        {
            "outage_s": t_back - t_stop,
            "stop_took_s": t_stopped - t_stop,
            "failed_attempts_while_down": len(down),
            "broker_cpu_s_until_all_back": cpu_storm,
            "workers_cpu_pct_until_all_back": 100 * workers_storm / max(1e-9, t_all - t_back),
            "workers_loop_lag_max_s": lag_storm,
            "listen_drops": drops,
            "broker_rss_kib_after": status_kib(pid, "VmRSS"),
            "backlog_drained_s": t_drained - t_back,
            "online_at_end": snap.online,
            "consumers_during_recovery": consumer_figures(consumers, t_back, t_drained),
            "connects_per_s_timeline": _timeline(fleet.events, t_back, t_all),
            # The consumers' own reconnect: mosquitto does not restore their shared
            # subscription from its persistence, so what gateways publish before the group
            # subscribes again is acknowledged (PUBACK 0x10, no matching subscribers) and
            # dropped; the uplink counts that as delivered.
            "consumers_subscribed_again_s": [t - t_back for t in resubscribed],
            "gateways_back_before_the_group": sum(
                t < min(resubscribed, default=math.inf)
                for t in first_connects(fleet.events, t_back, t_all).values()
            ),
        }
    )
    return figures


def _timeline(events: list[tuple[float, int, str]], since: float, until: float) -> list[int]:
    """Connects in each second after `since`."""
    counts = [0] * (int(until - since) + 1)
    for t, _, kind in events:
        if kind == "connected" and since <= t <= until:
            counts[int(t - since)] += 1
    return counts


# --- output ------------------------------------------------------------------------------


def print_table(r: dict[str, Any]) -> None:
    m, load = r["machine"], r["load"]
    print(f"command: {r['command']}")
    print(
        f"machine: {m['cpu']}, nproc {m['nproc']}, {m['memory']} RAM; {m['kernel']}; "
        f"{m['mosquitto']}; Python {m['python']}, aiomqtt {m['aiomqtt']} / paho-mqtt {m['paho']}"
    )
    print(
        f"load: {load['gateways']:,} gateways in {load['procs']} process(es), a batch of "
        f"{load['readings_per_batch']} readings every {load['interval_s']:g} s each = "
        f"{load['batches_per_s']:,.0f} batches/s, {load['readings_per_s']:,.0f} readings/s; "
        f"{load['consumers']} consumers on $share/{GROUP}/{PREFIX}/+/data/#; {load['buffer']}; "
        f"gateways over {load['uplink']}"
    )
    print()
    print("| phase | figure | value |")
    print("|---|---|---|")
    for phase, rows in (
        ("steady", _steady_rows(r["steady"])),
        ("cold start", _storm_rows(r["cold_start"], "after the start")),
        ("retained", _retained_rows(r["retained"])),
        ("broker restart", _restart_rows(r["restart"]) if "restart" in r else []),
        ("consumer group", _group_rows(r)),
    ):
        for name, value in rows:
            print(f"| {phase} | {name} | {value} |")
    for error in r["uplink_errors"]:
        print(f"uplink error: {error}")


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def _steady_rows(st: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (
            "batches published",
            f"{st['batches_published_per_s']:,.1f} /s over {st['seconds']:.0f} s",
        ),
        (
            "broker CPU",
            f"{st['broker_cpu_pct']:.2f} % of a core "
            f"({st['broker_cpu_pct_per_1000_gateways']:.2f} % per 1,000 gateways)",
        ),
        (
            "broker RSS",
            f"{st['broker_rss_kib'] / 1024:.1f} MiB, idle {st['broker_idle_rss_kib'] / 1024:.1f} "
            f"MiB: **{st['broker_rss_per_gateway_kib']:.1f} KiB per gateway**",
        ),
        (
            "the cabinets (bench workers)",
            f"{st['workers_cpu_pct']:.0f} % CPU ({st['workers_cpu_ms_per_gateway_s']:.2f} ms/s "
            f"per gateway), {st['workers_rss_per_gateway_kib']:.0f} KiB RSS per gateway, "
            f"event loops up to {st['workers_loop_lag_max_s']:.2f} s late",
        ),
    ]


def _storm_rows(st: dict[str, Any], since: str) -> list[tuple[str, str]]:
    return [
        (
            "every gateway connected",
            f"{_s(st['all_back_s'])} {since} (first {_s(st['first_s'])}, p50 {_s(st['p50_s'])}, "
            f"p90 {_s(st['p90_s'])})",
        ),
        (
            "peak connects",
            f"{st['peak_connects_per_s']} in 1 s, {st['peak_connects_per_100ms']} in 100 ms; "
            f"listen-queue drops {st['listen_drops']}; failed attempts "
            f"{st['failed_attempts']}; gateways connected twice {st['reconnects_beyond_one']}",
        ),
    ]


def _retained_rows(ret: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (
            f"new subscriber to {PREFIX}/+/status",
            f"{ret['status_messages']:,} retained in {ret['status_s']:.2f} s",
        ),
        (
            f"new subscriber to {PREFIX}/#",
            f"{ret['all_retained_messages']:,} retained in {ret['all_retained_s']:.2f} s",
        ),
    ]


def _restart_rows(rs: dict[str, Any]) -> list[tuple[str, str]]:
    timeline = " ".join(map(str, rs["connects_per_s_timeline"]))
    group = ", ".join(f"{t:.2f}" for t in rs["consumers_subscribed_again_s"])
    return [
        (
            "outage",
            f"{rs['outage_s']:.1f} s (SIGTERM took {rs['stop_took_s']:.2f} s); "
            f"{rs['failed_attempts_while_down']:,} refused connect attempts meanwhile",
        ),
        *_storm_rows(rs, "after the broker listened"),
        ("connects in each second after", timeline),
        (
            "costs",
            f"broker {rs['broker_cpu_s_until_all_back']:.2f} s CPU until all back; bench workers "
            f"{rs['workers_cpu_pct_until_all_back']:.0f} % CPU, loops up to "
            f"{rs['workers_loop_lag_max_s']:.2f} s late",
        ),
        ("backlog drained", f"{rs['backlog_drained_s']:.1f} s after the broker listened"),
        (
            "consumer group subscribed again",
            f"{group} s after; {rs['gateways_back_before_the_group']} gateways were back before",
        ),
    ]


def _group_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    st, a = r["steady"], r["accounting"]
    rows = [
        (
            f"{c['consumer']} (steady)",
            f"{c['batches']:,} batches ({c['per_s']:.1f} /s, peak {c['peak_per_s']} /s), "
            f"{cpu:.1f} % CPU",
        )
        for c, cpu in zip(st["consumers"], st["consumers_cpu_pct"], strict=True)
    ]
    if "restart" in r:
        peaks = ", ".join(str(c["peak_per_s"]) for c in r["restart"]["consumers_during_recovery"])
        rows.append(("peak during the recovery", f"{peaks} batches/s"))
    cost = ", ".join(f"{us:.0f}" for us in r["consumer_cpu_us_per_batch"])
    rows += [
        ("CPU per batch (paho + decode)", f"{cost} µs"),
        (
            "accounting",
            f"{a['batches_stored']:,} stored, {a['received_once_or_more']:,} received, "
            f"**{a['missing']} missing**, {a['duplicates']} duplicates "
            f"({a['duplicates_to_two_consumers']} reached two consumers)",
        ),
        (
            "what the uplinks said",
            "; ".join(f"{k} (x{n})" for k, n in r["uplink_said"].items()) or "nothing",
        ),
    ]
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateways", type=int, default=1000)
    parser.add_argument("--procs", type=int, default=2, help="worker processes for the cabinets")
    parser.add_argument(
        "--interval", type=parse_duration, default="5s", help="a batch per gateway this often"
    )
    parser.add_argument("--readings", type=int, default=50, help="readings per batch")
    parser.add_argument(
        "--duration", type=parse_duration, default="60s", help="the steady window measured"
    )
    parser.add_argument(
        "--warmup", type=parse_duration, default=None, help="after all connected (interval + 2 s)"
    )
    parser.add_argument(
        "--outage", type=parse_duration, default="10s", help="broker down this long; 0s: no restart"
    )
    parser.add_argument("--consumers", type=int, default=3, help="the centre's consumer group")
    parser.add_argument("--sync", choices=["full", "normal"], default="full", help="buffer sync")
    parser.add_argument(
        "--autosave", type=int, default=1800, help="mosquitto autosave_interval, seconds"
    )
    parser.add_argument(
        "--connect-threads", type=int, default=64, help="each worker's executor for connects"
    )
    parser.add_argument(
        "--tls", action="store_true", help="gateways connect with mutual TLS (consumers plain)"
    )
    parser.add_argument("--workdir", help="keep the broker's files here (its log, config)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = args.interval + 2.0
    args.procs = max(1, min(args.procs, args.gateways))
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
