"""The protocols the gateway speaks: one import per protocol, named in `PLUGINS`
(drivers/README.md says how to add one).

The order of `PLUGINS` is the order of the device union in the config schema and of
the drivers built (and so of the lines `validate` prints).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, TypeVar

from drivers.base import DeviceSettings, DriverPlugin
from drivers.modbus.plugin import PLUGIN as MODBUS
from drivers.serial_line.plugin import PLUGIN as SERIAL_LINE

PLUGINS: Final[tuple[DriverPlugin[Any], ...]] = (MODBUS, SERIAL_LINE)

_BY_PROTOCOL: Final = {protocol: plugin for plugin in PLUGINS for protocol in plugin.protocols}

D = TypeVar("D", bound=DeviceSettings)


def protocol_plugins() -> dict[str, str]:
    """Each protocol's plugin name (its folder), in the order of `PLUGINS`: what the
    daemon needs to build drivers without the plugins (gateway/build.py)."""
    return {protocol: plugin.name for plugin in PLUGINS for protocol in plugin.protocols}


def plugin_of(protocol: str) -> DriverPlugin[Any]:
    """The plugin of a device's `protocol`."""
    return _BY_PROTOCOL[protocol]


def by_plugin(
    devices: Iterable[tuple[int, D]],
) -> list[tuple[DriverPlugin[Any], list[tuple[int, D]]]]:
    """Each plugin that has devices, with its devices (and their indices in [[devices]]),
    in the order of `PLUGINS`."""
    mine: dict[str, list[tuple[int, D]]] = {plugin.name: [] for plugin in PLUGINS}
    for i, dev in devices:
        mine[plugin_of(dev.protocol).name].append((i, dev))
    return [(plugin, mine[plugin.name]) for plugin in PLUGINS if mine[plugin.name]]
