"""Fixtures of the test rig; the parts themselves live in rig.py."""

from rig import broker, gateway_process, subscriber

__all__ = ["broker", "gateway_process", "subscriber"]
