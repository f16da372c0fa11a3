"""Every crossing between user threads and the event loop thread.

Theory of operation
-------------------
One background thread runs the event loop (:class:`LoopThread`). It is shared
by every server and client of the process: started by the first
``app.start()`` or ``sync.connect()``, stopped when the last one is released.
Code on other threads never touches loop objects directly; it crosses with:

* **messages in** (:class:`Inbox`): the loop ``put``\\ s each complete message
  into a per-connection ``queue.SimpleQueue`` (C, thread-safe, no round trip);
  a blocked ``recv`` waits on it directly. The connection's close puts a
  sentinel that wakes the reader. When the reader drains the queue below the
  low-water mark while reading is paused, it asks the loop to resume.
* **messages out** (:class:`SendGate`): ``send`` encodes in the calling thread,
  then hands the whole message to the loop in one call through the loop's
  batched call queue (``embedws/aio/crossing.py``: one self-pipe wake-up for
  all the calls queued meanwhile), so messages from several threads never
  interleave and one thread's messages and broadcasts keep their order. The
  gate bounds the bytes handed over but not yet written, and blocks senders
  while the transport's buffer is above its high-water mark, at most
  ``WEBSOCKET_WRITE_TIMEOUT``. The exception: on a plain TCP connection whose
  loop waits for I/O, with nothing queued that the message could overtake,
  the calling thread writes the message itself (``embedws/sync/direct.py``).
* **waits for the loop** (:class:`PingWaiter`, :func:`run_on_loop`): rare
  operations that need an answer use a ``threading.Event`` or a
  ``concurrent.futures.Future``, always with a timeout.

A blocking call made on the loop thread itself (outside a greenlet handler)
would deadlock; :meth:`LoopThread.check_can_block` raises ``RuntimeError``.

Shutdown order: servers close first (their handlers wake with
``WebsocketClosed``), then the last :meth:`LoopThread.release` stops the loop,
cancels leftover tasks, closes the loop and joins the thread. At interpreter
exit (:func:`close_at_exit`), sync clients and servers the program left open
are closed with 1001 first: the loop thread is a daemon, and would otherwise
die with their connections.

Logging: while the loop thread runs, records of the ``embedws`` loggers go
through a bounded queue to a logging thread, so a host whose stderr nobody
reads (a pipe nobody drains, ``pythonw``) never freezes the loop; when the
queue is full, records are dropped and counted.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import queue
import selectors
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, cast

import greenlet

from ..aio.connection import Connection
from ..errors import WebsocketClosed
from .greenlets import park_until

__all__ = [
    "Inbox",
    "LoopThread",
    "PingWaiter",
    "SendGate",
    "WakeBatch",
    "check_can_block",
    "close_at_exit",
    "run_on_loop",
    "wake_batch_for",
    "write_from_thread",
]

logger = logging.getLogger("embedws.loop")

_T = TypeVar("_T")

_CLOSED = object()  # the inbox sentinel: the connection is closed

_lazy_lock = threading.Lock()  # guards the lazy creation of per-connection Events

# What the program left open when the interpreter exits: sync clients, then servers.
_left_open: tuple[weakref.WeakSet[Any], weakref.WeakSet[Any]] = (
    weakref.WeakSet(),
    weakref.WeakSet(),
)
_exit_lock = threading.Lock()  # guards _left_open and _exit_registered
_exit_registered = False


def close_at_exit(obj: Any, *, server: bool) -> None:
    """Call ``obj.close_at_exit()`` at interpreter exit, unless it is gone by then.

    The loop thread is a daemon: without this, a program that ends without
    stopping its server or closing its clients drops every connection without
    a close frame (peers see 1006), and ``after_server_stop`` never runs.
    """
    global _exit_registered
    with _exit_lock:
        if not _exit_registered:
            atexit.register(_close_left_open)
            _exit_registered = True
        _left_open[server].add(obj)


def _close_left_open() -> None:
    for group in _left_open:  # clients first: their peers may be our own servers
        with _exit_lock:
            objs = list(group)
        for obj in objs:
            try:
                obj.close_at_exit()
            except Exception:
                logger.exception("closing %r at exit failed", obj)


class LoopThread:
    """The shared background thread running the event loop.

    Thread contract: ``acquire``/``release`` from any thread.
    """

    _lock = threading.Lock()  # guards _current and every instance's _users
    _current: LoopThread | None = None

    def __init__(self) -> None:
        self._users = 0
        self._ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop = _new_loop()
        self.ident = 0
        self._logging = _QueueLogging()
        self._thread = threading.Thread(target=self._run, name="embedws-loop", daemon=True)

    @classmethod
    def acquire(cls) -> LoopThread:
        """The running loop thread, started if needed; pair with :meth:`release`."""
        with cls._lock:
            current = cls._current
            if current is None:
                current = cls._current = LoopThread()
                current._logging.install()
                current._thread.start()
                current._ready.wait()
            current._users += 1
            return current

    def release(self) -> None:
        """Drop one user; the last one stops the loop and joins the thread."""
        with LoopThread._lock:
            self._users -= 1
            if self._users > 0:
                return
            if LoopThread._current is self:
                LoopThread._current = None
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:  # already closed
            pass
        if threading.get_ident() != self.ident:
            self._thread.join(timeout=10)
            if self._thread.is_alive():
                logger.warning("the embedws loop thread did not stop within 10 s")

    @classmethod
    def running(cls) -> LoopThread | None:
        with cls._lock:
            return cls._current

    def _run(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(_exception_handler)
        self.ident = threading.get_ident()
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            try:
                _cancel_all(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()
                self._logging.uninstall()

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self.ident

    def check_can_block(self, what: str) -> None:
        """Raise if blocking here would freeze the loop (see :func:`check_can_block`)."""
        check_can_block(self.ident, what)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Schedule ``fn(*args)`` on the loop from any thread.

        Raises:
            WebsocketClosed: the loop is gone (everything on it is closed).
        """
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError as exc:  # loop closed
            raise WebsocketClosed(1006, "", sent_code=None) from exc

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        """Run ``coro`` on the loop and wait for its result (blocking)."""
        return run_on_loop(self.loop, self.ident, coro, timeout)


