"""Modbus (TCP, RTU on a serial bus, RTU over TCP) as the gateway sees it: one object."""

from __future__ import annotations

from drivers.base import DriverPlugin
from drivers.modbus.checks import check, warn
from drivers.modbus.config import (
    ModbusConfig,
    ModbusRtuDeviceConfig,
    ModbusRtuOverTcpDeviceConfig,
    ModbusTcpDeviceConfig,
)

PLUGIN: DriverPlugin[ModbusConfig] = DriverPlugin(
    name="modbus",
    title="Modbus",
    configs=(ModbusTcpDeviceConfig, ModbusRtuOverTcpDeviceConfig, ModbusRtuDeviceConfig),
    check=check,
    warn=warn,
    shares_lines=True,
)
