"""Runners for ``def`` handlers: a dedicated thread pool, or greenlets on the loop.

Thread mode: each websocket handler holds one thread of a bounded pool
(``SYNC_HANDLER_THREADS``) for the life of its connection. The pool is the
server's own: not asyncio's default executor, nor anyio's 40-token limiter.

Greenlet mode: each handler runs in a greenlet on the loop thread. Where a
thread would block (``recv``, a ``send`` to a slow peer, ``wait_closed``), the
greenlet parks itself on the connection's inbox and switches back to the loop;
the loop switches into it again when what it waits for happened (a message, a
close, a timer). A greenlet handler therefore must not block on anything else:
``embedws.sync.sleep`` is the blocking sleep that switches.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import greenlet

from ..aio.connection import Connection
from ..aio.connection import Websocket as AioWebsocket
from ..aio.crossing import Crossing, LoopClosed, crossing_for
from ..aio.runner import log_handler_crash
from ..aio.runtime import timeout_at
from ..errors import ServiceUnavailable, WebsocketClosed
from ..request import Request
from ..switches import SCHED_BATCH
from .bridge import DirectWriteConnection
from .bridge.greenlets import blocking_watch, check_blocked
from .bridge.inbox import WakeBatch, wake_batch_for
from .websocket import Websocket

__all__ = ["GreenletRunner", "HandlerPool", "ThreadHookRunner", "ThreadRunner", "in_handler_thread"]

logger = logging.getLogger("embedws.server")

_IDLE_SECONDS = 60.0  # an idle pool thread exits after this long

_worker = threading.local()  # .pool is set on pool threads


def in_handler_thread() -> bool:
    """True on a thread of a handler pool (a sync handler in thread mode)."""
    return getattr(_worker, "pool", None) is not None


_CAN_BATCH = hasattr(os, "SCHED_BATCH") and hasattr(os, "sched_setscheduler")


def _sched_batch() -> None:
    """Give the calling thread Linux's SCHED_BATCH policy (no wakeup preemption).

    A message for a handler thread is handed over (``Inbox.put``) while the
    loop holds the GIL, in the middle of its pass. Under the normal policy
    the woken thread preempts the loop at once, finds the GIL taken, and
    sleeps again: two context switches and a few futex calls for nothing, on
    every message when the server has one CPU to spare. A SCHED_BATCH thread
    waits for the loop to block (or its time slice to end), so handlers run
    back to back between the loop's passes: about one context switch per
    message instead of three (``bench/sync_echo.py``: 10-15% less CPU per
    message at 50 connections). Its share of the CPU is unchanged; a woken
    handler only no longer jumps ahead of a thread that is running. Threads it
    starts inherit the policy.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError as exc:  # a sandbox (seccomp) may refuse it: run as before
        logger.debug("SCHED_BATCH refused for handler threads: %s", exc)


class NoThreads(Exception):
    """No thread can start: the interpreter is exiting.

    Python 3.12 refuses new threads once finalization has begun, which is
    when atexit handlers (and so a server the program left open) shut down.
    """


