"""Serial line driver: checksums, framing and frame parsers (pure) for RS-232/485 instruments."""
