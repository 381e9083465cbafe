"""Local processing between drivers and the buffer."""
