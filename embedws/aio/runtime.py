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

Thread contract: every function runs on the loop's thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar, cast

__all__ = [
    "is_asyncio",
    "running_loop",
    "shield",
    "sleep",
    "timeout_at",
    "wait_tasks",
    "wait_uncancellable",
]

_T = TypeVar("_T")


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
