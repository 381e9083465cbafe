"""The test rig is the shipped one (gateway/devtools/rig/, docs/test-rigs.md), under the
names these tests have always used: `from rig import Subscriber, TcpProxy, ...`.

conftest.py hands out its parts as fixtures (broker, subscriber, gateway_process).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gateway.devtools.rig import (
    Collector,
    GatewayProcess,
    LinkProxy,
    gateway_config,
    modbus_device,
    rtu_device,
)

REPO = Path(__file__).resolve().parents[1]

Subscriber = Collector  # what the city centre sees


def cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """`edge-gateway ARGS...` as a technician runs it, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        check=False,
    )


TcpProxy = LinkProxy  # a link that fails on cue

__all__ = [
    "REPO",
    "GatewayProcess",
    "Subscriber",
    "TcpProxy",
    "cli",
    "gateway_config",
    "modbus_device",
    "rtu_device",
]
