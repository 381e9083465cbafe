"""Wire format of the batches the gateway publishes (see docs/wire-format.md).

The city centre needs only this module and msgpack to read what gateways send::

    from gateway.wire import decode_batch
    batch = decode_batch(payload)
    for r in batch.readings: ...

`encode_batch` writes version 2 (`version=1` on request); the decoder reads both and
gives the readings back in the order they were encoded.
"""

from gateway.wire.codec import (
    WIRE_VERSION,
    Batch,
    DecodeError,
    batch_to_json_lines,
    decode_batch,
    encode_batch,
    iter_batches,
)

__all__ = [
    "WIRE_VERSION",
    "Batch",
    "DecodeError",
    "batch_to_json_lines",
    "decode_batch",
    "encode_batch",
    "iter_batches",
]
