"""Serial ports: their line settings in the config, line rates, and why a port cannot be
opened, in words a technician acts on. Shared by every protocol that runs on a serial
line (Modbus RTU, serial line instruments).

Every driver opens its port exclusively (pyserial's `exclusive=True`, an advisory
`flock`, plus `TIOCEXCL`, which makes further opens fail for everyone but root), so
a second program on the same port gets a clear error instead of silently stealing
bytes from the service. `open_error` turns what the OS said into a sentence that
names the holder of a busy port and the fix for a permission problem.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import termios
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from drivers.base import Problem
from drivers.core.config_types import Int, StrictModel, WholeNumber, path_text_problem


class SerialPortConfig(StrictModel):
    """Line settings of a serial port (RS-485 / RS-232)."""

    port: str = Field(description="serial device, e.g. /dev/ttyUSB0 or /dev/ttyAMA0")
    baudrate: Int = Field(9600, ge=50, le=4_000_000)
    bytesize: Annotated[Literal[7, 8], WholeNumber] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Annotated[Literal[1, 2], WholeNumber] = 1

    @field_validator("port")
    @classmethod
    def _port_names_a_device(cls, port: str) -> str:
        problem = path_text_problem(port)
        if problem is not None:
            raise ValueError(f"{problem}; name the serial device, e.g. /dev/ttyUSB0")
        return port

    @property
    def line(self) -> str:
        return self.port


def absent_port_warnings(devices: Sequence[tuple[int, SerialPortConfig]]) -> list[Problem]:
    """A warning for each serial port that is not there now (once per port)."""
    found: list[Problem] = []
    seen: set[str] = set()
    for i, dev in devices:
        if dev.port in seen:
            continue
        seen.add(dev.port)
        try:
            Path(dev.port).stat()
        except (OSError, ValueError):  # an unreadable parent counts as absent: the run will say
            found.append(
                (
                    ("devices", i, "port"),
                    f"{dev.port} does not exist now: is the adapter plugged in? "
                    "(the gateway keeps trying to open it)",
                )
            )
    return found


def bits_per_character(bytesize: int, parity: str, stopbits: float) -> float:
    """Bits on the line for one byte: start bit, data bits, parity bit, stop bits."""
    return 1 + bytesize + (0 if parity == "N" else 1) + stopbits


def line_rate(baudrate: int, bytesize: int = 8, parity: str = "N", stopbits: float = 1) -> float:
    """Bytes per second a line can carry at most."""
    return baudrate / bits_per_character(bytesize, parity, stopbits)


@dataclass(frozen=True, slots=True)
class LineSettings:
    """A serial line's settings as technicians write them: `9600 8N1`."""

    baudrate: int
    bytesize: int = 8
    parity: str = "N"  # 'N', 'E', 'O' (a UART also knows 'M' mark and 'S' space)
    stopbits: float = 1

    def __str__(self) -> str:
        return f"{self.baudrate} {self.bytesize}{self.parity}{self.stopbits:g}"

    @property
    def character_time(self) -> float:
        """Seconds one byte takes on the line."""
        return 1 / line_rate(self.baudrate, self.bytesize, self.parity, self.stopbits)


def forbid_other_openers(fd: int) -> None:
    """TIOCEXCL: further open()s of this tty fail with EBUSY (root excepted)."""
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCEXCL)


def open_error(port: str, err: BaseException) -> str:
    """Why `port` could not be opened, and what to do about it."""
    if isinstance(err, termios.error):  # the driver refused a line setting
        detail = err.args[1] if len(err.args) > 1 else str(err)
        return (
            f"{port}: the adapter refuses these line settings ({detail}): does it support "
            "this baud rate, parity and stop bits?"
        )
    code = _errno_of(err)
    text = str(err)
    if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY) or "exclusively lock" in text:
        holders = port_holders(port)
        who = ", ".join(f"pid {pid} ({name})" for pid, name in holders) or "another program"
        return f"{port} is in use by {who}; a serial port has one reader at a time"
    if code == errno.ENOENT:
        return f"{port} does not exist (is the adapter plugged in? see ls /dev/serial/by-id/)"
    if code == errno.EACCES:
        group = _group_of(port)
        fix = (
            f"add the user to the {group!r} group (sudo usermod -aG {group} $USER, then log in "
            "again)"
            if group
            else "check the port's permissions"
        )
        return f"{port}: permission denied: {fix}"
    if code == errno.ENOTTY or "Inappropriate ioctl" in text:
        return f"{port} is not a serial port"
    detail = os.strerror(code) if code else text
    return f"cannot open {port}: {detail}"


def port_holders(port: str) -> list[tuple[int, str]]:
    """Processes (pid, command) with `port` open, as far as /proc lets us see."""
    try:
        target = os.path.realpath(port)
    except OSError:
        return []
    found = []
    me = os.getpid()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == me:
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if str(fd.readlink()) == target:
                    found.append((int(proc.name), _command(proc)))
                    break
            except OSError:
                continue
    return found


def _command(proc: Path) -> str:
    try:
        raw = (proc / "cmdline").read_bytes()
    except OSError:
        return "?"
    words = raw.rstrip(b"\0").split(b"\0")
    return " ".join(w.decode("utf-8", "replace") for w in words)[:80] or "?"


def _errno_of(err: BaseException) -> int:
    seen: BaseException | None = err
    while seen is not None:
        code = getattr(seen, "errno", None)
        if isinstance(code, int) and code:
            return code
        seen = seen.__cause__ or seen.__context__
    # pyserial's SerialException carries "[Errno 13] ..." in its message only.
    text = str(err)
    if text.startswith("[Errno ") or "[Errno " in text:
        with contextlib.suppress(ValueError, IndexError):
            return int(text.split("[Errno ", 1)[1].split("]", 1)[0])
    return 0


def _group_of(port: str) -> str | None:
    try:
        return Path(port).group()
    except (OSError, KeyError):
        return None
