"""Power cuts, tested truthfully: the gateway's whole data directory (the buffer, the
alarm queue, config-history.json, command-nonces.json, command-audit.json, configs/)
and its config file live on the power-cut filesystem (lazyfs.py). At random moments
the gateway is stopped dead (SIGSTOP), the power is cut (everything never fsynced is
forgotten; half the cuts tear the last unsynced write at 512-byte sectors), the
gateway is SIGKILLed, the filesystem mounted again with the durable state alone, the
state files checked on it, and the gateway restarted. Meanwhile a Modbus device is
polled (a read counter: every reading is numbered), an alarm is raised and cleared
over and over, signed `ping` commands arrive, and configs are flashed with SIGHUP.

Accounting at the centre, by (gateway, boot, seq), per `[buffer]` setting:
- **a seq is never reused**: no seq carries two different batches (or alarms), and
  every boot's seqs lie above every earlier boot's;
- with `write = "all"` and `sync = "full"` (alone or with a `commit_interval`) every
  committed batch arrives: the seqs have no hole. With `"normal"`, and with the default
  `write = "unacked"` (batches published from memory, written only if not acknowledged
  within max_age), a hole is allowed only where a boot begins (seqs continue above the
  fsynced lease); `slow_link` is the defaults with the broker's PUBACK 0.8 s away, so
  every batch goes through the outage journal (buffer/DESIGN.md) before its ack;
- the readings lost at each cut are the newest ones, within the window buffer/DESIGN.md
  states for the setting (the open batch, or with "unacked" max_age from a batch's
  first reading; plus the commit interval, or the 1 s sync timer of "normal"); no
  reading is lost where there was no cut;
- the alarm queue (always `"full"`) loses no alarm that was committed: no hole;
- the buffers open every time, nothing is salvaged or set aside; every state file is
  whole JSON or TOML after every cut; config history never loses a durable entry and
  every hash it names is kept in configs/; every command the gateway answered `ok`
  has its nonce and its audit entry on the disk, and sent again after the cut it is
  refused as `replayed`.

CI runs a few cuts per setting; the long run (200 per setting) is `soak`:
`.ci/test -m soak tests/powercut/test_gateway_power_cuts.py -s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import random
import re
import signal
import sqlite3
import time
import tomllib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from powercut.mount import LazyMount, require_fuse
from rig import GatewayProcess, Subscriber, gateway_config, modbus_device

from drivers.core.model import Quality
from drivers.modbus.decode import DataType, Table
from drivers.sim.modbus import ModbusSimServer, SimulatedDevice
from gateway.control.keys import generate_key_pair, load_private_key
from gateway.control.signing import envelope_bytes, new_command, sign
from gateway.devtools.broker import Mosquitto
from gateway.devtools.rig import LinkProxy
from gateway.flashing import write_atomically
from gateway.wire import Batch, decode_batch

pytestmark = pytest.mark.rig

GATEWAY = "test-gw"
POLL_S = 0.05
MAX_AGE_S = 0.3
SYNC_INTERVAL_S = 1.0  # gateway/app.py: the WAL is fsynced this often with sync = "normal"
COMMIT_INTERVAL_S = 1.0
SLOW_LINK_MS = 400  # each way: the PUBACK comes after max_age
SLACK_S = 0.5  # a commit's own time (an fsync through FUSE) and the poll that was under way

# [buffer] lines per durability setting, and the newest readings a cut may take with it
# (buffer/DESIGN.md, "Durability window"; README: "at most the readings not yet batched").
SETTINGS: dict[str, tuple[str, float]] = {
    "unacked": ("", MAX_AGE_S),  # the defaults: write = "unacked", sync = "full"
    # The defaults with the broker's PUBACK 0.8 s away (SLOW_LINK_MS each way through a
    # proxy): every batch falls due before it is acknowledged, so every batch goes
    # through the outage journal: written, acked there, its segments deleted.
    "slow_link": ("", MAX_AGE_S),
    "full": ('write = "all"\nsync = "full"', MAX_AGE_S),
    "normal": ('write = "all"\nsync = "normal"', MAX_AGE_S + SYNC_INTERVAL_S),
    "commit_interval": (
        f'write = "all"\nsync = "full"\ncommit_interval = "{COMMIT_INTERVAL_S * 1000:.0f}ms"',
        MAX_AGE_S + COMMIT_INTERVAL_S,
    ),
}

POINTS = """
  { name = "polls", address = 0, type = "uint32" },
  { name = "level", address = 2, type = "float32" },
