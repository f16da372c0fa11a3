"""Waiting in a thread (or a greenlet handler) for a pong the loop receives."""

from __future__ import annotations

import asyncio
import threading

import greenlet

from .greenlets import park_until
from .inbox import on_loop

__all__ = ["PingWaiter"]


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
            if greenlet.getcurrent().parent is not None and on_loop(self._loop):
                park_until(self._loop, self._event.is_set, self.watch, timeout)
            elif not self._event.wait(timeout):
                return False
            if not self._event.is_set():
                return False
        if self._exc is not None:
            raise self._exc
        return True
