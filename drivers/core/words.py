"""What error messages and problem lists are made of, for every layer: a key path in
the config file (`Loc`) and a value the user wrote, cut short (`shown`). Pure, and free
of pydantic, so the running daemon can word its errors without loading the config's
validation (gateway/loaded.py says why that matters)."""

from __future__ import annotations

Loc = tuple[str | int, ...]
"""A key path in the config file: ('devices', 3, 'unit')."""


def shown(value: object, limit: int = 40) -> str:
    """repr of a value the user wrote, cut short: error messages must stay readable."""
    if isinstance(value, int) and value.bit_length() > 100:
        # a number of many digits: its repr is long, and above 4300 digits it fails
        digits = len(str(abs(value))) if value.bit_length() < 14000 else "thousands of"
        return f"a number of {digits} digits"
    text = repr(value)
    if len(text) <= limit:
        return text
    return text[: limit - 4] + ("...'" if isinstance(value, str) else "...")
