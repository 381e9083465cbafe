"""Config flashing on a running gateway: `edge-gateway apply`, SIGHUP and `config
rollback` go through one path — validate, switch, health window, commit or roll back —
and the data path loses nothing through any of it (a real mosquitto, pymodbus devices,
the gateway as a process)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from rig import GatewayProcess, Subscriber, cli, gateway_config, modbus_device

from drivers.core.model import Quality
from drivers.modbus.decode import Table
from drivers.sim.modbus import ModbusSimServer, SimulatedDevice
from drivers.sim.modbus import free_tcp_port as free_port
from gateway.devtools.broker import Mosquitto

POINTS = '{ name = "polls", address = 0, type = "uint32" }'


def counting_device() -> SimulatedDevice:
    device = SimulatedDevice(unit=1)
    device.add_read_counter(Table.HOLDING, 0)
    return device


def config(broker: Mosquitto, tmp_path: Path, devices: str, *, max_age: str = "200ms") -> str:
    return gateway_config(
        broker_port=broker.port,
        buffer_path=tmp_path / "buffer.db",
        devices=devices,
        max_age=max_age,
    )


def polls(sub: Subscriber) -> list[int]:
    return [int(r.value) for r in sub.readings("pump", "polls") if r.quality == Quality.GOOD]


def assert_nothing_read_was_lost(counts: list[int], *, switches: int) -> None:
    """In order, none twice; each switch of config may cancel one poll in flight (the
    device counted it, the gateway never got its answer): nothing read is lost."""
    assert counts == sorted(set(counts)), "a reading doubled or out of order"
    assert len(set(range(counts[0], counts[-1] + 1)) - set(counts)) <= switches


def history(gp: GatewayProcess) -> list[dict[str, object]]:
    result = cli("config", "-c", str(gp.config), "history", "--json")
    assert result.returncode == 0, result.stderr
    entries: list[dict[str, object]] = json.loads(result.stdout)
    return entries


def pydantic_mapped(gp: GatewayProcess) -> bool:
    """Whether pydantic-core's library is in the running gateway's memory: the daemon
    validates every config in a child process (gateway/loaded.py), start and apply alike."""
    assert gp.proc is not None
    return "pydantic_core" in Path(f"/proc/{gp.proc.pid}/maps").read_text()


def events(sub: Subscriber, kind: str) -> list[dict[str, object]]:
    return [e for e in (json.loads(p) for p in sub.on("/event")) if e["kind"] == kind]


@pytest.fixture
def broker(tmp_path: Path):
    b = Mosquitto(tmp_path / "broker")
    b.start()
    yield b
    b.kill()


@contextlib.asynccontextmanager
async def cabinet(
    tmp_path: Path, broker: Mosquitto, gateway_process: Callable[[str], GatewayProcess]
) -> AsyncIterator[tuple[GatewayProcess, Subscriber, ModbusSimServer]]:
    """A gateway reading a counting pump, readings flowing; it must stop cleanly."""
    sub = Subscriber(broker)
    try:
        async with ModbusSimServer([counting_device()]) as sim:
            gp = gateway_process(
                config(broker, tmp_path, modbus_device("pump", sim.port, 1, POINTS))
            )
            gp.start()
            await sub.wait_async(lambda: len(polls(sub)) >= 5, 20, "readings from the pump")
            yield gp, sub, sim
            assert await asyncio.to_thread(gp.stop) == 0, gp.log
    finally:
        sub.close()


async def test_apply_switches_to_a_config_that_works_commits_it_and_loses_nothing(
    tmp_path: Path, broker: Mosquitto, gateway_process
) -> None:
    async with cabinet(tmp_path, broker, gateway_process) as (gp, sub, sim):
        assert not pydantic_mapped(gp)
        new = tmp_path / "new.toml"
        new.write_text(
            config(
                broker,
                tmp_path,
                modbus_device("pump", sim.port, 1, POINTS, interval="150ms"),
                max_age="300ms",
            )
        )
        result = await asyncio.to_thread(cli, "apply", str(new), "-c", str(gp.config))
        assert result.returncode == 0, result.stdout + result.stderr + gp.log
        assert "runs now" in result.stdout
        assert gp.config.read_text() == new.read_text(), "the service's file holds it now"
        seen = len(polls(sub))
        await sub.wait_async(lambda: len(polls(sub)) > seen + 5, 20, "readings go on")
        entries = history(gp)
        assert [(e["source"], e["outcome"]) for e in entries] == [
            ("start", "committed"),
            ("apply", "committed"),
        ]
        assert entries[1]["previous"] == entries[0]["hash"]
        assert events(sub, "config_applied"), "the centre hears of it"
        assert not pydantic_mapped(gp)
    assert_nothing_read_was_lost(polls(sub), switches=1)


async def test_a_config_that_loses_a_device_is_rolled_back_with_the_reason(
    tmp_path: Path, broker: Mosquitto, gateway_process
) -> None:
    async with cabinet(tmp_path, broker, gateway_process) as (gp, sub, _sim):
        good = gp.config.read_text()
        bad = tmp_path / "bad.toml"
        bad.write_text(config(broker, tmp_path, modbus_device("pump", free_port(), 1, POINTS)))
        result = await asyncio.to_thread(cli, "apply", str(bad), "-c", str(gp.config), "--json")
        assert result.returncode == 1, result.stdout + result.stderr + gp.log
        outcome = json.loads(result.stdout)
        assert outcome["outcome"] == "rolled_back"
        assert "device 'pump' was online and is" in outcome["reason"]
        assert gp.config.read_text() == good, "the file still holds the config that works"
        seen = len(polls(sub))
        await sub.wait_async(lambda: len(polls(sub)) > seen + 5, 20, "the pump read again")
        (event,) = events(sub, "config_rolled_back")
        assert "pump" in str(event["message"])
        # the health message published after the rollback (the last one may be older)
        await sub.wait_async(
            lambda: json.loads(sub.on("/health")[-1])["reloads"]["rolled_back"] == 1,
            20,
            "health counting the rollback",
        )
        assert [e["outcome"] for e in history(gp)] == ["committed", "rolled_back"]
    assert_nothing_read_was_lost(polls(sub), switches=2)
    assert "rolling back to" in gp.log


async def test_a_config_whose_mqtt_settings_reach_no_broker_is_rolled_back_and_data_flows_again(
    tmp_path: Path, broker: Mosquitto, gateway_process
) -> None:
    """The old session is still online while it says goodbye: it must not vouch for the
    new [mqtt] section. A port where no broker listens is rolled back, not committed."""
    async with cabinet(tmp_path, broker, gateway_process) as (gp, sub, _sim):
        good = gp.config.read_text()
        bad = tmp_path / "bad.toml"
        bad.write_text(
            good.replace(
                f"port = {broker.port}\n", f'port = {free_port()}\nconnect_timeout = "1s"\n', 1
            )
        )
        assert bad.read_text() != good
        result = await asyncio.to_thread(cli, "apply", str(bad), "-c", str(gp.config), "--json")
        assert result.returncode == 1, result.stdout + result.stderr + gp.log
        outcome = json.loads(result.stdout)
        assert outcome["outcome"] == "rolled_back", outcome
        assert "the broker is not reached" in outcome["reason"]
        assert gp.config.read_text() == good, "the file still holds the config that works"
        seen = len(polls(sub))
        await sub.wait_async(lambda: len(polls(sub)) > seen + 5, 30, "readings arrive again")
        assert [e["outcome"] for e in history(gp)] == ["committed", "rolled_back"]


async def test_a_file_edited_in_place_that_breaks_is_rolled_back_and_the_file_restored(
    tmp_path: Path, broker: Mosquitto, gateway_process
) -> None:
    async with cabinet(tmp_path, broker, gateway_process) as (gp, sub, _sim):
        good = gp.config.read_text()
        gp.config.write_text(
            config(broker, tmp_path, modbus_device("pump", free_port(), 1, POINTS))
        )
        assert gp.proc is not None
        gp.proc.send_signal(signal.SIGHUP)  # systemctl reload
        await sub.wait_async(
            lambda: bool(events(sub, "config_rolled_back")), 30, "the rollback event"
        )
        assert gp.config.read_text() == good, "a restart must not run the broken file"


async def test_apply_refuses_a_config_with_problems_before_it_reaches_the_service(
    tmp_path: Path, broker: Mosquitto, gateway_process
) -> None:
    async with ModbusSimServer([counting_device()]) as sim:
        gp: GatewayProcess = gateway_process(
            config(broker, tmp_path, modbus_device("pump", sim.port, 1, POINTS))
        )
        bad = tmp_path / "bad.toml"
        bad.write_text("[gateway]\nid = 'x'\n[[devices]]\nname = 'p'\nprotocol = 'modbus_tcp'\n")
        result = await asyncio.to_thread(cli, "apply", str(bad), "-c", str(gp.config))
        assert result.returncode == 2
        assert "bad.toml" in result.stderr and "host" in result.stderr


async def test_apply_with_no_gateway_running_exits_3_and_says_so(
    tmp_path: Path, broker: Mosquitto, gateway_process
) -> None:
    gp: GatewayProcess = gateway_process(
        config(broker, tmp_path, modbus_device("pump", free_port(), 1, POINTS))
    )
    result = await asyncio.to_thread(cli, "apply", str(gp.config), "-c", str(gp.config))
    assert result.returncode == 3
    assert "no gateway is running" in result.stderr


async def test_config_rollback_goes_back_to_the_config_that_ran_before(
    tmp_path: Path, broker: Mosquitto, gateway_process
) -> None:
    async with cabinet(tmp_path, broker, gateway_process) as (gp, _sub, _sim):
        first = gp.config.read_text()
        second = tmp_path / "second.toml"
        second.write_text(first.replace('max_age = "200ms"', 'max_age = "250ms"'))
        result = await asyncio.to_thread(cli, "apply", str(second), "-c", str(gp.config))
        assert result.returncode == 0, result.stderr + gp.log
        result = await asyncio.to_thread(cli, "config", "-c", str(gp.config), "rollback")
        assert result.returncode == 0, result.stdout + result.stderr + gp.log
        assert gp.config.read_text() == first
        entries = history(gp)
        assert entries[-1]["outcome"] == "committed"
        assert entries[-1]["hash"] == entries[0]["hash"]
        shown = await asyncio.to_thread(cli, "config", "-c", str(gp.config), "history")
        assert shown.returncode == 0 and "apply" in shown.stdout
