"""Jittered exponential back-off, for everything that retries (devices, the broker)."""

from __future__ import annotations

import random


def backoff_delay(failures: int, base: float, maximum: float) -> float:
    """Jittered exponential back-off: base * 2^(failures-1), capped, +/-20 % jitter."""
    exponent = min(max(0, failures - 1), 30)  # capped: days of failures must not overflow
    delay: float = min(maximum, base * 2.0**exponent)
    return delay * random.uniform(0.8, 1.2)
