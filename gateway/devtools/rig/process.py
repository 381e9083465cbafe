"""The edge-gateway commands a rig runs as child processes: the gateway as systemd runs
it (`edge-gateway run -c FILE`) and, in simulator.py, `edge-gateway simulate`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from gateway.devtools.rig.configs import gateway_config

# `-P`: the working directory (a rig's scratch folder) never shadows an installed package.
DEFAULT_COMMAND = (sys.executable, "-P", "-m", "gateway")


class ChildProcess:
    """An `edge-gateway` command run in `workdir`, its stderr (and stdout, unless it has a
    file of its own) appended to `log_path`. Each start writes a `----- run N -----` line
    to the log first, so one log holds every run of a restart test.

    `command` runs another installation (`["/opt/edge-gateway/bin/edge-gateway"]`); by
    default the one of this Python environment. `env` adds to the environment of the
    next start."""

    def __init__(self, workdir: Path, log_name: str, command: Sequence[str]) -> None:
        self.env: dict[str, str] = {}
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / log_name
        self.program = list(command)
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def _spawn(self, args: Sequence[str], stdout_path: Path | None = None) -> None:
        self.runs += 1
        with self.log_path.open("ab") as log:
            log.write(f"----- run {self.runs} -----\n".encode())
            log.flush()
            with (stdout_path or self.log_path).open("ab") as out:
                self.proc = subprocess.Popen(
                    [*self.program, *args],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=log,
                    cwd=self.workdir,
                    env=dict(os.environ, PYTHONUNBUFFERED="1", **self.env),
                )

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, as `systemctl stop`: returns its exit code. One that has not exited
        within `timeout` is killed and subprocess.TimeoutExpired raised: a hung stop
        fails the test and leaves no orphan behind."""
        proc = self._running_proc()
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise
        finally:
            self.proc = None

    def kill(self) -> None:
        """SIGKILL: a crash or a power cut, as far as the process can tell."""
        proc = self._running_proc()
        proc.kill()
        proc.wait(10)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def log(self) -> str:
        """Everything every run wrote to the log so far."""
        return self.log_path.read_text(errors="replace")

    def cleanup(self) -> None:
        """Kill it if it still runs (a test's teardown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def _running_proc(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            raise RuntimeError(f"the process in {self.workdir} was not started")
        return self.proc

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.stop()


class GatewayProcess(ChildProcess):
    """`edge-gateway run -c WORKDIR/gateway.toml`, its output in WORKDIR/gateway.log
    (`env` for NOTIFY_SOCKET and the like; `config` to rewrite before a SIGHUP)."""

    def __init__(
        self, workdir: Path, config_text: str, *, command: Sequence[str] = DEFAULT_COMMAND
    ) -> None:
        super().__init__(workdir, "gateway.log", command)
        self.config = workdir / "gateway.toml"
        self.config.write_text(config_text)

    def start(self) -> None:
        """Start it (again); returns at once: wait for what it publishes, or
        `wait_started`."""
        self._spawn(["run", "-c", str(self.config)])

    def wait_started(self, timeout: float = 30.0) -> None:
        """Until this run has validated its config (in a child process: gateway/loaded.py)
        and opened its buffer, which its log says ("starting"); AssertionError with the
        log when it has not within `timeout` or has ended."""
        deadline = time.monotonic() + timeout
        while "' starting (boot " not in self.log.rsplit("----- run ", 1)[-1]:
            assert self.running and time.monotonic() < deadline, f"it did not start:\n{self.log}"
            time.sleep(0.05)

    def __enter__(self) -> GatewayProcess:
        self.start()
        return self


class GatewayFactory:
    """Starts gateways on one broker, each in a folder of its own under `workdir`
    (gw-1/, gw-2/, ...), with `gateway_config`'s fast settings; `cleanup()` kills any
    still running. The `edge_gateway` fixture is one of these."""

    def __init__(self, workdir: Path, broker_port: int) -> None:
        self.workdir = workdir
        self.broker_port = broker_port
        self.made: list[GatewayProcess] = []

    def __call__(
        self,
        devices: str,
        *,
        gateway_id: str | None = None,
        broker_port: int | None = None,
        max_readings: int = 50,
        max_age: str = "200ms",
        extra_mqtt: str = "",
        start: bool = True,
    ) -> GatewayProcess:
        """A gateway polling `devices` (`modbus_device(...)` sections), started unless
        `start=False`. Its id is `gw-N` unless named; `broker_port` points it elsewhere
        than the broker (a `LinkProxy`'s port)."""
        name = f"gw-{len(self.made) + 1}"
        workdir = self.workdir / name
        config = gateway_config(
            broker_port=self.broker_port if broker_port is None else broker_port,
            buffer_path=workdir / "buffer.db",
            devices=devices,
            gateway_id=gateway_id or name,
            max_readings=max_readings,
            max_age=max_age,
            extra_mqtt=extra_mqtt,
        )
        gateway = GatewayProcess(workdir, config)
        self.made.append(gateway)
        if start:
            gateway.start()
        return gateway

    def cleanup(self) -> None:
        for gateway in self.made:
            gateway.cleanup()