"""
ALARMS = """
[[alarms]]
name = "level-high"
kind = "threshold"
device = "pump"
point = "level"
high = 10.0
severity = "warning"
"""
SET_ASIDE = re.compile(r"\.(unreadable|corrupt|refused)-")
TROUBLE = re.compile(r"damaged|salvaged|could not be read|moved aside|unusable", re.IGNORECASE)


@dataclass
class Cut:
    at: float  # time.time() of the cut
    torn: bool
    report: dict[str, Any]


@dataclass
class Figures:
    setting: str
    cuts: int = 0
    torn: int = 0
    batches: int = 0
    holes: list[tuple[int, int]] = field(default_factory=list)
    seqs_reused: int = 0
    readings: int = 0
    readings_lost: int = 0
    polls_cancelled: int = 0  # one poll in flight at a config switch (never answered)
    lost_windows: list[float] = field(default_factory=list)
    alarms: int = 0
    alarm_holes: int = 0
    alarm_seqs_reused: int = 0
    commands_ok: int = 0
    replays_refused: int = 0
    configs_flashed: int = 0
    history_entries: int = 0
    left_on_disk: int = 0

    def line(self) -> str:
        worst = max(self.lost_windows, default=0.0)
        return (
            f"{self.setting}: {self.cuts} cuts ({self.torn} torn), {self.batches} batches, "
            f"{len(self.holes)} hole(s) in seqs, {self.readings} readings, "
            f"{self.readings_lost} lost at cuts (the oldest of them read {worst:.2f} s before "
            f"the cut at worst, "
            f"{sum(self.lost_windows) / max(len(self.lost_windows), 1):.2f} s mean), "
            f"{self.polls_cancelled} poll(s) cancelled by a config switch; "
            f"seqs reused: {self.seqs_reused}; alarms {self.alarms}, holes {self.alarm_holes}, "
            f"reused {self.alarm_seqs_reused}; commands ok {self.commands_ok}, replays "
            f"refused {self.replays_refused}; configs flashed {self.configs_flashed}, "
            f"history entries {self.history_entries}; left on disk {self.left_on_disk}"
        )


class Centre:
    """Sends signed pings to the gateway and remembers what it answered."""

    def __init__(self, broker: Mosquitto, key_path: Path) -> None:
        self.key = load_private_key(key_path)
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.sent: dict[str, tuple[bytes, float]] = {}  # nonce -> (payload, issued at)

    def ping(self) -> str:
        command = new_command("ping", GATEWAY, {}, "ops", now=time.time())
        payload = envelope_bytes(sign(command, self.key))
        self.sent[command.nonce] = (payload, time.time())
        self.send(payload)
        return command.nonce

    def send(self, payload: bytes) -> None:
        self.client.publish(f"city/{GATEWAY}/cmd/ping", payload, qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def replies(sub: Subscriber) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for payload in sub.on("/reply/ping"):
        reply = json.loads(payload)
        out[reply.get("nonce")].append(reply)
    return out


def answered_ok(sub: Subscriber) -> set[str]:
    return {n for n, rs in replies(sub).items() if any(r["outcome"] == "ok" for r in rs)}


def recent_ok(sub: Subscriber, centre: Centre, within: float = 120.0) -> set[str]:
    """Commands answered `ok` that the gateway must still remember: issued well within
    its 300 s window (older nonces are forgotten below the horizon, by design, and the
    audit log keeps its last entries only)."""
    now = time.time()
    return {n for n in answered_ok(sub) if n in centre.sent and now - centre.sent[n][1] < within}


def config_text(broker_port: int, port: int, data: Path, trusted: Path, setting: str) -> str:
    text = gateway_config(
        broker_port=broker_port,
        buffer_path=data / "buffer.db",
        devices=modbus_device("pump", port, 1, POINTS, interval=f"{POLL_S * 1000:.0f}ms") + ALARMS,
        gateway_id=GATEWAY,
        max_readings=40,
        max_age=f"{MAX_AGE_S * 1000:.0f}ms",
        extra_mqtt='publish_timeout = "2s"\nkeepalive = "2s"',
    )
    text = text.replace('log_level = "info"', 'log_level = "info"\nclock_sync = "assume"', 1)
    text = text.replace('max_bytes = "50MB"', f'max_bytes = "8MB"\n{SETTINGS[setting][0]}', 1)
    return text.replace("[batch]", f'[commands]\ntrusted_keys = "{trusted}"\n\n[batch]', 1)


# --- what the disk holds after a cut ------------------------------------------------------------


@dataclass
class DurableState:
    history_ids: set[int] = field(default_factory=set)
    history_hashes: set[str] = field(default_factory=set)
    nonces: set[str] = field(default_factory=set)
    audited: set[str] = field(default_factory=set)


def tinydb_tables(path: Path) -> dict[str, dict[str, Any]]:
    """A state file as the gateway left it: whole JSON of TinyDB tables, or absent."""
    if not path.exists():
        return {}
    text = path.read_bytes()
    assert text, f"{path.name} is empty after the cut"
    doc = json.loads(text)  # a torn file fails here
    assert isinstance(doc, dict) and all(isinstance(t, dict) for t in doc.values()), path
    return doc


def check_the_disk(
    data: Path, config: Path, variants: set[str], before: DurableState
) -> DurableState:
    """Everything the gateway wrote, as the power cut left it on the disk."""
    names = [p.name for p in data.iterdir()] if data.exists() else []
    assert not [n for n in names if SET_ASIDE.search(n)], f"set aside after a cut: {names}"
    assert config.read_text() in variants, "the config file is torn or unknown"
    tomllib.loads(config.read_text())
    seq_file = data / "buffer.db.seq"
    if seq_file.exists():
        int(seq_file.read_text())
    history = tinydb_tables(data / "config-history.json").get("history", {})
    now = DurableState(
        history_ids={int(k) for k in history},
        history_hashes={e["hash"] for e in history.values()},
    )
    # The history keeps its last 100 entries: only one newer than the oldest kept is lost.
    lost = {i for i in before.history_ids - now.history_ids if i > min(now.history_ids, default=0)}
    assert not lost, f"config history entries {sorted(lost)} were durable and are gone"
    for path in (data / "configs").glob("*.toml") if (data / "configs").exists() else []:
        raw = path.read_bytes()
        assert hashlib.sha256(raw).hexdigest()[:12] == path.stem, f"kept config {path.name} is torn"
    for config_hash in now.history_hashes:
        assert (data / "configs" / f"{config_hash}.toml").exists(), (
            f"history names config {config_hash}, which configs/ lost at the cut"
        )
    nonces = tinydb_tables(data / "command-nonces.json")
    for doc in nonces.values():
        for entry in doc.values():
            now.nonces |= set(entry.get("nonces", {}))
    for doc in tinydb_tables(data / "command-audit.json").values():
        for entry in doc.values():
            if entry.get("nonce"):
                now.audited.add(entry["nonce"])
    return now


# --- the run ------------------------------------------------------------------------------------


async def power_cuts(
    tmp_path: Path, broker: Mosquitto, setting: str, cuts: int, seed: int
) -> Figures:
    require_fuse()
    rnd = random.Random(seed)
    fs = LazyMount(tmp_path / "lazyfs")
    figures = Figures(setting)
    cut_log: list[Cut] = []
    sub = Subscriber(broker)
    centre: Centre | None = None
    gp: GatewayProcess | None = None
    try:
        await asyncio.to_thread(fs.mount)
        data = fs.mountpoint / "edge-gateway"  # /var/lib/edge-gateway, made by the installer
        data.mkdir(mode=0o700)
        pair = generate_key_pair(tmp_path / "centre", "ops")
        trusted = tmp_path / "trusted-keys"
        trusted.mkdir()
        (trusted / "ops.pub").write_bytes(pair.public.read_bytes())
        centre = Centre(broker, pair.private)

        device = SimulatedDevice(unit=1)
        device.add_read_counter(Table.HOLDING, 0)
        device.set_value(Table.HOLDING, 2, 0.0, DataType.FLOAT32)
        read_at = time_the_reads(device)
        async with contextlib.AsyncExitStack() as stack:
            sim = await stack.enter_async_context(ModbusSimServer([device]))
            broker_port = broker.port
            if setting == "slow_link":
                proxy = stack.enter_context(LinkProxy(broker.port))
                proxy.slow(SLOW_LINK_MS)
                broker_port = proxy.port
            base = config_text(broker_port, sim.port, data, trusted, setting)
            variants = {base + f"\n# flashed {n}\n" for n in range(4)} | {base}
            config = fs.mountpoint / "gateway.toml"  # /etc/edge-gateway, same card
            write_atomically(config, base.encode())
            fs.request({"op": "sync"})
            gp = GatewayProcess(tmp_path / "gw", base)
            gp.config = config
            toggler = asyncio.create_task(toggle_level(device, rnd), name="level")
            durable = DurableState()
            try:
                gp.start()
                await wait_for_boot(sub, gp, 1)
                for n in range(cuts):
                    await run_for_a_while(gp, centre, config, variants, rnd, figures)
                    torn = rnd.random() < 0.5
                    cut = await asyncio.to_thread(power_cut, gp, fs, torn, rnd.randrange(2**32))
                    cut_log.append(cut)
                    durable = check_the_disk(data, config, variants, durable)
                    missing = recent_ok(sub, centre) - durable.nonces
                    assert not missing, (
                        f"cut {n + 1}: answered ok, nonce not on the disk: {missing}"
                    )
                    missing = recent_ok(sub, centre) - durable.audited
                    assert not missing, f"cut {n + 1}: answered ok, not in the audit: {missing}"
                    gp.start()
                    await wait_for_boot(sub, gp, n + 2)
                    figures.replays_refused += await replay_refused(sub, centre, durable, rnd)
                await asyncio.sleep(1.0)  # calm: let the backlog drain
                assert await asyncio.to_thread(gp.stop) == 0, gp.log[-3000:]
            finally:
                toggler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await toggler
            served = device.reads
        await sub.wait_async(lambda: last_count(sub) >= served - 2, 30, "the last readings")
        left = left_on_disk(data / "buffer.db")
        figures.history_entries = len(durable.history_ids)
        account(figures, sub, gp, left, cut_log, read_at)
        return figures
    finally:
        if gp is not None:
            gp.cleanup()
        if centre is not None:
            centre.close()
        sub.close()
        await asyncio.to_thread(fs.close)


def time_the_reads(device: SimulatedDevice) -> dict[int, float]:
    """When the device served each value of its read counter (time.time())."""
    read_at: dict[int, float] = {}
    served = device.read

    def read(table: Table, address: int, count: int) -> Any:
        answer = served(table, address, count)
        if table is Table.HOLDING and address == 0 and isinstance(answer, list):
            read_at[(answer[0] << 16) | answer[1]] = time.time()
        return answer

    device.read = read  # type: ignore[method-assign]
    return read_at


async def toggle_level(device: SimulatedDevice, rnd: random.Random) -> None:
    """Raise and clear the alarm, over and over."""
    high = False
    while True:
        await asyncio.sleep(rnd.uniform(0.2, 0.6))
        high = not high
        device.set_value(Table.HOLDING, 2, 20.0 if high else 0.0, DataType.FLOAT32)


async def run_for_a_while(
    gp: GatewayProcess,
    centre: Centre,
    config: Path,
    variants: set[str],
    rnd: random.Random,
    figures: Figures,
) -> None:
    """Random work until the next cut: pings, a config flashed now and then."""
    end = time.monotonic() + rnd.uniform(0.3, 1.5)
    while (left := end - time.monotonic()) > 0:
        roll = rnd.random()
        if roll < 0.25:
            centre.ping()
        elif roll < 0.45 and gp.proc is not None:
            # A technician edits the file (saved whole) and reloads: history, configs/.
            await asyncio.to_thread(write_atomically, config, rnd.choice(sorted(variants)).encode())
            gp.proc.send_signal(signal.SIGHUP)
            figures.configs_flashed += 1
        await asyncio.sleep(min(left, rnd.uniform(0.05, 0.4)))


def power_cut(gp: GatewayProcess, fs: LazyMount, torn: bool, seed: int) -> Cut:
    """The gateway stops dead, the power goes, the process is gone; the power returns."""
    assert gp.proc is not None and gp.proc.poll() is None, gp.log[-3000:]
    at = time.time()
    gp.proc.send_signal(signal.SIGSTOP)  # nothing more from it after this instant
    report = fs.cut(tear=torn, seed=seed)
    gp.proc.kill()
    gp.proc.wait(10)
    gp.proc = None
    fs.remount()
    return Cut(at, torn, report)


async def wait_for_boot(sub: Subscriber, gp: GatewayProcess, run: int) -> None:
    """The gateway of this run is up: a health message of its boot, its buffer open and
    nothing salvaged; a command subscription; nothing in its log about damage."""

    def healthy() -> bool:
        boots = boot_ids(gp)
        if len(boots) < run:
            return False
        for payload in reversed(sub.on("/health")):
            health = json.loads(payload)
            if health["boot_id"] == boots[run - 1]:
                buffer = health["buffer"]
                assert buffer["open"] and buffer["recovered_from"] is None, buffer
                return health["uplink"].get("commands") == "subscribed"
        return False

    await sub.wait_async(healthy, 30, f"run {run} of the gateway up, buffer open")
    this_run = gp.log.rsplit(f"----- run {run} -----", 1)[-1]
    trouble = [line for line in this_run.splitlines() if TROUBLE.search(line)]
    assert not trouble, f"run {run}: {trouble}"


def boot_ids(gp: GatewayProcess) -> list[str]:
    return re.findall(r"starting \(boot ([0-9a-f]+)", gp.log)


async def replay_refused(
    sub: Subscriber, centre: Centre, durable: DurableState, rnd: random.Random
) -> int:
    """Send again a command answered `ok` before the cut (still within the window):
    refused as replayed. Returns 1 if one was tried."""
    recent = [
        n for n in answered_ok(sub) if n in centre.sent and time.time() - centre.sent[n][1] < 200
    ]
    if not recent:
        return 0
    nonce = rnd.choice(sorted(recent))
    before = len(replies(sub)[nonce])
    centre.send(centre.sent[nonce][0])
    await sub.wait_async(lambda: len(replies(sub)[nonce]) > before, 15, "the replay's reply")
    reply = replies(sub)[nonce][-1]
    assert (reply["outcome"], reply["code"]) == ("refused", "replayed"), reply
    return 1


def last_count(sub: Subscriber) -> int:
    counts = [int(r.value) for r in sub.readings("pump", "polls") if r.quality == Quality.GOOD]  # type: ignore[arg-type]
    return max(counts, default=0)


def left_on_disk(path: Path) -> list[Batch]:
    """Batches still in the buffer after the last clean stop: not lost, not sent yet."""
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [decode_batch(p) for (p,) in conn.execute("SELECT payload FROM batches")]
    finally:
        conn.close()


# --- the accounting ---------------------------------------------------------------------------


def account(
    figures: Figures,
    sub: Subscriber,
    gp: GatewayProcess,
    left: list[Batch],
    cuts: list[Cut],
    read_at: dict[int, float],
) -> None:
    figures.cuts = len(cuts)
    figures.torn = sum(c.torn for c in cuts)
    figures.left_on_disk = len(left)
    boots = boot_ids(gp)
    order = {boot: i for i, boot in enumerate(boots)}

    # Data batches: one content per seq, each boot above the earlier ones.
    copies = [b for b in sub.all_batches() if b.gateway_id == GATEWAY] + left
    contents: dict[int, set[tuple[str, tuple[Any, ...]]]] = defaultdict(set)
    per_boot: dict[str, list[int]] = defaultdict(list)
    for b in copies:
        contents[b.seq].add((b.boot_id, tuple(b.readings)))
        per_boot[b.boot_id].append(b.seq)
    figures.batches = len(contents)
    figures.seqs_reused = sum(len(c) > 1 for c in contents.values())
    figures.seqs_reused += boots_overlapping(per_boot, order)
    seqs = sorted(contents)
    figures.holes = [(a + 1, b - 1) for a, b in itertools.pairwise(seqs) if b > a + 1]
    boot_starts = {min(s) for s in per_boot.values()}

    # Alarms: the same, on their own queue (always sync = "full").
    alarm_contents: dict[int, set[tuple[str, str, int]]] = defaultdict(set)
    alarm_boots: dict[str, list[int]] = defaultdict(list)
    for payload in sub.on("/alarm"):
        alarm = json.loads(payload)
        alarm_contents[alarm["seq"]].add((alarm["boot_id"], alarm["state"], alarm["ts_ms"]))
        alarm_boots[alarm["boot_id"]].append(alarm["seq"])
    figures.alarms = len(alarm_contents)
    figures.alarm_seqs_reused = sum(len(c) > 1 for c in alarm_contents.values())
    figures.alarm_seqs_reused += boots_overlapping(alarm_boots, order)
    alarm_seqs = sorted(alarm_contents)
    figures.alarm_holes = sum(b > a + 1 for a, b in itertools.pairwise(alarm_seqs))

    # Readings: the device numbers its reads; a run of missing numbers is what a cut took.
    readings = sorted(
        {
            (int(r.value), r.ts_ms)  # type: ignore[arg-type]
            for b in copies
            for r in b.readings
            if r.point == "polls" and r.quality == Quality.GOOD
        }
    )
    figures.readings = len(readings)
    unexplained = []
    for (a, ts_a), (b, ts_b) in itertools.pairwise(readings):
        if b == a + 1:
            continue
        at = [c.at for c in cuts if ts_a / 1000 <= c.at <= ts_b / 1000]
        if not at and b == a + 2 and figures.polls_cancelled < figures.configs_flashed:
            figures.polls_cancelled += 1  # a config switch cancels the poll in flight
            continue
        if len(at) != 1:
            unexplained.append((a, b))
            continue
        figures.readings_lost += b - a - 1
        # How old the oldest reading the cut took was, by the device's clock of its reads.
        figures.lost_windows.append(at[0] - read_at.get(a + 1, ts_a / 1000))
    figures.commands_ok = len(answered_ok(sub))
    print(f"\npower cuts, {figures.line()}")

    window = SETTINGS[figures.setting][1] + SLACK_S
    assert figures.seqs_reused == 0, "a seq was handed out twice: the centre would drop data"
    assert figures.alarm_seqs_reused == 0, "an alarm seq was handed out twice"
    assert figures.alarm_holes == 0, "a committed alarm never arrived"
    if figures.setting in ("normal", "unacked", "slow_link"):
        stray = [h for h in figures.holes if h[1] + 1 not in boot_starts]
        assert not stray, f"holes in the seqs where no boot began: {stray}"
    else:
        assert not figures.holes, f"committed batches never arrived: {figures.holes}"
    assert not unexplained, f"readings lost where there was no cut: {unexplained}"
    assert max(figures.lost_windows, default=0.0) <= window, (
        f"a cut took readings older than {window:.2f} s: {sorted(figures.lost_windows)[-5:]}"
    )


def boots_overlapping(per_boot: dict[str, list[int]], order: dict[str, int]) -> int:
    """Seqs of a boot at or below the highest seq of an earlier boot (a reuse, or seqs
    going backwards across a cut)."""
    overlapping = 0
    highest = 0
    for boot in sorted(per_boot, key=lambda b: order.get(b, -1)):
        overlapping += sum(s <= highest for s in per_boot[boot])
        highest = max(highest, *per_boot[boot])
    return overlapping


# --- the tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", list(SETTINGS))
async def test_power_cuts_lose_no_committed_batch_and_never_reuse_a_seq(
    tmp_path: Path, broker: Mosquitto, setting: str
) -> None:
    await power_cuts(tmp_path, broker, setting, cuts=3, seed=int(time.time()) % 10_000)


@pytest.mark.soak
@pytest.mark.timeout(5400)
@pytest.mark.parametrize("setting", list(SETTINGS))
async def test_two_hundred_power_cuts_lose_no_committed_batch_and_never_reuse_a_seq(
    tmp_path: Path, broker: Mosquitto, setting: str
) -> None:
    await power_cuts(tmp_path, broker, setting, cuts=200, seed=int(time.time()) % 10_000)
