"""`edge-gateway simulate FILE --json` as a child process, and its control socket
(docs/simulator.md): simulated field devices whose faults a rig switches while the
gateway runs.

    simulator = SimulatorProcess(workdir, SIMULATOR_TOML)
    simulator.start()                              # returns when every device is served
    port = simulator.port("pump")                  # `port = 0` in the file: a free one
    simulator.fault("pump.flow", "exception", 4)   # one point answers exception 4
    simulator.clear()
    simulator.stop()
"""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.devtools.rig.process import DEFAULT_COMMAND, ChildProcess
from gateway.devtools.rig.waiting import wait_until

_REPLY_LIMIT = 1 << 20  # bytes: `status` of a large simulation is one long line


class SimulatorError(RuntimeError):
    """The simulator refused a command (its one-line reason is the message), or did not
    start."""


class SimulatorProcess(ChildProcess):
    """The devices a simulator file describes, served by `edge-gateway simulate` in
    `workdir` (the file is `workdir/simulator.toml`, the log `workdir/simulator.log`).
    `args` go to the command line as they are (`["--link", "/tmp/rig"]`, `["--seed",
    "7"]`)."""

    def __init__(
        self,
        workdir: Path,
        scenario_text: str,
        *,
        args: Sequence[str] = (),
        command: Sequence[str] = DEFAULT_COMMAND,
    ) -> None:
        super().__init__(workdir, "simulator.log", command)
        self.file = workdir / "simulator.toml"
        self.file.write_text(scenario_text)
        self.args = list(args)
        self.ready: dict[str, Any] = {}  # the --json line: control, devices
        self._stdout = workdir / "simulator.out"

    def start(self, timeout: float = 20.0) -> None:
        """Start it and return once it serves every device, or raise SimulatorError
        (with its log) when it exits first or is not ready within `timeout` seconds."""
        self._stdout.write_bytes(b"")
        self._spawn(["simulate", str(self.file), "--json", *self.args], self._stdout)
        wait_until(lambda: self._ready_line() or not self.running, timeout, "the simulator ready")
        line = self._ready_line()
        if not line:
            code = self.proc.poll() if self.proc is not None else None
            raise SimulatorError(f"edge-gateway simulate exited ({code}): {self.log}")
        self.ready = json.loads(line)

    def _ready_line(self) -> str:
        text = self._stdout.read_text(errors="replace")
        return text.split("\n", 1)[0] if "\n" in text else ""

    # -- where the devices are ---------------------------------------------------------

    def device(self, name: str) -> dict[str, Any]:
        """What the ready line says of a device: protocol, host and port or path and
        link, unit, points."""
        for device in self.ready.get("devices", []):
            if device["name"] == name:
                found: dict[str, Any] = device
                return found
        raise KeyError(f"the simulator serves no device {name!r}")

    def port(self, name: str) -> int:
        """The TCP port of a Modbus TCP or RTU-over-TCP device."""
        return int(self.device(name)["port"])

    def path(self, name: str) -> str:
        """The serial port of an RTU slave or a line instrument: its link if it has one,
        else the pseudo-terminal."""
        device = self.device(name)
        return str(device.get("link") or device["path"])

    # -- the control socket ------------------------------------------------------------

    def command(self, line: str, timeout: float = 10.0) -> str:
        """Send one command and return the reply line; an `error ...` reply raises
        SimulatorError with the simulator's reason."""
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(timeout)
            conn.connect(self.ready["control"])
            conn.sendall(line.encode() + b"\n")
            reply = conn.makefile("rb").readline(_REPLY_LIMIT).decode().rstrip("\n")
        if reply.startswith("error"):
            raise SimulatorError(reply)
        return reply

    def fault(self, target: str, kind: str, *args: object) -> str:
        """`fault TARGET KIND ARGS`: silent, exception N, delay N, crc, txid, garbage,
        drop, flood; TARGET a device or `device.point`."""
        return self.command(" ".join(["fault", target, kind, *map(str, args)]))

    def clear(self, target: str | None = None) -> str:
        """Every fault off, or a device's (with its points') or a point's."""
        return self.command("clear" if target is None else f"clear {target}")

    def set(self, point: str, value: object) -> str:
        """`device.point` holds `value` until `unset`."""
        return self.command(f"set {point} {value}")

    def unset(self, point: str) -> str:
        return self.command(f"unset {point}")

    def status(self) -> dict[str, Any]:
        """Every device with its fault, its points' values and faults, reads and frames."""
        found: dict[str, Any] = json.loads(self.command("status"))
        return found

    def __enter__(self) -> SimulatorProcess:
        self.start()
        return self
