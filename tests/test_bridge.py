"""The thread bridge's mechanisms, each on its own (issue 21; map: ``embedws/sync/bridge/``).

No server: a connection is the library's own class on one end of a
``socket.socketpair()``, attached to a loop that the test runs in a thread of its
own; the peer is the other end, its bytes built and parsed by the ``websockets``
Sans-I/O client. Every wait is on an event and bounded by ``WAIT``; the few
checks that something does *not* happen give it ``SETTLE`` to happen.

The calls below that run "on the loop" go through the loop's crossing, like every
call of the library does: a call made after another one from the same thread
runs after it, which is what the tests use to order their observations.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import gc
import hashlib
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVarTuple

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import OPEN
from websockets.uri import parse_uri

from embedws.aio.connection import Settings, protocol_logger
from embedws.aio.crossing import Crossing, LoopClosed, crossing_for
from embedws.aio.registry import write_to_all
from embedws.errors import ConnectionClosedOK, WebsocketClosed
from embedws.message import Fragments
from embedws.protocol import ServerProtocol
from embedws.switches import DIRECT_WRITES, WAKE_BATCH
from embedws.sync.bridge import DirectWriteConnection, Inbox, SendGate, run_on_loop
from embedws.sync.bridge.inbox import new_batching_loop, wake_batch_for
from embedws.sync.bridge.sends import send_from_thread

from .conftest import MS, LogWaiter

_Ts = TypeVarTuple("_Ts")

#: How long something that must happen may take.
WAIT = 5000 * MS
#: How long something that must not happen is given to happen.
SETTLE = 50 * MS

#: A message far larger than a tiny socket buffer: it can only be written in parts.
BIG = bytes(range(256)) * 1024
#: ``SO_SNDBUF`` for the tests of partial writes (the kernel's minimum is about this).
TINY_SNDBUF = 4096

needs_direct_writes = pytest.mark.skipif(
    not DIRECT_WRITES or os.name != "posix", reason="direct writes are off (EMBEDWS_DIRECT_WRITES)"
)
needs_wake_batch = pytest.mark.skipif(
    not WAKE_BATCH, reason="wake batching is off (EMBEDWS_WAKE_BATCH)"
)


def noop() -> None:
    pass


# The loop, the connection and its peer ------------------------------------------


class CountingLoop(asyncio.SelectorEventLoop):
    """A selector loop that counts how often other threads wake it up.

    Every wake-up of a loop from another thread is a ``call_soon_threadsafe``
    (a write to its self-pipe): this counts them, and changes nothing else.
    """

    def __init__(self) -> None:
        super().__init__()
        self.wakeups = 0

    def call_soon_threadsafe(
        self,
        callback: Callable[[*_Ts], object],
        *args: *_Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        self.wakeups += 1
        return super().call_soon_threadsafe(callback, *args, context=context)


class LoopInThread:
    """An event loop that runs in a thread of the test's own while the block lasts."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.crossing = crossing_for(loop)
        self.pairs: list[Pair] = []
        self._thread = threading.Thread(target=loop.run_forever, name="test-bridge-loop")

    def __enter__(self) -> LoopInThread:
        self._thread.start()
        self.call(noop)  # it runs
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            for pair in self.pairs:
                pair.close()
        finally:
            self.crossing.call(self.loop.stop)
            self._thread.join(WAIT)
            self.loop.close()

    @property
    def ident(self) -> int:
        assert self._thread.ident is not None
        return self._thread.ident

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the loop, through its crossing; return its result."""
        result: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                result.set_result(fn(*args))
            except BaseException as exc:
                result.set_exception(exc)

        self.crossing.call(run)
        return result.result(WAIT)

    def run(self, coro: Any) -> Any:
        """Run a coroutine on the loop and return its result."""
        return run_on_loop(self.loop, self.ident, coro, WAIT)

    @contextlib.contextmanager
    def held(self, *, by_crossing: bool = True) -> Iterator[None]:
        """Keep the loop thread busy in one callback while the block runs.

        The callback is a call through the crossing, or (``by_crossing=False``)
        a plain loop callback, which leaves the crossing idle.
        """
        entered, release = threading.Event(), threading.Event()

        def hold() -> None:
            entered.set()
            release.wait(WAIT)

        if by_crossing:
            self.crossing.call(hold)
        else:
            self.loop.call_soon_threadsafe(hold)
        assert entered.wait(WAIT), "the loop did not run the holding callback"
        try:
            yield
        finally:
            release.set()


class Peer:
    """The client's end of the socketpair: frames built and parsed by ``websockets``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.protocol = ClientProtocol(parse_uri("ws://peer/"), state=OPEN, max_size=None)

    def send_text(self, *texts: str, ping: bytes | None = None) -> None:
        """Send messages, then a ``ping`` if given, all in one write (read in one pass)."""
        for text in texts:
            self.protocol.send_text(text.encode())
        if ping is not None:
            self.protocol.send_ping(ping)
        self.flush()

    def send_ping(self, data: bytes) -> None:
        self.send_text(ping=data)

    def send_close(self, code: int, reason: str) -> None:
        self.protocol.send_close(code, reason)
        self.flush()

    def flush(self) -> None:
        """Send what the protocol has to send (also its answers: pongs, the close reply)."""
        self.sock.sendall(b"".join(self.protocol.data_to_send()))

    def frames(self, count: int | None) -> list[Frame]:
        """The next ``count`` frames (``None``: until the end of the stream)."""
        frames: list[Frame] = []
        deadline = time.monotonic() + WAIT
        while count is None or len(frames) < count:
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([self.sock], [], [], max(remaining, 0))
            if not readable:
                raise AssertionError(f"after {shown(frames)}, nothing more came in time")
            data = self.sock.recv(1 << 20)
            if data:
                self.protocol.receive_data(data)
            else:
                self.protocol.receive_eof()
            frames.extend(e for e in self.protocol.events_received() if isinstance(e, Frame))
            if self.protocol.parser_exc is not None:
                raise AssertionError(
                    f"the stream broke after {shown(frames)}: {self.protocol.parser_exc!r}"
                )
            if not data:
                break
        return frames

    def nothing_within(self, seconds: float) -> bool:
        """True if no byte arrives within ``seconds``."""
        readable, _, _ = select.select([self.sock], [], [], seconds)
        return not readable


