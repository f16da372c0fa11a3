"""The core's event loop inside trio: the loop methods it calls, on a trio nursery.

Theory of operation
-------------------
The core (connections, the HTTP front, the server, the runners, the crossing)
calls a handful of methods on the object it holds as ``self.loop``. On asyncio
that is the asyncio loop; inside ``trio.run`` it is a `TrioLoop`, which
provides the same methods with trio underneath, so that one copy of the
websocket logic runs on both (``embedws/aio/runtime.py`` has the rest of the
seam):

* ``create_future()`` gives a `TrioFuture`: ``set_result``,
  ``set_exception``, ``done``, ``cancel``, ``add_done_callback`` as on an
  ``asyncio.Future``, and awaitable from trio tasks (the waiting task parks with
  ``trio.lowlevel.wait_task_rescheduled`` and is rescheduled by the setter). A
  task that stops waiting (cancelled) does not cancel the future. Done
  callbacks run when the future completes, before its waiters resume.
* ``call_soon``/``call_later``/``call_at`` give handles with ``cancel()`` and
  ``when()``. All of one loop's callbacks run in one scheduler task, which keeps
  the timers in a heap (cancelled ones are dropped lazily, as asyncio does) and
  sleeps until the first deadline or until a callback is queued: one task per
  server instead of one cancel scope per timer, which keeps arming and
  cancelling a timer (several per request) a heap push and a flag.
* ``create_task(coro)`` starts the coroutine in the loop's nursery inside a
  cancel scope of its own; the `TrioTask` is a future of its result, and
  ``cancel()`` cancels that scope. An exception escaping a task is logged, never
  left to take the nursery (and the server) down.
* ``call_soon_threadsafe`` is ``TrioToken.run_sync_soon``: the crossing
  (``embedws/aio/crossing.py``) batches other threads' calls on top of it, as it
  does on asyncio. Once the trio run is over it raises ``RuntimeError``, which
  the crossing turns into ``LoopClosed``.

Time is the trio clock's (``loop.time()`` may be read from any thread, as
``SystemClock.current_time`` only reads ``perf_counter``).

Thread contract: ``call_soon_threadsafe``, ``time`` and ``is_closed`` from any
thread; everything else on the trio thread.
"""

from __future__ import annotations

import heapq
import logging
import threading
from asyncio import CancelledError, InvalidStateError
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator, Iterable
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

import trio

__all__ = ["TimerHandle", "TrioFuture", "TrioLoop", "TrioTask", "client_loop"]

logger = logging.getLogger("embedws.loop")

_T = TypeVar("_T")

_PENDING, _FINISHED, _CANCELLED = 0, 1, 2


class TimerHandle:
    """A callback scheduled on a `TrioLoop` (as ``asyncio.TimerHandle``)."""

    __slots__ = ("_args", "_callback", "_cancelled", "_loop", "_when")

    def __init__(
        self,
        when: float,
        callback: Callable[..., Any],
        args: tuple[Any, ...],
        loop: TrioLoop | None = None,
    ) -> None:
        self._when = when
        self._callback = callback
        self._args = args
        self._cancelled = False
        self._loop = loop  # set while the handle waits in the loop's heap

    def cancel(self) -> None:
        if not self._cancelled:
            self._cancelled = True
            if self._loop is not None:
                self._loop._timer_cancelled()

    def cancelled(self) -> bool:
        return self._cancelled

    def when(self) -> float:
        return self._when

    def _run(self) -> None:
        try:
            self._callback(*self._args)
        except Exception:
            logger.exception("error in callback %r", self._callback)

    def __lt__(self, other: TimerHandle) -> bool:
        return self._when < other._when


