"""pytest fixtures for test rigs of the edge gateway (docs/test-rigs.md).

pytest loads this module by itself wherever edge-gateway is installed (the `pytest11`
entry point in pyproject.toml); a test only names the fixtures:

- `edge_broker`: a private mosquitto on a free loopback port (`Mosquitto`), killed after;
- `edge_collector`: the centre's side on it (`Collector`, every topic);
- `edge_proxy`: a `LinkProxy` in front of the broker, for a gateway behind a failing link;
- `edge_gateway`: a `GatewayFactory`: `edge_gateway(devices)` starts a gateway on the
  broker (`broker_port=edge_proxy.port` for one behind the proxy); killed after if still
  running.

Each fixture is per test, in the test's `tmp_path`. The rig library is imported when a
fixture is first used, so a test run that uses none pays nothing for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from gateway.devtools.rig import Collector, GatewayFactory, LinkProxy, Mosquitto


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
