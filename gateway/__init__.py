"""edge-gateway: field sensors to the city centre, with store-and-forward.

The public surface for other programs is small: the version, and the wire
decoder the city centre uses to read batches (`gateway.wire.decode_batch`).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edge-gateway")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
