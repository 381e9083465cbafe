"""`edge-gateway exporter` as a centre runs it: a real mosquitto, a real gateway process
polling pymodbus devices, the exporter as a process, and a real Prometheus (the Debian
`prometheus` package, started here on a free loopback port) scraping it every second.
A device that stops answering shows as offline through a PromQL query on Prometheus'
HTTP API; every query of the Grafana dashboard is one Prometheus accepts; the exporter
outlives its broker and stops cleanly on SIGTERM (0) and Ctrl-C (130)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from rig import REPO, gateway_config, modbus_device

from drivers.modbus.decode import DataType, Table
from drivers.sim.modbus import ModbusSimServer, SimulatedDevice, free_tcp_port
from gateway.devtools.broker import Mosquitto

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
DASHBOARD = REPO / "config" / "grafana" / "edge-gateway-fleet.json"

needs_prometheus = pytest.mark.skipif(
    not Path(PROMETHEUS).is_file(),
    reason="prometheus is not installed (.ci/bootstrap installs the Debian package)",
)


def http_get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
        return body


async def eventually(check: Any, timeout: float, what: str) -> Any:
    """Call `check` (blocking, off the loop) until it returns something true; bounded."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await asyncio.to_thread(check)
        except OSError as err:  # not listening yet
            last = err
        if last and not isinstance(last, OSError):
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s: {what} (last: {last!r})")


class Process:
    """A child process with its output in a file, stopped by a signal, never orphaned."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=REPO
            )

    def signal(self, sig: int, timeout: float = 10.0) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")


class Exporter(Process):
    def __init__(self, workdir: Path, broker_port: int, *args: str) -> None:
        self.port = free_tcp_port()
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        argv = [sys.executable, "-m", "gateway", "exporter", "--broker", f"127.0.0.1:{broker_port}"]
        super().__init__(
            [*argv, "--listen", f"127.0.0.1:{self.port}", "--stale", "30s", *args],
            workdir / "exporter.log",
        )

    def metrics(self) -> str:
        return http_get(self.url).decode()


class Prometheus(Process):
    """A private Prometheus that scrapes `target` every second."""

    def __init__(self, workdir: Path, target: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_tcp_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: edge-gateway\n    scrape_timeout: 1s\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        super().__init__(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            workdir / "prometheus.log",
        )

    def ready(self) -> bool:
        return b"Ready" in http_get(f"http://127.0.0.1:{self.port}/-/ready")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant PromQL query through the HTTP API: its vector's samples."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expr}
        )
        answer = json.loads(http_get(url))
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result


def devices_config(pump_port: int, gas_port: int) -> str:
    return modbus_device(
        "pump", pump_port, 1, '{ name = "flow", address = 0, type = "float32" }',
        interval="200ms", timeout="300ms",
    ) + modbus_device("gas", gas_port, 2, '{ name = "ch4", address = 0, type = "float32" }')  # fmt: skip


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard, its Grafana variables filled in."""
    dashboard = json.loads(DASHBOARD.read_text())
    filled = {"$gateway": ".*", "${gateway}": ".*", "$__rate_interval": "5s", "$__interval": "1s"}
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in sorted(filled.items(), key=lambda kv: -len(kv[0])):
                expr = expr.replace(variable, value)
            queries.append(expr)
    return queries


