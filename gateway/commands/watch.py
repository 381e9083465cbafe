"""`edge-gateway watch`: every gateway on a broker on one screen, like `top`.

Subscribes to each gateway's status, health, events, device states, active alarms and
(for the completeness column) data; the retained ones give the present at once, health
fills in the rest within one `[mqtt] health_interval`. On a terminal it redraws in place
(rich) and takes keys: s the next sort key, r reverse, q quit. `--once` collects for
`--for` and prints once; `--json` prints the same as one JSON object, for scripts.
gateway/centre/fleet.py holds the view; this module only draws it.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from gateway.commands.broker_args import add_broker_arguments, connection, duration
from gateway.commands.common import EXIT_CONFIG, EXIT_ENVIRONMENT, EXIT_OK

if TYPE_CHECKING:
    import asyncio

    from rich.console import JustifyMethod, RenderableType

    from gateway.centre.client import Connection
    from gateway.centre.fleet import Fleet

NAME = "watch"
HELP = "a live view of every gateway on a broker, like top (--once --json for scripts)"
ORDER = 53

SORT_CHOICES = ("state", "gateway", "seen", "buffer", "oldest", "devices", "alarms", "completeness")
"""gateway.centre.fleet.SORT_KEYS, named here so that `--help` loads no MQTT client."""
DEFAULT_ONCE_FOR = 35.0  # a bit over one [mqtt] health_interval (30 s by default)
EVENTS_SHOWN = 6

EPILOG = """\
examples:
  edge-gateway watch --broker 127.0.0.1
  edge-gateway watch --broker mqtt.city.example:8883 --tls-ca ca.pem --username centre \\
      --sort devices
  edge-gateway watch --broker 127.0.0.1 --once --json --for 35s | jq '.gateways[].state'

