"""Modbus (TCP, RTU, RTU over TCP): config, read planning and decoding (pure), the
polling I/O shell, and its plugin (README.md has the map)."""
