"""`edge-gateway apply FILE`: hand a config to the running gateway, which switches to it
and keeps it only if it works (gateway/flashing.py); wait for the outcome and say it.

The file is validated here first (a config with problems never reaches the service).
Then it is written beside the buffer (`<state dir>/incoming.toml`, 0600, owned like
the state directory) and the service is sent SIGHUP (the pid in `<buffer>.lock`), the
same signal as `systemctl reload`. The service validates it again, switches, watches
the health window, and commits or rolls back; this command follows the config
history until the outcome is there.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from gateway.commands.common import (
    EXIT_CONFIG,
    EXIT_ENVIRONMENT,
    EXIT_FAILURE,
    EXIT_OK,
    positive_seconds,
)

NAME = "apply"
HELP = "hand a config file to the running gateway: it switches, and rolls back if it breaks"
ORDER = 15
DEFAULT_CONFIG = Path("/etc/edge-gateway/gateway.toml")

EPILOG = """\
examples:
  sudo edge-gateway apply new.toml
  sudo edge-gateway apply new.toml -c /etc/edge-gateway/gateway.toml --json

The gateway keeps the new config only if, within a few polls, the broker is reached
again (if it was before) and every device that answered before answers again; else
it goes back to the config it ran before, and says why. Either way the open batch
and the buffer are untouched. 'edge-gateway config history' lists every attempt.

exit codes:
  0    the gateway runs the new config (committed; the config file holds it now)
  1    it was refused by the service, or rolled back: the reason is printed
  2    bad input: the file has problems (listed), or the running config cannot be read
  3    no gateway is running on that config's buffer, permission denied (run as root
       or the service user), or no outcome within --timeout
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("file", type=Path, help="the new config file (TOML)")
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"the config the running service was started with (default {DEFAULT_CONFIG}): "
        "it says where the buffer, the state and the service's pid are",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        help="give up waiting for the outcome after this many seconds (default: the new "
        "config's health window plus 30)",
    )
    parser.add_argument("--json", action="store_true", help="print the outcome as one JSON object")


def run(args: argparse.Namespace) -> int:
    from gateway.errors import ConfigError
    from gateway.flashing import window_seconds
    from gateway.settings import load_config

    try:
        candidate = load_config(args.file)
    except ConfigError as err:
        print(f"edge-gateway apply: {err}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        running = load_config(args.config)
    except ConfigError as err:
        print(f"edge-gateway apply: the running config: {err}", file=sys.stderr)
        return EXIT_CONFIG
    raw = args.file.read_bytes()
    timeout = args.timeout or window_seconds(candidate.config, reconnects=True) + 30.0
    return hand_over(
        raw, running.config.buffer.path, timeout, as_json=args.json, what=str(args.file)
    )


def hand_over(raw: bytes, buffer_path: Path, timeout: float, *, as_json: bool, what: str) -> int:
    """Write `raw` where the service takes it, SIGHUP it, wait for the outcome, print it.
    Shared with `config rollback`."""
    from gateway.flashing import FINAL, INCOMING_FILE, read_history, sha256_hash, write_atomically

    directory = buffer_path.parent
    config_hash = sha256_hash(raw)
    pid = service_pid(buffer_path)
    if pid is None:
        return _fail(
            f"no gateway is running on {buffer_path} (no live pid in {buffer_path}.lock); "
            f"start it (systemctl start edge-gateway) or install the file and start it",
            as_json,
        )
    try:
        history = read_history(directory)
    except OSError as err:
        return _fail(
            f"cannot read the config history in {directory}: {err.strerror or err}", as_json
        )
    last_id = history[-1].id if history else 0
    if history and history[-1].hash == config_hash and history[-1].outcome == "committed":
        return _report(
            {"outcome": "committed", "config_hash": config_hash, "reason": "already running"},
            as_json,
            what,
        )
    incoming = directory / INCOMING_FILE
    try:
        write_atomically(incoming, raw)
        owner = directory.stat()
        if os.geteuid() == 0:
            os.chown(incoming, owner.st_uid, owner.st_gid)
        os.kill(pid, signal.SIGHUP)
    except PermissionError as err:
        return _fail(
            f"permission denied ({err.filename or err}): run as root or as the service's user",
            as_json,
        )
    except OSError as err:
        return _fail(f"cannot hand the config to the service: {err.strerror or err}", as_json)
    print(
        f"handed {what} ({config_hash}) to the gateway (pid {pid}); watching it work...",
        file=sys.stderr,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            entries = [
                e for e in read_history(directory) if e.id > last_id and e.hash == config_hash
            ]
        except OSError:
            continue
        done = [e for e in entries if e.outcome in FINAL]
        if done:
            entry = done[-1]
            return _report(
                {
                    "outcome": entry.outcome,
                    "config_hash": entry.hash,
                    "previous": entry.previous,
                    "reason": entry.reason,
                },
                as_json,
                what,
            )
    return _fail(
        f"no outcome within {timeout:.0f}s; 'edge-gateway config history' will show it", as_json
    )


def service_pid(buffer_path: Path) -> int | None:
    """The pid in `<buffer>.lock`, if that process is alive."""
    try:
        pid = int(Path(f"{buffer_path}.lock").read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, someone else's: the SIGHUP will say
    return pid


def _report(outcome: dict[str, object], as_json: bool, what: str) -> int:
    code = EXIT_OK if outcome["outcome"] == "committed" else EXIT_FAILURE
    if as_json:
        print(json.dumps({**outcome, "exit_code": code}))
        return code
    reason = f": {outcome['reason']}" if outcome.get("reason") else ""
    words = {
        "committed": "runs now",
        "rolled_back": "was rolled back",
        "refused": "was refused",
    }[str(outcome["outcome"])]
    print(f"config {outcome['config_hash']} ({what}) {words}{reason}")
    return code


def _fail(message: str, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"outcome": None, "reason": message, "exit_code": EXIT_ENVIRONMENT}))
    print(f"edge-gateway apply: {message}", file=sys.stderr)
    return EXIT_ENVIRONMENT