class HandlerPool:
    """A bounded pool of threads that each run one handler at a time.

    Thread contract: ``try_submit`` from the loop; ``join`` from any thread but
    its own workers.
    """

    def __init__(
        self,
        max_threads: int,
        name: str,
        *,
        batch_sched: bool = False,
        wakes: WakeBatch | None = None,
    ) -> None:
        self._max = max_threads
        self._name = name
        self._batch_sched = batch_sched and _CAN_BATCH and SCHED_BATCH
        self._wakes = wakes  # of the loop that submits: it yields to the thread it woke
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()  # guards _busy, _idle, _threads, _closed
        self._busy = 0  # jobs queued or running
        self._idle = 0  # workers waiting for a job and not yet promised one
        self._threads: dict[threading.Thread, str] = {}  # worker → what it runs
        self._closed = False
        self._count = 0

    @property
    def busy(self) -> int:
        return self._busy

    def has_capacity(self) -> bool:
        return not self._closed and self._busy < self._max

    def try_submit(self, fn: Callable[..., Any], *args: Any, reserved: bool = False) -> bool:
        """Run ``fn(*args)`` on a pool thread; False when the pool is full or closed.

        ``reserved`` runs it even past the pool's size (never when closed).

        Raises:
            NoThreads: a thread was needed and the interpreter refused to start it.
        """
        with self._lock:
            if self._closed or (self._busy >= self._max and not reserved):
                return False
            self._busy += 1
            if self._idle > 0:
                self._idle -= 1
            else:
                self._count += 1
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}-{self._count}", daemon=True
                )
                self._threads[thread] = ""
                try:
                    thread.start()
                except RuntimeError as exc:  # "can't create new thread at interpreter shutdown"
                    del self._threads[thread]
                    self._busy -= 1
                    raise NoThreads(str(exc)) from None
        self._jobs.put((fn, args))
        if self._wakes is not None:
            self._wakes.threads_woken = True
        return True

    def _work(self) -> None:
        _worker.pool = self
        if self._batch_sched:
            _sched_batch()
        me = threading.current_thread()
        while True:
            try:
                job = self._jobs.get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._jobs.qsize() == 0 and self._idle > 0:
                        self._idle -= 1
                        self._threads.pop(me, None)
                        return
                continue
            if job is None:
                with self._lock:
                    self._threads.pop(me, None)
                return
            fn, args = job
            with self._lock:
                self._threads[me] = getattr(args[0] if args else fn, "__qualname__", "")
            try:
                fn(*args)
            except BaseException:  # pragma: no cover - jobs catch their own errors
                logger.exception("uncaught error in a handler thread")
            finally:
                # An idle thread keeps nothing of the job it ran (a handler's websocket).
                del job, fn, args
                with self._lock:
                    self._threads[me] = ""
                    self._busy -= 1
                    self._idle += 1

    def close(self) -> None:
        """Let idle workers exit; running jobs finish on their own."""
        with self._lock:
            self._closed = True
            workers = len(self._threads)
        for _ in range(workers):
            self._jobs.put(None)

    def join(self, timeout: float) -> None:
        """Join the workers until ``timeout``; warn about the ones abandoned."""
        deadline = time.monotonic() + timeout
        me = threading.current_thread()
        with self._lock:
            threads = [t for t in self._threads if t is not me]
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0))
        with self._lock:
            stuck = [(t, name) for t, name in self._threads.items() if t.is_alive() and t is not me]
        for thread, name in stuck:
            logger.warning(
                "abandoning handler thread %s still running %s after shutdown",
                thread.name,
                name or "a handler",
            )


