"""The centre's view, as a centre runs it: `edge-gateway tail --format influx` piped into a
real InfluxDB (the Debian `influxdb` package, 1.x, started here on a free loopback port)
holds every reading the gateway published once, across a crash and a restart, and the
completeness account says where every seq is; `watch --once --json` shows a device that
stopped answering within one health interval; `--share` splits a fleet between consumers.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as paho
import pytest
from rig import REPO, Subscriber, gateway_config, modbus_device

from drivers.core.model import Reading
from drivers.modbus.decode import DataType, Table
from drivers.sim.modbus import ModbusSimServer, SimulatedDevice, free_tcp_port
from gateway.centre.influx import QUALITY_NAMES
from gateway.devtools.broker import Mosquitto
from gateway.wire import encode_batch

HEALTH_INTERVAL = 1.0  # gateway_config's [mqtt] health_interval


# --- a real InfluxDB -------------------------------------------------------------------------


class InfluxDB:
    """`influxd run` with a config of its own: loopback ports, data in `workdir`, no
    usage reporting, no internal monitoring database."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("influxd") or "/usr/bin/influxd"
        if not Path(binary).is_file():
            raise RuntimeError("influxd is not installed: .ci/bootstrap installs 'influxdb'")
        self.binary = binary
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_tcp_port()
        self.conf = workdir / "influxdb.conf"
        self.log = workdir / "influxd.log"
        self.conf.write_text(
            f"""reporting-disabled = true
bind-address = "127.0.0.1:{free_tcp_port()}"
[meta]
  dir = "{workdir}/meta"
[data]
  dir = "{workdir}/data"
  wal-dir = "{workdir}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
[continuous_queries]
  enabled = false
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "run", "-config", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"influxd exited; see {self.log}"
            try:
                with urllib.request.urlopen(self._url("/ping"), timeout=1) as answer:
                    if answer.status == 204:
                        return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"influxd did not answer /ping within {timeout}s; see {self.log}")

    def _url(self, path: str, **query: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}?{urllib.parse.urlencode(query)}"

    def query(self, q: str, db: str = "") -> dict[str, Any]:
        request = urllib.request.Request(self._url("/query", q=q, db=db, epoch="ms"), method="POST")
        with urllib.request.urlopen(request, timeout=10) as answer:
            result: dict[str, Any] = json.loads(answer.read())
        errors = [r["error"] for r in result.get("results", []) if "error" in r]
        assert not errors, errors
        return result

    def write(self, db: str, lines: list[str]) -> None:
        body = "".join(line + "\n" for line in lines).encode()
        request = urllib.request.Request(
            self._url("/write", db=db, precision="ns"), data=body, method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 204, answer.read()

    def rows(self, db: str, measurement: str) -> list[dict[str, Any]]:
        result = self.query(f'SELECT * FROM "{measurement}"', db)
        rows = []
        for series in result["results"][0].get("series", []):
            rows += [
                dict(zip(series["columns"], values, strict=True)) for values in series["values"]
            ]
        return rows

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def influxdb(tmp_path: Path) -> Iterator[InfluxDB]:
    server = InfluxDB(tmp_path / "influxdb")
    server.start()
    yield server
    server.stop()


# --- the centre's commands as processes --------------------------------------------------------


class CentreCommand:
    """`edge-gateway tail ...` (or `watch`) as a process; each line of its output goes to
    `on_line` (and `lines`), its stderr to `errors`."""

    def __init__(self, *args: str, on_line: Callable[[str], None] | None = None) -> None:
        self.lines: list[str] = []
        self.errors: list[str] = []
        self.on_line = on_line
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self._line), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.errors.append)),
        ]
        for reader in self._readers:
            reader.start()

    def _line(self, line: str) -> None:
        self.lines.append(line)
        if self.on_line is not None:
            self.on_line(line)

    @staticmethod
    def _read(stream: IO[str], take: Callable[[str], None]) -> None:
        for line in stream:
            take(line.rstrip("\n"))

    async def subscribed(self, within: float = 20.0) -> None:
        await Subscriber.wait_async(
            lambda: any("subscribed" in e for e in self.errors) or self.proc.poll() is not None,
            within,
            "the command subscribed",
        )
        assert self.proc.poll() is None, self.errors

    def finish(self, timeout: float = 20.0) -> int:
        """SIGTERM (as a service manager stops it); its exit status once its output is read."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 20.0) -> int:
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise
        for reader in self._readers:
            reader.join(10)
        return status


@pytest.fixture
def commands() -> Iterator[Callable[..., CentreCommand]]:
    started: list[CentreCommand] = []

    def start(*args: str, on_line: Callable[[str], None] | None = None) -> CentreCommand:
        command = CentreCommand(*args, on_line=on_line)
        started.append(command)
        return command

    yield start
    for command in started:
        if command.proc.poll() is None:
            command.proc.kill()
            command.proc.wait(5)


class InfluxWriter:
    """What Telegraf's execd does with the lines: writes them to InfluxDB, 200 at a time
    (the rest when the stream ends)."""

    def __init__(self, influx: InfluxDB, db: str) -> None:
        self.influx, self.db = influx, db
        self.pending: list[str] = []
        self.written = 0

    def line(self, line: str) -> None:
        self.pending.append(line)
        if len(self.pending) >= 200:
            self.flush()

    def flush(self) -> None:
        lines, self.pending = self.pending, []
        if lines:
            self.influx.write(self.db, lines)
            self.written += len(lines)


# --- the tests -------------------------------------------------------------------------------


def a_pump_station() -> SimulatedDevice:
    pump = SimulatedDevice(unit=1)
    pump.add_read_counter(Table.HOLDING, 0)  # an int that grows: uint32
    pump.set_value(Table.HOLDING, 10, 2.5, DataType.FLOAT32)
    pump.set_value(Table.HOLDING, 20, "FG-2", DataType.STRING, length=2)
    pump.set_value(Table.COIL, 0, True)
    return pump


PUMP_POINTS = """
  { name = "polls", address = 0, type = "uint32" },
  { name = "level", address = 10, type = "float32" },
  { name = "tag", address = 20, type = "string", length = 2 },
  { name = "running", table = "coil", address = 0, type = "bool" },
"""


async def test_tail_feeds_influxdb_every_reading_once_across_a_crash_and_a_restart(
    tmp_path: Path,
    broker: Mosquitto,
    subscriber: Subscriber,
    gateway_process: Any,
    influxdb: InfluxDB,
    commands: Callable[..., CentreCommand],
) -> None:
    influxdb.query("CREATE DATABASE centre")
    writer = InfluxWriter(influxdb, "centre")
    where = f"127.0.0.1:{broker.port}"
    feed = commands("tail", "--broker", where, "--format", "influx", "-v", on_line=writer.line)
    ledger = commands("tail", "--broker", where, "--completeness", "--every", "1h", "-v")
    await feed.subscribed()
    await ledger.subscribed()
    async with ModbusSimServer([a_pump_station()]) as sim:
        gp = gateway_process(
            gateway_config(
                broker_port=broker.port,
                buffer_path=tmp_path / "buffer.db",
                devices=modbus_device("pump", sim.port, 1, PUMP_POINTS)
                # nobody answers unit 9: readings without a value (comm_error, device_offline)
                + modbus_device(
                    "ghost", sim.port, 9, '{ name = "x", address = 0, type = "int16" }'
                ),
            )
        )
        gp.start()
        await subscriber.wait_async(lambda: len(subscriber.batches()) >= 6, 20, "batches")
        gp.kill()  # a crash: the open batch is lost, acknowledged batches may come again
        gp.start()
        boots = lambda: {b.boot_id for b in subscriber.batches()}  # noqa: E731
        await subscriber.wait_async(lambda: len(boots()) == 2, 20, "the second boot's data")
        await asyncio.sleep(1.0)
        assert gp.stop() == 0
    await subscriber.wait_async(
        lambda: any(json.loads(p).get("reason") == "stopped" for p in subscriber.on("/status")),
        10,
        "the goodbye",
    )
    await asyncio.sleep(0.5)  # what is in flight to the tails arrives
    assert feed.finish() == 0 and ledger.finish() == 0, feed.errors + ledger.errors
    writer.flush()

    batches = subscriber.batches()  # the centre's ground truth: each (gateway, boot, seq) once
    readings = [r for b in batches for r in b.readings]
    kinds = collections.Counter(type(r.value).__name__ for r in readings)
    assert {"int", "float", "str", "bool", "NoneType"} <= set(kinds), kinds
    assert len(feed.lines) == writer.written == len(readings), "a reading doubled or missing"

    stored = influxdb.rows("centre", "pump") + influxdb.rows("centre", "ghost")
    assert sorted((r["device"], r["point"], r["time"]) for r in stored) == sorted(
        (r.device, r.point, r.ts_ms) for r in readings
    )
    assert {r["gateway"] for r in stored} == {"test-gw"}
    by_key = {(r["device"], r["point"], r["time"]): r for r in stored}
    for reading in readings:
        row = by_key[reading.device, reading.point, reading.ts_ms]
        if reading.value is None:
            assert row["quality_code"] == reading.quality
            assert row["quality"] == QUALITY_NAMES[reading.quality]
        elif isinstance(reading.value, str):
            assert row["text"] == reading.value
        else:
            assert row["value"] == float(reading.value) and row["quality"] == "good"

    (account,) = [json.loads(line) for line in ledger.lines]
    assert account["gateway_id"] == "test-gw"
    assert account["missing"] == [], account
    assert account["received"]["seqs"] == _ranges(sorted(b.seq for b in batches))
    assert account["received"]["readings"] == len(readings)
    crashed, stopped = account["boots"]
    assert (crashed["state"], stopped["state"]) == ("crashed", "stopped")
    (lost,) = account["lost_at_crash"]
    assert lost["boot_id"] == crashed["boot_id"] and lost["seqs"] == []
    assert isinstance(lost["unbatched_readings"], int)
    assert account["counts"]["received"] + account["counts"]["on_disk"] == account["last_seq"] - (
        account["since_seq"] - 1
    ) - sum(hi - lo + 1 for lo, hi in account["skipped"])


def _ranges(seqs: list[int]) -> list[list[int]]:
    ranges: list[list[int]] = []
    for seq in seqs:
        if ranges and ranges[-1][1] == seq - 1:
            ranges[-1][1] = seq
        else:
            ranges.append([seq, seq])
    return ranges


async def test_watch_once_json_shows_a_device_that_stopped_answering_within_one_health_interval(
    tmp_path: Path,
    broker: Mosquitto,
    subscriber: Subscriber,
    gateway_process: Any,
    commands: Callable[..., CentreCommand],
) -> None:
    pump, gas = SimulatedDevice(unit=1), SimulatedDevice(unit=1)
    pump.add_read_counter(Table.HOLDING, 0)
    gas.set_value(Table.HOLDING, 0, 4.5, DataType.FLOAT32)
    async with ModbusSimServer([pump]) as pump_sim, ModbusSimServer([gas]) as gas_sim:
        gp = gateway_process(
            gateway_config(
                broker_port=broker.port,
                buffer_path=tmp_path / "buffer.db",
                devices=modbus_device("pump", pump_sim.port, 1, '{ name = "n", address = 0, type = "uint32" }')
                + modbus_device("gas", gas_sim.port, 1, '{ name = "ch4", address = 0, type = "float32" }'),
            )
        )  # fmt: skip
        gp.start()
        await subscriber.wait_async(
            lambda: subscriber.on("/health") and subscriber.readings("pump"), 20, "data, health"
        )
        await pump_sim.stop()  # the device is switched off
        stopped_at = time.time()
        where = f"127.0.0.1:{broker.port}"
        watch = commands("watch", "--broker", where, "--once", "--json", "--for", "1s")
        table = commands("watch", "--broker", where, "--once", "--for", "1s")
        # waited for off the event loop, where the simulated gas detector answers
        assert await asyncio.to_thread(watch.wait) == 0, watch.errors
        assert await asyncio.to_thread(table.wait) == 0, table.errors
        assert gp.stop() == 0

    view = json.loads("\n".join(watch.lines))
    (gateway,) = view["gateways"]
    assert gateway["gateway_id"] == "test-gw" and gateway["state"] == "online"
    devices = {d["name"]: d for d in gateway["devices"]}
    assert devices["pump"]["state"] == "offline" and devices["gas"]["state"] == "online"
    assert devices["pump"]["since"] - stopped_at <= HEALTH_INTERVAL
    assert gateway["devices_offline"] == ["pump"]
    assert gateway["buffer"]["open"] and gateway["uplink"]["state"] == "online"
    assert gateway["last_seen_age_s"] < 2 * HEALTH_INTERVAL
    assert gateway["completeness"]["received"]["batches"] > 0
    assert gateway["completeness"]["missing"] == []
    (row,) = [line for line in table.lines if line.startswith("test-gw")]
    assert "online" in row and "1off" in row


async def test_watch_once_stopped_by_sigterm_prints_what_it_collected_and_for_how_long(
    broker: Mosquitto, commands: Callable[..., CentreCommand]
) -> None:
    """A rig that stops `watch --once --for 60s` early gets the fleet so far, exit 0, and
    `collected_s` says how long it listened (it said 60 before)."""
    where = f"127.0.0.1:{broker.port}"
    watch = commands("watch", "--broker", where, "--once", "--json", "--for", "60s")
    await asyncio.sleep(2.0)
    assert watch.proc.poll() is None, watch.errors
    assert await asyncio.to_thread(watch.finish) == 0, watch.errors
    view = json.loads("\n".join(watch.lines))
    assert 1.0 < view["collected_s"] < 30.0
    assert view["gateways"] == []


async def test_tails_sharing_a_subscription_split_the_fleet_and_each_batch_goes_to_one(
    broker: Mosquitto, commands: Callable[..., CentreCommand]
) -> None:
    where = f"127.0.0.1:{broker.port}"
    members = [commands("tail", "--broker", where, "--share", "writers", "-v") for _ in range(2)]
    for member in members:
        await member.subscribed()
    publisher = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="a-fleet")
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    try:
        sent = [(gw, seq) for gw in ("cab-1", "cab-2") for seq in range(1, 21)]
        for gw, seq in sent:
            payload = encode_batch(gw, "0123456789abcdef", seq, [Reading("d", "p", seq, seq)])
            publisher.publish(f"city/{gw}/data", payload, qos=1).wait_for_publish(5)
        await Subscriber.wait_async(
            lambda: sum(len(m.lines) for m in members) >= len(sent), 10, "every batch"
        )
    finally:
        publisher.loop_stop()
        publisher.disconnect()
    assert [member.finish() for member in members] == [0, 0]
    got = [[(r["gateway_id"], r["seq"]) for r in map(json.loads, m.lines)] for m in members]
    assert sorted(got[0] + got[1]) == sorted(sent), "a batch missing, or given to both"
    assert got[0] and got[1], "one member took the whole fleet"


def test_tail_says_in_a_sentence_that_the_broker_cannot_be_reached_and_exits_3() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "tail", "--broker", f"127.0.0.1:{free_tcp_port()}"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert result.returncode == 3
    assert result.stderr.startswith("edge-gateway tail: ") and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""


def test_tail_into_a_reader_that_goes_away_stops_quietly_with_141(
    broker: Mosquitto,
) -> None:
    read_end, write_end = os.pipe()
    tail = subprocess.Popen(
        [sys.executable, "-m", "gateway", "tail", "--broker", f"127.0.0.1:{broker.port}", "-v"],
        stdout=write_end,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    os.close(write_end)
    os.close(read_end)  # `| head` that already left
    assert tail.stderr is not None
    assert b"subscribed" in tail.stderr.readline()
    publisher = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="one-gateway")
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    try:
        payload = encode_batch("cab-1", "0123456789abcdef", 1, [Reading("d", "p", 1, 1.0)])
        publisher.publish("city/cab-1/data", payload, qos=1).wait_for_publish(5)
        assert tail.wait(20) == 141
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        if tail.poll() is None:
            tail.kill()
    assert tail.stderr.read() == b""
