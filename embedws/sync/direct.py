"""Direct writes: a sync websocket's ``send`` writes from the calling thread.

A sync ``send`` usually answers a message or waits for one: handing each
message to the loop costs a wake-up of the loop thread per message (a
self-pipe write, a pass of the loop to read it back, a context switch). So on
a plain TCP connection (not TLS) of one of our loop threads, the calling
thread writes to the socket itself when the loop is waiting for I/O (the
write then takes nothing from it) and when that keeps the order: nothing is
waiting in the transport's buffer, and no call of any thread is queued for the
loop or running there (:meth:`~embedws.aio.crossing.Crossing.idle`), so
nothing this thread asked of the loop before (a send, a broadcast, a ping, a
close) can be overtaken.

Threads that one pass of the loop woke together (many busy connections) send
through the loop too: it writes all their replies in one pass, where each
thread writing its own would wake the loop for every reply that comes back
(``Inbox.crowded``). While the loop is busy, sends go through it as usual,
bounded by the send gate: a handler that sends as fast as it can is then
paced by the loop instead of taking the GIL from it (a thread that never
blocks gets the GIL back every few microseconds; the loop waiting for it, only
every switch interval, 5 ms).

Everything that touches the Sans-I/O protocol or writes, on the loop or in a
calling thread, holds the connection's ``write_lock``: frames never interleave
and the protocol's state is never shared unguarded.

A write the socket takes only in part leaves the rest of the message in
``_rest``, under the lock, and asks the loop to write it. Until then every
write of the loop (a pong, a broadcast, a close) first moves that rest into
the transport, so nothing can land in the middle of the message: the rest
cannot simply be queued for the loop like any call, since the loop may write a
pong or a broadcast queued earlier before it gets there.

The calling thread writes to the transport's own descriptor, without a
duplicate (thousands of connections would need twice the descriptors). That is
safe because asyncio's selector transport closes its socket only after
``connection_lost`` has returned, and ``connection_lost`` first turns direct
writes off under the lock: no thread can write to a descriptor number that was
closed and given to another connection.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

from websockets.protocol import OPEN

from ..aio.connection import Websocket as AioWebsocket
from ..message import Fragments
from .loop import WakeBatch, wake_batch_for

__all__ = ["DirectWriteConnection"]


class DirectWriteConnection(AioWebsocket):
    """A connection that calling threads may write to directly.

    Used by sync clients and by thread-mode handlers. Thread contract: the
    loop-side methods run on the loop, as for any connection; :meth:`try_send`
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
        if os.name != "posix" or loop_state is None:
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
        except RuntimeError:  # the loop is closed, and the connection with it
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

    def _flush(self) -> None:
        # Every write of the protocol's frames, always under the lock.
        if self._rest:
            self._write_rest()
        super()._flush()

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