def check_can_block(loop_ident: int, what: str) -> None:
    """Raise ``RuntimeError`` for a blocking call on the loop thread.

    Greenlet handlers run on the loop thread but may block: their blocking
    calls switch back to the loop instead.
    """
    if threading.get_ident() == loop_ident and greenlet.getcurrent().parent is None:
        raise RuntimeError(
            f"{what} blocks, and was called on the embedws event loop thread, where it "
            "would deadlock. Call it from a sync handler or another thread; in async "
            "code use the embedws.aio API."
        )


def run_on_loop(
    loop: asyncio.AbstractEventLoop,
    loop_ident: int,
    coro: Coroutine[Any, Any, _T],
    timeout: float | None = None,
) -> _T:
    """Run ``coro`` on ``loop`` from another thread and return its result.

    Raises:
        TimeoutError: it did not finish within ``timeout`` (it is cancelled).
        RuntimeError: called on the loop thread.
    """
    if threading.get_ident() == loop_ident:
        coro.close()
        raise RuntimeError("run_on_loop() called on the loop thread")
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        if future.done():
            raise  # the coroutine's own TimeoutError (the same class since 3.11)
        future.cancel()
        raise TimeoutError(f"the operation did not finish within {timeout} s") from None


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.wait(tasks, timeout=5))


def _exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        logger.debug("peer reset: %s", context.get("message"), exc_info=exc)
        return
    logger.error("%s", context.get("message", "error in the event loop"), exc_info=exc)


class WakeBatch:
    """Holds back the wake-ups of handler threads until the loop ends its pass.

    Each ``SimpleQueue.put`` wakes the thread blocked on it, which then fights
    the loop for the GIL while the loop is still reading other sockets: on a
    busy server, a context switch or two per message. Messages for handler
    threads are held instead, and handed over together just before the loop
    waits for I/O again (the loop thread's selector calls :meth:`flush`), so a
    message is never delayed past the pass that read it.

    Thread contract: the loop thread only.
    """

    __slots__ = ("__weakref__", "_held", "waiting")

    def __init__(self) -> None:
        self._held: list[tuple[Inbox, str | bytes]] = []
        # True while the loop thread waits for I/O (read from any thread): a
        # direct write then takes nothing from the loop (sync/direct.py).
        self.waiting = False

    def hold(self, inbox: Inbox, message: str | bytes) -> None:
        self._held.append((inbox, message))

    def flush(self) -> None:
        """Deliver everything held, in order."""
        held = self._held
        if held:
            self._held = []
            # Threads woken together reply together: their sends go through the
            # loop, which writes them all in one pass (see sync/direct.py).
            crowded = len(held) > 1
            for inbox, message in held:
                inbox._deferred -= 1
                inbox.crowded = crowded
                inbox._queue.put(message)


