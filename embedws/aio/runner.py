"""Handler runners: where a route's handler runs.

The server asks the app for one runner per mode (``"async"``, ``"thread"``,
``"greenlet"``); this module defines what a runner does and the async one. The
sync runners live in ``embedws/sync/runner.py``: the core never imports them.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import WebsocketClosed
from ..request import Request
from .connection import Connection, Websocket
from .runtime import wait_tasks

__all__ = ["AsyncRunner", "HandlerRunner", "HookRunner", "is_async_callable", "log_handler_crash"]

logger = logging.getLogger("embedws.server")


class HandlerRunner(Protocol):
    """Runs websocket handlers and HTTP handlers of one mode.

    Thread contract: every method but ``join`` is called on the event loop.
    """

    connection_class: type[Websocket]  # what its websockets are made of

    def has_capacity(self) -> bool:
        """Whether one more websocket handler may start now."""

    def start(
        self,
        conn: Connection,
        request: Request,
        handler: Callable[..., Any],
        params: dict[str, Any],
    ) -> None:
        """Run a websocket handler for ``conn``; close the connection when it ends."""

    async def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run an HTTP handler (or other user code) and return its result."""

    async def shutdown(self, deadline: float) -> None:
        """Wait for running handlers until ``deadline`` (loop time), then give up on them."""

    def join(self, timeout: float) -> None:
        """Join worker threads (called off the loop, after ``shutdown``)."""


class HookRunner(Protocol):
    """Runs the app's ``def`` middleware and listeners off the event loop.

    They may block (a database lookup, a file flushed at shutdown): on the
    loop they would stall every connection. Thread contract: ``call`` and
    ``close`` on the event loop; ``join`` off it, after ``close``.
    """

    async def call(self, fn: Callable[..., Any], /, *args: Any, reserved: bool = False) -> Any:
        """Run ``fn(*args)`` off the loop and return its result (or raise its error).

        ``reserved`` runs it even when every thread is busy (listeners:
        a shutdown must not wait for a free thread).

        Raises:
            ServiceUnavailable: every hook thread is busy (unless ``reserved``).
        """

    def close(self) -> None:
        """Let idle threads exit once the server has stopped."""

    def join(self, timeout: float) -> None:
        """Join the threads until ``timeout``."""


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """True for an ``async def`` function, or an object whose ``__call__`` is one."""
    return any(
        inspect.iscoroutinefunction(candidate)
        # An object's own async __call__ counts (callable() cannot tell).
        for candidate in (fn, inspect.unwrap(fn), getattr(fn, "__call__", None))  # noqa: B004
    )


def log_handler_crash(handler: Callable[..., Any], request: Request | None) -> None:
    name = getattr(handler, "__qualname__", repr(handler))
    path = request.path if request is not None else "?"
    logger.error("websocket handler %s for %s raised; closing with 1011", name, path, exc_info=True)


class AsyncRunner:
    """Runs ``async def`` handlers as tasks on the loop."""

    connection_class: type[Websocket] = Websocket

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._tasks: dict[asyncio.Task[None], str] = {}

    def has_capacity(self) -> bool:
        return True

    def start(
        self,
        conn: Connection,
        request: Request,
        handler: Callable[..., Any],
        params: dict[str, Any],
    ) -> None:
        task = self._loop.create_task(self._run(conn, request, handler, params))
        self._tasks[task] = getattr(handler, "__qualname__", repr(handler))
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    @staticmethod
    async def _run(
        conn: Connection, request: Request, handler: Callable[..., Any], params: dict[str, Any]
    ) -> None:
        code, reason = 1000, ""
        try:
            result = handler(request, conn.facade, **params)
            if inspect.isawaitable(result):
                await result
        except WebsocketClosed:
            logger.debug("handler %s ended: websocket closed", handler)
        except Exception:
            log_handler_crash(handler, request)
            code, reason = 1011, "internal error"
        except BaseException:  # cancelled: asyncio.CancelledError, trio.Cancelled
            conn.start_close(1001, "server shutting down")
            raise
        conn.start_close(code, reason)

    async def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def shutdown(self, deadline: float) -> None:
        await wait_tasks(self._loop, self._tasks, max(deadline - self._loop.time(), 0))
        for task, name in self._tasks.items():
            logger.warning("cancelling websocket handler %s, still running at shutdown", name)
            task.cancel()
        await wait_tasks(self._loop, self._tasks, 1.0)

    def join(self, timeout: float) -> None:
        return None
