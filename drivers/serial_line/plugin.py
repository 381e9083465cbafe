"""Serial line instruments (text lines, NMEA-0183, binary frames) as the gateway sees
them: one object."""

from __future__ import annotations

from drivers.base import DriverPlugin
from drivers.serial_line.checks import warn
from drivers.serial_line.config import SerialLineDeviceConfig

PLUGIN: DriverPlugin[SerialLineDeviceConfig] = DriverPlugin(
    name="serial_line",
    title="serial line",
    configs=(SerialLineDeviceConfig,),
    warn=warn,
)
