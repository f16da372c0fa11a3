"""The loop thread: the one background thread that runs the event loop.

It is shared by every server and client of the process: started by the first
``app.start()`` or ``sync.connect()``, stopped when the last one is released
(`LoopThread.release()`: servers close first, their handlers wake with
``WebsocketClosed``; then the loop stops, leftover tasks are cancelled, the
loop closes and the thread is joined). At interpreter exit
(`close_at_exit()`), sync clients and servers the program left open are
closed with 1001 first: the loop thread is a daemon, and would otherwise die
with their connections.

A blocking call made on the loop thread itself (outside a greenlet handler)
would deadlock; `check_can_block()` raises ``RuntimeError`` instead.
`run_on_loop()` runs a coroutine on the loop and waits for its result:
the crossing for rare calls that need an answer (start a server, open a
client), always with its own timeout or one the coroutine has.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import threading
import weakref
from collections.abc import Coroutine
from typing import Any, TypeVar

import greenlet

from ...aio.crossing import LoopClosed, crossing_for
from ...switches import WAKE_BATCH
from .inbox import new_batching_loop
from .logs import LogHandoff

__all__ = ["LoopThread", "check_can_block", "close_at_exit", "run_on_loop"]

logger = logging.getLogger("embedws.loop")

_T = TypeVar("_T")

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
        # Our own default executor (name lookups run on it), shut down by joining its
        # threads: asyncio's shutdown_default_executor() starts a thread to do that,
        # which Python 3.12 refuses at interpreter exit.
        self._executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="embedws-lookup")
        self.loop.set_default_executor(self._executor)
        self.crossing = crossing_for(self.loop)  # the one way into the loop
        self.ident = 0
        self._logging = LogHandoff()
        self._thread = threading.Thread(target=self._run, name="embedws-loop", daemon=True)

    @classmethod
    def acquire(cls) -> LoopThread:
        """The running loop thread, started if needed; pair with `release()`."""
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
            self.crossing.call(self.loop.stop)
        except LoopClosed:  # stopped already
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
                self._executor.shutdown(wait=True, cancel_futures=True)
            finally:
                asyncio.set_event_loop(None)
                loop.close()
                self._logging.uninstall()

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self.ident

    def check_can_block(self, what: str) -> None:
        """Raise if blocking here would freeze the loop (see `check_can_block()`)."""
        check_can_block(self.ident, what)

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
    future: concurrent.futures.Future[_T] = concurrent.futures.Future()
    tasks: list[asyncio.Task[_T]] = []

    def start() -> None:
        if not future.set_running_or_notify_cancel():
            coro.close()
            return
        task = loop.create_task(coro)
        tasks.append(task)
        task.add_done_callback(lambda done: _settle(done, future))

    crossing = crossing_for(loop)
    try:
        crossing.call(start)
    except LoopClosed:
        coro.close()
        raise RuntimeError("the embedws event loop is closed") from None
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        if future.done():
            raise  # the coroutine's own TimeoutError (the same class since 3.11)
        if not future.cancel():  # running: cancel the task
            try:
                crossing.call(lambda: tasks and tasks[0].cancel())
            except LoopClosed:
                pass
        raise TimeoutError(f"the operation did not finish within {timeout} s") from None


def _settle(task: asyncio.Task[_T], future: concurrent.futures.Future[_T]) -> None:
    if task.cancelled():
        future.set_exception(concurrent.futures.CancelledError())
    elif (exc := task.exception()) is not None:
        future.set_exception(exc)
    else:
        future.set_result(task.result())


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


def _new_loop() -> asyncio.AbstractEventLoop:
    if type(asyncio.get_event_loop_policy()) is not asyncio.DefaultEventLoopPolicy:
        return asyncio.new_event_loop()  # an installed policy (uvloop, ...) decides
    if not WAKE_BATCH:
        return asyncio.new_event_loop()  # the platform's default, as elsewhere
    return new_batching_loop()