class TrioFuture(Generic[_T]):
    """An ``asyncio.Future`` look-alike that trio tasks can await.

    Thread contract: the loop's thread only.
    """

    __slots__ = ("_callbacks", "_exception", "_loop", "_result", "_state", "_waiters")

    def __init__(self, loop: TrioLoop) -> None:
        self._loop = loop
        self._state = _PENDING
        self._result: Any = None
        self._exception: BaseException | None = None
        self._waiters: list[trio.lowlevel.Task] | None = None
        self._callbacks: list[Callable[[Any], object]] | None = None

    def get_loop(self) -> TrioLoop:
        return self._loop

    def done(self) -> bool:
        return self._state != _PENDING

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def result(self) -> _T:
        if self._state == _CANCELLED:
            raise CancelledError
        if self._state == _PENDING:
            raise InvalidStateError("result is not ready")
        if self._exception is not None:
            raise self._exception
        result: _T = self._result
        return result

    def exception(self) -> BaseException | None:
        if self._state == _CANCELLED:
            raise CancelledError
        if self._state == _PENDING:
            raise InvalidStateError("exception is not set")
        return self._exception

    def set_result(self, result: _T, /) -> None:
        if self._state != _PENDING:
            raise InvalidStateError("the future is done already")
        self._result = result
        self._finish(_FINISHED)

    def set_exception(self, exception: BaseException, /) -> None:
        if self._state != _PENDING:
            raise InvalidStateError("the future is done already")
        self._exception = exception
        self._finish(_FINISHED)

    def cancel(self, msg: object = None) -> bool:
        if self._state != _PENDING:
            return False
        self._finish(_CANCELLED)
        return True

    def add_done_callback(self, fn: Callable[[Any], object], *, context: Any = None) -> None:
        if self._state != _PENDING:
            self._loop.call_soon(fn, self)
            return
        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(fn)

    def remove_done_callback(self, fn: Callable[[Any], object]) -> int:
        callbacks = self._callbacks or []
        kept = [cb for cb in callbacks if cb != fn]
        self._callbacks = kept
        return len(callbacks) - len(kept)

    def _finish(self, state: int) -> None:
        self._state = state
        # Done callbacks run now, not in a later pass as on asyncio: a task
        # woken below must find their bookkeeping done (asyncio.wait's waiter
        # is itself a done callback, queued after the others).
        callbacks, self._callbacks = self._callbacks, None
        for fn in callbacks or ():
            try:
                fn(self)
            except Exception:
                logger.exception("error in a done callback of %r", self)
        waiters, self._waiters = self._waiters, None
        for task in waiters or ():
            trio.lowlevel.reschedule(task)

    async def wait_done(self) -> None:
        """Wait until the future is done, without raising its exception."""
        if self._state != _PENDING:
            return
        task = trio.lowlevel.current_task()
        waiters = self._waiters
        if waiters is None:
            waiters = self._waiters = []
        waiters.append(task)

        def abort(_: Any) -> trio.lowlevel.Abort:
            if self._waiters is not None and task in self._waiters:
                self._waiters.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def __await__(self) -> Generator[Any, None, _T]:
        if self._state == _PENDING:
            yield from self.wait_done().__await__()
        return self.result()

    def __repr__(self) -> str:
        state = ("pending", "finished", "cancelled")[self._state]
        return f"<{type(self).__name__} {state}>"


class TrioTask(TrioFuture[_T]):
    """A coroutine running in a `TrioLoop`'s nursery, as an ``asyncio.Task``.

    Thread contract: the loop's thread only.
    """

    __slots__ = ("_name", "_scope")

    def __init__(self, loop: TrioLoop, coro: Coroutine[Any, Any, _T], name: str | None) -> None:
        super().__init__(loop)
        self._scope = trio.CancelScope()
        self._name: str = name or str(getattr(coro, "__qualname__", "task"))
        loop.nursery.start_soon(self._run, coro, name=self._name)

    async def _run(self, coro: Coroutine[Any, Any, _T]) -> None:
        try:
            with self._scope:
                try:
                    result = await coro
                except Exception as exc:
                    if not self._callbacks and not self._waiters:
                        logger.error("task %s raised", self._name, exc_info=exc)
                    self.set_exception(exc)
                    return
                self.set_result(result)
        finally:
            if self._state == _PENDING:  # cancelled, by us or from outside
                self._finish(_CANCELLED)

    def cancel(self, msg: object = None) -> bool:
        if self._state != _PENDING:
            return False
        self._scope.cancel()
        return True

    def get_name(self) -> str:
        return self._name


