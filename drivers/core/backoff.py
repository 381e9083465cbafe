"""Jittered exponential back-off, for everything that retries (devices, the broker)."""

from __future__ import annotations

import random


def backoff_delay(failures: int, base: float, maximum: float) -> float:
    """base * 2^(failures-1), at most `maximum`, then shortened by up to half at random so
    that gateways (or devices) that failed together do not return together. The jitter
    only shortens: `maximum` is a hard cap."""
    exponent = min(max(0, failures - 1), 30)  # days of failures must not overflow
    delay: float = min(maximum, base * 2.0**exponent)
    return delay * random.uniform(0.5, 1.0)
