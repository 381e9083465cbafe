"""Cancelling tasks reliably.

On Python 3.11, `asyncio.wait_for` can swallow a cancellation that arrives just as
the awaited future completes (fixed in 3.12, where it is built on
`asyncio.timeout`). pymodbus awaits every response with `wait_for`, so a
single `task.cancel()` sometimes leaves a poller running forever, and a
shutdown that waits for it hangs. `cancel_and_wait` cancels again until the
tasks are really done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], *, recheck: float = 0.2) -> None:
    """Cancel tasks and wait until every one has finished, re-cancelling as needed."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=recheck)