class TrioLoop:
    """The loop methods the core calls, on a trio nursery.

    Thread contract: ``call_soon_threadsafe``, ``time`` and ``is_closed`` from
    any thread; every other method on the trio thread.
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self._token = trio.lowlevel.current_trio_token()
        self._clock = trio.lowlevel.current_clock()
        self._thread = threading.get_ident()
        self._ready: deque[TimerHandle] = deque()
        self._timers: list[TimerHandle] = []  # a heap, by deadline
        self._scheduler: trio.lowlevel.Task | None = None  # set while it sleeps
        self._cancelled_timers = 0  # cancelled handles still in _timers
        self._closed = False

    async def run_scheduler(self) -> None:
        """Run the callbacks and timers (a task of the loop's nursery), until cancelled."""
        ready, timers = self._ready, self._timers
        try:
            while True:
                now = self._clock.current_time()
                while timers and (timers[0]._cancelled or timers[0]._when <= now):
                    handle = heapq.heappop(timers)
                    handle._loop = None
                    if handle._cancelled:
                        self._cancelled_timers -= 1
                    else:
                        ready.append(handle)
                # Only what is ready now: callbacks that queue more wait for the next pass.
                for _ in range(len(ready)):
                    handle = ready.popleft()
                    if not handle._cancelled:
                        handle._run()
                if ready:
                    await trio.lowlevel.checkpoint()
                    continue
                deadline = timers[0]._when if timers else float("inf")
                with trio.CancelScope(deadline=deadline):
                    self._scheduler = trio.lowlevel.current_task()
                    await trio.lowlevel.wait_task_rescheduled(self._abort_sleep)
        finally:
            self._scheduler = None
            self._closed = True

    def _timer_cancelled(self) -> None:
        # Cancelled timers leave the heap when their deadline comes; when they
        # are most of it (HTTP request timers re-armed under load), drop them
        # all at once, as asyncio does, so the heap stays as big as what is armed.
        self._cancelled_timers += 1
        timers = self._timers
        if self._cancelled_timers > 100 and self._cancelled_timers * 2 > len(timers):
            kept = []
            for handle in timers:
                if handle._cancelled:
                    handle._loop = None
                else:
                    kept.append(handle)
            heapq.heapify(kept)
            timers[:] = kept  # in place: the scheduler holds this list
            self._cancelled_timers = 0

    def _abort_sleep(self, _: Any) -> trio.lowlevel.Abort:
        self._scheduler = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _wake(self) -> None:
        task = self._scheduler
        if task is not None:
            self._scheduler = None
            trio.lowlevel.reschedule(task)

    # What the core calls ---------------------------------------------------

    def time(self) -> float:
        return self._clock.current_time()

    def is_closed(self) -> bool:
        return self._closed

    def is_current(self) -> bool:
        """True on the trio thread while the loop runs."""
        return threading.get_ident() == self._thread and not self._closed

    def create_future(self) -> TrioFuture[Any]:
        return TrioFuture(self)

    def create_task(
        self, coro: Coroutine[Any, Any, _T], *, name: str | None = None
    ) -> TrioTask[_T]:
        return TrioTask(self, coro, name)

    def call_soon(
        self, callback: Callable[..., Any], *args: Any, context: Any = None
    ) -> TimerHandle:
        handle = TimerHandle(0.0, callback, args)
        self._ready.append(handle)
        self._wake()
        return handle

    def call_at(
        self, when: float, callback: Callable[..., Any], *args: Any, context: Any = None
    ) -> TimerHandle:
        handle = TimerHandle(when, callback, args, self)
        timers = self._timers
        heapq.heappush(timers, handle)
        if timers[0] is handle:
            self._wake()  # sooner than what the scheduler sleeps until
        return handle

    def call_later(
        self, delay: float, callback: Callable[..., Any], *args: Any, context: Any = None
    ) -> TimerHandle:
        return self.call_at(self._clock.current_time() + delay, callback, *args)

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any) -> None:
        if self._closed:
            raise RuntimeError("the trio loop is closed")
        try:
            self._token.run_sync_soon(callback, *args)
        except trio.RunFinishedError as exc:
            self._closed = True
            raise RuntimeError("the trio run is over") from exc

    # What runtime.py asks ----------------------------------------------------

    async def wait_uncancellable(self, future: Awaitable[_T]) -> _T:
        with trio.CancelScope(shield=True):
            result = await future
        return result  # noqa: RET504 - mypy: a cancel scope may swallow a return

    @asynccontextmanager
    async def timeout_at(self, deadline: float | None) -> AsyncIterator[None]:
        with trio.CancelScope(deadline=float("inf") if deadline is None else deadline) as scope:
            yield
        if scope.cancelled_caught:
            raise TimeoutError

    async def wait_tasks(self, tasks: Iterable[TrioFuture[Any]], timeout: float | None) -> None:
        with trio.move_on_after(float("inf") if timeout is None else timeout):
            for task in list(tasks):
                await task.wait_done()

    async def sleep(self, delay: float) -> None:
        await trio.sleep(delay)

    def __repr__(self) -> str:
        return f"<TrioLoop closed={self._closed}>"


_client_loops: trio.lowlevel.RunVar[TrioLoop] = trio.lowlevel.RunVar("embedws_client_loop")


async def client_loop() -> TrioLoop:
    """The loop of this trio run's client connections (made on first use).

    Client connections have no server whose nursery could hold their tasks:
    theirs is a system nursery of the run, which trio cancels when the run
    ends. ``async with connect(...)`` closes its connection on the way out.

    Raises:
        RuntimeError: trio is not running.
    """
    try:
        return _client_loops.get()
    except LookupError:
        pass
    made = trio.Event()

    async def keep() -> None:
        async with trio.open_nursery() as nursery:
            loop = TrioLoop(nursery)
            _client_loops.set(loop)
            nursery.start_soon(loop.run_scheduler)
            made.set()
            await trio.sleep_forever()

    trio.lowlevel.spawn_system_task(keep, name="embedws client connections")
    await made.wait()
    return _client_loops.get()
