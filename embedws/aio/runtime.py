"""What the core needs of its runtime beyond the loop's own methods.

Theory of operation
-------------------
The core holds its event loop as ``self.loop`` and calls that object's methods:
``create_future``, ``call_soon``, ``call_later``, ``call_at``, ``time``,
``create_task``, ``call_soon_threadsafe``, ``is_closed``. Under asyncio that
object *is* the asyncio loop, so the protocol pump pays nothing for the seam;
inside trio it is a `TrioLoop`, a small object
with the same methods, whose futures trio tasks can await.

asyncio offers a few more things as module functions instead of loop methods
(``shield``, ``timeout_at``, ``wait``, ``sleep``); the core reaches them here,
passing its loop. None of them is on a per-message path: they serve closing,
shutdown and timeouts of whole operations. Anything that is not an asyncio
loop is asked for its own method of the same name; trio is imported only by
`running_loop()`, when no asyncio loop runs.

One thing asyncio's transports need done for them: `release_transport()` lets
a closed one be freed by reference counting.

A loop we drive ourselves (our loop threads', ``sync/bridge/inbox.py``) also
has a `PassEnd`: callbacks its selector runs when a pass of the loop ends,
before it waits for I/O again. `pass_end_for()` finds it; other loops have
none.

Thread contract: every function runs on the loop's thread.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar, cast

__all__ = [
    "PassEnd",
    "add_pass_end",
    "is_asyncio",
    "pass_end_for",
    "release_transport",
    "running_loop",
    "shield",
    "sleep",
    "timeout_at",
    "wait_tasks",
    "wait_uncancellable",
]

_T = TypeVar("_T")

logger = logging.getLogger("embedws.server")


async def running_loop() -> asyncio.AbstractEventLoop:
    """The running asyncio loop; inside trio, the run's loop for client connections.

    Raises:
        RuntimeError: neither asyncio nor trio (with ``embedws[trio]``) runs.
    """
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    try:
        from .trio_loop import client_loop  # noqa: PLC0415 - trio is an optional extra
    except ImportError:
        raise RuntimeError("no running event loop") from None
    loop: asyncio.AbstractEventLoop = cast(asyncio.AbstractEventLoop, await client_loop())
    return loop


def is_asyncio(loop: Any) -> bool:
    """True when ``loop`` is an asyncio event loop (the fast path's runtime)."""
    return isinstance(loop, asyncio.AbstractEventLoop)


class PassEnd:
    """What a loop we drive does when a pass ends, just before it waits for I/O.

    ``crowded``: the pass had more to do than one socket's event (more than
    one ready, or callbacks waiting), so what one callback defers to the end
    of the pass goes out together with the others'. Thread contract: the
    loop's thread only.
    """

    __slots__ = ("__weakref__", "callbacks", "crowded")

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], None]] = []
        self.crowded = False

    def run(self) -> None:
        """Run the callbacks deferred to this pass's end, in order."""
        callbacks = self.callbacks
        if not callbacks:
            return
        self.callbacks = []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # the loop's selector calls this: it must not fail
                logger.exception("error in %r at the end of a loop pass", callback)


_pass_ends: weakref.WeakKeyDictionary[Any, PassEnd] = weakref.WeakKeyDictionary()


def add_pass_end(loop: Any, pass_end: PassEnd) -> None:
    """Declare that ``loop``'s selector runs ``pass_end`` at the end of each pass."""
    _pass_ends[loop] = pass_end


def pass_end_for(loop: Any) -> PassEnd | None:
    """The `PassEnd` of a loop we drive; ``None`` for any other loop."""
    return _pass_ends.get(loop)


def release_transport(transport: asyncio.BaseTransport | None) -> None:
    """Let a closed asyncio socket transport be freed by reference counting.

    Called from a protocol's ``connection_lost``. asyncio's selector socket
    transport keeps bound methods of itself (``_read_ready_cb``; also
    ``_write_ready`` from Python 3.12): a reference cycle, so a closed
    connection's transport, socket and their dicts wait for the cyclic GC,
    whose passes a busy server pays for. asyncio 3.12+ drops them in
    ``close()``, but not when a reset or ``abort()`` ends the connection,
    and 3.11 never does. In a handshake benchmark (10,000 handshakes, 50 in
    flight, ``gc.callbacks`` timing) the collector's passes took 11 µs of
    about 210 per handshake in async mode and 15 µs in thread mode: 3 and
    5 µs less once transports go at once. asyncio has removed the transport
    from its selector before it calls ``connection_lost``, so nothing calls
    them again; they go back to ``None``, as asyncio's ``close()`` leaves
    them. Transports without them (uvloop's, TLS wrappers, trio's) are left
    alone.
    """
    attrs = getattr(transport, "__dict__", None)
    if attrs is None:
        return
    for name in ("_read_ready_cb", "_write_ready"):
        if attrs.get(name) is not None:
            attrs[name] = None


def shield(loop: Any, future: Awaitable[_T]) -> Awaitable[_T]:
    """``future``, awaitable without the awaiting task's cancellation cancelling it.

    A trio loop's futures are never cancelled by a task that stops waiting
    for them, so there it is the future itself.
    """
    if is_asyncio(loop):
        return asyncio.shield(future)
    return future


async def wait_uncancellable(loop: Any, future: Awaitable[_T]) -> _T:
    """Wait for ``future`` even when the calling task is being cancelled.

    For waits that must finish once started (a shutdown already under way,
    itself bounded by its own timeout).
    """
    if is_asyncio(loop):
        return await asyncio.shield(future)
    result: _T = await loop.wait_uncancellable(future)
    return result


def timeout_at(loop: Any, deadline: float | None) -> AbstractAsyncContextManager[Any]:
    """``asyncio.timeout_at``: raise ``TimeoutError`` at ``deadline`` (loop time)."""
    if is_asyncio(loop):
        return asyncio.timeout_at(deadline)
    manager: AbstractAsyncContextManager[Any] = loop.timeout_at(deadline)
    return manager


async def wait_tasks(loop: Any, tasks: Iterable[Any], timeout: float | None) -> None:
    """Wait until every task of ``tasks`` is done, at most ``timeout`` seconds."""
    pending = set(tasks)
    if not pending:
        return
    if is_asyncio(loop):
        await asyncio.wait(pending, timeout=timeout)
    else:
        await loop.wait_tasks(pending, timeout)


async def sleep(loop: Any, delay: float) -> None:
    """Sleep ``delay`` seconds on ``loop``'s runtime."""
    if is_asyncio(loop):
        await asyncio.sleep(delay)
    else:
        await loop.sleep(delay)
