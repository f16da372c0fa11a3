"""The receive path: complete messages from the loop to the threads that ``recv``.

The loop's connection hands each complete message to the websocket's
`Inbox` (it is the connection's ``Consumer``); ``Inbox.put`` puts it in
a ``queue.SimpleQueue`` (C, thread-safe), where a blocked ``recv`` waits
without a round trip, and a close puts a sentinel that wakes the reader. A
greenlet handler parks on the inbox instead and is switched into by the loop.
Reading from the socket pauses while ``WEBSOCKET_MAX_QUEUE`` messages wait; the
reader that drains the queue to a quarter asks the loop to resume.

The inbox also relays the two events a sender waits for, "the peer reads
again" (``set_writable``) and "closed", to the websocket's
`SendGate` and to greenlets waiting for them.

Wake batching (a fast path, ``EMBEDWS_WAKE_BATCH``; our own loop threads
only): each ``SimpleQueue.put`` wakes the thread blocked on it, which then
fights the loop for the GIL while the loop still reads other sockets. Messages
for handler threads are held in the loop's `WakeBatch` and handed over
together just before the loop waits for I/O again (its selector,
`FlushingSelector`, flushes the batch), so a message is never delayed
past the pass that read it. Measured: see ``embedws/sync/bridge/__init__.py``.

Yielding at the end of a pass (part of the ``EMBEDWS_SCHED_BATCH`` fast path,
on the loops that batch wakes):
``SCHED_BATCH`` handler threads do not preempt the loop when woken; they were
meant to run when the loop waits for I/O. But a busy loop finds I/O ready
every time and never waits, so they ran only when the scheduler's tick took
the CPU from the loop, mid-pass and holding the GIL, and then waited for the
GIL: on one CPU a handler started up to 150 ms late, and once 50 clients
reconnecting without pause grew the pool to 374 threads (usually 75-90). A
pass that handed work to a handler thread now ends in ``sched_yield()``, with
the GIL released, so the threads it woke run then, with the GIL free. A pass
that woke none does not yield (it would give the CPU to other programs for
nothing).
"""

from __future__ import annotations

import asyncio
import os
import queue
import selectors
import threading
import weakref
from typing import TYPE_CHECKING, Any, cast

import greenlet

from ...aio.crossing import LoopClosed
from ...aio.runtime import PassEnd, add_pass_end
from ...switches import SCHED_BATCH, WAKE_BATCH

if TYPE_CHECKING:
    from ...aio.connection import Connection
    from .sends import SendGate

__all__ = [
    "FlushingSelector",
    "Inbox",
    "WakeBatch",
    "new_batching_loop",
    "on_loop",
    "wake_batch_for",
]

CLOSED = object()  # the inbox sentinel: the connection is closed

_lazy_lock = threading.Lock()  # guards the lazy creation of per-connection Events


