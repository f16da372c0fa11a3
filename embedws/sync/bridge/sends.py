"""The send path: a message from a thread to the socket, whole and in order.

A sync ``send`` takes one of three paths, chosen here and nowhere else:

1. **On the loop** (`send_on_loop()`): the caller runs on the loop thread
   (a greenlet handler, or a callback): it writes at once; a greenlet then
   parks while the peer is slow.
2. **Direct** (`DirectWriteConnection.try_send()`; a fast path,
   ``EMBEDWS_DIRECT_WRITES``): the calling thread writes the frame to the
   socket itself. Only when all of these hold, checked under the connection's
   ``write_lock``: the connection is a `DirectWriteConnection` of one of
   our own selector loops, without TLS (``enable_direct_writes``); the loop is
   waiting for I/O (the write then takes nothing from it); nothing is queued
   for the loop or running there (``Crossing.idle``: nothing this thread asked
   before can be overtaken); the transport's buffer is empty and no broadcast
   frames are held back (``_pending``); no rest of a partly written message is
   waiting (``_rest``); the connection is open; and the reader was not woken
   together with others (``Inbox.crowded``: threads woken by one pass of the
   loop reply together, and the loop writes all their replies in one pass,
   where each writing its own would wake the loop once per reply).
3. **Through the gate** (`send_from_thread()`, the portable path): the
   whole message is handed to the loop in one `Crossing.call
   <embedws.aio.crossing.Crossing.call>()` (`write_from_thread()`). The
   `SendGate` bounds the bytes handed over but not yet written, and
   blocks the sender while the transport's buffer is above its limit, at most
   ``WEBSOCKET_WRITE_TIMEOUT`` (then the connection fails with 1011).

Invariants: a message is written whole (never interleaved with another
thread's); the messages and broadcasts of one thread keep their order (every
loop-side write of a thread's call goes through the same crossing, and a direct
write happens only when nothing of it is queued); no frame lands inside a
partly written message (the rest of a direct write is kept in ``_rest`` under
the lock, and every loop-side write moves it into the transport first).

Direct writes: everything that touches the Sans-I/O protocol or writes, on the
loop or in a calling thread, holds the connection's ``write_lock`` (a test
checks that every ``Connection`` method that touches the protocol is guarded
here). The calling thread writes to the transport's own descriptor, without a
duplicate (thousands of connections would need twice the descriptors); that is
safe because asyncio's selector transport closes its socket only after
``connection_lost`` has returned, and ``connection_lost`` first turns direct
writes off under the lock: no thread can write to a descriptor number that was
closed and given to another connection.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import greenlet
from websockets.protocol import OPEN

from ...aio.connection import Connection
from ...aio.connection import Websocket as AioWebsocket
from ...aio.crossing import LoopClosed
from ...errors import WebsocketClosed
from ...message import Fragments
from ...switches import DIRECT_WRITES
from .greenlets import wait_writable
from .inbox import Inbox, WakeBatch, wake_batch_for

__all__ = [
    "DirectWriteConnection",
    "SendGate",
    "send_from_thread",
    "send_on_loop",
    "write_from_thread",
]


def send_on_loop(conn: Connection, inbox: Inbox, is_text: bool, payload: bytes | Fragments) -> None:
    """Path 1: on the loop thread; a greenlet handler waits while the peer is slow.

    Raises:
        WebsocketClosed: the connection is closed or closing.
    """
    conn.write_message(is_text, payload)
    current = greenlet.getcurrent()
    if conn.writing_paused and current.parent is not None:
        wait_writable(conn, inbox, current)


def send_from_thread(
    conn: Connection,
    direct: DirectWriteConnection | None,
    inbox: Inbox,
    gate: SendGate,
    is_text: bool,
    payload: bytes | Fragments,
) -> bool:
    """Paths 2 and 3: from a thread other than the loop's.

    Returns:
        False when the message cannot go: the loop is gone, or the gate stayed
        shut for ``WEBSOCKET_WRITE_TIMEOUT`` (the connection is then failed).
    """
    if direct is not None and not inbox.crowded and direct.try_send(is_text, payload):
        return True
    size = sum(map(len, payload)) if type(payload) is Fragments else len(payload)
    try:
        if not gate.acquire(size, conn.settings.write_timeout):
            conn.crossing.call(conn.fail, 1011, "write timeout")
            return False
        conn.crossing.call(write_from_thread, conn, is_text, payload, gate, size)
    except LoopClosed:
        return False
    return True


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

    __slots__ = ("_changed", "_closed", "_inflight", "_limit", "_lock", "_paused")

    def __init__(self, limit: int) -> None:
        self._lock = threading.Lock()  # guards _inflight, _paused, _closed and _changed
        # Made when a sender first has to wait: most connections never do. A
        # Condition, not an Event: with several senders waiting, one that
        # cleared a shared Event could swallow the wake-up meant for another.
        self._changed: threading.Condition | None = None
        self._inflight = 0
        self._paused = False
        self._closed = False
        self._limit = limit

    def acquire(self, size: int, timeout: float) -> bool:
        """Reserve ``size`` bytes; False if the gate stayed shut for ``timeout`` seconds."""
        size += _MESSAGE_COST
        deadline: float | None = None
        with self._lock:
            while True:
                if self._closed:
                    return True  # the caller's write will find the connection closed
                inflight = self._inflight
                if not self._paused and (inflight == 0 or inflight + size <= self._limit):
                    self._inflight = inflight + size
                    return True
                now = time.monotonic()
                if deadline is None:
                    deadline = now + timeout
                if now >= deadline:
                    return False
                changed = self._changed
                if changed is None:
                    changed = self._changed = threading.Condition(self._lock)
                changed.wait(deadline - now)

    def release(self, size: int) -> None:
        """Give back what ``acquire(size)`` reserved: the message was written."""
        with self._lock:
            self._inflight -= size + _MESSAGE_COST
            if self._changed is not None and not self._paused:
                self._changed.notify_all()

    def set_paused(self, paused: bool) -> None:
        with self._lock:
            self._paused = paused
            if not paused and self._changed is not None:
                self._changed.notify_all()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._changed is not None:
                self._changed.notify_all()


def write_from_thread(
    conn: Connection, is_text: bool, payload: Any, gate: SendGate, size: int
) -> None:
    """On the loop: write one message handed over by ``send`` in another thread (path 3)."""
    try:
        conn.write_message(is_text, payload)
    except WebsocketClosed:
        pass  # closed in between: like TCP, a message sent as it closes may be lost
    finally:
        gate.release(size)


class DirectWriteConnection(AioWebsocket):
    """A connection that calling threads may write to directly.

    Used by sync clients and by thread-mode handlers. Thread contract: the
    loop-side methods run on the loop, as for any connection; `try_send()`
    from any thread.
    """

    __slots__ = ("_fileno", "_loop_state", "_rest", "write_lock")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Guards the protocol and every write; reentrant: a failure while
        # reading (say, invalid UTF-8) fails the connection from inside.
        self.write_lock = threading.RLock()
        self._fileno = -1  # the socket calling threads write to; -1: not (or no longer)
        self._rest = b""  # the end of a message a calling thread wrote in part
        self._loop_state: WakeBatch | None = None  # .waiting: the loop waits for I/O

    def attach(
        self, transport: asyncio.Transport, head: bytes = b"", trailing: bytes = b""
    ) -> None:
        with self.write_lock:
            super().attach(transport, head, trailing)
            self.enable_direct_writes()

    def enable_direct_writes(self) -> None:
        """On the loop, once open: let calling threads write when it keeps the order."""
        # Only our loop threads' selector loops: other loops (uvloop, an
        # application's) may close their sockets on other terms, and do not
        # tell when they wait for I/O.
        loop_state = wake_batch_for(self.loop)
        if not DIRECT_WRITES or os.name != "posix" or loop_state is None:
            return
        if self.transport.get_extra_info("sslcontext") is not None:
            return  # TLS state lives in the transport: writes go through the loop
        raw = self.transport.get_extra_info("socket")
        if raw is not None and not self._lost:
            self._loop_state = loop_state
            self._fileno = raw.fileno()

    def try_send(self, is_text: bool, payload: bytes | Fragments) -> bool:
        """Write one message from the calling thread, if that keeps the order."""
        loop_state = self._loop_state
        if loop_state is None or not loop_state.waiting:
            return False
        with self.write_lock:
            fileno = self._fileno
            if (
                fileno < 0
                or self._rest
                or self.protocol.state is not OPEN
                or self._failed
                or not self.crossing.idle()
                or self.transport.get_write_buffer_size()
                or self._pending is not None
            ):
                return False
            self.frame_message(is_text, payload)
            rest: list[bytes] = []
            for data in self.protocol.data_to_send():  # data frames only: no end of stream here
                if rest:
                    rest.append(data)
                    continue
                try:
                    sent = os.write(fileno, data)
                except BlockingIOError:
                    sent = 0
                except OSError:  # the peer is gone: like TCP, what was sent is lost
                    self._fileno = -1
                    self._call_loop(self._write_failed)
                    return True
                if sent < len(data):
                    rest.append(data[sent:])
            if rest:
                self._rest = b"".join(rest)
                self._call_loop(self._write_rest)
            return True

    def _call_loop(self, fn: Any) -> None:
        try:
            self.crossing.call(fn)
        except LoopClosed:  # the connection went with it
            self._fileno = -1

    def _write_rest(self) -> None:
        with self.write_lock:
            rest, self._rest = self._rest, b""
            if rest and not self._lost:
                self.transport.write(rest)

    def _write_failed(self) -> None:
        # What asyncio does when one of its own writes fails: drop the connection.
        if not self._lost:
            self.transport.abort()

    def flush(self) -> None:
        # Every write of the protocol's frames, always under the lock.
        if self._rest:
            self._write_rest()
        super().flush()

    # Everything that touches the protocol on the loop, under the lock -------------

    def data_received(self, data: bytes) -> None:
        with self.write_lock:
            super().data_received(data)

    def eof_received(self) -> bool | None:
        with self.write_lock:
            return super().eof_received()

    def write_message(self, is_text: bool, payload: bytes | Fragments) -> None:
        with self.write_lock:
            super().write_message(is_text, payload)

    def write_frames(self, frames: list[bytes]) -> None:
        with self.write_lock:
            if self._rest:
                self._write_rest()
            super().write_frames(frames)

    def _write_held(self) -> None:
        with self.write_lock:
            super()._write_held()

    def resume_writing(self) -> None:
        with self.write_lock:  # it may write frames held back
            super().resume_writing()

    def write_fragment(self, is_text: bool, data: bytes, *, fin: bool) -> None:
        with self.write_lock:
            super().write_fragment(is_text, data, fin=fin)

    def send_ping(self, data: bytes | None, waiter: Any) -> bytes:
        with self.write_lock:
            return super().send_ping(data, waiter)

    def send_pong(self, data: bytes) -> None:
        with self.write_lock:
            super().send_pong(data)

    def start_close(self, code: int = 1000, reason: str = "") -> None:
        with self.write_lock:
            super().start_close(code, reason)

    def fail(self, code: int, reason: str = "") -> None:
        with self.write_lock:
            super().fail(code, reason)

    def connection_lost(self, exc: Exception | None) -> None:
        with self.write_lock:
            self._fileno = -1  # before the transport closes the descriptor
            super().connection_lost(exc)