class _FlushingSelector(selectors.DefaultSelector):
    """The loop thread's selector: flushes the wake batch before each wait."""

    def __init__(self, wakes: WakeBatch) -> None:
        super().__init__()
        self._wakes = wakes

    def select(self, timeout: float | None = None) -> Any:
        wakes = self._wakes
        wakes.flush()
        wakes.waiting = True
        try:
            return super().select(timeout)
        finally:
            wakes.waiting = False


# Only loops of our own loop threads batch; on a loop we do not drive (an
# application's, under aio.serve) messages go to threads at once.
_wake_batches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, WakeBatch] = (
    weakref.WeakKeyDictionary()
)


def wake_batch_for(loop: asyncio.AbstractEventLoop) -> WakeBatch | None:
    """The wake batch of one of our loop threads' loops; ``None`` for other loops."""
    return _wake_batches.get(loop)


def _new_loop() -> asyncio.AbstractEventLoop:
    if type(asyncio.get_event_loop_policy()) is not asyncio.DefaultEventLoopPolicy:
        return asyncio.new_event_loop()  # an installed policy (uvloop, ...) decides
    wakes = WakeBatch()
    loop = asyncio.SelectorEventLoop(_FlushingSelector(wakes))
    _wake_batches[loop] = wakes
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
        self._wakes = wake_batch_for(conn.loop) if batch_wakes else None
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

    def close(self) -> None:
        if self._deferred:
            assert self._wakes is not None
            self._wakes.flush()  # the messages first, and never lost to a stopping loop
        self._queue.put(_CLOSED)
        self.closed = True
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
        if message is _CLOSED:
            self._queue.put(_CLOSED)  # later calls see it too
            raise self._conn.close_exc()
        conn = self._conn
        if conn._reading_paused:
            queued = self._queue.qsize()
            if queued <= conn.settings.max_queue // 4:
                if _on_loop(conn.loop):
                    conn.resume_reading_if_drained(queued)
                else:
                    try:
                        conn.crossing.call(conn.resume_reading_if_drained, queued)
                    except RuntimeError:  # loop closed: nothing left to resume
                        pass
        return cast("str | bytes", message)


# What a message costs at the gate besides its bytes: the loop's work per
# message (a call, a frame, a write), so that a thread sending tiny messages
# as fast as it can gets at most limit/1024 ahead of the loop, not thousands
# (which would hold the loop for many milliseconds per pass, the other
# connections and new handshakes waiting behind them).
_MESSAGE_COST = 1024


class SendGate:
    """Bounds the bytes of one connection handed to the loop but not yet written.

    Senders wait while more than ``limit`` bytes are in flight (each message
    counting 1 KiB more than its size) or while the transport's write buffer
    is above its high-water mark. A single message larger than ``limit``
    passes when nothing else is in flight.

    Thread contract: ``acquire`` from any thread; the rest on the loop.
    """

    __slots__ = ("_closed", "_inflight", "_limit", "_lock", "_paused", "_ready")

    def __init__(self, limit: int) -> None:
        self._lock = threading.Lock()  # guards _inflight, _paused, _closed and _ready
        # Made when a sender first has to wait: most connections never do.
        self._ready: threading.Event | None = None
        self._inflight = 0
        self._paused = False
        self._closed = False
        self._limit = limit

    def acquire(self, size: int, timeout: float) -> bool:
        """Reserve ``size`` bytes; False if the gate stayed shut for ``timeout`` seconds."""
        size += _MESSAGE_COST
        deadline = 0.0
        while True:
            with self._lock:
                if self._closed:
                    return True  # the caller's write will find the connection closed
                inflight = self._inflight
                if not self._paused and (inflight == 0 or inflight + size <= self._limit):
                    self._inflight = inflight + size
                    return True
                ready = self._ready
                if ready is None:
                    ready = self._ready = threading.Event()
                ready.clear()
            now = time.monotonic()
            if not deadline:
                deadline = now + timeout
            if now >= deadline or not ready.wait(deadline - now):
                return False

    def release(self, size: int) -> None:
        """Give back what ``acquire(size)`` reserved: the message was written."""
        with self._lock:
            self._inflight -= size + _MESSAGE_COST
            # Event.set takes a lock and notifies: only when someone may wait.
            ready = self._ready
            if ready is not None and not self._paused and not ready.is_set():
                ready.set()

    def set_paused(self, paused: bool) -> None:
        with self._lock:
            self._paused = paused
            if not paused and self._ready is not None:
                self._ready.set()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._ready is not None:
                self._ready.set()


