"""An asyncio-style transport over an anyio byte stream, for the core inside trio.

Theory of operation
-------------------
The core's protocols (`HTTPConnection`, then a
`Connection` after the 101) are written against
the asyncio transport/protocol contract. `StreamTransport` keeps that
contract over an anyio ``ByteStream`` (TCP, Unix, or a ``TLSStream`` around
either) so that the same protocol objects run inside trio unchanged:

* One task per connection (`StreamTransport.run()`) owns a small nursery:
  a reader task and the writer loop. The reader calls ``data_received`` with
  each chunk, stops while ``pause_reading`` is in force (a chunk that arrives
  meanwhile is held and delivered on ``resume_reading``, so the protocol never
  sees data while paused), and on EOF calls ``eof_received``; a falsy answer
  closes the transport, as asyncio does.
* ``write`` never blocks. On a plain socket, when nothing is queued, it first
  tries the socket's non-blocking ``send`` right away (what asyncio's selector
  transport does): the writer task is parked then, so nothing else is sending.
  What is left is queued for the writer task, which sends it with the stream's
  ``send``. The queue has asyncio's high/low water marks: above the high one
  the protocol gets ``pause_writing``, and ``resume_writing`` once the writer
  has brought it under the low one, so the core's backpressure, write timeout
  and broadcast backlog work unchanged.
* ``write_eof`` sends EOF after the queue; ``close`` stops reading and closes
  once the queue is sent; ``abort`` cancels the connection's nursery at once
  (an in-flight send included). Either way the stream is closed and
  ``connection_lost`` is called exactly once, by the connection's own task, after
  the reader and writer have stopped, as asyncio calls it after the transport
  is done.

Thread contract: every method runs on the trio thread.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections import deque
from collections.abc import Iterable
from typing import Any

import anyio
import trio
from anyio.abc import ByteStream, SocketAttribute
from anyio.streams.tls import TLSAttribute, TLSStream

from .trio_loop import TrioLoop

__all__ = ["STREAM_ERRORS", "StreamTransport", "connect_stream"]

logger = logging.getLogger("embedws.transport")

READ_SIZE = 256 * 1024
HIGH_WATER = 64 * 1024

#: What a stream raises when the peer is gone or the stream was closed.
STREAM_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError, ssl.SSLError)


class _Parking:
    """Where one task sleeps until another one (on the same thread) wakes it."""

    __slots__ = ("_task",)

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None

    async def park(self) -> None:
        self._task = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)

    def _abort(self, _: Any) -> trio.lowlevel.Abort:
        self._task = None
        return trio.lowlevel.Abort.SUCCEEDED

    def unpark(self) -> None:
        task = self._task
        if task is not None:
            self._task = None
            trio.lowlevel.reschedule(task)


class StreamTransport(asyncio.Transport):
    """The asyncio ``Transport`` methods the core calls, over an anyio ``ByteStream``.

    An ``asyncio.Transport`` subclass only so that the core's type checks and
    annotations hold; nothing of asyncio runs.

    Thread contract: the trio thread only.
    """

    def __init__(self, loop: TrioLoop, stream: ByteStream, protocol: Any) -> None:
        super().__init__()
        self._loop = loop
        self._stream = stream
        self._protocol = protocol
        self._tls = isinstance(stream, TLSStream)
        # Sent to directly when nothing is queued: plain sockets only (TLS
        # state lives in the stream).
        self._sock: socket.socket | None = (
            None if self._tls else stream.extra(SocketAttribute.raw_socket, None)
        )
        self._queue: deque[bytes] = deque()
        self._queued = 0  # bytes in _queue
        self._in_flight = 0  # bytes handed to the stream's send, not returned yet
        self._high = HIGH_WATER
        self._low = HIGH_WATER // 4
        self._writing_paused = False
        self._reading_paused = False
        self._closing = False
        self._eof_wanted = False
        self._eof_sent = False
        self._lost = False
        self._exc: BaseException | None = None
        self._reader = _Parking()
        self._writer = _Parking()
        self._scope: trio.CancelScope | None = None

    # The connection's task -----------------------------------------------------

    async def run(self) -> None:
        """``connection_made``, then `serve()` (an accepted connection's task)."""
        try:
            self._protocol.connection_made(self)
        except BaseException:
            await anyio.aclose_forcefully(self._stream)
            raise
        await self.serve()

    async def serve(self) -> None:
        """Pump the connection until it is closed; then ``connection_lost``.

        The protocol has had its ``connection_made`` (`run()`, or the client).
        """
        try:
            if not self._closing:
                async with trio.open_nursery() as nursery:
                    self._scope = nursery.cancel_scope
                    nursery.start_soon(self._read_loop)
                    await self._write_loop()
                    nursery.cancel_scope.cancel()
        except Exception as exc:
            logger.error("error in a connection's transport", exc_info=True)
            self._exc = exc
        finally:
            self._closing = self._lost = True
            self._queue.clear()
            with trio.CancelScope(shield=True):
                await anyio.aclose_forcefully(self._stream)
            try:
                self._protocol.connection_lost(self._exc)
            except Exception:
                logger.exception("error in connection_lost")

    async def _read_loop(self) -> None:
        stream = self._stream
        while not self._reading_over():
            if self._must_wait():
                await self._reader.park()
                continue
            try:
                data = await stream.receive(READ_SIZE)
            except anyio.EndOfStream:
                self._eof()
                return
            except STREAM_ERRORS as exc:
                self._fatal(exc)
                return
            # Paused while the read was pending: the protocol must not see it yet.
            while self._must_wait():
                await self._reader.park()
            if self._reading_over():
                return
            self._deliver(data)

    # Methods, not attribute reads: the flags change while the reader awaits.
    def _must_wait(self) -> bool:
        return self._reading_paused and not self._closing

    def _reading_over(self) -> bool:
        return self._closing

    def _deliver(self, data: bytes) -> None:
        try:
            self._protocol.data_received(data)
        except Exception as exc:
            logger.error("error in data_received; closing the connection", exc_info=True)
            self._fatal(exc)

    def _eof(self) -> None:
        try:
            keep_open = self._protocol.eof_received()
        except Exception as exc:
            logger.error("error in eof_received; closing the connection", exc_info=True)
            self._fatal(exc)
            return
        if not keep_open:
            self.close()

    async def _write_loop(self) -> None:
        stream, queue = self._stream, self._queue
        while True:
            while not queue:
                if self._eof_wanted and not self._eof_sent:
                    self._eof_sent = True
                    try:
                        await stream.send_eof()
                    except STREAM_ERRORS as exc:
                        self._fatal(exc)
                        return
                if self._closing:
                    return
                await self._writer.park()
            data = queue.popleft() if len(queue) == 1 else b"".join(queue)
            queue.clear()
            self._in_flight, self._queued = len(data), 0
            try:
                await stream.send(data)
            except STREAM_ERRORS as exc:
                self._fatal(exc)
                return
            finally:
                self._in_flight = 0
            if self._writing_paused and self._queued <= self._low:
                self._writing_paused = False
                self._protocol.resume_writing()

    def _fatal(self, exc: BaseException) -> None:
        logger.debug("connection lost: %r", exc)
        if self._exc is None:
            self._exc = exc
        self.abort()

    # asyncio.Transport ---------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._eof_wanted:
            return  # asyncio drops them too (with a warning the core avoids)
        if not data:
            return
        sock = self._sock
        if sock is not None and not self._queue and not self._in_flight:
            try:
                sent = sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._fatal(exc)
                return
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
        chunk = bytes(data)
        self._queue.append(chunk)
        self._queued += len(chunk)
        self._writer.unpark()
        if not self._writing_paused and self.get_write_buffer_size() > self._high:
            self._writing_paused = True
            self._protocol.pause_writing()

    def writelines(self, lines: Iterable[bytes | bytearray | memoryview]) -> None:
        for line in lines:
            self.write(line)

    def get_write_buffer_size(self) -> int:
        return self._queued + self._in_flight

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        self._high, self._low = high, low

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            # A chunk held meanwhile is delivered by the reader when it runs,
            # before it reads anything newer.
            self._reader.unpark()

    def is_reading(self) -> bool:
        return not self._reading_paused and not self._closing

    def can_write_eof(self) -> bool:
        return not self._tls

    def write_eof(self) -> None:
        if self._closing or self._eof_wanted:
            return
        self._eof_wanted = True
        self._writer.unpark()

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Close once what is queued is sent."""
        if self._closing:
            return
        self._closing = True
        self._reader.unpark()
        self._writer.unpark()

    def abort(self) -> None:
        """Close now; what is queued is dropped."""
        self._closing = True
        self._queue.clear()
        self._queued = 0
        if self._scope is not None:
            self._scope.cancel()

    def set_protocol(self, protocol: Any) -> None:
        self._protocol = protocol

    def get_protocol(self) -> Any:
        return self._protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        stream = self._stream
        if name == "peername":
            return stream.extra(SocketAttribute.remote_address, default)
        if name == "sockname":
            return stream.extra(SocketAttribute.local_address, default)
        if name == "socket":
            return stream.extra(SocketAttribute.raw_socket, default)
        if name == "sslcontext":
            ssl_object = stream.extra(TLSAttribute.ssl_object, None)
            return default if ssl_object is None else ssl_object.context
        if name == "ssl_object":
            return stream.extra(TLSAttribute.ssl_object, default)
        if name == "peercert":
            return stream.extra(TLSAttribute.peer_certificate, default)
        return default

    def __repr__(self) -> str:
        return f"<StreamTransport closing={self._closing} lost={self._lost}>"


async def connect_stream(
    loop: TrioLoop, protocol: Any, host: str, port: int, ssl_context: ssl.SSLContext | None
) -> StreamTransport:
    """Open TCP (and TLS) to ``host:port`` for a client ``protocol``; pump it in ``loop``."""
    stream: ByteStream
    try:
        if ssl_context is None:
            stream = await anyio.connect_tcp(host, port)
        else:
            stream = await anyio.connect_tcp(
                host,
                port,
                ssl_context=ssl_context,
                tls_hostname=host,
                tls_standard_compatible=False,
            )
    except OSError as exc:
        # anyio tries each address and says "All connection attempts failed";
        # the first attempt's own error (refused, unreachable) says more.
        cause = exc.__cause__
        if isinstance(cause, BaseExceptionGroup):
            cause = cause.exceptions[0]
        if isinstance(cause, OSError):
            raise cause from exc
        raise
    transport = StreamTransport(loop, stream, protocol)
    protocol.connection_made(transport)
    loop.nursery.start_soon(transport.serve)
    return transport
