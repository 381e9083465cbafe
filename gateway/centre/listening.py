"""Listen to a broker until told to stop: what `tail` and `watch` share.

    await listen(connection, ["city/+/data/#"], handle, seconds=30.0)

connects (`CentreClient`), subscribes to every filter at QoS 1, then hands each message
to `handle` until `seconds` have passed, `stop` is set (SIGTERM sets it: a service
manager's stop is a normal end) or the connection is lost (CentreError). Coroutines in
`beside` (a periodic report, a screen to redraw) run in the same task group, named, and
end with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, NoReturn

from gateway.centre.client import CentreClient, Connection, Received

__all__ = ["listen", "share"]


class _Stopped(Exception):
    """The listening time is over, or SIGTERM came: not an error."""


def share(group: str | None, topic_filter: str) -> str:
    """The MQTT 5 shared subscription of `topic_filter` for a group of consumers (each
    message goes to one of them), or the filter itself without a group."""
    return topic_filter if group is None else f"$share/{group}/{topic_filter}"


async def listen(
    connection: Connection,
    filters: Iterable[str],
    handle: Callable[[Received], None],
    *,
    seconds: float | None = None,
    stop: asyncio.Event | None = None,
    subscribed: Callable[[], None] | None = None,
    beside: Sequence[tuple[str, Coroutine[Any, Any, None]]] = (),
) -> None:
    """Listen (module docstring). Raises BrokerUnreachable or CentreError (a sentence)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # not on the main thread
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        async with CentreClient(connection) as client:
            for topic_filter in filters:
                await client.subscribe(topic_filter, qos=1)
            if subscribed is not None:
                subscribed()
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(_until(seconds, stop), name="stop")
                    group.create_task(_receive(client, handle), name="receive")
                    for name, work in beside:
                        group.create_task(work, name=name)
            except BaseExceptionGroup as grouped:  # one failure says it: not a group of one
                failures = [e for e in grouped.exceptions if not isinstance(e, _Stopped)]
                if failures:
                    raise failures[0] from None
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)
        for _, work in beside:
            work.close()  # a coroutine never started (the connection failed first)


async def _until(seconds: float | None, stop: asyncio.Event) -> NoReturn:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
    raise _Stopped


async def _receive(client: CentreClient, handle: Callable[[Received], None]) -> None:
    async for message in client.messages():
        handle(message)