def write_from_thread(
    conn: Connection, is_text: bool, payload: Any, gate: SendGate, size: int
) -> None:
    """On the loop: write one message handed over by ``send`` in another thread."""
    try:
        conn.write_message(is_text, payload)
    except WebsocketClosed:
        pass  # closed in between: like TCP, a message sent as it closes may be lost
    finally:
        gate.release(size)


class PingWaiter:
    """Returned by ``sync.Websocket.ping()``: ``wait(timeout)`` for the pong.

    Thread contract: ``wait`` from any thread (or a greenlet handler); completed
    by the loop.
    """

    __slots__ = ("_event", "_exc", "_loop", "_watchers", "latency")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = threading.Event()
        self._exc: BaseException | None = None
        self._watchers: list[greenlet.greenlet] | None = None
        self.latency: float | None = None

    def done(self) -> bool:
        return self._event.is_set()

    def set_result(self, latency: float, /) -> None:
        self.latency = latency
        self._complete()

    def set_exception(self, exc: BaseException, /) -> None:
        self._exc = exc
        self._complete()

    def _complete(self) -> None:
        self._event.set()
        watchers, self._watchers = self._watchers, None
        for watcher in watchers or ():
            self._loop.call_soon(watcher.switch)

    def watch(self, glet: greenlet.greenlet) -> None:
        """Switch into ``glet`` on completion (a greenlet handler waiting)."""
        if self._watchers is None:
            self._watchers = []
        self._watchers.append(glet)

    def wait(self, timeout: float | None = None) -> bool:
        """True once the pong came; False if ``timeout`` passed first.

        Raises:
            WebsocketClosed: the connection closed before the pong.
        """
        if not self._event.is_set():
            if greenlet.getcurrent().parent is not None and _on_loop(self._loop):
                park_until(self._loop, self._event.is_set, self.watch, timeout)
            elif not self._event.wait(timeout):
                return False
            if not self._event.is_set():
                return False
        if self._exc is not None:
            raise self._exc
        return True


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class _DroppingQueueHandler(logging.Handler):
    """Hands records to the logging thread; drops them when the queue is full."""

    def __init__(self, records: queue.Queue[logging.LogRecord | None]) -> None:
        super().__init__()
        self.records = records
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # Render now: the arguments may change or be unpicklable later.
            record.msg = record.getMessage()
            record.args = None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            self.records.put_nowait(record)
        except queue.Full:
            self.dropped += 1
        except Exception:
            self.handleError(record)


class _QueueLogging:
    """Routes the ``embedws`` loggers through a logging thread while the loop runs."""

    def __init__(self) -> None:
        self._records: queue.Queue[logging.LogRecord | None] = queue.Queue(maxsize=10000)
        self._handler = _DroppingQueueHandler(self._records)
        self._thread = threading.Thread(target=self._emit_all, name="embedws-log", daemon=True)
        self._logger = logging.getLogger("embedws")
        self._propagate = True

    def install(self) -> None:
        self._propagate = self._logger.propagate
        self._logger.addHandler(self._handler)
        self._logger.propagate = False
        self._thread.start()

    def uninstall(self) -> None:
        self._logger.removeHandler(self._handler)
        self._logger.propagate = self._propagate
        try:
            self._records.put_nowait(None)
        except queue.Full:
            pass
        # A stuck log output must not hang the shutdown: the thread is a
        # daemon, abandoned if it does not finish in time. (Nothing is logged
        # about dropped records: that output is the one that is stuck.)
        self._thread.join(timeout=1.0)

    def _emit_all(self) -> None:
        parent = self._logger.parent
        while True:
            record = self._records.get()
            if record is None:
                return
            if parent is not None:
                # As if the record had propagated from "embedws": the handlers
                # above it, or logging's last resort when there are none.
                parent.handle(record)