def on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """True when called on ``loop``'s thread while it runs."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class WakeBatch:
    """Holds back the wake-ups of handler threads until the loop ends its pass.

    Each ``SimpleQueue.put`` wakes the thread blocked on it, which then fights
    the loop for the GIL while the loop is still reading other sockets: on a
    busy server, a context switch or two per message. Messages for handler
    threads are held instead, and handed over together just before the loop
    waits for I/O again (the loop thread's selector calls `flush()`), so a
    message is never delayed past the pass that read it.

    Thread contract: the loop thread only.
    """

    __slots__ = ("__weakref__", "_held", "threads_woken", "waiting")

    def __init__(self) -> None:
        self._held: list[tuple[Inbox, str | bytes]] = []
        # True while the loop thread waits for I/O (read from any thread): a
        # direct write then takes nothing from the loop (sync/bridge/sends.py).
        self.waiting = False
        # This pass handed work to a handler thread: it ends by yielding the CPU.
        self.threads_woken = False

    def hold(self, inbox: Inbox, message: str | bytes) -> None:
        self._held.append((inbox, message))

    def flush(self) -> None:
        """Deliver everything held, in order."""
        held = self._held
        if held:
            self._held = []
            self.threads_woken = True
            # Threads woken together reply together: their sends go through the
            # loop, which writes them all in one pass (see sync/bridge/sends.py).
            crowded = len(held) > 1
            for inbox, message in held:
                inbox.deliver_held(message, crowded)


_sched_yield = getattr(os, "sched_yield", None) if SCHED_BATCH else None


class FlushingSelector(selectors.DefaultSelector):
    """The loop thread's selector: before each wait, ends the pass.

    It runs the loop's `PassEnd` (the 101s a busy pass held, see
    ``Connection.attach``), flushes the wake batch, and, if the pass woke
    handler threads, yields the CPU to them (see the module's docstring).
    """

    def __init__(self, wakes: WakeBatch, pass_end: PassEnd) -> None:
        super().__init__()
        self._wakes = wakes
        self._pass_end = pass_end

    def select(self, timeout: float | None = None) -> Any:
        pass_end = self._pass_end
        pass_end.run()
        wakes = self._wakes
        wakes.flush()
        wakes.waiting = True  # the threads that run now may write directly
        try:
            if wakes.threads_woken:
                wakes.threads_woken = False
                if _sched_yield is not None:
                    _sched_yield()  # releases the GIL
            events = super().select(timeout)
        finally:
            wakes.waiting = False
        # A timeout of 0: callbacks wait to run in this pass.
        pass_end.crowded = len(events) > 1 or timeout == 0
        return events


# Only loops of our own loop threads batch; on a loop we do not drive (an
# application's, under aio.serve) messages go to threads at once.
_wake_batches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, WakeBatch] = (
    weakref.WeakKeyDictionary()
)


def wake_batch_for(loop: asyncio.AbstractEventLoop) -> WakeBatch | None:
    """The wake batch of one of our loop threads' loops; ``None`` for other loops."""
    return _wake_batches.get(loop)


def new_batching_loop() -> asyncio.AbstractEventLoop:
    """A selector event loop whose selector flushes a wake batch before each wait."""
    wakes, pass_end = WakeBatch(), PassEnd()
    loop = asyncio.SelectorEventLoop(FlushingSelector(wakes, pass_end))
    _wake_batches[loop] = wakes
    add_pass_end(loop, pass_end)
    return loop


class Inbox:
    """Messages from the loop to the threads (or greenlet) calling ``recv``.

    Thread contract: ``put``/``close``/``set_writable``/``pending`` on the loop;
    ``get`` from any thread, one reader at a time (the websocket enforces it).
    """

    __slots__ = (
        "_closed_event",
        "_conn",
        "_deferred",
        "_gate",
        "_queue",
        "_wakes",
        "closed",
        "crowded",
        "parked",
        "watchers",
    )

    def __init__(self, conn: Connection, gate: SendGate, *, batch_wakes: bool = False) -> None:
        self._conn = conn
        self._gate = gate
        self._wakes = wake_batch_for(conn.loop) if batch_wakes and WAKE_BATCH else None
        self._deferred = 0  # messages of this inbox held in the wake batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.closed = False
        self.crowded = False  # its last message woke its reader with other threads
        # Made only when a thread waits for the close: an Event costs about a
        # kilobyte, and most websockets never need one.
        self._closed_event: threading.Event | None = None
        self.parked: greenlet.greenlet | None = None  # a greenlet handler waiting in recv
        self.watchers: list[greenlet.greenlet] | None = None  # greenlets awaiting close/writable

    # Loop side (the Consumer protocol of aio.connection) -------------------------

    def put(self, message: str | bytes) -> int:
        wakes = self._wakes
        if wakes is not None:
            self._deferred += 1
            wakes.hold(self, message)
            return self._queue.qsize() + self._deferred
        self._queue.put(message)
        if self.parked is not None:
            self._wake_parked()
        return self._queue.qsize()

    def deliver_held(self, message: str | bytes, crowded: bool) -> None:
        """A message the wake batch held back: hand it to the reader now."""
        self._deferred -= 1
        self.crowded = crowded
        self._queue.put(message)

    def close(self) -> None:
        if self._deferred:
            assert self._wakes is not None
            self._wakes.flush()  # the messages first, and never lost to a stopping loop
        self._queue.put(CLOSED)
        self.closed = True
        if self._wakes is not None:
            self._wakes.threads_woken = True  # a reader in recv wakes
        event = self._closed_event
        if event is not None:
            event.set()
        self._gate.close()
        if self.parked is not None:
            self._wake_parked()
        self._wake_watchers()

    def set_writable(self, writable: bool) -> None:
        self._gate.set_paused(not writable)
        if writable:
            self._wake_watchers()

    def _wake_watchers(self) -> None:
        watchers, self.watchers = self.watchers, None
        for watcher in watchers or ():
            self._conn.loop.call_soon(watcher.switch)

    def pending(self) -> int:
        return self._queue.qsize() + self._deferred

    def _wake_parked(self) -> None:
        parked, self.parked = self.parked, None
        assert parked is not None
        self._conn.loop.call_soon(parked.switch)

    # Reader side -------------------------------------------------------------

    def wait_closed(self, timeout: float | None) -> bool:
        """Block this thread until the connection is closed, or ``timeout``."""
        event = self._closed_event
        if event is None:
            with _lazy_lock:
                event = self._closed_event
                if event is None:
                    event = self._closed_event = threading.Event()
        if self.closed:  # close() may have run before the event existed
            event.set()
        return event.wait(timeout)

    def get(self, timeout: float | None) -> str | bytes:
        """The next message (blocking thread version).

        Raises:
            TimeoutError: none came within ``timeout``.
            WebsocketClosed: the connection is closed and drained.
        """
        try:
            if timeout is not None and timeout <= 0:
                message = self._queue.get_nowait()
            else:
                message = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("no message received in time") from None
        return self.taken(message)

    def get_nowait(self) -> Any:
        """A message, the closed sentinel, or ``None`` when empty (greenlet version)."""
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            return None

    def taken(self, message: Any) -> str | bytes:
        """Account for a message taken off the queue: resume reading, or raise if closed."""
        if message is CLOSED:
            self._queue.put(CLOSED)  # later calls see it too
            raise self._conn.close_exc()
        conn = self._conn
        if conn.reading_paused:
            queued = self._queue.qsize()
            if queued <= conn.settings.max_queue // 4:
                if on_loop(conn.loop):
                    conn.resume_reading_if_drained(queued)
                else:
                    try:
                        conn.crossing.call(conn.resume_reading_if_drained, queued)
                    except LoopClosed:  # nothing left to resume
                        pass
        return cast("str | bytes", message)
