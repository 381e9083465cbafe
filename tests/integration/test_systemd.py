"""Under systemd: READY once the buffer is open and the broker was tried, a watchdog fed
while every part makes progress, RELOADING/READY around a reload, STOPPING at the end;
and the shipped unit verifies and keeps its exposure at 2.0 or lower."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from rig import REPO, Subscriber, gateway_config, modbus_device

from gateway.devtools.broker import Mosquitto

UNIT = REPO / "systemd" / "edge-gateway.service"
needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


class NotifySocket:
    """What systemd would receive on $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def said(self, key: str) -> list[str]:
        return [m for m in self.drain() if any(line.startswith(key) for line in m.splitlines())]


async def test_the_gateway_tells_systemd_it_is_ready_alive_reloading_and_stopping(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, gateway_process
) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    gp = gateway_process(
        gateway_config(
            broker_port=broker.port,
            buffer_path=tmp_path / "buffer.db",
            devices=modbus_device("pump", 9, 1, '{ name = "p", address = 0 }'),
        )
    )
    gp.env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "3000000"}
    gp.start()
    await subscriber.wait_async(lambda: bool(notify.said("READY=1")), 20, "READY=1")
    ready = notify.said("READY=1")[0]
    assert re.search(r"STATUS=1 device\(s\), uplink online", ready), ready
    await subscriber.wait_async(lambda: len(notify.said("WATCHDOG=1")) >= 3, 10, "three feeds")
    assert gp.proc is not None
    gp.proc.send_signal(signal.SIGHUP)
    await subscriber.wait_async(lambda: bool(notify.said("RELOADING=1")), 10, "RELOADING=1")
    await subscriber.wait_async(lambda: len(notify.said("READY=1")) >= 2, 10, "READY after reload")
    assert gp.stop() == 0
    assert notify.said("STOPPING=1")
    assert "Traceback" not in gp.log


@needs_systemd_analyze
def test_the_shipped_unit_is_exposed_at_2_or_lower() -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout + result.stderr)
    assert score is not None, result.stdout + result.stderr
    assert float(score.group(1)) <= 2.0, result.stdout


@needs_systemd_analyze
def test_the_shipped_unit_verifies(tmp_path: Path) -> None:
    """`systemd-analyze verify` wants the programs the unit names: point it at ours."""
    edge_gateway = shutil.which("edge-gateway") or str(REPO / ".venv" / "bin" / "edge-gateway")
    unit = tmp_path / "edge-gateway.service"
    unit.write_text(
        UNIT.read_text().replace("/opt/edge-gateway/venv/bin/edge-gateway", edge_gateway)
    )
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_the_unit_allows_every_kind_of_serial_port_a_raspberry_pi_has() -> None:
    text = UNIT.read_text()
    for kind in ("ttyUSB", "ttyACM", "ttyAMA", "ttyS"):
        assert f"DeviceAllow=char-{kind} rw" in text
    assert "SupplementaryGroups=dialout" in text and "UMask=0077" in text
    assert "Type=notify" in text and "WatchdogSec=" in text and "ExecReload=" in text
    assert "StartLimitBurst=" in text
