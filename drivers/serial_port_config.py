"""The line settings of a serial port in the config (`SerialPortConfig`): every protocol
that runs on a serial line (Modbus RTU, serial line instruments) takes these keys.
What a port is and how it opens: drivers/serial_port.py."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator

from drivers.core.config_types import Int, StrictModel, WholeNumber, path_text_problem
from drivers.serial_port import is_rfc2217, rfc2217_line, url_port_problem


class SerialPortConfig(StrictModel):
    """Line settings of a serial port (RS-485 / RS-232)."""

    port: str = Field(
        description="serial device, e.g. /dev/ttyUSB0, or a serial device server speaking "
        "RFC 2217, rfc2217://HOST:PORT"
    )
    baudrate: Int = Field(9600, ge=50, le=4_000_000)
    bytesize: Annotated[Literal[7, 8], WholeNumber] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Annotated[Literal[1, 2], WholeNumber] = 1

    network_ports: ClassVar[bool] = False
    """Whether the protocol also runs on an `rfc2217://host:port` port (Modbus RTU)."""

    @field_validator("port")
    @classmethod
    def _port_names_a_device(cls, port: str) -> str:
        problem = path_text_problem(port)
        if problem is not None:
            raise ValueError(f"{problem}; name the serial device, e.g. /dev/ttyUSB0")
        if isinstance(port, str) and "://" in port:
            problem = url_port_problem(port, network_ports=cls.network_ports)
            if problem is not None:
                raise ValueError(problem)
        return port

    @property
    def line(self) -> str:
        """The line the port is: a device path, or a server's `rfc2217://host:port`
        (options left out: one server port is one bus, however it is written)."""
        return rfc2217_line(self.port) if is_rfc2217(self.port) else self.port
