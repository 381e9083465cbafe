"""Run a private mosquitto on a free loopback port: for the demo, the tests and test rigs.

The broker keeps its sessions and queued QoS 1 messages on disk across a
restart (`persistence true`), so a test can stop it, restart it and still find
a persistent subscriber's queue: what the gateway delivered is not lost by the
rig itself.

It can require passwords (`users`) and enforce an ACL (`acl`, mosquitto's
acl_file syntax); `set_acl()` rewrites the ACL and reloads it in the running
broker, as an operator fixing a denied topic would.

Known behaviour of mosquitto 2.0.11 (Debian 12) that the uplink copes with:
with `max_queued_messages 0` (set here, so that a persistent subscriber's
queue is unbounded) it closes a client's connection right after refusing one
of its QoS 1 publishes (PUBACK 0x87 under MQTT 5); and on a session takeover
it closes the old connection without the MQTT 5 DISCONNECT "Session taken
over" (0x8E).

And one that a test must cope with: with an ACL, a persistent session restored from
persistence after a restart reads nothing until its client reconnects (mosquitto finds a
client's `topic` lines when it connects; a restored session has none, and only `pattern`
lines apply to it). A QoS 1 message published in that moment is acknowledged with reason
code 0 (a subscription matched) and then dropped by the read check: it never reaches the
persistent subscriber. Grant a subscriber that must outlive a restart its reads with a
`pattern` line (`pattern read #`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from drivers.sim.modbus import free_tcp_port


class BrokerError(RuntimeError):
    pass


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if Path(candidate).is_file():
            return candidate
    return None


class Mosquitto:
    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        extra_config: str = "",
        users: Mapping[str, str] | None = None,
        acl: str | None = None,
    ) -> None:
        """`extra_config` is appended verbatim: more listeners, TLS, a password_file.
        `users` (name -> password) turns anonymous access off; `acl` is the text of a
        mosquitto acl_file (`topic write city/+/status`, `user centre`, ...)."""
        binary = find_mosquitto()
        if binary is None:
            raise BrokerError(
                "mosquitto is not installed; on Debian / Raspberry Pi OS: "
                "sudo apt-get install mosquitto"
            )
        self.binary = binary
        self.host = host
        self.port = port or free_tcp_port(host)
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.acl_file = workdir / "acl"
        access = ""
        if users is not None:
            access += f"allow_anonymous false\npassword_file {self._password_file(users)}\n"
        if acl is not None:
            self.acl_file.write_text(acl)
            access += f"acl_file {self.acl_file}\n"
        if users is None and "allow_anonymous" not in extra_config:
            access += "allow_anonymous true\n"
        self.conf.write_text(
            f"listener {self.port} {host}\n"
            "persistence true\n"
            f"persistence_location {workdir}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 0\n"
            "max_inflight_messages 100\n"
            f"log_dest file {self.log}\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            # Started as root, mosquitto switches to the 'mosquitto' user, which cannot
            # write this private directory: its log and persistence would silently fail.
            + ("user root\n" if os.geteuid() == 0 else "")
            + access
            + extra_config
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def _password_file(self, users: Mapping[str, str]) -> Path:
        path = self.workdir / "passwd"
        path.write_text("")
        tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        for name, password in users.items():
            subprocess.run(
                [tool, "-b", str(path), name, password], check=True, capture_output=True, timeout=30
            )
        return path

    def set_acl(self, acl: str, timeout: float = 10.0) -> None:
        """Replace the ACL (the broker must have been made with `acl=`) and reload it."""
        if "acl_file" not in self.conf.read_text():
            raise BrokerError("this broker was made without an ACL; pass acl= to enforce one")
        self.acl_file.write_text(acl)
        self.reload(timeout)

    def reload(self, timeout: float = 10.0) -> None:
        """SIGHUP: mosquitto reloads its configuration, ACL and password files, keeping
        its clients connected. Returns once the broker has logged the reload."""
        if not self.running:
            return
        assert self.proc is not None
        before = self._log_text().count("Reloading config")
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self._log_text().count("Reloading config") <= before:
            if time.monotonic() > deadline:
                raise BrokerError(f"mosquitto did not reload within {timeout}s; see {self.log}")
            time.sleep(0.05)

    def _log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(
                    f"mosquitto exited at start (code {self.proc.returncode}); see {self.log}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on {self.host}:{self.port} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop: mosquitto saves its persistence file."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Abrupt stop: clients see the connection reset."""
        self._signal(signal.SIGKILL, 5.0)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _signal(self, sig: int, timeout: float) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
