"""Errors of the gateway layer. Drivers and the buffer have their own trees."""

from __future__ import annotations


class GatewayError(Exception):
    """Base of the gateway's own errors."""


class ConfigError(GatewayError):
    """The configuration file cannot be used; `problems` lists each one by key path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        listing = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) in the configuration:\n{listing}")

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, list[str]]]:
        return ConfigError, (self.source, self.problems)  # from the child that validates


class StartupError(GatewayError):
    """The gateway cannot start here, for a reason a restart will not fix (a buffer path
    that is not ours, a read-only directory): one sentence, exit code 3."""
