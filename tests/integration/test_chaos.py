"""Chaos: broker restarts, a blackholed link, SIGKILLs of the gateway and a full disk,
one after another while polling goes on; afterwards every reading is accounted for.

The short run is part of the suite; the long one runs on demand:
`.ci/test -m soak tests/integration/test_chaos.py -s`.

Accounting, by `(gateway_id, seq)` at the centre:
- every batch the gateway ever committed to disk arrives: the seqs have no gap but
  where a boot begins (with the default `[buffer] write = "unacked"`, a batch
  published from memory and neither acknowledged nor written yet dies with a SIGKILL,
  and the next boot's seqs continue above the lease of seqs handed out);
- readings are lost only at a SIGKILL, and only those not yet on disk or acknowledged
  (at most `batch.max_age` of polling): each gap in the device's poll counter must
  line up with a kill;
- duplicates are batches sent again after a PUBACK that never arrived; counted.

The broker is stopped with SIGTERM (it saves its queues). A SIGKILLed broker can
lose messages it had already acknowledged, which no client can prevent; that is
the broker's durability, not the gateway's promise.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import resource
import time
from pathlib import Path

import pytest
from rig import GatewayProcess, Subscriber, TcpProxy, gateway_config, modbus_device

from drivers.core.model import Quality
from drivers.modbus.decode import DataType, Table
from drivers.sim.modbus import ModbusSimServer, SimulatedDevice
from gateway.devtools.broker import Mosquitto
from gateway.wire import Batch

POINTS = """
  { name = "polls", address = 0, type = "uint32" },
  { name = "level", address = 2, type = "float32" },