class Pair:
    """A connection on a socketpair, wired as a thread-mode handler's websocket is.

    The connection is a :class:`DirectWriteConnection` attached to the loop like
    the server attaches one after the 101; its consumer is an :class:`Inbox`
    with its :class:`SendGate`, as ``sync.Websocket`` installs them.
    """

    def __init__(
        self,
        loop: LoopInThread,
        *,
        max_queue: int = 32,
        batch_wakes: bool = True,
        sndbuf: int | None = None,
    ) -> None:
        ours, theirs = socket.socketpair()
        if sndbuf is not None:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        settings = Settings(ping_interval=None, ping_timeout=None, max_queue=max_queue)
        self.loop = loop
        self.conn = DirectWriteConnection(
            ServerProtocol(state=OPEN, max_size=None, logger=protocol_logger),
            settings,
            loop.loop,
        )
        self.gate = SendGate(settings.write_limit)
        self.inbox = Inbox(self.conn, self.gate, batch_wakes=batch_wakes)
        self.peer = Peer(theirs)
        loop.pairs.append(self)
        loop.run(self._attach(ours))

    async def _attach(self, sock: socket.socket) -> None:
        transport, _ = await self.loop.loop.connect_accepted_socket(asyncio.Protocol, sock)
        self.conn.set_consumer(self.inbox)
        self.conn.attach(transport)

    def reading(self) -> tuple[bool, bool]:
        """(the connection's ``reading_paused``, its transport's ``is_reading()``), on the loop."""
        state: tuple[bool, bool] = self.loop.call(
            lambda: (self.conn.reading_paused, self.conn.transport.is_reading())
        )
        return state

    def write_buffer_size(self) -> int:
        return int(self.loop.call(self.conn.transport.get_write_buffer_size))

    def until_the_loop_waits(self) -> None:
        """Return once the loop thread waits for I/O, with nothing left to do.

        The loop's selector flushes its wake batch just before it waits: a
        message held there reaches this thread then. Rarely, this thread runs
        before the loop has gone on to wait; then it asks again.
        """
        wakes = wake_batch_for(self.loop.loop)
        assert wakes is not None
        for _ in range(100):
            self.loop.crossing.call(self.inbox.put, "probe")
            assert self.inbox.get(WAIT) == "probe"
            if wakes.waiting:
                return
        raise AssertionError("the loop never waited for I/O")

    def send(self, is_text: bool, payload: bytes | Fragments) -> None:
        """Send as ``sync.Websocket.send`` does from a thread (direct, else through the gate)."""
        assert send_from_thread(self.conn, self.conn, self.inbox, self.gate, is_text, payload)

    def close(self) -> None:
        if not self.conn.lost:
            self.loop.call(self.conn.abort)
            self.loop.run(self.conn.wait_lost())
        self.peer.sock.close()


