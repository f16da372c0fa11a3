"""Greenlet mode: blocking calls that switch to the event loop instead of blocking it.

A greenlet handler runs on the loop thread, in a greenlet whose parent is the
loop's own (root) greenlet. Where a thread would block, the handler *parks*:
it registers itself where the awaited event happens (the connection's inbox,
a ping waiter, a timer) and switches to its parent, which resumes the event
loop. The loop switches back into it (always through ``loop.call_soon``, never
from inside a protocol callback) when the event may have happened; each park
loop re-checks its condition, so a stale wake-up is harmless.

A greenlet handler must not block on anything else (``time.sleep``, blocking
I/O): that freezes every connection. `sleep()` is the sleep that switches;
``LOOP_BLOCK_WARNING`` logs the handler that ran too long without switching.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import greenlet

if TYPE_CHECKING:
    from ...aio.connection import Connection
    from .inbox import Inbox

__all__ = [
    "blocking_watch",
    "check_blocked",
    "park_for_message",
    "park_until",
    "park_until_closed",
    "sleep",
    "wait_writable",
]

logger = logging.getLogger("embedws.server")

_TIMED_OUT = object()


class _BlockingWatch(threading.local):
    threshold: float | None = None
    name = ""
    resumed = 0.0


blocking_watch = _BlockingWatch()


def check_blocked() -> None:
    """Warn if the current greenlet handler ran without switching for too long."""
    watch = blocking_watch
    if watch.threshold is None:
        return
    ran = time.perf_counter() - watch.resumed
    if ran > watch.threshold:
        logger.warning(
            "greenlet handler %s blocked the event loop for %.0f ms; greenlet handlers "
            "must not block (use embedws.sync.sleep, or thread mode)",
            watch.name,
            ran * 1000,
        )


def _in_event_loop() -> bool:
    """Whether this thread is running an asyncio loop or a trio run."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return True
    trio = sys.modules.get("trio")  # never imported here: only a program that uses it has it
    return trio is not None and bool(trio.lowlevel.in_trio_run())


def _switch_to_loop(current: greenlet.greenlet) -> Any:
    parent = current.parent
    assert parent is not None
    watch = blocking_watch
    if watch.threshold is None:  # LOOP_BLOCK_WARNING is off (the default): nothing to time
        return parent.switch()
    check_blocked()
    value = parent.switch()
    watch.resumed = time.perf_counter()
    return value


def park_for_message(conn: Connection, inbox: Inbox, timeout: float | None) -> str | bytes:
    """``recv`` in a greenlet handler: switch to the loop until a message comes."""
    message = inbox.get_nowait()
    if message is not None:
        return inbox.taken(message)
    if timeout is not None and timeout <= 0:
        raise TimeoutError("no message received")
    current = greenlet.getcurrent()
    timer = None
    if timeout is not None:
        timer = conn.loop.call_later(timeout, _wake, current, _TIMED_OUT)
    try:
        while True:
            inbox.parked = current
            woken = _switch_to_loop(current)
            message = inbox.get_nowait()
            if message is not None:
                return inbox.taken(message)
            if woken is _TIMED_OUT:
                raise TimeoutError("no message received in time")
    finally:
        if inbox.parked is current:
            inbox.parked = None
        if timer is not None:
            timer.cancel()


def _wake(glet: greenlet.greenlet, value: Any) -> None:
    if not glet.dead:
        glet.switch(value)


def _watch(inbox: Inbox, current: greenlet.greenlet) -> None:
    if inbox.watchers is None:
        inbox.watchers = []
    inbox.watchers.append(current)


def wait_writable(conn: Connection, inbox: Inbox, current: greenlet.greenlet) -> None:
    """``send`` in a greenlet handler to a slow peer: wait until it reads again."""
    while conn.writing_paused and not conn.lost:
        _watch(inbox, current)
        _switch_to_loop(current)
    if conn.lost:
        raise conn.close_exc()


def park_until(
    loop: asyncio.AbstractEventLoop,
    is_set: Callable[[], bool],
    watch: Callable[[greenlet.greenlet], None],
    timeout: float | None,
) -> bool:
    """In a greenlet handler: switch to the loop until ``is_set()`` or ``timeout``.

    ``watch(glet)`` registers the greenlet to be switched into when the
    condition may have changed.
    """
    current = greenlet.getcurrent()
    timer = None
    if timeout is not None:
        timer = loop.call_later(timeout, _wake, current, _TIMED_OUT)
    try:
        while not is_set():
            watch(current)
            if _switch_to_loop(current) is _TIMED_OUT:
                return is_set()
        return True
    finally:
        if timer is not None:
            timer.cancel()


def park_until_closed(conn: Connection, inbox: Inbox, timeout: float | None) -> bool:
    """``wait_closed`` in a greenlet handler."""
    return park_until(conn.loop, lambda: inbox.closed, lambda g: _watch(inbox, g), timeout)


def sleep(seconds: float) -> None:
    """Sleep; in a greenlet handler, switch to the loop meanwhile instead of blocking it.

    Thread contract: any thread, and greenlet handlers on the loop thread.

    Raises:
        RuntimeError: called where an event loop runs (an ``async def``
            handler, a callback, a trio task) outside a greenlet handler: it
            would stall every connection of that loop. Await the loop's own
            sleep there.
    """
    current = greenlet.getcurrent()
    if current.parent is None:
        if _in_event_loop():
            raise RuntimeError(
                "embedws.sync.sleep() blocks, and was called on a thread running an event "
                "loop, where it would stall every connection; in async code await "
                "asyncio.sleep() (or trio.sleep()) instead"
            )
        time.sleep(seconds)
        return
    loop = asyncio.get_running_loop()
    timer = loop.call_later(seconds, _wake, current, _TIMED_OUT)
    try:
        while _switch_to_loop(current) is not _TIMED_OUT:
            pass
    finally:
        timer.cancel()
