"""Serial line instruments: config, checksums, framing and frame parsers (pure), the
port I/O shell, and its plugin (README.md has the map)."""