def shown(frames: list[Frame]) -> list[tuple[str, object]]:
    """Frames as a failed assertion can show them: large payloads by size and digest."""
    result: list[tuple[str, object]] = []
    for frame in frames:
        data = bytes(frame.data)
        if frame.opcode is Opcode.CLOSE:
            close = Close.parse(data)
            result.append(("CLOSE", f"{close.code} {close.reason}"))
        elif len(data) > 64:
            digest = hashlib.sha256(data).hexdigest()[:16]
            result.append((frame.opcode.name, f"{len(data)} bytes, sha256 {digest}"))
        else:
            result.append((frame.opcode.name, data))
    return result


def text(data: bytes) -> Frame:
    return Frame(Opcode.TEXT, data)


def binary(data: bytes) -> Frame:
    return Frame(Opcode.BINARY, data)


def close_frame(code: int, reason: str) -> Frame:
    return Frame(Opcode.CLOSE, Close(code, reason).serialize())


@pytest.fixture
def loop() -> Iterator[LoopInThread]:
    """A loop of the kind the loop thread runs (its selector flushes a wake batch), running."""
    with LoopInThread(new_batching_loop()) as running:
        yield running


# Crossing: the one way into the loop --------------------------------------------


def test_calls_queued_while_a_run_is_scheduled_share_one_wake_up_and_run_in_order() -> None:
    counting = CountingLoop()
    with LoopInThread(counting) as lt:
        ran: list[int] = []
        done = threading.Event()
        with lt.held():
            before = counting.wakeups
            for index in range(10):
                lt.crossing.call(ran.append, index)
            lt.crossing.call(done.set)
            # The first call woke the loop; the others went with it.
            assert counting.wakeups == before + 1
            assert ran == []
        assert done.wait(WAIT)
        assert ran == list(range(10))
        # A call made once that run is over wakes the loop again.
        lt.call(noop)
        assert counting.wakeups == before + 2


