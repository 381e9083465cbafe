"""Start-up, files and signals: a failed start says one sentence with a documented exit
code, a full disk is no reason not to start, the gateway touches only what it created
and keeps it private, and SIGHUP reloads the config without losing anything."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from rig import REPO, Subscriber, gateway_config, modbus_device

from drivers.core.model import Quality
from drivers.modbus.decode import Table
from drivers.sim.modbus import ModbusSimServer, SimulatedDevice
from gateway.devtools.broker import Mosquitto

POINT = '{ name = "n", address = 0, type = "uint32" }'
IS_ROOT = os.geteuid() == 0


def run_gateway(config: Path, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def config_file(tmp_path: Path, buffer_path: Path, port: int = 1) -> Path:
    config = tmp_path / "gateway.toml"
    config.write_text(
        gateway_config(
            broker_port=port,
            buffer_path=buffer_path,
            devices=modbus_device("pump", 9, 1, POINT),  # nothing listens on port 9
        )
    )
    return config


def assert_one_sentence(result: subprocess.CompletedProcess[str], exit_code: int) -> None:
    assert result.returncode == exit_code, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "CRITICAL" in line]
    assert len(lines) == 1, result.stderr


@contextlib.contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_buffer_path_under_a_file_fails_with_one_sentence_and_exit_code_3(
    tmp_path: Path,
) -> None:
    (tmp_path / "afile").write_text("not a directory")
    result = run_gateway(config_file(tmp_path, tmp_path / "afile" / "buffer.db"))
    assert_one_sentence(result, 3)
    assert "afile" in result.stderr


def test_a_read_only_buffer_directory_fails_with_one_sentence_and_exit_code_3(
    tmp_path: Path,
) -> None:
    if IS_ROOT:  # root writes through file modes: a read-only filesystem stops it
        with tmpfs(tmp_path / "ro", "ro,size=1m") as where:
            result = run_gateway(config_file(tmp_path, where / "buffer.db"))
    else:
        where = tmp_path / "ro"
        where.mkdir(mode=0o555)
        result = run_gateway(config_file(tmp_path, where / "buffer.db"))
    assert_one_sentence(result, 3)
    assert "read-only" in result.stderr or "ermission" in result.stderr


def test_a_buffer_path_naming_another_programs_file_is_refused_and_left_untouched(
    tmp_path: Path,
) -> None:
    theirs = tmp_path / "notes.db"
    theirs.write_text("someone else's file\n")
    result = run_gateway(config_file(tmp_path, theirs))
    assert_one_sentence(result, 3)
    assert theirs.read_text() == "someone else's file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.toml", "notes.db"]


async def test_files_the_gateway_creates_are_readable_by_it_alone(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, gateway_process
) -> None:
    os.umask(0o022)
    device = SimulatedDevice(unit=1)
    device.add_read_counter(Table.HOLDING, 0)
    async with ModbusSimServer([device]) as sim:
        gp = gateway_process(
            gateway_config(
                broker_port=broker.port,
                buffer_path=tmp_path / "state" / "buffer.db",
                devices=modbus_device("pump", sim.port, 1, POINT),
            )
        )
        gp.start()
        await subscriber.wait_async(lambda: len(subscriber.readings("pump")) >= 3, 20, "data")
        assert gp.stop() == 0
    created = list((tmp_path / "state").iterdir())
    assert any(p.name == "buffer.db" for p in created)
    for path in created:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path.name} is not private"


@pytest.mark.skipif(not IS_ROOT, reason="needs root to mount a small tmpfs as a full disk")
async def test_a_full_disk_at_start_up_keeps_readings_in_memory_until_there_is_room(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, gateway_process
) -> None:
    device = SimulatedDevice(unit=1)
    device.add_read_counter(Table.HOLDING, 0)
    with tmpfs(tmp_path / "card", "size=2m") as card:
        filler = card / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as f:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        async with ModbusSimServer([device]) as sim:
            gp = gateway_process(
                gateway_config(
                    broker_port=broker.port,
                    buffer_path=card / "buffer.db",
                    devices=modbus_device("pump", sim.port, 1, POINT),
                )
            )
            gp.start()
            await subscriber.wait_async(lambda: bool(subscriber.on("/health")), 20, "health")
            await asyncio.sleep(2.0)
            assert gp.proc is not None and gp.proc.poll() is None, gp.log
            import json

            health = json.loads(subscriber.on("/health")[-1])
            assert health["buffer"]["open"] is False and health["buffer"]["open_error"]
            assert health["pipeline"]["readings_pending"] > 0
            assert not subscriber.readings("pump")  # nothing can be sent before it is stored
            filler.unlink()  # room again
            await subscriber.wait_async(
                lambda: len(subscriber.readings("pump")) >= 30, 30, "data after the disk freed"
            )
            assert gp.stop() == 0
    counts = [r.value for r in subscriber.readings("pump", "n") if r.quality == Quality.GOOD]
    assert counts[0] <= 3, "the readings taken while the disk was full were lost"
    assert counts == list(range(counts[0], counts[0] + len(counts)))
    assert "Traceback" not in gp.log and "is open now" in gp.log


async def test_sighup_reloads_a_good_config_and_refuses_a_broken_one_without_losing_data(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, gateway_process
) -> None:
    pump, gauge = SimulatedDevice(unit=1), SimulatedDevice(unit=2)
    for d in (pump, gauge):
        d.add_read_counter(Table.HOLDING, 0)
    async with ModbusSimServer([pump, gauge]) as sim:

        def config(devices: str) -> str:
            return gateway_config(
                broker_port=broker.port, buffer_path=tmp_path / "buffer.db", devices=devices
            )

        one = modbus_device("pump", sim.port, 1, POINT)
        gp = gateway_process(config(one))
        gp.start()
        await subscriber.wait_async(lambda: len(subscriber.readings("pump")) >= 5, 20, "pump")
        assert gp.proc is not None

        gp.config.write_text(config(one) + "\n[[devices]]\nname = 'broken'\n")
        gp.proc.send_signal(signal.SIGHUP)
        await subscriber.wait_async(
            lambda: "config refused, the running config" in gp.log, 10, "the refusal"
        )
        before = len(subscriber.readings("pump"))
        await subscriber.wait_async(
            lambda: len(subscriber.readings("pump")) >= before + 5, 10, "pump after refusal"
        )
        assert gp.proc.poll() is None

        gp.config.write_text(config(one + modbus_device("gauge", sim.port, 2, POINT)))
        gp.proc.send_signal(signal.SIGHUP)
        await subscriber.wait_async(lambda: len(subscriber.readings("gauge")) >= 5, 15, "gauge")
        assert gp.proc.poll() is None
        assert gp.stop() == 0
    # Nothing lost across either: every batch arrived, and the pump's counter has no
    # gap wider than the reload's pause in polling.
    seqs = [b.seq for b in subscriber.batches()]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    counts = [r.value for r in subscriber.readings("pump", "n") if r.quality == Quality.GOOD]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    assert "committed: it works as well as" in gp.log and "Traceback" not in gp.log
    assert len(subscriber.on("/status")) >= 1


async def test_sighup_with_new_mqtt_settings_reconnects_and_publishes_under_them(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, gateway_process
) -> None:
    import json

    pump = SimulatedDevice(unit=1)
    pump.add_read_counter(Table.HOLDING, 0)
    async with ModbusSimServer([pump]) as sim:

        def config(prefix: str) -> str:
            return gateway_config(
                broker_port=broker.port,
                buffer_path=tmp_path / "buffer.db",
                devices=modbus_device("pump", sim.port, 1, POINT),
                extra_mqtt=f'topic_prefix = "{prefix}"',
            )

        gp = gateway_process(config("city"))
        gp.start()
        await subscriber.wait_async(lambda: len(subscriber.readings("pump")) >= 3, 20, "pump")
        assert gp.proc is not None
        gp.config.write_text(config("town"))
        gp.proc.send_signal(signal.SIGHUP)

        def on_town() -> int:
            return sum(1 for t, _ in subscriber.data_messages() if t.startswith("town/"))

        await subscriber.wait_async(lambda: on_town() >= 3, 20, "data under the new prefix")
        assert gp.stop() == 0
    old_status = [json.loads(p) for t, p in subscriber.messages if t == "city/test-gw/status"]
    assert old_status[-1]["state"] == "offline" and old_status[-1]["reason"] == "reconfigured"
    seqs = [b.seq for b in subscriber.batches()]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # nothing lost in the switch
    assert "Traceback" not in gp.log
