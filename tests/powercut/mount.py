"""A test's handle on the power-cut filesystem (tests/powercut/lazyfs.py): mount it,
cut the power, mount it again, and always leave no mount behind.

    with LazyMount(tmp_path) as fs:          # BASE/disk (durable), BASE/mnt (mounted)
        ... write under fs.mountpoint ...
        report = fs.cut(tear=True, seed=1)   # the power goes: every operation fails now
        fs.remount()                         # the power is back: the durable state alone

`fuse_unavailable()` says why FUSE cannot be used here (or None); `require_fuse()` turns
that into a skip, or a failure under CI, where the power-cut tests must run. Every wait
is bounded.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

LAZYFS = Path(__file__).with_name("lazyfs.py")
MOUNT_SECONDS = 10.0
UNMOUNT_SECONDS = 10.0


class LazyFSError(RuntimeError):
    """The filesystem did not mount, answer or unmount in time (its log is in the text)."""


def fuse_unavailable() -> str | None:
    """Why a FUSE filesystem cannot be mounted here, in one sentence; None if it can."""
    if not Path("/dev/fuse").exists():
        return "/dev/fuse is missing (a container needs --device /dev/fuse and CAP_SYS_ADMIN)"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing (Debian package fuse3: .ci/bootstrap installs it)"
    if importlib.util.find_spec("mfusepy") is None:
        return "the Python package mfusepy is missing (the test extra: pip install -e '.[test]')"
    if os.geteuid() != 0 and not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable by this user"
    return None


def require_fuse() -> None:
    """Skip the calling test where FUSE is unavailable, saying why; under CI, fail."""
    why = fuse_unavailable()
    if why is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"the power-cut tests need FUSE, and CI must have it: {why}")
    pytest.skip(f"power-cut tests need FUSE: {why}")


class LazyMount:
    """One power-cut filesystem: durable state in `base/disk`, mounted at `base/mnt`,
    controlled through `base/lazyfs.sock`; libfuse's and its own output in
    `base/lazyfs.log`."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.backing = base / "disk"
        self.mountpoint = base / "mnt"
        self.socket = base / "lazyfs.sock"
        self.log_path = base / "lazyfs.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.mounts = 0
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)

    # -- mounting ------------------------------------------------------------------------

    def mount(self) -> None:
        """Mount the durable state; returns once the mount answers."""
        if self.proc is not None:
            raise LazyFSError("already mounted")
        self.mounts += 1
        with self.log_path.open("ab") as log:
            log.write(f"----- mount {self.mounts} -----\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, str(LAZYFS), str(self.backing), str(self.mountpoint),
                 "--control", str(self.socket)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + MOUNT_SECONDS
        while not (os.path.ismount(self.mountpoint) and self._answers()):
            if self.proc.poll() is not None:
                self.proc = None
                raise LazyFSError(f"lazyfs exited before it mounted:\n{self.log}")
            if time.monotonic() > deadline:
                self.close()
                raise LazyFSError(f"lazyfs did not mount within {MOUNT_SECONDS:g}s:\n{self.log}")
            time.sleep(0.02)

    def _answers(self) -> bool:
        try:
            return bool(self.request({"op": "ping"}, timeout=1.0).get("ok"))
        except OSError:
            return False

    def unmount(self) -> None:
        """Unmount (lazily if something still holds it) and wait for the daemon to exit."""
        proc, self.proc = self.proc, None
        if os.path.ismount(self.mountpoint):
            done = subprocess.run(
                ["fusermount3", "-u", str(self.mountpoint)], capture_output=True, check=False
            )
            if done.returncode != 0:
                subprocess.run(
                    ["fusermount3", "-uz", str(self.mountpoint)], capture_output=True, check=False
                )
        if proc is not None:
            try:
                proc.wait(UNMOUNT_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(UNMOUNT_SECONDS)
                raise LazyFSError(f"lazyfs did not exit after its unmount:\n{self.log}") from None

    def remount(self) -> None:
        """The power is back: unmount, and mount the durable state again."""
        self.unmount()
        self.mount()

    def close(self) -> None:
        """Leave nothing behind, whatever state it is in (a test's teardown)."""
        proc, self.proc = self.proc, None
        if os.path.ismount(self.mountpoint):
            subprocess.run(
                ["fusermount3", "-uz", str(self.mountpoint)], capture_output=True, check=False
            )
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    # -- the power ---------------------------------------------------------------------------

    def cut(self, *, tear: bool = False, seed: int | None = None) -> dict[str, Any]:
        """The power goes, now: every later operation on the mount fails with EIO, and
        what was never synced is lost (with `tear`, the last unsynced write reaches the
        disk in some of its 512-byte sectors). Returns what was unsynced at the cut."""
        reply = self.request({"op": "cut", "tear": tear, "seed": seed})
        if not reply.get("ok"):
            raise LazyFSError(f"cut refused: {reply}")
        return reply

    def stats(self) -> dict[str, Any]:
        return self.request({"op": "stats"})

    def request(self, message: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(self.socket))
            conn.sendall(json.dumps(message).encode() + b"\n")
            with conn.makefile("rb") as stream:
                line = stream.readline()
        if not line:
            raise LazyFSError(f"lazyfs closed the control socket without an answer:\n{self.log}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    @property
    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-4000:]
        return ""

    def __enter__(self) -> LazyMount:
        self.mount()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