def test_calls_from_each_thread_run_in_the_order_that_thread_made_them() -> None:
    with LoopInThread(asyncio.new_event_loop()) as lt:
        ran: list[tuple[str, int]] = []

        def calls(name: str) -> None:
            for index in range(2000):
                lt.crossing.call(ran.append, (name, index))

        threads = [threading.Thread(target=calls, args=(name,)) for name in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        lt.call(noop)  # after every call of both threads
    for name in ("a", "b"):
        assert [index for caller, index in ran if caller == name] == list(range(2000))


def test_a_call_made_during_a_run_waits_for_the_next_run_and_the_loop_runs_in_between() -> None:
    with LoopInThread(asyncio.new_event_loop()) as lt:
        order: list[str] = []
        running, queued = threading.Event(), threading.Event()

        def first() -> None:
            lt.loop.call_soon(order.append, "a loop callback")
            order.append("first call")
            running.set()
            queued.wait(WAIT)

        lt.crossing.call(first)
        assert running.wait(WAIT)
        lt.crossing.call(order.append, "a call made meanwhile")
        queued.set()
        lt.call(noop)
    # A thread that keeps calling cannot keep the loop in one run.
    assert order == ["first call", "a loop callback", "a call made meanwhile"]


def test_idle_is_false_while_a_call_is_queued_or_running_and_true_after() -> None:
    with LoopInThread(asyncio.new_event_loop()) as lt:
        crossing = lt.crossing
        assert crossing.idle()
        with lt.held(by_crossing=False):  # the loop is busy, not with a call of the crossing
            assert crossing.idle()
            crossing.call(noop)
            assert not crossing.idle()  # queued
        with lt.held():
            assert not crossing.idle()  # running
        after = threading.Event()
        # A loop callback scheduled by the last call runs once its run has returned.
        crossing.call(lt.loop.call_soon, after.set)
        assert after.wait(WAIT)
        assert crossing.idle()


def test_an_exception_in_one_call_is_logged_and_the_others_still_run(logs: LogWaiter) -> None:
    def fails() -> None:
        raise ValueError("the call failed")

    with LoopInThread(asyncio.new_event_loop()) as lt:
        ran: list[str] = []
        with lt.held():  # the three calls run in one run
            lt.crossing.call(ran.append, "before")
            lt.crossing.call(fails)
            lt.crossing.call(ran.append, "after")
        lt.call(noop)
    assert ran == ["before", "after"]
    record = logs.wait_for("error in a call from another thread", level=logging.ERROR)
    assert record.name == "embedws.loop"
    assert record.exc_info is not None
    assert "ValueError: the call failed" in logging.Formatter().formatException(record.exc_info)


def test_a_call_on_a_closed_loop_raises_loop_closed() -> None:
    loop = asyncio.new_event_loop()
    crossing = Crossing(loop)
    loop.close()
    for _ in range(2):  # a refused call leaves no run pending: the next one is refused too
        with pytest.raises(LoopClosed):
            crossing.call(noop)


def test_a_call_on_a_loop_that_is_gone_raises_loop_closed() -> None:
    loop = asyncio.new_event_loop()
    crossing = Crossing(loop)
    loop.close()
    del loop
    gc.collect()
    with pytest.raises(LoopClosed):
        crossing.call(noop)


def test_a_call_on_a_loop_that_closed_with_a_call_pending_raises_loop_closed() -> None:
    # A loop that stopped is one that does not run: as asyncio.run() or the loop
    # thread between their last pass and close(), where a thread's call can land.
    loop = asyncio.new_event_loop()
    crossing = Crossing(loop)
    crossing.call(noop)  # accepted: the loop is not closed yet
    loop.close()  # without running it
    with pytest.raises(LoopClosed):
        crossing.call(noop)


# SendGate: bytes in flight bound the senders --------------------------------------

LIMIT = 64 * 1024


class Sender:
    """A thread blocked in ``gate.acquire(size, timeout)``; ``done`` once it returned."""

    def __init__(self, gate: SendGate, size: int, timeout: float = 2 * WAIT) -> None:
        self.done = threading.Event()
        self.result: bool | None = None
        self._thread = threading.Thread(target=self._acquire, args=(gate, size, timeout))
        self._thread.start()

    def _acquire(self, gate: SendGate, size: int, timeout: float) -> None:
        self.result = gate.acquire(size, timeout)
        self.done.set()

    def join(self) -> None:
        self._thread.join(2 * WAIT)


def test_bytes_in_flight_block_a_second_sender_until_they_are_released() -> None:
    gate = SendGate(LIMIT)
    assert gate.acquire(LIMIT // 2, 0)
    assert gate.acquire(1000, 0)  # what still fits passes at once
    sender = Sender(gate, LIMIT // 2)
    assert not sender.done.wait(SETTLE)
    gate.release(1000)
    assert not sender.done.wait(SETTLE)  # still too much in flight
    gate.release(LIMIT // 2)
    assert sender.done.wait(WAIT)
    assert sender.result is True
    sender.join()


def test_a_message_larger_than_the_limit_passes_when_nothing_else_is_in_flight() -> None:
    gate = SendGate(LIMIT)
    assert gate.acquire(4 * LIMIT, 0)
    assert not gate.acquire(1, SETTLE)  # it fills the gate while in flight
    gate.release(4 * LIMIT)
    assert gate.acquire(1, 0)
    assert not gate.acquire(4 * LIMIT, SETTLE)  # and waits behind anything in flight


def test_a_paused_gate_blocks_senders_and_resuming_lets_them_go() -> None:
    gate = SendGate(LIMIT)
    gate.set_paused(True)
    assert not gate.acquire(1, 0)
    sender = Sender(gate, 1)
    assert not sender.done.wait(SETTLE)
    gate.set_paused(False)
    assert sender.done.wait(WAIT)
    assert sender.result is True
    sender.join()


def test_acquire_returns_false_after_its_timeout() -> None:
    gate = SendGate(LIMIT)
    gate.set_paused(True)
    started = time.monotonic()
    assert gate.acquire(1, 50 * MS) is False
    elapsed = time.monotonic() - started
    assert 50 * MS <= elapsed < WAIT


def test_closing_the_gate_releases_every_waiter_and_lets_every_later_sender_through() -> None:
    gate = SendGate(LIMIT)
    assert gate.acquire(LIMIT, 0)
    behind_bytes = Sender(gate, LIMIT)
    gate.set_paused(True)
    paused = [Sender(gate, 1) for _ in range(3)]
    for sender in [behind_bytes, *paused]:
        assert not sender.done.wait(SETTLE / 4)
    gate.close()
    for sender in [behind_bytes, *paused]:
        assert sender.done.wait(WAIT)
        assert sender.result is True  # their writes find the connection closed
        sender.join()
    assert gate.acquire(LIMIT, 0)


# Inbox: complete messages from the loop to the thread that reads ----------------


def test_messages_come_out_in_order_and_a_timeout_loses_nothing(loop: LoopInThread) -> None:
    pair = Pair(loop, batch_wakes=False)
    with pytest.raises(TimeoutError, match="no message received in time"):
        pair.inbox.get(SETTLE)
    with pytest.raises(TimeoutError):
        pair.inbox.get(0)
    messages = [f"message {index}" for index in range(100)]
    pair.peer.send_text(*messages)
    assert [pair.inbox.get(WAIT) for _ in messages] == messages
    with pytest.raises(TimeoutError):
        pair.inbox.get(SETTLE)
    pair.peer.send_text("after a timeout")
    assert pair.inbox.get(WAIT) == "after a timeout"
    # get(0) takes a message that is already there.
    pair.peer.send_text("waiting", ping=b"read")
    assert shown(pair.peer.frames(1)) == [("PONG", b"read")]
    loop.call(noop)  # the loop has finished the pass that read both
    assert pair.inbox.get(0) == "waiting"


def test_a_close_comes_after_the_messages_queued_before_it(loop: LoopInThread) -> None:
    pair = Pair(loop, batch_wakes=False)
    pair.peer.send_text("one", "two")
    pair.peer.send_close(1000, "bye")
    assert shown(pair.peer.frames(None)) == shown([close_frame(1000, "bye")])  # then the end
    pair.peer.sock.shutdown(socket.SHUT_WR)
    loop.run(pair.conn.wait_lost())
    assert pair.inbox.get(0) == "one"
    assert pair.inbox.get(0) == "two"
    for _ in range(2):  # and every later call
        with pytest.raises(ConnectionClosedOK) as closed:
            pair.inbox.get(0)
        assert (closed.value.code, closed.value.reason) == (1000, "bye")
        assert (closed.value.sent_code, closed.value.sent_reason) == (1000, "bye")


def test_a_close_wakes_a_blocked_reader_after_the_messages(loop: LoopInThread) -> None:
    pair = Pair(loop, batch_wakes=False)
    got: list[str | bytes] = []
    ended: list[BaseException] = []
    done = threading.Event()

    def reader() -> None:
        try:
            while True:
                got.append(pair.inbox.get(WAIT))
        except BaseException as exc:
            ended.append(exc)
        done.set()

    thread = threading.Thread(target=reader)
    thread.start()
    pair.peer.send_text("one", "two")
    pair.peer.send_close(1001, "going away")
    pair.peer.frames(None)
    pair.peer.sock.shutdown(socket.SHUT_WR)
    assert done.wait(WAIT)
    thread.join(WAIT)
    assert got == ["one", "two"]
    [exc] = ended
    assert isinstance(exc, ConnectionClosedOK)
    assert (exc.code, exc.reason) == (1001, "going away")


def test_reading_pauses_at_max_queue_and_the_reader_that_drains_to_a_quarter_resumes_it(
    loop: LoopInThread,
) -> None:
    pair = Pair(loop, max_queue=8, batch_wakes=False)
    peer, inbox = pair.peer, pair.inbox

    def read_by_loop(*texts: str) -> None:
        # The pong proves the loop read the messages sent with the ping (in one
        # write, so in one read); the state is asked for after that pass.
        peer.send_text(*texts, ping=b"after %d" % len(texts))
        assert shown(peer.frames(1)) == [("PONG", b"after %d" % len(texts))]

    read_by_loop(*(f"m{index}" for index in range(7)))
    assert pair.reading() == (False, True)
    read_by_loop("m7")
    assert pair.reading() == (True, False)  # paused: 8 wait
    peer.send_text("sent while paused", ping=b"paused")
    assert peer.nothing_within(SETTLE)  # not read: no pong
    assert [inbox.get(0) for _ in range(5)] == ["m0", "m1", "m2", "m3", "m4"]
    assert pair.reading() == (True, False)  # 3 wait: more than a quarter
    assert inbox.get(0) == "m5"  # 2 wait: this reader asks the loop to resume
    assert pair.reading() == (False, True)
    assert shown(peer.frames(1)) == [("PONG", b"paused")]
    assert [inbox.get(WAIT) for _ in range(3)] == ["m6", "m7", "sent while paused"]


# WakeBatch and FlushingSelector: handed over when the loop is about to wait ------


@needs_wake_batch
def test_messages_put_in_one_pass_reach_their_readers_only_when_the_pass_ends(
    loop: LoopInThread,
) -> None:
    first, second = Pair(loop), Pair(loop)
    in_the_pass, pass_may_end = threading.Event(), threading.Event()

    def one_pass() -> None:
        first.inbox.put("to the first")
        second.inbox.put("to the second")
        in_the_pass.set()
        pass_may_end.wait(WAIT)

    loop.crossing.call(one_pass)
    assert in_the_pass.wait(WAIT)
    with pytest.raises(TimeoutError):
        first.inbox.get(SETTLE)
    with pytest.raises(TimeoutError):
        second.inbox.get(0)
    pass_may_end.set()
    assert first.inbox.get(WAIT) == "to the first"
    assert second.inbox.get(WAIT) == "to the second"


@needs_wake_batch
def test_readers_woken_by_one_pass_are_crowded_and_one_woken_alone_is_not(
    loop: LoopInThread,
) -> None:
    pairs = [Pair(loop), Pair(loop)]
    with loop.held():
        for index, pair in enumerate(pairs):
            pair.peer.send_text(f"to reader {index}")
    # Both sockets are readable when the loop waits next: one pass reads both.
    woken: dict[int, tuple[str | bytes, bool]] = {}

    def reader(index: int) -> None:
        inbox = pairs[index].inbox
        woken[index] = (inbox.get(WAIT), inbox.crowded)

    threads = [threading.Thread(target=reader, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert woken == {0: ("to reader 0", True), 1: ("to reader 1", True)}
    # Alone in its pass, and with the loop idle after it: not crowded, and not
    # delayed (the loop waits for I/O with no timeout here).
    pairs[0].peer.send_text("alone")
    assert pairs[0].inbox.get(WAIT) == "alone"
    assert pairs[0].inbox.crowded is False


@needs_wake_batch
def test_a_close_in_the_same_pass_comes_after_the_messages_held_back(loop: LoopInThread) -> None:
    pair = Pair(loop)

    def one_pass() -> None:
        pair.inbox.put("last words")
        pair.inbox.close()

    loop.call(one_pass)
    assert pair.inbox.get(WAIT) == "last words"
    with pytest.raises(WebsocketClosed):
        pair.inbox.get(WAIT)


# Direct writes: the conditions that refuse the direct path -----------------------


@needs_direct_writes
def test_a_direct_write_goes_out_when_nothing_stands_in_its_way(loop: LoopInThread) -> None:
    pair = Pair(loop)
    pair.until_the_loop_waits()
    assert pair.conn.try_send(True, b"direct")
    assert shown(pair.peer.frames(1)) == shown([text(b"direct")])


@needs_direct_writes
def test_the_direct_path_is_refused_while_the_loop_is_not_waiting_for_io(
    loop: LoopInThread,
) -> None:
    pair = Pair(loop)
    with loop.held(by_crossing=False):  # busy, with the crossing idle
        assert loop.crossing.idle()
        assert not pair.conn.try_send(True, b"refused")
    pair.until_the_loop_waits()
    assert pair.conn.try_send(True, b"direct")
    assert shown(pair.peer.frames(1)) == shown([text(b"direct")])  # the refused one never went


@needs_direct_writes
def test_a_direct_write_never_overtakes_what_the_thread_handed_to_the_loop(
    loop: LoopInThread,
) -> None:
    pair = Pair(loop)
    # Back to back, the send often looks while the loop still waits, before it
    # has woken up to write the broadcast (it is not idle then): the broadcast
    # must go first. Often, not always: hence the rounds.
    for turn in range(30):
        pair.until_the_loop_waits()
        loop.crossing.call(write_to_all, [pair.conn], True, b"broadcast %d" % turn)
        pair.send(True, b"sent %d" % turn)
        assert shown(pair.peer.frames(2)) == shown(
            [text(b"broadcast %d" % turn), text(b"sent %d" % turn)]
        )


@needs_direct_writes
def test_the_direct_path_is_refused_while_the_transport_holds_unsent_bytes(
    loop: LoopInThread,
) -> None:
    pair = Pair(loop, sndbuf=TINY_SNDBUF)
    loop.call(pair.conn.write_message, False, BIG)  # the peer does not read yet
    assert pair.write_buffer_size() > 0
    pair.until_the_loop_waits()
    assert not pair.conn.try_send(True, b"refused")
    assert shown(pair.peer.frames(1)) == shown([binary(BIG)])
    assert pair.write_buffer_size() == 0
    pair.until_the_loop_waits()
    assert pair.conn.try_send(True, b"direct")
    assert shown(pair.peer.frames(1)) == shown([text(b"direct")])


@needs_direct_writes
def test_the_direct_path_is_refused_while_broadcast_frames_are_held_back(
    loop: LoopInThread,
) -> None:
    pair = Pair(loop, sndbuf=TINY_SNDBUF)
    loop.call(pair.conn.write_message, False, BIG)  # the transport pauses: above its limit
    loop.call(write_to_all, [pair.conn], True, b"held back")
    pair.until_the_loop_waits()
    assert not pair.conn.try_send(True, b"refused")
    assert shown(pair.peer.frames(2)) == shown([binary(BIG), text(b"held back")])
    pair.until_the_loop_waits()
    assert pair.conn.try_send(True, b"direct")
    assert shown(pair.peer.frames(1)) == shown([text(b"direct")])


@needs_direct_writes
def test_the_direct_path_is_refused_once_the_connection_is_closing_or_closed(
    loop: LoopInThread,
) -> None:
    pair = Pair(loop)
    loop.call(pair.conn.start_close, 1000, "bye")
    pair.until_the_loop_waits()
    assert not pair.conn.try_send(True, b"refused while closing")
    assert shown(pair.peer.frames(1)) == shown([close_frame(1000, "bye")])
    pair.peer.flush()  # the peer's close reply; the server then ends the stream
    assert pair.peer.frames(None) == []
    pair.peer.sock.shutdown(socket.SHUT_WR)
    loop.run(pair.conn.wait_lost())
    assert not pair.conn.try_send(True, b"refused once closed")


@needs_direct_writes
def test_no_direct_path_on_a_loop_that_does_not_say_when_it_waits() -> None:
    with LoopInThread(asyncio.new_event_loop()) as lt:
        pair = Pair(lt)
        lt.call(noop)
        assert not pair.conn.try_send(True, b"refused")
        pair.send(True, b"through the loop")
        assert shown(pair.peer.frames(1)) == shown([text(b"through the loop")])


# Direct writes in part: the rest goes first, whatever the loop writes next --------


@needs_direct_writes
def test_the_rest_of_a_partial_direct_write_is_written_before_anything_else(
    loop: LoopInThread,
) -> None:
    pair = Pair(loop, sndbuf=TINY_SNDBUF)
    pair.until_the_loop_waits()
    assert pair.conn.try_send(False, BIG)
    # Its rest is pending, or in the transport's buffer: no direct write now.
    assert not pair.conn.try_send(True, b"refused")
    # The thread wrote what the socket took; the loop holds the rest, unsent.
    assert 0 < pair.write_buffer_size() < len(BIG)
    pair.peer.send_ping(b"peer's ping")
    pair.until_the_loop_waits()  # it read the ping and answered
    loop.call(write_to_all, [pair.conn], True, b"broadcast")
    loop.call(pair.conn.send_ping, b"ping", None)
    loop.call(pair.conn.start_close, 1000, "bye")
    assert shown(pair.peer.frames(5)) == shown(
        [
            binary(BIG),
            Frame(Opcode.PONG, b"peer's ping"),
            text(b"broadcast"),
            Frame(Opcode.PING, b"ping"),
            close_frame(1000, "bye"),
        ]
    )


class FragmentsRead(Fragments):
    """A message that calls ``reading()`` when its first fragment is read.

    A direct write frames its message under the connection's write lock, after
    its checks and before it writes: the one moment another thread can reach
    the loop in the middle of a direct write, and this lets a test be there.
    """

    def __init__(self, parts: list[bytes], reading: Callable[[], None]) -> None:
        super().__init__(parts)
        self._reading: Callable[[], None] | None = reading

    def __getitem__(self, index: Any) -> Any:
        reading, self._reading = self._reading, None
        if reading is not None:
            reading()
        return super().__getitem__(index)


@needs_direct_writes
@pytest.mark.parametrize("loop_write", ["broadcast", "ping", "close"])
def test_a_loop_write_queued_during_a_partial_direct_write_lands_after_the_whole_message(
    loop: LoopInThread, loop_write: str
) -> None:
    pair = Pair(loop, sndbuf=TINY_SNDBUF)
    conn = pair.conn
    writes: dict[str, tuple[Callable[[], object], Frame]] = {
        "broadcast": (lambda: write_to_all([conn], True, b"broadcast"), text(b"broadcast")),
        "ping": (lambda: conn.send_ping(b"ping", None), Frame(Opcode.PING, b"ping")),
        "close": (lambda: conn.start_close(1000, "bye"), close_frame(1000, "bye")),
    }
    write, frame = writes[loop_write]
    # Queued before the direct write hands its rest to the loop: the loop runs
    # it first, and finds the rest waiting (it is blocked on the write lock
    # until the direct write is over).
    message = FragmentsRead([BIG], lambda: loop.crossing.call(write))
    pair.until_the_loop_waits()
    assert conn.try_send(False, message)
    assert shown(pair.peer.frames(2)) == shown([binary(BIG), frame])
