"""Calls from other threads into an event loop, batched: one wake-up for many.

``loop.call_soon_threadsafe`` writes to the loop's self-pipe on every call: a
system call, and an extra pass of the loop to read it back. Threads that send
many messages (handler threads, a GUI thread broadcasting) instead append to
one queue per loop; only the call that finds no run scheduled wakes the loop,
and that run executes every call queued by then, in order.

Order: calls from one thread run in the order they were made, and every
thread-to-loop call about a connection (send, broadcast, ping, close) goes
through the same queue, so sends and broadcasts from one thread keep their
order too.

This is the one way from another thread into a loop: every crossing of the
library (``embedws/sync/bridge/`` has the map) is a `Crossing.call()`.
A loop that is closed answers `LoopClosed`, the one signal for "the
loop is gone, and everything that lived on it".
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["Crossing", "LoopClosed", "crossing_for"]

logger = logging.getLogger("embedws.loop")


class LoopClosed(Exception):
    """The loop a call was meant for is closed: its connections and servers are gone.

    Internal: raised by `Crossing.call()`, and translated by each caller
    into what it means for the user (``WebsocketClosed`` for a send, nothing
    for a close).
    """


class Crossing:
    """The batched call queue into one event loop.

    Thread contract: `call()` from any thread; the queued calls run on the loop.
    """

    __slots__ = ("__weakref__", "_calls", "_loop", "_running", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # A weak reference: the crossings map must not keep dead loops alive.
        self._loop = weakref.ref(loop)
        self._calls: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            collections.deque()
        )
        self._scheduled = False
        self._running = False

    def idle(self) -> bool:
        """True when no call is queued or running.

        A thread that sees it idle knows every call it made before has run:
        calls are taken off the queue only by a run, which clears the flag
        after the last of them returned.
        """
        return not self._calls and not self._running

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop soon, after the calls queued before it.

        Raises:
            LoopClosed: the loop is closed.
        """
        self._calls.append((fn, args))  # deque.append is atomic
        if not self._scheduled:
            # Racing threads may both schedule a run: the second finds less
            # (or nothing) to do, which is harmless. A run clears the flag
            # before it starts, so a call queued meanwhile is never stranded.
            self._scheduled = True
            loop = self._loop()
            try:
                if loop is None:
                    raise LoopClosed
                loop.call_soon_threadsafe(self._run)
            except (RuntimeError, LoopClosed) as exc:  # asyncio's "Event loop is closed"
                self._scheduled = False
                self._calls.clear()  # nothing will run them: keep nothing they hold alive
                raise LoopClosed from exc
        else:
            # A run is scheduled: unless the loop closed before running it,
            # which would strand this call (and every later one) unnoticed.
            loop = self._loop()
            if loop is None or loop.is_closed():
                self._calls.clear()
                raise LoopClosed

    def _run(self) -> None:
        self._scheduled = False
        self._running = True
        calls = self._calls
        try:
            # Only what is queued now: a thread that keeps calling cannot starve
            # the loop (what it adds later schedules a run of its own).
            for _ in range(len(calls)):
                fn, args = calls.popleft()
                try:
                    fn(*args)
                except Exception:
                    logger.exception("error in a call from another thread")
        finally:
            self._running = False


_crossings: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Crossing] = (
    weakref.WeakKeyDictionary()
)
_crossings_lock = threading.Lock()  # guards _crossings


def crossing_for(loop: asyncio.AbstractEventLoop) -> Crossing:
    """The one crossing of ``loop`` (made on first use)."""
    crossing = _crossings.get(loop)
    if crossing is None:
        with _crossings_lock:
            crossing = _crossings.get(loop)
            if crossing is None:
                crossing = _crossings[loop] = Crossing(loop)
    return crossing
