"""The protocol pump: one websocket connection driven on an asyncio transport.

Theory of operation
-------------------
A `Connection` is the ``asyncio.Protocol`` of one socket once the opening
handshake is done. It owns the ``websockets`` Sans-I/O protocol object (server
or client side), which does all framing, masking, compression and close-code
validation, and it does what that layer leaves to I/O code:

* ``data_received`` feeds bytes to the protocol, writes what the protocol wants
  written (automatic pongs, close replies), and hands complete data frames to
  the assembler. ``eof_received`` calls ``receive_eof`` and nothing is fed after.
* A fragmented message is joined by an `Assembler`
  (one buffer per message; text decoded as it arrives, so invalid UTF-8 fails
  with 1007 at the first bad byte even across fragments). Complete
  messages go to the consumer: the async API's own queue by default, or the
  thread-safe inbox the sync facade installs. When ``WEBSOCKET_MAX_QUEUE``
  messages wait, reading pauses; the consumer resumes it when it has drained.
* Timers are ``loop.call_later`` handles, not tasks: the keepalive ping and its
  pong deadline, the closing-handshake deadline (abort the transport when the
  peer never finishes the close), and the write-stall deadline (a peer that
  keeps the write buffer above its high-water mark for
  ``WEBSOCKET_WRITE_TIMEOUT`` is failed with 1011 and aborted).
* Writes go to the transport; backpressure pauses senders at its high-water
  mark (``write_limit``). Two kinds of writes do not wait for the peer, so each
  has its own bound: broadcast frames that reach a paused transport wait in
  ``_pending`` (shared bytes, no copy per recipient; every later write queues
  behind them) and a peer more than ``max_backlog`` behind is dropped; pongs and
  close replies owed to a peer whose buffer is full stop reading from it until
  it drains (``_hold_reading``).
* ``connection_lost`` is the one place where a connection ends: the protocol is
  moved to CLOSED, waiters (recv, pings, drains, wait_closed) are woken with the
  close exception, timers are cancelled and the owner is told.

Everything here runs on the event loop thread. Other threads reach it through
the loop's batched call queue, ``self.crossing`` (``embedws/aio/crossing.py``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections import deque
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from websockets.frames import BINARY, CLOSE, CONT, PONG, TEXT, Frame
from websockets.protocol import CLIENT, CLOSED, CONNECTING, OPEN, SERVER
from websockets.protocol import Protocol as SansIOProtocol

try:  # websockets' C unmasking, as its own parser uses it
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - a websockets built without its C extension
    from websockets.utils import apply_mask

from ..assembler import Assembler, InvalidUTF8
from ..errors import ConcurrencyError, WebsocketClosed
from ..message import Fragments, encode_message, fragment_payload
from ..state import State
from ..switches import FAST_FRAMES
from .crossing import crossing_for
from .runtime import pass_end_for, release_transport, shield, timeout_at

if TYPE_CHECKING:
    from ..request import Request
    from ..routing import Route

__all__ = [
    "Connection",
    "Consumer",
    "PongWaiter",
    "ProtocolLogger",
    "Settings",
    "Websocket",
    "protocol_logger",
    "read_buffer_for",
]

logger = logging.getLogger("embedws.connection")


class ProtocolLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The Sans-I/O layer's logger, with its per-connection INFO lines at DEBUG.

    ``websockets`` logs "connection open/closed" at INFO for every connection:
    noise for an embedded server whose host logs at INFO.
    """

    def info(self, msg: object, *args: object, **kwargs: object) -> None:
        self.debug(msg, *args, **kwargs)  # type: ignore[arg-type]


protocol_logger = ProtocolLogger(logging.getLogger("embedws.protocol"), {})


class Consumer(Protocol):
    """Receives what a connection produces, in place of the async API's queue.

    Every method is called on the event loop thread and must not block.
    """

    def put(self, message: str | bytes) -> int:
        """Queue a complete message; return how many are queued now."""

    def close(self) -> None:
        """The connection is closed: wake every waiter."""

    def set_writable(self, writable: bool) -> None:
        """The transport's write buffer went above (False) or below (True) its limit."""

    def pending(self) -> int:
        """How many messages are queued now."""


class PongWaiter(Protocol):
    """What waits for a pong: an ``asyncio.Future`` or the sync facade's waiter."""

    def done(self) -> bool: ...
    def set_result(self, latency: float, /) -> None: ...
    def set_exception(self, exc: BaseException, /) -> None: ...


READ_BUFFER_SIZE = 256 * 1024


@dataclass(frozen=True, slots=True)
class Settings:
    """Per-server connection settings, shared by all its connections (on one loop)."""

    close_timeout: float = 10.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    max_queue: int = 32
    write_timeout: float = 30.0
    write_limit: int = 64 * 1024
    max_backlog: int = 32 * 2**20  # bytes waiting for a peer before it is dropped at once


_read_buffers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, memoryview] = (
    weakref.WeakKeyDictionary()
)


