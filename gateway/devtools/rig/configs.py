"""Gateway configs for rigs, as TOML text: fast batches, fast reconnects, loopback only.

    pressure = '{ name = "pressure", address = 0, type = "float32", unit = "bar" }'
    gateway_config(broker_port=1883, buffer_path=Path("/tmp/buffer.db"),
                   devices=modbus_device("pump", 5020, 1, pressure))

`points` is the inside of a TOML array: one `{ name = ..., address = ..., type = ... }`
inline table a line, as in config/example.toml.
"""

from __future__ import annotations

from pathlib import Path


def gateway_config(
    *,
    broker_port: int,
    buffer_path: Path,
    devices: str,
    gateway_id: str = "test-gw",
    max_readings: int = 50,
    max_age: str = "200ms",
    extra_mqtt: str = "",
) -> str:
    """A whole config: the broker on 127.0.0.1, batches of at most `max_readings` or
    `max_age`, reconnects within 100-500 ms, health every second. `extra_mqtt` is
    appended to [mqtt] verbatim (`keepalive = "2s"`, `protocol = "3.1.1"`, ...)."""
    return f"""
[gateway]
id = "{gateway_id}"
log_level = "info"

[mqtt]
host = "127.0.0.1"
port = {broker_port}
reconnect_min = "100ms"
reconnect_max = "500ms"
health_interval = "1s"
{extra_mqtt}

[buffer]
path = "{buffer_path}"
max_bytes = "50MB"

[batch]
max_readings = {max_readings}
max_age = "{max_age}"

{devices}
"""


def modbus_device(
    name: str,
    port: int,
    unit: int,
    points: str,
    *,
    interval: str = "100ms",
    timeout: str = "300ms",
    backoff_max: str = "1s",
) -> str:
    """A [[devices]] section: a Modbus TCP device on loopback, polled fast, no retries."""
    where = f'protocol = "modbus_tcp"\nhost = "127.0.0.1"\nport = {port}'
    return _modbus_section(name, where, unit, points, interval, timeout, backoff_max)


def rtu_device(
    name: str,
    serial_port: str,
    unit: int,
    points: str,
    *,
    interval: str = "100ms",
    timeout: str = "200ms",
    backoff_max: str = "1s",
) -> str:
    """A [[devices]] section: a Modbus RTU slave on a serial port (one end of a
    `drivers.sim.serial_link.NullModem`, or a real adapter), 19200 8N1."""
    where = f'protocol = "modbus_rtu"\nport = "{serial_port}"\nbaudrate = 19200'
    return _modbus_section(name, where, unit, points, interval, timeout, backoff_max)


def _modbus_section(
    name: str, where: str, unit: int, points: str, interval: str, timeout: str, backoff_max: str
) -> str:
    return f"""
[[devices]]
name = "{name}"
{where}
unit = {unit}
poll_interval = "{interval}"
timeout = "{timeout}"
retries = 0
backoff_max = "{backoff_max}"
points = [
{points}
]
"""
