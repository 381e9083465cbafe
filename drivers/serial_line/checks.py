"""What looks wrong in the config's serial line instruments, though it is valid: a
polled instrument whose `timeout` is not shorter than its `poll_interval`, a serial
port that is not there. (An instrument has its port to itself: that two devices do
not share one is the gateway's own check, across protocols.)"""

from __future__ import annotations

from drivers.base import Indexed, Problem, late_poll_warnings
from drivers.serial_line.config import SerialLineDeviceConfig
from drivers.serial_port import absent_port_warnings


def warn(devices: Indexed[SerialLineDeviceConfig]) -> list[Problem]:
    polled = [(i, dev) for i, dev in devices if dev.mode == "polled"]
    return late_poll_warnings(polled) + absent_port_warnings(devices)
