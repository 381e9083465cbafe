"""edge-gateway: field sensors to the city centre, with store-and-forward.

The public surface for other programs is small: the version, and the wire
decoder the city centre uses to read batches (`gateway.wire.decode_batch`).
"""

__version__ = "0.2.0"
"""The one place the version is written: pyproject.toml reads it from here (setuptools'
`attr:`, without importing), so the daemon need not load importlib.metadata to know it."""

__all__ = ["__version__"]