@needs_prometheus
async def test_prometheus_shows_a_device_offline_once_it_stops_answering(
    tmp_path: Path, broker: Mosquitto, gateway_process: Any
) -> None:
    pump, gas = SimulatedDevice(unit=1), SimulatedDevice(unit=2)
    pump.set_value(Table.HOLDING, 0, 12.5, DataType.FLOAT32)
    gas.set_value(Table.HOLDING, 0, 3.0, DataType.FLOAT32)
    pump_sim, gas_sim = ModbusSimServer([pump]), ModbusSimServer([gas])
    await pump_sim.start()
    await gas_sim.start()
    exporter: Exporter | None = None
    prometheus: Prometheus | None = None
    try:
        gp = gateway_process(
            gateway_config(
                broker_port=broker.port,
                buffer_path=tmp_path / "buffer.db",
                gateway_id="cabinet-7",
                devices=devices_config(pump_sim.port, gas_sim.port),
            )
        )
        gp.start()
        exporter = Exporter(tmp_path, broker.port)
        prometheus = Prometheus(tmp_path / "prometheus", f"127.0.0.1:{exporter.port}")
        await eventually(prometheus.ready, 20, "Prometheus ready")
        p = prometheus

        both_online = 'edge_gateway_device_state{gateway="cabinet-7", state="online"} == 1'
        await eventually(lambda: len(p.query(both_online)) == 2, 20, "both devices online")
        assert p.query('edge_gateway_up{gateway="cabinet-7"} == 1')
        assert p.query('up{job="edge-gateway"} == 1'), "Prometheus scrapes the exporter"

        await pump_sim.stop()  # the pump stops answering
        stopped_at = time.monotonic()
        offline = 'edge_gateway_device_state{gateway="cabinet-7", state="offline"} == 1'
        found = await eventually(lambda: p.query(offline), 10, "the pump offline in Prometheus")
        took = time.monotonic() - stopped_at
        assert [s["metric"]["device"] for s in found] == ["pump"]
        assert [s["metric"]["device"] for s in p.query(both_online)] == ["gas"]
        assert took < 5, f"the offline pump took {took:.1f}s to show"

        for expr in dashboard_queries():  # Prometheus parses and evaluates each one
            p.query(expr)
        assert p.query('sum(edge_gateway_readings_in_total{gateway="cabinet-7"}) > 0')

        assert gp.stop() == 0  # a clean stop: the retained status says so
        stopped = 'edge_gateway_status{gateway="cabinet-7", state="stopped"} == 1'
        await eventually(lambda: p.query(stopped), 10, "the gateway's clean stop")
        assert p.query('edge_gateway_up{gateway="cabinet-7"} == 0')

        assert exporter.signal(signal.SIGTERM) == 0
        assert "Traceback" not in exporter.output
    finally:
        await gas_sim.stop()
        await pump_sim.stop()
        for process in (prometheus, exporter):
            if process is not None:
                process.cleanup()


async def test_the_exporter_outlives_its_broker_and_stops_on_ctrl_c(
    tmp_path: Path, broker: Mosquitto
) -> None:
    exporter = Exporter(tmp_path, broker.port)
    connected = "edge_gateway_exporter_broker_connected 1.0"
    try:
        await eventually(lambda: connected in exporter.metrics(), 10, "connected")
        broker.stop()
        lost = "edge_gateway_exporter_broker_connected 0.0"
        await eventually(lambda: lost in exporter.metrics(), 10, "the broker's loss on /metrics")
        await asyncio.sleep(1.5)  # a few attempts in vain
        broker.start()
        await eventually(lambda: connected in exporter.metrics(), 10, "connected again")
        assert exporter.signal(signal.SIGINT) == 130
    finally:
        exporter.cleanup()
    log = exporter.output
    assert log.count("trying again") == 1, "the loss is said once, not at every attempt"
    assert "connected to the broker" in log and "again" in log
    assert "Traceback" not in log


def test_the_exporter_stops_on_sigterm_while_the_broker_is_away(tmp_path: Path) -> None:
    exporter = Exporter(tmp_path, free_tcp_port())  # nothing listens there
    try:
        deadline = time.monotonic() + 10
        while "trying again" not in exporter.output:
            assert time.monotonic() < deadline, "the exporter never said the broker is away"
            time.sleep(0.1)
        assert exporter.signal(signal.SIGTERM) == 0
    finally:
        exporter.cleanup()
    assert "Traceback" not in exporter.output
    assert exporter.log.stat().st_size < 4000, "one sentence, not one per attempt"


@needs_prometheus
def test_the_alert_rules_in_the_docs_pass_promtool_and_name_exported_metrics(
    tmp_path: Path,
) -> None:
    from gateway.centre.exporter import METRIC_NAMES

    doc = (REPO / "docs" / "exporter.md").read_text()
    rules = next(block for block in doc.split("```yaml\n")[1:] if block.startswith("groups:"))
    rules = rules.split("```", 1)[0]
    (tmp_path / "rules.yml").write_text(rules)
    promtool = str(Path(PROMETHEUS).with_name("promtool"))
    checked = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "rules.yml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    named = set(re.findall(r"\bedge_gateway_\w+", rules))
    assert named and named <= METRIC_NAMES, sorted(named - METRIC_NAMES)
