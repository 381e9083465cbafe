"""The shipped rig library (gateway/devtools/rig/) and its pytest plugin, on real parts:
a mosquitto, the gateway as a process polling a pymodbus device, sockets on loopback.

The proxy's modes are measured on an echo server, where a delay or a silence is the
proxy's alone; the collector meets duplicates the way a centre does (PUBACKs lost on
the link, the broker restarted, the gateway sending the batches again). The plugin is
tried as a rig engineer meets it: docs/test-rigs.md's first test, run by a pytest of its
own outside this project's conftest.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from drivers.core.model import Quality
from drivers.modbus.decode import Table
from drivers.sim.modbus import ModbusSimServer, SimulatedDevice
from gateway.devtools.rig import (
    Collector,
    GatewayFactory,
    LinkProxy,
    Mosquitto,
    SimulatorError,
    SimulatorProcess,
    modbus_device,
)

pytest_plugins = ["pytester"]

pytestmark = pytest.mark.rig

DOC = Path(__file__).resolve().parents[2] / "docs" / "test-rigs.md"
POLLS = '{ name = "polls", address = 0, type = "uint32" }'


def polls(collector: Collector) -> list[int]:
    """The pump's poll counter as the centre keeps it: one value per poll served."""
    return [int(r.value) for r in collector.readings("pump", "polls") if r.quality == Quality.GOOD]


async def test_the_collector_counts_every_reading_once_when_the_broker_restarts_mid_run(
    edge_broker: Mosquitto,
    edge_collector: Collector,
    edge_proxy: LinkProxy,
    edge_gateway: GatewayFactory,
) -> None:
    pump = SimulatedDevice(unit=1)
    pump.add_read_counter(Table.HOLDING, 0)
    async with ModbusSimServer([pump]) as sim:
        gateway = edge_gateway(
            modbus_device("pump", sim.port, 1, POLLS), broker_port=edge_proxy.port
        )
        await edge_collector.wait_async(lambda: len(polls(edge_collector)) >= 5, 20, "polls")
        # The broker gets every batch, the gateway none of the PUBACKs: all of them will
        # be sent again.
        edge_proxy.blackhole("to_client")
        kept = len(edge_collector.batches())
        await edge_collector.wait_async(
            lambda: len(edge_collector.batches()) >= kept + 3, 10, "batches never acknowledged"
        )
        edge_proxy.down()
        await asyncio.to_thread(edge_broker.restart)
        edge_proxy.restore()
        await edge_collector.wait_async(
            lambda: edge_collector.duplicates >= 3, 20, "the unacknowledged batches again"
        )
        assert await asyncio.to_thread(gateway.stop) == 0, gateway.log
        served = pump.reads
    await edge_collector.wait_async(
        lambda: polls(edge_collector)[-1:] == [served], 10, f"the last poll; {gateway.log}"
    )
    assert polls(edge_collector) == list(range(1, served + 1)), "each poll once, in order"
    view = edge_collector.completeness("gw-1")
    batches = len(edge_collector.batches())
    assert view["complete"] and view["received"]["seqs"] == [[1, batches]], view
    assert view["received"]["readings"] == served
    assert view["received"]["duplicates"] == edge_collector.duplicates >= 3
    assert len(edge_collector.all_batches()) == batches + edge_collector.duplicates
    assert [boot["state"] for boot in view["boots"]] == ["stopped"]
    assert not edge_collector.rejected


# --- the link proxy, on an echo server ---------------------------------------------------


@asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@asynccontextmanager
async def link(
    proxy: LinkProxy,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        yield reader, writer
    finally:
        writer.close()


async def round_trip(
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], size: int = 100
) -> float:
    """Seconds for `size` bytes to go through the proxy to the echo server and back."""
    reader, writer = connection
    started = time.monotonic()
    writer.write(b"x" * size)
    async with asyncio.timeout(10):
        await reader.readexactly(size)
    return time.monotonic() - started


