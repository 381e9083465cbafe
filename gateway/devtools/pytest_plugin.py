"""pytest fixtures for test rigs of the edge gateway (docs/test-rigs.md).

pytest loads this module by itself wherever edge-gateway is installed (the `pytest11`
entry point in pyproject.toml); a test only names the fixtures:

- `edge_broker`: a private mosquitto on a free loopback port (`Mosquitto`), killed after;
- `edge_collector`: the centre's side on it (`Collector`, every topic);
- `edge_proxy`: a `LinkProxy` in front of the broker, for a gateway behind a failing link;
- `edge_gateway`: a `GatewayFactory`: `edge_gateway(devices)` starts a gateway on the
  broker (`broker_port=edge_proxy.port` for one behind the proxy); killed after if still
  running;
- `edge_simulator`: `edge_simulator(simulator_toml, *args)` starts `edge-gateway simulate`
  on the file (docs/simulator.md) and returns its `SimulatorProcess` once every device is
  served; stopped after.

Each fixture is per test, in the test's `tmp_path`. The rig library is imported when a
fixture is first used, so a test run that uses none pays nothing for it.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from gateway.devtools.rig import (
        Collector,
        GatewayFactory,
        LinkProxy,
        Mosquitto,
        SimulatorProcess,
    )


@pytest.fixture
def edge_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    from gateway.devtools.rig import Mosquitto

    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    yield broker
    broker.kill()


@pytest.fixture
def edge_collector(edge_broker: Mosquitto) -> Iterator[Collector]:
    from gateway.devtools.rig import Collector

    with Collector(edge_broker) as collector:
        yield collector


@pytest.fixture
def edge_proxy(edge_broker: Mosquitto) -> Iterator[LinkProxy]:
    from gateway.devtools.rig import LinkProxy

    with LinkProxy(edge_broker.port) as proxy:
        yield proxy


@pytest.fixture
def edge_gateway(tmp_path: Path, edge_broker: Mosquitto) -> Iterator[GatewayFactory]:
    from gateway.devtools.rig import GatewayFactory

    factory = GatewayFactory(tmp_path / "gateways", edge_broker.port)
    yield factory
    factory.cleanup()


@pytest.fixture
def edge_simulator(tmp_path: Path) -> Iterator[Callable[..., SimulatorProcess]]:
    from gateway.devtools.rig import SimulatorProcess

    made: list[SimulatorProcess] = []

    def start(scenario_text: str, *args: str) -> SimulatorProcess:
        simulator = SimulatorProcess(tmp_path / f"sim-{len(made) + 1}", scenario_text, args=args)
        made.append(simulator)
        simulator.start()
        return simulator

    yield start
    for simulator in made:
        if simulator.running:  # SIGTERM: it removes its control socket and links
            with contextlib.suppress(subprocess.TimeoutExpired):
                simulator.stop(timeout=10)