#: First bytes of a whole data frame with no RSV bit: FIN | TEXT, FIN | BINARY.
_WHOLE_DATA_FRAME = frozenset({0x81, 0x82})


def _fast_frames_for(protocol: SansIOProtocol) -> bool | None:
    """Whether whole frames may skip the Sans-I/O parser (None: ask again once open)."""
    if protocol.state is not OPEN:
        return None  # a client's extensions are known once its handshake is done
    return FAST_FRAMES and not protocol.extensions and not protocol.debug


def read_buffer_for(loop: asyncio.AbstractEventLoop) -> memoryview:
    """Where every connection of ``loop`` reads into.

    One buffer serves them all: the transport fills it and calls
    ``buffer_updated``, which copies the bytes out before returning, all in
    one callback on the loop, so no two reads ever share it at once.
    """
    buffer = _read_buffers.get(loop)
    if buffer is None:
        buffer = _read_buffers[loop] = memoryview(bytearray(READ_BUFFER_SIZE))
    return buffer


class Connection(asyncio.BufferedProtocol):
    """One websocket connection: the Sans-I/O protocol pumped on a transport.

    A ``BufferedProtocol``: the transport reads into a preallocated buffer
    (``recv_into``) instead of allocating a 256 KiB ``bytes`` for every read,
    which costs a plain ``Protocol`` about a quarter of a small echo's time.

    Thread contract: every method runs on the event loop thread.
    """

    __slots__ = (
        "_close_handle",
        "_consumer",
        "_control_held",
        "_drain_waiters",
        "_failed",
        "_assembler",
        "_fast_frames",
        "_handshake",
        "_head_held",
        "_ka_handle",
        "_ka_ping",
        "_lost",
        "_lost_waiter",
        "_messages",
        "on_close",
        "_pending",
        "_pending_size",
        "_pings",
        "_read_buffer",
        "_reading_paused",
        "_send_busy",
        "_write_handle",
        "_writing_paused",
        "crossing",
        "_facade",
        "id",
        "latency",
        "loop",
        "protocol",
        "remote_address",
        "request",
        "response",
        "route",
        "rooms_joined",
        "settings",
        "transport",
        "_waiter",
    )

    def __init__(
        self,
        protocol: SansIOProtocol,
        settings: Settings,
        loop: asyncio.AbstractEventLoop,
        *,
        request: Request | None = None,
        route: Route | None = None,
        conn_id: int = 0,
        on_close: Callable[[Connection], None] | None = None,
    ) -> None:
        self.protocol = protocol
        self.settings = settings
        self.loop = loop
        self.crossing = crossing_for(loop)  # how other threads reach this connection
        self._read_buffer = read_buffer_for(loop)
        self.request = request
        self.response: Any = None  # the 101 of a client connection
        self._handshake: asyncio.Future[Any] | None = None  # a client's pending handshake
        self.route = route
        self.id = conn_id
        self._facade: Any = None  # the sync facade over this connection, if any
        self.rooms_joined: set[str] | None = None
        self.remote_address: Any = None
        self.latency = 0.0
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        self.on_close = on_close
        self._consumer: Consumer | None = None
        self._messages: list[str | bytes] | None = None
        self._waiter: asyncio.Future[str | bytes] | None = None
        self._assembler: Assembler | None = None  # a fragmented message arriving
        self._fast_frames: bool | None = (
            None  # whether _read_whole_frames may run; None: not known yet
        )
        self._pings: dict[bytes, tuple[PongWaiter | None, float]] | None = None
        self._ka_handle: asyncio.TimerHandle | None = None
        self._ka_ping: bytes | None = None
        self._close_handle: asyncio.TimerHandle | None = None
        self._write_handle: asyncio.TimerHandle | None = None
        self._reading_paused = False  # too many messages wait for the consumer
        self._control_held = False  # the peer does not read the pongs it asks for
        self._writing_paused = False
        self._drain_waiters: list[asyncio.Future[None]] | None = None
        # Broadcast frames held back while the transport is paused; b"" = end of stream.
        # Also the 101 while ``_head_held`` (see ``attach``).
        self._pending: deque[bytes] | None = None
        self._pending_size = 0
        self._head_held = False
        self._send_busy: asyncio.Future[None] | None = None
        self._failed = False
        self._lost = False
        self._lost_waiter: asyncio.Future[None] | None = None

    # Wiring -----------------------------------------------------------------

    def attach(
        self, transport: asyncio.Transport, head: bytes = b"", trailing: bytes = b""
    ) -> None:
        """Take over ``transport``: write ``head`` (the 101), then feed ``trailing``."""
        self.transport = transport
        self.remote_address = transport.get_extra_info("peername")
        transport.set_write_buffer_limits(self.settings.write_limit, self.settings.write_limit // 4)
        transport.set_protocol(self)
        if head:
            pass_end = pass_end_for(self.loop)
            if pass_end is not None and pass_end.crowded:
                # On a busy loop of ours, held until the pass ends, to leave with the
                # pass's other 101s: written at once, between the pass's requests,
                # each 101 woke a client that had gone back to waiting, and on this
                # machine a wake-up's inter-processor interrupt cost the server about
                # 10 µs of kernel time (5% of a handshake; `websockets`' server answers
                # from tasks, so its answers leave together). Any other write releases
                # it first. A pass with nothing else to do writes it at once: the
                # client reads it while the server finishes the connection's set-up.
                self._hold(head)
                self._head_held = True
                pass_end.callbacks.append(self._write_held)
            else:
                transport.write(head)
        self.start_keepalive()
        transport.resume_reading()
        if trailing:
            self.data_received(trailing)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Only client connections come here; server ones are attached after the 101.
        self.transport = cast(asyncio.Transport, transport)
        self.remote_address = transport.get_extra_info("peername")
        self.transport.set_write_buffer_limits(
            self.settings.write_limit, self.settings.write_limit // 4
        )

    def set_consumer(self, consumer: Consumer) -> None:
        """Deliver messages to ``consumer`` instead of the async API's queue.

        Messages already queued move to it, in order.
        """
        queued, self._messages = self._messages, None
        for message in queued or ():
            consumer.put(message)
        if self._lost:
            consumer.close()  # and not kept: see connection_lost
        else:
            self._consumer = consumer

    def expect_handshake(self) -> asyncio.Future[Any]:
        """A client connection: the future of the server's handshake response."""
        self._handshake = self.loop.create_future()
        return self._handshake

    # Reading ----------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._read_buffer[:nbytes])  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        protocol = self.protocol
        fast = self._fast_frames
        if fast is None:
            fast = self._fast_frames = _fast_frames_for(protocol)
        if (
            fast
            and protocol.current_size is None
            and not protocol.reader.buffer
            and protocol.state is OPEN
            and not self._failed
        ):
            data = self._read_whole_frames(data)
            if not data:
                return
        protocol.receive_data(data)
        events = protocol.events_received()
        if protocol.writes:  # pongs, close replies: usually nothing
            self.flush()
            if self._writing_paused:
                self._hold_reading()
        if protocol.state is OPEN:  # the hot path
            for event in events:
                self._process(event)
            return
        if self._close_handle is None and protocol.close_expected():
            self._arm_close_timer()
        for event in events:
            self._process(event)
        if protocol.state is CONNECTING and protocol.handshake_exc is not None:
            # A client's handshake failed on an answer that is no HTTP response:
            # no response event will come, and waiting for the server to close
            # would only delay the error until close_timeout.
            self.abort()

    def _read_whole_frames(self, data: Any) -> Any:
        """Deliver the whole data frames at the start of ``data``; return the rest.

        The fast path of the receive side (``EMBEDWS_FAST_FRAMES``): most
        frames are a whole text or binary message of under 64 KiB, with no
        extension. For those the ``websockets`` parser (a generator reading
        through a buffer, a frame object, the protocol's bookkeeping) costs
        about 30% of a small echo's server CPU (``bench/echo.py``, 16 B at 50
        connections: 81,000 -> 58,000 instructions per message). Here such a
        frame is read in place and unmasked by ``websockets``' own
        ``apply_mask``; anything else (a control frame, a fragment, RSV bits,
        a 64-bit length, a frame over ``max_size``, a frame cut by the end of
        ``data``) stops the loop, and the rest goes to the Sans-I/O layer,
        which then sees the stream exactly where the last whole frame ended.

        Only used when the protocol holds no state these frames could change:
        no partial frame in its reader, no fragmented message, open, no
        extension, no debug logging (it logs each frame). A whole data frame
        changes nothing in the protocol (``recv_frame`` only tracks
        fragments), so skipping it keeps the protocol's state what parsing it
        would have made it. Tested against the Sans-I/O layer on the same
        bytes (``tests/test_fast_frames.py``) and by the Autobahn run.
        """
        protocol = self.protocol
        limit = protocol.max_message_size
        fragment_limit = protocol.max_fragment_size
        if fragment_limit is not None and (limit is None or fragment_limit < limit):
            limit = fragment_limit
        masked = protocol.side is SERVER  # frames from a client are masked, from a server not
        mask_bit = 0x80 if masked else 0
        size = len(data)
        pos = 0
        while size - pos >= 2:
            first = data[pos]
            second = data[pos + 1]
            # FIN set, RSV clear, text (1) or binary (2); the mask bit as the side wants it.
            if first not in _WHOLE_DATA_FRAME or second & 0x80 != mask_bit:
                break
            length = second & 0x7F
            head = pos + 2
            if length == 126:
                if size - head < 2:
                    break
                length = (data[head] << 8) | data[head + 1]
                head += 2
            elif length == 127:
                break
            start = head + 4 if masked else head
            end = start + length
            if end > size or (limit is not None and length > limit):
                break
            if masked:
                payload = apply_mask(data[start:end], data[head:start])
            else:
                payload = bytes(data[start:end])
            pos = end
            if first == 0x81:
                try:
                    text = payload.decode()
                except UnicodeDecodeError as exc:
                    self._invalid_utf8(InvalidUTF8(exc.reason))
                    break
                self._deliver(text)
            else:
                self._deliver(payload)
            if self._failed:
                break
        return data[pos:]

    def eof_received(self) -> bool | None:
        self.protocol.receive_eof()
        self.protocol.events_received()
        self.flush()
        return None  # let the transport close: the websocket never writes after EOF

    def _process(self, event: Any) -> None:
        if type(event) is not Frame:
            handshake = self._handshake
            if handshake is not None and not handshake.done():
                handshake.set_result(event)  # a client's handshake response
            return
        if self._failed:
            return
        opcode = event.opcode
        data: Any = event.data  # bytes or bytearray: never a memoryview when receiving
        # Whole messages (the usual case) here; fragmented ones in an Assembler.
        if opcode is TEXT:
            if event.fin:
                try:
                    text = data.decode()
                except UnicodeDecodeError as exc:
                    self._invalid_utf8(InvalidUTF8(exc.reason))
                else:
                    self._deliver(text)
            else:
                self._assembler = Assembler(is_text=True)
                self._add_fragment(data, False)
        elif opcode is BINARY:
            if event.fin:
                self._deliver(data if type(data) is bytes else bytes(data))
            else:
                self._assembler = Assembler(is_text=False)
                self._add_fragment(data, False)
        elif opcode is CONT:
            self._add_fragment(data, event.fin)
        elif opcode is PONG:
            self._acknowledge(bytes(data))
        elif opcode is CLOSE:
            # A close frame may interrupt a fragmented message (RFC 6455 §5.4):
            # the partial message is dropped and the close answered normally.
            self._assembler = None

    def _add_fragment(self, data: bytes | bytearray, fin: bool) -> None:
        assembler = self._assembler
        assert assembler is not None  # the Sans-I/O layer checks the frames' order
        try:
            message = assembler.add(data, fin)
        except InvalidUTF8 as exc:
            self._invalid_utf8(exc)
            return
        if message is not None:
            self._assembler = None
            self._deliver(message)

    def _invalid_utf8(self, exc: InvalidUTF8) -> None:
        self._assembler = None
        self.fail(1007, str(exc))

    def _deliver(self, message: str | bytes) -> None:
        consumer = self._consumer
        if consumer is None:
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(message)
                return
            queue = self._messages
            if queue is None:
                queue = self._messages = []
            queue.append(message)
            queued = len(queue)
        else:
            queued = consumer.put(message)
        if queued >= self.settings.max_queue and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
            # A consumer on another thread may have drained the queue before
            # the flag was set; it would then never ask to resume.
            if consumer is not None:
                self.resume_reading_if_drained(consumer.pending())

    def resume_reading_if_drained(self, queued: int) -> None:
        """Resume reading once ``queued`` fell to the low-water mark (a quarter)."""
        if self._reading_paused and queued <= self.settings.max_queue // 4 and not self._lost:
            self._reading_paused = False
            if not self._control_held:
                self.transport.resume_reading()

    def _hold_reading(self) -> None:
        """Stop reading from a peer that asks for answers it does not read.

        Pongs and close replies are written for the peer when it asks (a
        ping), not when someone sends: nothing else bounds them. A peer that
        floods pings and never reads would grow our write buffer by a pong
        per ping until the write timeout. So the answers owed to a peer whose
        buffer is already above its limit count against that limit like any
        send: reading stops until the buffer drains (``resume_writing``),
        and the write timeout drops a peer that never reads.
        """
        if not self._control_held:
            self._control_held = True
            if not self._reading_paused:
                self.transport.pause_reading()

    def backlog(self) -> int:
        """Bytes waiting to be sent to the peer."""
        return self.transport.get_write_buffer_size() + self._pending_size

    def over_backlog(self) -> bool:
        """Whether more than ``max_backlog`` bytes wait to be sent to the peer.

        Sends wait for the peer (backpressure at ``write_limit``); broadcasts
        do not, so a reader that falls that far behind is dropped instead.
        """
        return self.backlog() > self.settings.max_backlog

    def drop_for_backlog(self) -> None:
        """Drop a peer that is ``max_backlog`` behind: 1011, no closing handshake."""
        logger.warning(
            "dropping %s: %d bytes wait to be sent to it (WEBSOCKET_MAX_BACKLOG is %d)",
            self.remote_address,
            self.backlog(),
            self.settings.max_backlog,
        )
        self.fail(1011, "send buffer overflow")
        self.abort()

    # Writing ----------------------------------------------------------------

    def flush(self) -> None:
        """Write what the protocol has to send (frames, or the end of the stream)."""
        if self._head_held:
            self._write_held()
        transport = self.transport
        for data in self.protocol.data_to_send():
            if self._pending is not None:  # behind the broadcasts held back
                self._hold(data)
            elif data:
                transport.write(data)
            else:
                self._end_stream()

    def _end_stream(self) -> None:
        transport = self.transport
        if transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError:  # the peer is gone already
                pass
        else:  # TLS cannot half-close
            transport.close()

    def _hold(self, data: bytes) -> None:
        pending = self._pending
        if pending is None:
            pending = self._pending = deque()
        pending.append(data)
        self._pending_size += len(data)

    def _write_held(self) -> None:
        """Write the 101 that ``attach`` held back; at the latest before any other write."""
        if self._head_held:
            self._head_held = False
            self._write_pending()

    def _write_pending(self) -> None:
        """Move held-back frames into the transport until it pauses again.

        Called when the transport has drained (``resume_writing``); the
        transport's own buffer takes more only while below its limit.
        """
        pending = self._pending
        transport = self.transport
        while pending and not self._writing_paused and not self._lost:
            data = pending.popleft()
            self._pending_size -= len(data)
            if data:
                transport.write(data)  # may call pause_writing
            else:
                self._end_stream()
        if not pending:
            # Only now: a sync sender that sees no pending frames writes after them.
            self._pending = None

    def write_message(self, is_text: bool, payload: bytes | Fragments) -> None:
        """Write one message, whole, now.

        Raises:
            WebsocketClosed: the connection is not open.
        """
        # A transport that is closing (its socket failed; connection_lost is
        # on its way) would drop the bytes and log a warning for each write.
        protocol = self.protocol
        if protocol.state is not OPEN or self._failed or self.transport.is_closing():
            raise self.close_exc()
        if (
            type(payload) is bytes
            and not protocol.extensions
            and not protocol.expect_continuation_frame
            and not protocol.writes
            and not protocol.debug
        ):
            # A whole message without extensions (the usual case): the bytes
            # send_text/send_binary would queue, serialized by the same
            # Frame.serialize, written without the queue's round trip. It is
            # what the protocol does, minus its bookkeeping, which a whole
            # frame does not change (bench/echo.py: about 8% of the CPU of a
            # small echo; Autobahn runs both paths).
            frame = Frame(TEXT if is_text else BINARY, payload).serialize(
                mask=protocol.side is CLIENT
            )
            if self._head_held:
                self._write_held()
            if self._pending is None:
                self.transport.write(frame)
            else:
                self._hold(frame)
            return
        self.frame_message(is_text, payload)
        self.flush()

    def frame_message(self, is_text: bool, payload: bytes | Fragments) -> None:
        """Queue one message's frames in the protocol (the caller sends them).

        Thread contract: on the loop, or under a lock shared with the loop's writes.
        """
        protocol = self.protocol
        if isinstance(payload, Fragments):
            if not payload:
                return
            first = protocol.send_text if is_text else protocol.send_binary
            first(payload[0], fin=len(payload) == 1)
            for index in range(1, len(payload)):
                protocol.send_continuation(payload[index], fin=index == len(payload) - 1)
        elif is_text:
            protocol.send_text(payload)
        else:
            protocol.send_binary(payload)

    def write_fragment(self, is_text: bool, data: bytes, *, fin: bool) -> None:
        """Write one frame of a fragmented message (the caller checked it is open)."""
        protocol = self.protocol
        if protocol.expect_continuation_frame:
            protocol.send_continuation(data, fin=fin)
        elif is_text:
            protocol.send_text(data, fin=fin)
        else:
            protocol.send_binary(data, fin=fin)
        self.flush()

    def write_frames(self, frames: list[bytes]) -> None:
        """Write frames serialized elsewhere (a broadcast's, shared by its recipients).

        While the transport is paused, the frames wait in ``_pending`` as
        references to the shared bytes instead of being appended to the
        transport's buffer: on Python 3.11 that buffer is a ``bytearray``, so
        a burst of large broadcasts to readers that are behind would cost a
        copy per recipient (1,000 recipients of 20 MiB: 20 GB instead of
        20 MiB). Later writes of any kind queue behind them, in order.
        """
        if self._head_held:
            self._write_held()
        transport = self.transport
        for frame in frames:
            if self._pending is None and not self._writing_paused:
                transport.write(frame)  # may pause writing
            else:
                self._hold(frame)

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self._write_handle is None:
            self._write_handle = self.loop.call_later(
                self.settings.write_timeout, self._write_timed_out
            )
        if self._consumer is not None:
            self._consumer.set_writable(False)

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._write_handle is not None:
            self._write_handle.cancel()
            self._write_handle = None
        if self._pending is not None:
            self._write_pending()
            if self._writing_paused:
                return  # still behind (the peer reads, so the write timer restarted)
        if self._control_held:
            self._control_held = False
            if not self._reading_paused and not self._lost:
                self.transport.resume_reading()
        self._wake_drain_waiters(None)
        if self._consumer is not None:
            self._consumer.set_writable(True)

    @property
    def writing_paused(self) -> bool:
        return self._writing_paused

    async def drain(self) -> None:
        """Wait until the write buffer is below its limit.

        Raises:
            WebsocketClosed: the connection closed first.
        """
        if not self._writing_paused:
            return
        waiter: asyncio.Future[None] = self.loop.create_future()
        if self._drain_waiters is None:
            self._drain_waiters = []
        self._drain_waiters.append(waiter)
        await waiter

    def _wake_drain_waiters(self, exc: BaseException | None) -> None:
        waiters, self._drain_waiters = self._drain_waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                if exc is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(exc)

    def _write_timed_out(self) -> None:
        self._write_handle = None
        if self._lost:
            return
        logger.warning(
            "peer %s stopped reading for %.3g s; closing the connection with 1011",
            self.remote_address,
            self.settings.write_timeout,
        )
        self.fail(1011, "write timeout")
        # The peer does not read: the close frame would never reach it.
        self.transport.abort()

    # Pings ------------------------------------------------------------------

    def send_ping(self, data: bytes | None, waiter: PongWaiter | None) -> bytes:
        """Send a ping; ``waiter`` gets the latency when its pong arrives.

        Raises:
            WebsocketClosed: the connection is closing or closed.
            ConcurrencyError: a ping with the same payload awaits its pong.
        """
        protocol = self.protocol
        if protocol.state is not OPEN or self._failed:
            raise self.close_exc()
        pings = self._pings
        if pings is None:
            pings = self._pings = {}
        if data is None:
            data = os.urandom(4)
            while data in pings:
                data = os.urandom(4)
        elif data in pings:
            raise ConcurrencyError("a ping with the same payload is waiting for its pong")
        # time.monotonic, not loop.time: uvloop's clock ticks in milliseconds
        # (a loopback round trip measured 0.0 there).
        pings[data] = (waiter, time.monotonic())
        protocol.send_ping(data)
        self.flush()
        return data

    def send_pong(self, data: bytes) -> None:
        if self.protocol.state is not OPEN or self._failed:
            raise self.close_exc()
        self.protocol.send_pong(data)
        self.flush()

    def _acknowledge(self, data: bytes) -> None:
        pings = self._pings
        if not pings or data not in pings:
            return  # unsolicited pong
        now = time.monotonic()
        acknowledged = []
        for ping_data, (waiter, sent_at) in pings.items():
            acknowledged.append(ping_data)
            latency = now - sent_at
            if waiter is not None and not waiter.done():
                waiter.set_result(latency)
            if ping_data == self._ka_ping:
                self._ka_ping = None
                self._schedule_keepalive(latency)
            if ping_data == data:
                self.latency = latency
                break
        for ping_data in acknowledged:
            del pings[ping_data]

    def start_keepalive(self) -> None:
        if self.settings.ping_interval is not None:
            self._schedule_keepalive(0.0)

    def _schedule_keepalive(self, latency: float) -> None:
        if self._ka_handle is not None:
            self._ka_handle.cancel()
        interval = self.settings.ping_interval
        if interval is None or self._lost:
            self._ka_handle = None
            return
        self._ka_handle = self.loop.call_later(max(interval - latency, 0.0), self._keepalive)

    def _keepalive(self) -> None:
        self._ka_handle = None
        if self.protocol.state is not OPEN or self._failed:
            return
        self._ka_ping = self.send_ping(None, None)
        timeout = self.settings.ping_timeout
        if timeout is None:
            self._ka_ping = None
            self._schedule_keepalive(0.0)
        else:
            self._ka_handle = self.loop.call_later(timeout, self._keepalive_timed_out)

    def _keepalive_timed_out(self) -> None:
        self._ka_handle = None
        logger.info("no pong from %s in time; closing with 1011", self.remote_address)
        self.fail(1011, "keepalive ping timeout")

    # Closing ----------------------------------------------------------------

    def start_close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; does not wait for it."""
        protocol = self.protocol
        if protocol.state is OPEN and not self._failed:
            protocol.send_close(code, reason)
            self.flush()
            self._arm_close_timer()
        elif protocol.state is CONNECTING and not self._lost:
            self.transport.abort()

    def fail(self, code: int, reason: str = "") -> None:
        """Fail the connection: send a close frame if still open, then close TCP."""
        if self._lost:
            return
        self._failed = True
        self._assembler = None
        self.protocol.fail(code, reason)
        self.flush()
        self._arm_close_timer()

    def abort(self) -> None:
        """Drop the TCP connection now, without a closing handshake."""
        if not self._lost and self.transport is not None:
            self.transport.abort()

    def _arm_close_timer(self) -> None:
        if self._close_handle is None and not self._lost:
            self._close_handle = self.loop.call_later(
                self.settings.close_timeout, self._close_timed_out
            )

    def _close_timed_out(self) -> None:
        self._close_handle = None
        if not self._lost:
            logger.debug("closing handshake with %s timed out; aborting", self.remote_address)
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        protocol = self.protocol
        protocol.receive_eof()  # idempotent; moves the protocol to CLOSED
        if protocol.state is not CLOSED:  # pragma: no cover - defensive
            protocol.state = CLOSED
        if exc is not None:
            logger.debug("connection to %s lost: %r", self.remote_address, exc)
        for handle in (self._ka_handle, self._close_handle, self._write_handle):
            if handle is not None:
                handle.cancel()
        self._ka_handle = self._close_handle = self._write_handle = None
        self._pending, self._pending_size = None, 0
        consumer = self._consumer
        if consumer is not None:
            consumer.close()
        # The exception is made for whoever waits: most connections have nobody.
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(self.close_exc())
        pings, self._pings = self._pings, None
        if pings:
            closed = self.close_exc()
            for pong_waiter, _ in pings.values():
                if pong_waiter is not None and not pong_waiter.done():
                    pong_waiter.set_exception(closed)
                    if isinstance(pong_waiter, asyncio.Future):
                        # nobody may await it; don't log "exception never retrieved"
                        pong_waiter.exception()
        if self._drain_waiters:
            self._wake_drain_waiters(self.close_exc())
        if self._lost_waiter is not None and not self._lost_waiter.done():
            self._lost_waiter.set_result(None)
        handshake = self._handshake
        if handshake is not None and not handshake.done():
            handshake.set_exception(ConnectionResetError("connection closed during the handshake"))
        if self.on_close is not None:
            self.on_close(self)  # out of the registry: nobody looks the facade up any more
        # The facade and the inbox point back at this connection. Dropping these ends
        # leaves no reference cycle, so a closed connection is freed by reference
        # counting: the cyclic GC, which 30 objects left per connection made run
        # every 20 handshakes, has nothing to collect (a handshake's CPU time
        # included about 7% of collections).
        self._consumer = None
        self._facade = None
        release_transport(self.transport)

    @property
    def facade(self) -> Any:
        """What handlers and ``app.connections`` see: this websocket, or its sync facade.

        Thread contract: the registry reads it under its lock (a closed
        connection's is dropped after it left the registry).
        """
        facade = self._facade
        return self if facade is None else facade

    @facade.setter
    def facade(self, facade: Any) -> None:
        if not self._lost:  # see connection_lost
            self._facade = facade

    def close_exc(self) -> WebsocketClosed:
        """The exception that tells users the connection is closed."""
        protocol = self.protocol
        received, sent = protocol.close_rcvd, protocol.close_sent
        return WebsocketClosed.make(
            received.code if received is not None else 1006,
            received.reason if received is not None else "",
            sent.code if sent is not None else None,
            sent.reason if sent is not None else "",
        )

    async def wait_lost(self) -> None:
        """Wait until the TCP connection is gone."""
        if self._lost:
            return
        if self._lost_waiter is None:
            self._lost_waiter = self.loop.create_future()
        await shield(self.loop, self._lost_waiter)

    @property
    def lost(self) -> bool:
        """True once the TCP connection is gone."""
        return self._lost

    @property
    def open(self) -> bool:
        """True while messages can be sent (no close frame sent or received)."""
        return self.protocol.state is OPEN and not self._failed

    @property
    def reading_paused(self) -> bool:
        """True while reading waits for the consumer to drain its queue."""
        return self._reading_paused

    # State ------------------------------------------------------------------

    def side_state(self, local: bool) -> State:
        """The state of this side (``local``) or of the peer."""
        if self._lost:
            return State.CLOSED
        protocol = self.protocol
        if protocol.state is CONNECTING:
            return State.CONNECTING
        sent = protocol.close_sent if local else protocol.close_rcvd
        return State.CLOSING if sent is not None else State.OPEN

    @property
    def close_code(self) -> int | None:
        received = self.protocol.close_rcvd
        if received is not None:
            return received.code
        return 1006 if self._lost else None

    @property
    def close_reason(self) -> str | None:
        received = self.protocol.close_rcvd
        if received is not None:
            return received.reason
        return "" if self._lost else None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id={self.id} {self.side_state(True).name}>"


class Websocket(Connection):
    """A websocket for ``async def`` handlers and the async client.

    Thread contract: use it on its event loop only. Other threads send through
    ``app.broadcast`` / rooms or the sync facade.
    """

    __slots__ = ()

    async def send(self, data: Any, encoding: str = "text") -> None:
        """Send one message.

        ``str`` → text; bytes-like → binary; ``dict``/``list``/``tuple`` or
        ``encoding="json"`` → JSON text; ``encoding="bytes"`` with ``str`` → UTF-8
        binary; another iterable or async iterable of str or bytes → one
        fragmented message. Waits while the peer is slow to read.

        Raises:
            WebsocketClosed: the connection is closed or closing.
            TypeError: ``data`` has a type that cannot be sent.
        """
        payload: bytes | Fragments
        if self._send_busy is None and type(data) is str and encoding == "text":
            is_text, payload = True, data.encode()  # the common case, without the dispatch
        else:
            while self._send_busy is not None:  # an async-iterable message is being sent
                await shield(self.loop, self._send_busy)
            if isinstance(data, AsyncIterable):
                await self._send_async_fragments(data)
                return
            is_text, payload = encode_message(data, encoding)
        try:
            self.write_message(is_text, payload)
        except WebsocketClosed:
            await self._wait_closed_then_raise()
        if self._writing_paused:
            await self.drain()

    async def _wait_closed_then_raise(self) -> None:
        # While closing, the close codes are not known yet: wait for them.
        await self.wait_lost()
        raise self.close_exc()

    async def _send_async_fragments(self, items: AsyncIterable[Any]) -> None:
        busy: asyncio.Future[None] = self.loop.create_future()
        self._send_busy = busy
        started = False
        try:
            is_text: bool | None = None
            pending: bytes | None = None
            async for item in items:
                item_is_text = fragment_payload(item)
                if is_text is None:
                    is_text = item_is_text
                elif item_is_text != is_text:
                    raise TypeError("a fragmented message mixes str and bytes fragments")
                if pending is not None:
                    started = True
                    await self._send_fragment(is_text, pending, fin=False)
                pending = item.encode() if item_is_text else bytes(item)
            if pending is not None:
                await self._send_fragment(bool(is_text), pending, fin=True)
        except BaseException:
            # Half a message is on the wire: the peer can only be told by a close.
            if started and not self._lost:
                self.fail(1011, "error while sending a fragmented message")
            raise
        finally:
            self._send_busy = None
            busy.set_result(None)

    async def _send_fragment(self, is_text: bool, data: bytes, *, fin: bool) -> None:
        if self.protocol.state is not OPEN or self._failed:
            await self._wait_closed_then_raise()
        self.write_fragment(is_text, data, fin=fin)
        if self._writing_paused:
            await self.drain()

    async def recv(self, timeout: float | None = None) -> str | bytes:
        """Receive the next message: ``str`` for text, ``bytes`` for binary.

        Args:
            timeout: seconds to wait; ``None`` waits until a message or the
                close; ``<= 0`` only returns a message already received.

        Raises:
            TimeoutError: no message came in time (nothing is lost).
            WebsocketClosed: the connection is closed.
            ConcurrencyError: another coroutine is in ``recv``.
        """
        queue = self._messages
        if queue:
            message = queue.pop(0)
            if self._reading_paused:
                self.resume_reading_if_drained(len(queue))
            return message
        if self._lost:
            raise self.close_exc()
        if self._waiter is not None:
            raise ConcurrencyError("another coroutine is already waiting in recv()")
        if timeout is not None and timeout <= 0:
            raise TimeoutError("no message received")
        waiter: asyncio.Future[str | bytes] = self.loop.create_future()
        self._waiter = waiter
        timer = None
        if timeout is not None:
            timer = self.loop.call_later(timeout, _expire, waiter)
        try:
            return await waiter
        finally:
            self._waiter = None
            # The future keeps the exception it raised here, whose traceback keeps this
            # frame: without its future, the frame is no cycle for the GC to find.
            del waiter
            if timer is not None:
                timer.cancel()

    def __aiter__(self) -> Websocket:
        return self

    async def __anext__(self) -> str | bytes:
        try:
            return await self.recv()
        except WebsocketClosed:
            raise StopAsyncIteration from None

    async def ping(self, data: str | bytes | None = None) -> Awaitable[float]:
        """Send a ping; ``await`` the result to get the round-trip latency in seconds.

        ``None`` sends 4 random bytes so that each pong matches its ping.

        Raises:
            WebsocketClosed: the connection is closed.
            ConcurrencyError: a ping with the same payload awaits its pong.
        """
        waiter: asyncio.Future[float] = self.loop.create_future()
        payload = data.encode() if isinstance(data, str) else data
        try:
            self.send_ping(bytes(payload) if payload is not None else None, waiter)
        except WebsocketClosed:
            await self._wait_closed_then_raise()
        return waiter

    async def pong(self, data: str | bytes = b"") -> None:
        """Send an unsolicited pong.

        Raises:
            WebsocketClosed: the connection is closed.
        """
        try:
            self.send_pong(data.encode() if isinstance(data, str) else bytes(data))
        except WebsocketClosed:
            await self._wait_closed_then_raise()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection and wait until the TCP connection is gone.

        Aborts the connection if the peer does not finish the closing handshake
        within ``WEBSOCKET_TIMEOUT``.
        """
        self.start_close(code, reason)
        await self.wait_lost()

    async def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait until the connection is closed; ``False`` if ``timeout`` passed first."""
        if self._lost:
            return True
        try:
            deadline = None if timeout is None else self.loop.time() + timeout
            async with timeout_at(self.loop, deadline):
                await self.wait_lost()
        except TimeoutError:
            return False
        return True

    @property
    def closed(self) -> bool:
        """True once the TCP connection is gone."""
        return self._lost

    @property
    def subprotocol(self) -> str | None:
        return self.protocol.subprotocol

    @property
    def server_state(self) -> State:
        """State of the server side: CLOSING once it sent a close frame."""
        return self.side_state(self.protocol.side is SERVER)

    @property
    def client_state(self) -> State:
        """State of the client side: CLOSING once it sent a close frame."""
        return self.side_state(self.protocol.side is not SERVER)

    @property
    def rooms(self) -> frozenset[str]:
        """Names of the rooms this websocket is in."""
        return frozenset(self.rooms_joined or ())


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("no message received in time"))