class _Running:
    """The websocket handlers a runner has running. Thread contract: loop only."""

    __slots__ = ("_idle", "_jobs", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._jobs: set[_HandlerJob] = set()
        self._idle: asyncio.Future[None] | None = None  # while shutdown waits

    def add(self, job: _HandlerJob) -> None:
        self._jobs.add(job)

    def finished(self, job: _HandlerJob) -> None:
        self._jobs.discard(job)
        if not self._jobs and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def __iter__(self) -> Iterator[_HandlerJob]:
        return iter(list(self._jobs))

    async def wait(self, deadline: float) -> None:
        """Until none is running, or ``deadline`` (loop time)."""
        if not self._jobs:
            return
        self._idle = self._loop.create_future()
        try:
            async with timeout_at(self._loop, deadline):
                await self._idle
        except TimeoutError:
            pass


class ThreadRunner:
    """Runs ``def`` handlers on a `HandlerPool` (thread mode)."""

    # Handler threads write their sends to the socket themselves when they can.
    connection_class: type[AioWebsocket] = DirectWriteConnection

    def __init__(
        self, loop: asyncio.AbstractEventLoop, max_threads: int, *, batch_sched: bool = True
    ) -> None:
        self._loop = loop
        self._loop_ident = threading.get_ident()
        self._pool = HandlerPool(
            max_threads, "embedws-handler", batch_sched=batch_sched, wakes=wake_batch_for(loop)
        )
        self._running = _Running(loop)

    def has_capacity(self) -> bool:
        return self._pool.has_capacity()

    def start(
        self,
        conn: Connection,
        request: Request,
        handler: Callable[..., Any],
        params: dict[str, Any],
    ) -> None:
        # Built on the loop thread, where its wake batch lives.
        ws = Websocket(conn, self._loop_ident, batch_wakes=True)
        job = _HandlerJob(handler, request, ws, params, self._running)
        try:
            submitted = self._pool.try_submit(job)
        except NoThreads:
            conn.start_close(1001, "going away")
            return
        if not submitted:
            conn.start_close(1013, "try again later")
            return
        self._running.add(job)

    async def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        try:
            return await _call_on_pool(self._pool, self._loop, fn, args, kwargs)
        except NoThreads:
            raise ServiceUnavailable("the program is exiting") from None

    async def shutdown(self, deadline: float) -> None:
        self._pool.close()
        await self._running.wait(deadline)

    def join(self, timeout: float) -> None:
        self._pool.join(timeout)


class ThreadHookRunner:
    """Runs ``def`` middleware and listeners on a pool of their own threads.

    Not the handler pool: a shutdown's listeners must run when every handler
    thread is busy, and after the handlers' pool has closed. Its threads count
    as handler threads for `in_handler_thread()` (a listener that calls
    ``server.stop()`` starts the shutdown and returns, as a handler does).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, max_threads: int) -> None:
        self._loop = loop
        self._pool = HandlerPool(max_threads, "embedws-hook", wakes=wake_batch_for(loop))

    async def call(self, fn: Callable[..., Any], /, *args: Any, reserved: bool = False) -> Any:
        try:
            return await _call_on_pool(self._pool, self._loop, fn, args, {}, reserved=reserved)
        except NoThreads:
            # At interpreter exit (Python 3.12) the shutdown's listeners still run,
            # on the loop: nothing is left to serve that a blocking one would delay.
            logger.debug("no thread can start at exit: %r runs on the loop thread", fn)
            return fn(*args)

    def close(self) -> None:
        self._pool.close()

    def join(self, timeout: float) -> None:
        self._pool.join(timeout)


async def _call_on_pool(
    pool: HandlerPool,
    loop: asyncio.AbstractEventLoop,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    reserved: bool = False,
) -> Any:
    """``fn(*args, **kwargs)`` on a thread of ``pool``; its result, on the loop.

    Raises:
        ServiceUnavailable: the pool is full.
        NoThreads: the interpreter is exiting and refuses a new thread.
    """
    result: asyncio.Future[Any] = loop.create_future()
    crossing = crossing_for(loop)

    def run() -> None:
        try:
            value = fn(*args, **kwargs)
        except BaseException as exc:
            _settle_from_thread(crossing, result, None, exc)
        else:
            _settle_from_thread(crossing, result, value, None)

    run.__qualname__ = getattr(fn, "__qualname__", run.__qualname__)  # for the pool's logs
    if not pool.try_submit(run, reserved=reserved):
        raise ServiceUnavailable("all handler threads are busy; retry later")
    return await result


def _settle_from_thread(
    crossing: Crossing, future: asyncio.Future[Any], value: Any, exc: BaseException | None
) -> None:
    try:
        crossing.call(_settle, future, value, exc)
    except LoopClosed:  # nobody waits for the result any more
        pass


def _settle(future: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)


class _HandlerJob:
    """One websocket handler call, run on a pool thread or in a greenlet."""

    __slots__ = ("__qualname__", "ended", "glet", "handler", "params", "request", "running", "ws")

    def __init__(
        self,
        handler: Callable[..., Any],
        request: Request,
        ws: Websocket,
        params: dict[str, Any],
        running: _Running,
    ) -> None:
        self.handler, self.request, self.ws, self.params = handler, request, ws, params
        self.running = running
        self.glet: greenlet.greenlet | None = None  # greenlet mode: where it runs
        self.ended = False  # the handler returned or raised
        self.__qualname__ = getattr(handler, "__qualname__", repr(handler))

    def __call__(self) -> None:
        conn = self.ws.connection
        code, reason = 1000, ""
        try:
            if self.params:
                self.handler(self.request, self.ws, **self.params)
            else:  # a plain call nests no C frame: a smaller stack to park
                self.handler(self.request, self.ws)
        except WebsocketClosed:
            logger.debug("handler %s ended: websocket closed", self.__qualname__)
        except greenlet.GreenletExit:
            code, reason = 1001, "server shutting down"
        except Exception:
            log_handler_crash(self.handler, self.request)
            code, reason = 1011, "internal error"
        finally:
            self.ended = True
            if self.glet is not None:
                # On the loop thread, whose own sends were written at once: no
                # crossing, and no wake-up of a loop that is running.
                conn.loop.call_soon(_finish, conn, code, reason, self)
            else:
                try:
                    # After this handler's own sends, which went the same way.
                    conn.crossing.call(_finish, conn, code, reason, self)
                except LoopClosed:  # the connection went with it
                    pass


def _finish(conn: Connection, code: int, reason: str, job: _HandlerJob) -> None:
    conn.start_close(code, reason)
    job.running.finished(job)


#: Idle greenlets a greenlet-mode runner keeps for its next handlers.
_IDLE_GREENLETS = 64


class GreenletRunner:
    """Runs ``def`` handlers in greenlets on the loop thread (greenlet mode).

    A greenlet that ran a handler waits, idle, for the next one (at most 64
    wait). A new greenlet costs more than its creation: on Python 3.11+ its
    first call maps a 16 KiB chunk for its Python frames that its end unmaps,
    an ``mmap``, a ``munmap`` and a page fault per connection (``perf stat``:
    1.13 page faults per handshake, 0.05 with reuse). Each handler still starts
    with an empty ``contextvars`` context, as in a new greenlet.

    Thread contract: the loop thread only.
    """

    connection_class: type[AioWebsocket] = AioWebsocket

    def __init__(self, loop: asyncio.AbstractEventLoop, block_warning: float | None = None) -> None:
        self._loop = loop
        self._loop_ident = threading.get_ident()
        self._running = _Running(loop)
        self._block_warning = block_warning
        self._idle: list[greenlet.greenlet] = []  # workers waiting for a job (loop only)
        self._closed = False

    def has_capacity(self) -> bool:
        return True

    def start(
        self,
        conn: Connection,
        request: Request,
        handler: Callable[..., Any],
        params: dict[str, Any],
    ) -> None:
        job = _HandlerJob(
            handler, request, Websocket(conn, self._loop_ident), params, self._running
        )
        self._running.add(job)
        job.glet = self._run_soon(self._timed(job) if self._block_warning else job.__call__)

    def _run_soon(self, fn: Callable[[], None]) -> greenlet.greenlet:
        """Run ``fn()`` in a worker greenlet, from the loop's next pass; the worker."""
        idle = self._idle
        glet = idle.pop() if idle else greenlet.greenlet(self._work)
        # In a list the worker empties: greenlet keeps a new greenlet's arguments
        # for its whole life, and a job's should not outlive the job.
        self._loop.call_soon(glet.switch, [fn])
        return glet

    def _work(self, handed: list[Callable[[], None]]) -> None:
        """A worker greenlet's life: run jobs, waiting idle between them."""
        current = greenlet.getcurrent()
        parent = current.parent
        assert parent is not None
        while True:
            fn = handed.pop()
            fn()  # a job catches its own errors
            del fn  # an idle worker keeps nothing of the job it ran
            if self._closed or len(self._idle) >= _IDLE_GREENLETS:
                return
            current.gr_context = None  # the next job starts with an empty context
            self._idle.append(current)
            received: object = parent.switch()  # GreenletExit here (shutdown) ends it
            while not isinstance(received, list):
                # A stale wake-up meant for the job that ended (an inbox or a watcher
                # that scheduled a switch before the job resumed another way): parks
                # re-check what they wait for, and an idle worker waits on.
                received = parent.switch()
            handed = received

    def _timed(self, job: _HandlerJob) -> Callable[[], None]:
        threshold = self._block_warning
        assert threshold is not None

        def run() -> None:
            blocking_watch.threshold = threshold
            blocking_watch.name = job.__qualname__
            blocking_watch.resumed = time.perf_counter()
            try:
                job()
            finally:
                check_blocked()

        return run

    async def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        result: asyncio.Future[Any] = self._loop.create_future()

        def run() -> None:
            try:
                value = fn(*args, **kwargs)
            except BaseException as exc:
                _settle(result, None, exc)
            else:
                _settle(result, value, None)

        self._run_soon(run)
        return await result

    async def shutdown(self, deadline: float) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for glet in idle:
            glet.throw(greenlet.GreenletExit)  # ends at once: it runs nothing
        await self._running.wait(deadline)
        for job in self._running:
            logger.warning(
                "stopping greenlet handler %s, still running at shutdown", job.__qualname__
            )
            if job.glet is not None and not job.ended and not job.glet.dead:
                job.glet.throw(greenlet.GreenletExit)
            self._running.finished(job)

    def join(self, timeout: float) -> None:
        return None
