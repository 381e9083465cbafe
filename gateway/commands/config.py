"""`edge-gateway config history` and `config rollback`: the configs this gateway tried.

`history` reads the config history the service keeps beside its buffer (every
attempt: hash, source, time, outcome, reason). `rollback` hands a config kept there
(the last committed before the running one, or the one named) back to the running
service, through the same path as `apply`: health window, commit or roll back.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.commands.common import EXIT_CONFIG, EXIT_ENVIRONMENT, EXIT_OK, positive_seconds

if TYPE_CHECKING:
    from gateway.flashing import HistoryEntry

NAME = "config"
HELP = "the configs this gateway tried (history) and going back to one (rollback)"
ORDER = 16
DEFAULT_CONFIG = Path("/etc/edge-gateway/gateway.toml")

EPILOG = """\
examples:
  edge-gateway config history
  edge-gateway config history --json | jq '.[] | select(.outcome == "rolled_back")'
  sudo edge-gateway config rollback
  sudo edge-gateway config rollback 3f2a9c0d4e1b

exit codes:
  0    history printed; rollback: the gateway runs the chosen config
  1    rollback: the service refused or rolled back the chosen config
  2    bad input: the config cannot be read, no such config in the history
  3    no gateway running (rollback), the state directory cannot be read, permission
       denied, or no outcome in time
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"the running service's config (default {DEFAULT_CONFIG}): where its state is",
    )
    sub = parser.add_subparsers(
        dest="action", required=True, metavar="ACTION", help="history or rollback"
    )
    history = sub.add_parser(
        "history", help="every config tried on this gateway, oldest first", epilog=EPILOG
    )
    history.add_argument("--json", action="store_true", help="print a JSON array of entries")
    history.add_argument(
        "-n", "--last", type=int, default=20, help="show the last N entries (default 20; 0: all)"
    )
    rollback = sub.add_parser(
        "rollback", help="go back to a config kept on this gateway", epilog=EPILOG
    )
    rollback.add_argument(
        "hash",
        nargs="?",
        help="the config's hash (from history; default: the last committed before the running one)",
    )
    rollback.add_argument(
        "--timeout", type=positive_seconds, default=330.0, help="wait this long for the outcome"
    )
    rollback.add_argument(
        "--json", action="store_true", help="print the outcome as one JSON object"
    )


def run(args: argparse.Namespace) -> int:
    from gateway.errors import ConfigError
    from gateway.flashing import read_history
    from gateway.settings import load_config

    try:
        running = load_config(args.config)
    except ConfigError as err:
        print(f"edge-gateway config: {err}", file=sys.stderr)
        return EXIT_CONFIG
    directory = running.config.buffer.path.parent
    try:
        entries = read_history(directory)
    except OSError as err:
        print(
            f"edge-gateway config: cannot read the history in {directory}: {err.strerror or err}",
            file=sys.stderr,
        )
        return EXIT_ENVIRONMENT
    if args.action == "history":
        shown = entries[-args.last :] if args.last > 0 else entries
        if args.json:
            print(json.dumps([e.to_json() for e in shown], indent=1))
            return EXIT_OK
        if not shown:
            print(f"no config history in {directory} yet (the service writes it when it starts)")
            return EXIT_OK
        from gateway.commands.output import print_table

        print_table(
            ["#", "time", "hash", "source", "outcome", "previous", "reason"],
            [
                [
                    str(e.id),
                    _when(e.ts),
                    e.hash,
                    e.source,
                    e.outcome,
                    e.previous or "",
                    e.reason or "",
                ]
                for e in shown
            ],
        )
        return EXIT_OK
    return _rollback(args, entries, running.config.buffer.path)


def _rollback(args: argparse.Namespace, entries: list[HistoryEntry], buffer_path: Path) -> int:
    from gateway.commands.apply import hand_over
    from gateway.flashing import KeptConfigs

    running = next((e.hash for e in reversed(entries) if e.outcome == "committed"), None)
    if args.hash:
        target = args.hash
        if not any(e.hash == target for e in entries):
            print(f"edge-gateway config: no config {target} in the history", file=sys.stderr)
            return EXIT_CONFIG
    else:
        committed = [e.hash for e in entries if e.outcome == "committed" and e.hash != running]
        if not committed:
            print("edge-gateway config: no earlier committed config to go back to", file=sys.stderr)
            return EXIT_CONFIG
        target = committed[-1]
    raw = KeptConfigs(buffer_path.parent).read(target)
    if raw is None:
        print(
            f"edge-gateway config: config {target} is no longer kept on this gateway",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    return hand_over(
        raw, buffer_path, args.timeout, as_json=args.json, what=f"rollback to {target}"
    )


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")