columns: STATE online, offline (its status says so: stopped, or the broker's last will),
silent (online, but nothing for three health intervals) or unknown; SEEN how long ago it
last published; BUF batches waiting on its disk (! while evicting); OLDEST the age of the
oldest; UPLINK its MQTT link; DEVICES offline and degraded ones; ALM active alarms;
COMPLETE what stands out of the seq account (docs/centre.md): n missing, n lost (at a
crash), n evicted, n on disk, ok. Keys: s next sort key, r reverse, q quit.

exit codes: 0 ok (--once: collected and printed); 2 bad input (an argument, a CA file);
3 the broker cannot be reached, or the connection was lost; 130 interrupted (Ctrl-C)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    add_broker_arguments(parser)
    parser.add_argument(
        "--sort",
        choices=SORT_CHOICES,
        default="state",
        help="order of the rows, those that need attention first (default state: offline "
        "and silent gateways on top; gateway: by id); s cycles it while running",
    )
    parser.add_argument(
        "--reverse", action="store_true", help="reverse the order (r toggles it while running)"
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="collect for --for, print the view once and exit (also when the output is not "
        "a terminal)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="with --once (implied): print one JSON object: every gateway's state, buffer, "
        "uplink, devices, alarms, recent events and completeness",
    )
    parser.add_argument(
        "--for",
        dest="seconds",
        type=duration,
        metavar="DURATION",
        help=f"--once: collect this long (default {DEFAULT_ONCE_FOR:g}s, a bit over the "
        "default health interval); live: stop after this long (default: until q or Ctrl-C)",
    )
    parser.add_argument(
        "--no-data",
        action="store_true",
        help="do not subscribe to data batches (a large fleet's data costs CPU to decode); "
        "the completeness column stays empty",
    )
    parser.add_argument(
        "--refresh",
        type=duration,
        default=1.0,
        metavar="DURATION",
        help="live: redraw this often (default 1s)",
    )


def run(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.centre.client import CentreError
    from gateway.centre.fleet import Fleet

    try:
        to_broker = connection(args)
    except ValueError as err:
        print(f"edge-gateway watch: {err}", file=sys.stderr)
        return EXIT_CONFIG
    once = args.once or args.json or not sys.stdout.isatty()
    fleet = Fleet(args.prefix)
    try:
        if once:
            started = time.monotonic()
            asyncio.run(_collect(args, to_broker, fleet, args.seconds or DEFAULT_ONCE_FOR))
            _print_once(args, fleet, time.monotonic() - started)  # SIGTERM may end it sooner
        else:
            asyncio.run(_Live(args, fleet).run(to_broker))
    except CentreError as err:
        print(f"edge-gateway watch: {err}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    return EXIT_OK


def _filters(args: argparse.Namespace) -> list[str]:
    from gateway.uplink.topics import Topics

    every = Topics(args.prefix, "+")
    filters = [
        every.status,
        every.health,
        every.event,
        every.device("+"),
        every.alarms_active,
    ]
    return filters if args.no_data else [*filters, f"{every.data}/#"]


async def _collect(
    args: argparse.Namespace, to_broker: Connection, fleet: Fleet, seconds: float
) -> None:
    from gateway.centre.listening import listen

    await listen(
        to_broker, _filters(args), lambda m: fleet.receive(m.topic, m.payload), seconds=seconds
    )


def _print_once(args: argparse.Namespace, fleet: Fleet, seconds: float) -> None:
    from gateway.centre.fleet import sort_rows

    now = time.time()
    rows = sort_rows(fleet.rows(now), args.sort, reverse=args.reverse)
    if args.json:
        import json

        document = {
            "ts": round(now, 3),
            "broker": args.broker,
            "prefix": args.prefix,
            "collected_s": round(seconds, 3),
            "sort": args.sort,
            "gateways": rows,
            "events": fleet.recent_events(20),
            "undecodable": fleet.undecodable,
        }
        print(json.dumps(document, indent=2))
        return
    from rich.console import Console

    width = max(80, _terminal_width())
    Console(width=width).print(render(rows, fleet.recent_events(EVENTS_SHOWN), args, width))


def _terminal_width() -> int:
    import shutil

    return shutil.get_terminal_size((80, 24)).columns


# --- drawing -----------------------------------------------------------------------------------


def render(
    rows: list[dict[str, Any]],
    events: list[dict[str, Any]],
    args: argparse.Namespace,
    width: int = 80,
) -> RenderableType:
    """The screen, `width` columns wide: a header line, one row per gateway, the newest
    events of the fleet."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from gateway.centre.fleet import completeness_summary

    online = sum(1 for row in rows if row["state"] == "online")
    order = f"sort {args.sort}{' reversed' if args.reverse else ''}"
    header = Text(
        f"{len(rows)} gateways, {online} online on {args.broker}; {order}"
        + ("; keys: s sort, r reverse, q quit" if not args.once else ""),
        style="bold",
        no_wrap=True,
        overflow="ellipsis",
    )
    table = Table(box=None, pad_edge=False, collapse_padding=True, header_style="bold")
    columns: tuple[tuple[str, JustifyMethod, int], ...] = (  # name, justify, characters
        ("STATE", "left", 7),
        ("SEEN", "right", 4),
        ("BUF", "right", 5),
        ("OLDEST", "right", 6),
        ("UPLINK", "left", 7),
        ("DEVICES", "left", 9),
        ("ALM", "right", 3),
        ("COMPLETE", "left", 10),
    )
    rest = width - sum(size for _, _, size in columns) - len(columns)  # one space between
    table.add_column("GATEWAY", no_wrap=True, overflow="ellipsis", max_width=max(8, rest))
    for name, justify, size in columns:
        table.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis", width=size)
    for row in rows:
        buffer = row["buffer"] or {}
        batches = buffer.get("batches")
        table.add_row(
            row["gateway_id"],
            Text(row["state"], style=_STATE_STYLES.get(row["state"], "")),
            _age(row["last_seen_age_s"]),
            "-" if batches is None else f"{batches}{'!' if buffer.get('evicting') else ''}",
            _age(buffer.get("oldest_unsent_age_s")),
            str((row["uplink"] or {}).get("state") or "-"),
            _devices(row),
            str(len(row["alarms"])) if row["alarms"] else "-",
            completeness_summary(row["completeness"]),
        )
    lines: list[RenderableType] = [header, table]
    if events:
        lines.append(Text("recent events", style="bold"))
        for event in events:
            lines.append(
                Text(
                    f"{_clock(event.get('ts'))} {event.get('gateway_id')} "
                    f"{event.get('kind')}: {event.get('message')}",
                    no_wrap=True,
                    overflow="ellipsis",
                )
            )
    return Group(*lines)


_STATE_STYLES = {"offline": "bold red", "silent": "yellow", "unknown": "dim", "online": "green"}


def _devices(row: dict[str, Any]) -> str:
    offline, degraded = len(row["devices_offline"]), len(row["devices_degraded"])
    if not row["devices"]:
        return "-"
    if not offline and not degraded:
        return f"{len(row['devices'])} ok"
    parts = [f"{offline}off"] if offline else []
    return " ".join([*parts, f"{degraded}deg"] if degraded else parts)


def _age(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _clock(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return "--:--:--"
    return time.strftime("%H:%M:%S", time.localtime(ts))


# --- the live view ---------------------------------------------------------------------------


class _Live:
    """Redraw in place every --refresh and at each key; s, r and q while running."""

    def __init__(self, args: argparse.Namespace, fleet: Fleet) -> None:
        self.args = args
        self.fleet = fleet
        self.redraw: asyncio.Event | None = None
        self.stop: asyncio.Event | None = None

    async def run(self, to_broker: Connection) -> None:
        import asyncio

        from gateway.centre.listening import listen

        self.redraw, self.stop = asyncio.Event(), asyncio.Event()
        with _Keys(self.key):
            await listen(
                to_broker,
                _filters(self.args),
                lambda m: self.fleet.receive(m.topic, m.payload),
                seconds=self.args.seconds,
                stop=self.stop,
                beside=[("draw", self.draw())],
            )

    def key(self, char: str) -> None:
        from gateway.centre.fleet import SORT_KEYS

        assert self.redraw is not None and self.stop is not None
        if char in ("q", "Q"):
            self.stop.set()
        elif char == "s":
            keys = list(SORT_KEYS)
            self.args.sort = keys[(keys.index(self.args.sort) + 1) % len(keys)]
        elif char == "r":
            self.args.reverse = not self.args.reverse
        self.redraw.set()

    def screen(self, width: int) -> RenderableType:
        from gateway.centre.fleet import sort_rows

        rows = sort_rows(self.fleet.rows(time.time()), self.args.sort, reverse=self.args.reverse)
        return render(rows, self.fleet.recent_events(EVENTS_SHOWN), self.args, width)

    async def draw(self) -> None:
        import asyncio
        import contextlib

        from rich.live import Live

        assert self.redraw is not None
        with Live(auto_refresh=False, screen=False) as live:
            while True:
                live.update(self.screen(live.console.width), refresh=True)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.args.refresh):
                        await self.redraw.wait()
                self.redraw.clear()


class _Keys:
    """Single keys from a terminal (cbreak mode, restored on the way out); nothing when
    standard input is not a terminal."""

    def __init__(self, on_key: Any) -> None:
        self.on_key = on_key
        self._saved: Any = None
        self._fd = -1

    def __enter__(self) -> _Keys:
        import asyncio
        import termios
        import tty

        if not sys.stdin.isatty():
            return self
        self._fd = sys.stdin.fileno()
        self._saved = termios.tcgetattr(self._fd)
        tty.setcbreak(self._fd)
        asyncio.get_running_loop().add_reader(self._fd, self._read)
        return self

    def _read(self) -> None:
        import os

        for char in os.read(self._fd, 32).decode(errors="replace"):
            self.on_key(char)

    def __exit__(self, *exc: object) -> None:
        import asyncio
        import termios

        if self._saved is None:
            return
        asyncio.get_running_loop().remove_reader(self._fd)
        termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
