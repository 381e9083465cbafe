"""Modbus driver: read planning and decoding (pure) and the polling I/O shell."""
