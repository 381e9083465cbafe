"""Fixtures of the test rig (the shipped one: gateway/devtools/rig/, whose pytest plugin
gives the edge_* fixtures these stand on), and the `rig` marker.

A test is `rig` when it stands on real parts: a mosquitto, a pymodbus server, a pty,
a process of its own. Everything under tests/integration/ is, and so is any test
using the rig's fixtures; other modules mark their rig tests explicitly. The rest
are pure (functions, models, the buffer on tmp files) and run in well under a minute:
`.ci/test -m "not rig"` while working, `.ci/test` for all.

Soak runs (`soak` marker) are left out unless the `-m` expression names them
(`.ci/test -m soak`), whatever else it selects.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.devtools.rig import Collector, GatewayProcess, Mosquitto

_RIG_FIXTURES = frozenset(
    {"broker", "subscriber", "gateway_process"}
    | {"edge_broker", "edge_collector", "edge_gateway", "edge_proxy", "edge_simulator"}
)


@pytest.fixture
def broker(edge_broker: Mosquitto) -> Mosquitto:
    return edge_broker


@pytest.fixture
def subscriber(edge_collector: Collector) -> Collector:
    return edge_collector


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[Callable[[str], GatewayProcess]]:
    """Makes gateways (not started) from config texts, all in tmp_path; kills them after."""
    made: list[GatewayProcess] = []

    def make(config_text: str) -> GatewayProcess:
        made.append(GatewayProcess(tmp_path, config_text))
        return made[-1]

    yield make
    for gateway in made:
        gateway.cleanup()


@pytest.fixture
def rfc2217_closes(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """For each close of an open pyserial RFC 2217 port (its close joins a thread and
    sleeps 0.3 s), whether it ran on the main thread: the event loop's. A close of a
    closed port (io's finalizer, when the port is collected) is not counted."""
    import threading

    import serial.rfc2217

    closed_on_loop: list[bool] = []
    close = serial.rfc2217.Serial.close

    def recording_close(port: serial.rfc2217.Serial) -> None:
        if port.is_open:
            closed_on_loop.append(threading.current_thread() is threading.main_thread())
        close(port)

    monkeypatch.setattr(serial.rfc2217.Serial, "close", recording_close)
    return closed_on_loop


def pytest_configure(config: pytest.Config) -> None:
    """The Ctrl-C tests send SIGINT to a command they started, as a terminal would. A
    child keeps a SIGINT its parent ignores (execve keeps ignored signals), and Python
    then never raises KeyboardInterrupt: the command runs on and the test times out. A
    shell without job control (a script, `sh -c`) starts its `&` jobs with SIGINT ignored
    (`.ci/run &`), so take SIGINT back here, in the controller and in every xdist worker:
    the commands start as they do from a terminal."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        in_integration = "integration" in Path(str(item.path)).parts
        uses_rig = bool(_RIG_FIXTURES & set(getattr(item, "fixturenames", ())))
        if in_integration or uses_rig:
            item.add_marker(pytest.mark.rig)
    if "soak" in (config.getoption("markexpr") or ""):
        return
    soak = [item for item in items if item.get_closest_marker("soak")]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if not item.get_closest_marker("soak")]