async def assert_silent(connection: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    """Nothing comes back within half a second."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await round_trip(connection)


async def test_a_slow_link_delays_each_direction_and_carries_at_most_its_rate() -> None:
    async with echo_server() as port:
        with LinkProxy(port) as proxy:
            async with link(proxy) as connection:
                assert await round_trip(connection) < 0.1
                proxy.slow(150)
                assert 0.3 <= await round_trip(connection) < 1.0  # 150 ms each way
                proxy.slow(0, rate=20_000)
                assert 0.5 <= await round_trip(connection, 10_000) < 2.0  # 10 kB at 20 kB/s
                proxy.restore()
                assert await round_trip(connection) < 0.1


async def test_a_proxy_stopped_with_live_links_logs_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with echo_server() as port:
        proxy = LinkProxy(port)
        proxy.start()
        async with link(proxy) as connection:
            await round_trip(connection)
            with caplog.at_level(logging.ERROR):
                await asyncio.to_thread(proxy.stop)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_a_blackholed_link_carries_nothing_either_way_until_it_is_restored() -> None:
    async with echo_server() as port:
        with LinkProxy(port) as proxy:
            async with link(proxy) as before:
                await round_trip(before)
                proxy.blackhole()
                await assert_silent(before)
                async with link(proxy) as during:  # accepted, and going nowhere
                    await assert_silent(during)
                proxy.restore()
                async with link(proxy) as after:
                    assert await round_trip(after) < 0.1
            assert proxy.connections == 3


async def test_a_link_that_is_down_resets_its_connections_and_refuses_new_ones() -> None:
    async with echo_server() as port:
        with LinkProxy(port) as proxy:
            async with link(proxy) as before:
                await round_trip(before)
                proxy.down()
                with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                    await round_trip(before)
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", proxy.port)
            proxy.restore()
            async with link(proxy) as after:  # the same port again
                assert await round_trip(after) < 0.1


# --- the simulator as a process ------------------------------------------------------------

TWO_UNITS = """
[[devices]]
name = "pump"
protocol = "modbus_tcp"
port = 0
unit = 1
points = [{ name = "flow", address = 0, type = "uint16", value = 7 }]

[[devices]]
name = "gauge"
protocol = "modbus_tcp"
port = 0
unit = 2
points = [{ name = "level", address = 0, type = "uint16", value = 3 }]
"""


def test_the_simulator_says_where_its_devices_are_and_takes_faults_by_device_and_point(
    edge_simulator: Callable[..., SimulatorProcess],
) -> None:
    simulator = edge_simulator(TWO_UNITS)
    assert simulator.port("pump") != simulator.port("gauge")  # port = 0: a free one each
    assert simulator.fault("pump.flow", "exception", 4) == "ok pump.flow exception 4"
    simulator.fault("gauge", "silent")
    faults = {d["name"]: d["fault"] for d in simulator.status()["devices"]}
    assert faults == {"pump": None, "gauge": "silent"}
    with pytest.raises(SimulatorError, match="no device 'pomp'"):
        simulator.fault("pomp", "silent")
    simulator.clear()
    assert all(d["fault"] is None for d in simulator.status()["devices"])
    assert simulator.stop() == 0


# --- the plugin, as a rig engineer uses it ------------------------------------------------


def first_test_of_the_doc() -> str:
    found = re.search(
        r"<!-- tested-file: test_first_rig.py -->\n```python\n(?P<body>.*?)\n```",
        DOC.read_text(),
        re.S,
    )
    assert found, f"{DOC} has no tested first test"
    return found["body"] + "\n"


def test_the_docs_first_rig_test_passes_with_the_plugin_alone(pytester: pytest.Pytester) -> None:
    code = first_test_of_the_doc()
    lines_of_code = [line for line in code.splitlines() if line.strip()]
    assert len(lines_of_code) <= 20, "the doc promises a first test in twenty lines of code"
    pytester.makepyfile(test_first_rig=code)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=1)
