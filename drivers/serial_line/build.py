"""Serial line configs into drivers, once, at start-up: one driver per instrument and
port, with the framer and parser its config sections build."""

from __future__ import annotations

from collections.abc import Sequence

from drivers.base import ReadingSink
from drivers.serial_line.config import SerialLineDeviceConfig
from drivers.serial_line.driver import LinePoint, SerialLineDriver


def build_driver(cfg: SerialLineDeviceConfig, sink: ReadingSink) -> SerialLineDriver:
    return SerialLineDriver(
        cfg.name,
        {
            "port": cfg.port,
            "baudrate": cfg.baudrate,
            "bytesize": cfg.bytesize,
            "parity": cfg.parity,
            "stopbits": cfg.stopbits,
        },
        cfg.framing.build(),
        cfg.parser.build(),
        [LinePoint(p.name, p.field or p.name, p.type, p.scale, p.offset) for p in cfg.points],
        sink,
        command=cfg.command_bytes(),
        poll_interval=cfg.poll_interval,
        timeout=cfg.timeout,
        stale_after=cfg.stale_after,
        backoff_max=cfg.backoff_max,
        max_input_rate=cfg.max_input_rate,
    )


def build(devices: Sequence[SerialLineDeviceConfig], sink: ReadingSink) -> list[SerialLineDriver]:
    return [build_driver(cfg, sink) for cfg in devices]