"""
POLL_S = 0.05
MAX_AGE_S = 0.3


async def chaos(
    tmp_path: Path,
    broker: Mosquitto,
    subscriber: Subscriber,
    gateway_process,
    rounds: int,
    seed: int,
) -> None:
    rnd = random.Random(seed)
    device = SimulatedDevice(unit=1)
    device.add_read_counter(Table.HOLDING, 0)
    device.set_value(Table.HOLDING, 2, 3.25, DataType.FLOAT32)
    proxy = TcpProxy(broker.port)
    proxy.start()
    kills = 0
    faults: list[str] = []
    async with ModbusSimServer([device]) as sim:
        gp: GatewayProcess = gateway_process(
            gateway_config(
                broker_port=proxy.port,
                buffer_path=tmp_path / "buffer.db",
                devices=modbus_device(
                    "pump", sim.port, 1, POINTS, interval=f"{POLL_S * 1000:.0f}ms"
                ),
                max_readings=40,
                max_age=f"{MAX_AGE_S * 1000:.0f}ms",
                extra_mqtt='publish_timeout = "2s"\nkeepalive = "2s"',
            )
        )
        gp.start()
        await asyncio.sleep(1.0)
        for _ in range(rounds):
            steps = ["broker", "blackhole", "kill", "disk", "kill_during_outage"]
            rnd.shuffle(steps)
            for step in steps:
                faults.append(step)
                if step == "broker":  # the centre's broker restarts
                    await asyncio.to_thread(broker.stop)
                    await asyncio.sleep(rnd.uniform(0.5, 2.0))
                    await asyncio.to_thread(broker.start)
                elif step == "blackhole":  # the cellular link goes silent, no reset
                    proxy.blackhole()
                    await asyncio.sleep(rnd.uniform(2.5, 4.0))
                    proxy.restore()
                elif step == "kill":  # power cut / crash at a random moment
                    await asyncio.sleep(rnd.uniform(0.0, 0.5))
                    gp.kill()
                    kills += 1
                    await asyncio.sleep(rnd.uniform(0.1, 0.5))
                    gp.start()
                elif step == "kill_during_outage":  # crash while the backlog grows
                    await asyncio.to_thread(broker.stop)
                    await asyncio.sleep(rnd.uniform(0.5, 1.5))
                    gp.kill()
                    kills += 1
                    gp.start()
                    await asyncio.sleep(rnd.uniform(0.3, 1.0))
                    await asyncio.to_thread(broker.start)
                elif step == "disk":  # the SD card is full: the buffer file cannot grow
                    assert gp.proc is not None
                    pid = gp.proc.pid
                    size = _buffer_bytes(tmp_path)
                    # The soft file-size limit of the gateway process: writes that would
                    # grow a file beyond it fail with EFBIG, as on a full card (SQLite
                    # reports "database or disk is full"). Only the soft limit moves, so
                    # no privilege is needed to lift it again.
                    infinity = resource.RLIM_INFINITY
                    resource.prlimit(pid, resource.RLIMIT_FSIZE, (size // 2, infinity))
                    await asyncio.sleep(rnd.uniform(1.5, 3.0))
                    resource.prlimit(pid, resource.RLIMIT_FSIZE, (infinity, infinity))
                await asyncio.sleep(rnd.uniform(0.5, 1.5))
        # Calm: let everything drain, then stop cleanly.
        await asyncio.sleep(2.0)
        assert await asyncio.to_thread(gp.stop) == 0, gp.log
        served = device.reads
    proxy.stop()
    await subscriber.wait_async(
        lambda: bool(subscriber.batches()) and _last_count(subscriber) >= served - 2,
        30,
        "the final readings",
    )

    batches = subscriber.batches()
    seqs = [b.seq for b in batches]
    counts = [
        int(r.value)
        for b in batches
        for r in b.readings
        if r.point == "polls" and r.quality == Quality.GOOD
    ]
    gaps = [(a, b) for a, b in itertools.pairwise(counts) if b != a + 1]
    lost = sum(b - a - 1 for a, b in gaps)
    duplicates = len(subscriber.all_batches()) - len(batches)
    print(
        f"\nchaos ({rounds} round(s), seed {seed}): faults {faults}\n"
        f"  batches received: {len(batches)} (seq 1..{seqs[-1]}, {len(boots(batches))} boots)\n"
        f"  duplicates received (PUBACK lost): {duplicates}\n"
        f"  polls served by the device: {served}, readings received: {len(counts)}, "
        f"lost at {kills} SIGKILL(s) (not yet on disk nor acknowledged): {lost} in {len(gaps)} gap(s)"
    )
    boot_starts = {min(b.seq for b in batches if b.boot_id == boot) for boot in boots(batches)}
    holes = [(a, b) for a, b in itertools.pairwise(seqs) if b != a + 1]
    stray = [(a, b) for a, b in holes if b not in boot_starts]
    assert seqs[0] == 1 and not stray, f"a committed batch never arrived: {stray}"
    assert counts == sorted(counts), "readings out of order"
    assert len(gaps) <= kills, f"readings lost without a kill: {gaps}"
    max_open = MAX_AGE_S / POLL_S + 10  # at most one open batch's worth per kill
    assert all(b - a - 1 <= max_open for a, b in gaps), gaps
    assert counts[0] == 1 and counts[-1] >= served - 2


def boots(batches: list[Batch]) -> set[str]:
    return {b.boot_id for b in batches}


def _buffer_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("buffer.db*") if p.is_file())


def _last_count(sub: Subscriber) -> int:
    for batch in reversed(sub.batches()):
        for r in reversed(batch.readings):
            if r.point == "polls" and r.quality == Quality.GOOD:
                return int(r.value)  # type: ignore[arg-type]
    return 0


async def test_chaos_short_every_reading_accounted_for(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, gateway_process
) -> None:
    await chaos(
        tmp_path, broker, subscriber, gateway_process, rounds=1, seed=int(time.time()) % 1000
    )


@pytest.mark.soak
@pytest.mark.timeout(1800)
async def test_chaos_long_every_reading_accounted_for(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, gateway_process
) -> None:
    await chaos(
        tmp_path, broker, subscriber, gateway_process, rounds=12, seed=int(time.time()) % 1000
    )
