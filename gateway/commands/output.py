"""How the technicians' commands show things: tables, progress, JSON.

- `print_table`: a table for people. On a terminal it is drawn by `rich`; into a pipe
  or a file it is plain text, columns separated by two spaces, one row a line, so
  `grep` and `awk` work on it.
- `Progress`: a progress line on stderr for work that may take more than a second,
  drawn only when stderr is a terminal and only once the work has taken a second;
  it never mixes with the answer on stdout.
- `print_json`: the same answer for scripts and rigs (`--json`), one document.

`rich` is imported here, and this module only by commands that draw: the daemon
never loads it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, TextIO


def print_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    title: str | None = None,
    file: TextIO | None = None,
) -> None:
    out = file or sys.stdout
    cells = [["" if cell is None else str(cell) for cell in row] for row in rows]
    if out.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, title_justify="left", show_lines=False)
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in cells:
            table.add_row(*row)
        Console(file=out).print(table)
        return
    if title:
        print(title, file=out)
    widths = [
        max(len(column), *(len(row[i]) for row in cells)) if cells else len(column)
        for i, column in enumerate(columns)
    ]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip(), file=out)
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


def print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, default=str))


class Progress:
    """`with Progress("scanning", total=247) as progress: progress.advance(1, "unit 7")`."""

    def __init__(self, what: str, total: int | None = None, *, stream: TextIO | None = None):
        self.what = what
        self.total = total
        self.done = 0
        self.stream = stream or sys.stderr
        self._started = time.monotonic()
        self._shown = False
        self._live = self.stream.isatty()

    def advance(self, steps: int = 1, detail: str = "") -> None:
        self.done += steps
        if not self._live or time.monotonic() - self._started < 1.0:
            return
        share = f"{self.done}/{self.total}" if self.total else str(self.done)
        line = f"{self.what}: {share} {detail}"[:78]
        self.stream.write("\r" + line.ljust(78))
        self.stream.flush()
        self._shown = True

    def say(self, text: str) -> None:
        """A line for people on the progress stream, on a line of its own (the progress
        line, if shown, is cleared first and drawn again at the next `advance`)."""
        self._clear()
        self.stream.write(text + "\n")
        self.stream.flush()

    def _clear(self) -> None:
        if self._shown:
            self.stream.write("\r" + " " * 78 + "\r")
            self.stream.flush()
            self._shown = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._clear()  # leave the terminal as we found it, also on Ctrl-C
