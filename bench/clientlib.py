"""What the benchmarks' client processes share: command line, command channel, raw connections.

Imported by ``loadclient.py``, ``broadcast_client.py`` and ``client_worker.py``.
The benchmarks start those as scripts (``python bench/NAME.py``), so their own
folder, ``bench/``, is first on ``sys.path`` and ``import clientlib`` finds this
file whatever the working directory.

* The command line: ``--host``, ``--port``, ``--cpus`` and ``--loop``
  (:func:`arg_parser`, :func:`parse_args`, :func:`run`).
* The command channel: one JSON command per line on stdin, one JSON reply per
  line on stdout (:func:`serve_commands`, :func:`write_reply`).
* Raw websocket connections (no library): the opening handshake and the close
  (:class:`RawConnection`, :class:`RawClient`), for the load generators.
* Short-lived connections, one after the other, K at a time: open, close, open
  again (:func:`handshakes`), for ``handshake.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import errno
import hashlib
import json
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar, cast

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MASK = b"\x37\xfa\x21\x3d"
# Close 1000, masked with MASK.
CLOSE_FRAME = bytes((0x88, 0x82)) + MASK + bytes((0x03 ^ MASK[0], 0xE8 ^ MASK[1]))
# RFC 6455's example key: the handshake client reads the status line only, so a
# fresh key (and its SHA-1) per connection would be client work for nothing.
FIXED_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
LOOPS = ("auto", "asyncio", "uvloop")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
ConnT = TypeVar("ConnT", bound="RawConnection")


def text_payload(size: int) -> str:
    """``size`` characters of filler: what every echo message carries."""
    return ("abcdefghijklmnopqrstuvwxyz0123456789" * (size // 36 + 1))[:size]


# The command line ------------------------------------------------------------------


def arg_parser(
    description: str,
    *,
    loop_default: str = "auto",
    loop_help: str = "event loop of the client (auto: uvloop if installed: a cheaper client)",
) -> argparse.ArgumentParser:
    """``--host``, ``--port``, ``--cpus`` and ``--loop``: what every client process takes."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cpus", help="pin this process to these CPUs, e.g. '1'")
    parser.add_argument("--loop", choices=LOOPS, default=loop_default, help=loop_help)
    return parser


def parse_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The arguments; the process is then pinned to ``--cpus``, if given."""
    args = parser.parse_args()
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    return args


def run(main: Coroutine[Any, Any, None], loop: str) -> None:
    """Run ``main`` on asyncio or uvloop (``auto``: uvloop if it is installed)."""
    if loop == "asyncio":
        asyncio.run(main)
        return
    try:
        import uvloop
    except ImportError:
        if loop == "uvloop":
            raise
        asyncio.run(main)
        return
    uvloop.run(main)


def opening_request(host_header: bytes, key: bytes) -> bytes:
    """The client's opening handshake: ``GET /`` with ``Upgrade: websocket``."""
    return (
        b"GET / HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (host_header, key)
    )


# The command channel ---------------------------------------------------------------


def write_reply(reply: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()


async def serve_commands(
    handlers: dict[str, Handler], on_quit: Callable[[], Awaitable[Any]]
) -> None:
    """Answer each JSON command on stdin with ``handlers[cmd]``'s reply.

    ``quit``, or the end of stdin, awaits ``on_quit()`` and returns.
    """
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str] = asyncio.Queue()

    def read_stdin() -> None:
        # A thread: simpler than a pipe transport; it sleeps while the load runs.
        sys.setprofile(None)  # under client_worker --cprofile: its wait for commands is not work
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line)
        loop.call_soon_threadsafe(commands.put_nowait, '{"cmd": "quit"}')

    threading.Thread(target=read_stdin, daemon=True).start()
    while True:
        command = json.loads(await commands.get())
        name = command["cmd"]
        if name == "quit":
            await on_quit()
            return
        handler = handlers.get(name)
        if handler is None:
            write_reply({"error": f"unknown command {name!r}"})
        else:
            write_reply(await handler(command))


# Raw connections -------------------------------------------------------------------


class Errors:
    """What went wrong in one client process: errors (the first one kept), unexpected closes."""

    __slots__ = ("closed", "errors", "first_error")

    def __init__(self) -> None:
        self.errors = 0
        self.closed = 0
        self.first_error = ""

    def error(self, what: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = what


class RawConnection(asyncio.Protocol):
    """One websocket client connection without a library: its opening handshake and its end.

    Subclasses read what comes after the handshake; ``ready`` tells whether it succeeded.
    """

    def __init__(self, client: RawClient[Any]) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.key = base64.b64encode(os.urandom(16))
        self.is_open = False
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not isinstance: uvloop's transports do not subclass asyncio's.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(opening_request(self.client.host_header, self.key))

    def handshake_done(self, head: bytes) -> bool:
        """Whether the response ``head`` (up to its blank line) opened the connection."""
        accept = base64.b64encode(hashlib.sha1(self.key + GUID).digest())
        opened = head.startswith(b"HTTP/1.1 101") and accept in head
        if opened:
            self.is_open = True
        else:
            self.client.stats.error(f"handshake refused: {head[:80]!r}")
        if not self.ready.done():
            self.ready.set_result(opened)
        return opened

    def connection_lost(self, exc: Exception | None) -> None:
        client = self.client
        if not client.closing:
            client.stats.closed += 1
            client.stats.error(f"connection closed by the server: {exc!r}")
        if not self.ready.done():
            self.ready.set_result(False)
        client.conns.discard(self)


class RawClient(Generic[ConnT]):
    """The raw connections of one client process, opened and closed together."""

    stats: Errors

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.host_header = f"{host}:{port}".encode()
        self.conns: set[ConnT] = set()
        self.stats = Errors()
        self.closing = False

    def connection(self) -> ConnT:
        """A new connection of this client (the protocol factory)."""
        raise NotImplementedError

    async def check_open(self, conn: ConnT) -> bool:
        """After the handshake: whether ``conn`` is ready for the benchmark."""
        return True

    async def open(self, n: int, concurrency: int = 64) -> dict[str, Any]:
        """Open ``n`` more connections, ``concurrency`` at a time."""
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(concurrency)  # the servers' listen backlog is ~100
        failed = 0
        started = time.perf_counter()

        async def one() -> None:
            nonlocal failed
            async with gate:
                try:
                    _, conn = await loop.create_connection(self.connection, self.host, self.port)
                except OSError as exc:
                    failed += 1
                    self.stats.error(f"connect failed: {exc!r}")
                    return
                try:
                    opened = await asyncio.wait_for(asyncio.shield(conn.ready), 30)
                except TimeoutError:
                    opened = False
                    self.stats.error("handshake timed out")
                if not opened:
                    failed += 1
                    if conn.transport is not None:
                        conn.transport.abort()
                    return
                self.conns.add(conn)
                if not await self.check_open(conn):
                    failed += 1

        await asyncio.gather(*(one() for _ in range(n)))
        return {
            "open": len(self.conns),
            "failed": failed,
            "first_error": self.stats.first_error,
            "seconds": time.perf_counter() - started,
        }

    async def close(self, timeout: float = 10.0) -> dict[str, Any]:
        """Close every connection with a closing handshake (code 1000)."""
        self.closing = True
        conns = list(self.conns)
        for conn in conns:
            if conn.transport is not None:
                conn.transport.write(CLOSE_FRAME)
        deadline = time.perf_counter() + timeout
        while self.conns and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        aborted = len(self.conns)
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.sleep(0.05)
        self.conns.clear()
        self.closing = False
        return {"closed": len(conns), "aborted": aborted}

    def commands(self) -> dict[str, Handler]:
        """The commands this client takes besides ``open`` and ``close``."""
        return {}

    @classmethod
    def main(cls, description: str) -> None:
        """The process: parse the command line, then take commands on stdin until ``quit``."""
        args = parse_args(arg_parser(description))
        client = cls(args.host, args.port)
        handlers: dict[str, Handler] = {
            "open": lambda c: client.open(int(c["n"])),
            **client.commands(),
            "close": lambda c: client.close(),
        }
        run(serve_commands(handlers, lambda: client.close(timeout=5.0)), args.loop)


# Short-lived connections -----------------------------------------------------------

CLOSE_MODES = ("frame", "rst")
_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on with 0 s: close() sends an RST


class Cycles:
    """One ``handshake`` command: what to do, and what came of it."""

    __slots__ = (
        "active",
        "address",
        "close",
        "completed",
        "done",
        "errors",
        "latencies",
        "loop",
        "remaining",
        "request",
        "running",
    )

    def __init__(
        self, address: tuple[str, int], close: str, count: int, latency: bool, slots: int
    ) -> None:
        self.address = address
        self.request = opening_request(f"{address[0]}:{address[1]}".encode(), FIXED_KEY)
        self.close = close
        self.remaining = count or -1  # connections still to start; -1: until stop()
        self.running = True
        self.completed = 0  # connections opened and ended as asked, without error
        self.errors = Errors()
        self.latencies: list[int] | None = [] if latency else None
        self.active = slots  # dialers not yet stopped
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()

    def take(self) -> bool:
        """Whether to start one more connection."""
        if not self.running or self.remaining == 0:
            return False
        if self.remaining > 0:
            self.remaining -= 1
        return True

    def stop(self) -> None:
        self.running = False

    def retire(self) -> None:
        """One dialer has stopped."""
        self.active -= 1
        if self.active == 0 and not self.done.done():
            self.done.set_result(None)


class Dialer:
    """One of the K connections in flight of :func:`handshakes`: open, end, open the next.

    A plain non-blocking socket with the loop's reader and writer callbacks, not
    ``create_connection`` and a transport: about a third less client CPU per
    connection (the rest is mostly the kernel's), which keeps the server the
    bottleneck. The end is the
    client's: ``frame`` sends a close frame (1000), reads the server's close
    frame and waits for the server to close the TCP connection (RFC 6455 §7.1.1:
    the server closes first); ``rst`` resets the connection as soon as the 101
    is read (a client that dies or drops its socket).
    """

    __slots__ = ("cycles", "fd", "head", "opened", "rest", "sent_at", "sock")

    def __init__(self, cycles: Cycles) -> None:
        self.cycles = cycles
        self.sock: socket.socket | None = None
        self.fd = -1
        self.head = b""
        self.rest = b""  # what came after the response head: the server's close frame
        self.opened = False
        self.sent_at = 0

    def next(self) -> None:
        """Open the next connection, or stop if the command is done."""
        cycles = self.cycles
        if not cycles.take():
            cycles.retire()
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if cycles.close == "rst":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        err = sock.connect_ex(cycles.address)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            # Refused or out of ports: this dialer stops, the others go on, the reply says so.
            cycles.errors.error(f"connect failed: {os.strerror(err)}")
            cycles.retire()
            return
        self.sock, self.fd = sock, sock.fileno()
        self.head, self.rest, self.opened = b"", b"", False
        # On loopback the connection is usually established by the time
        # connect returns: send at once, and wait for writable only if not.
        try:
            self.send_request()
        except BlockingIOError:
            cycles.loop.add_writer(self.fd, self.connected)
        except OSError as exc:
            self.end(f"sending the request failed: {exc!r}")

    def connected(self) -> None:
        assert self.sock is not None
        self.cycles.loop.remove_writer(self.fd)
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.sock.close()
            self.sock = None
            self.cycles.errors.error(f"connect failed: {os.strerror(err)}")
            self.cycles.retire()
            return
        try:
            self.send_request()
        except OSError as exc:
            self.end(f"sending the request failed: {exc!r}")

    def send_request(self) -> None:
        assert self.sock is not None
        self.sent_at = time.perf_counter_ns()
        # A fresh socket's buffer takes these ~150 bytes whole.
        self.sock.send(self.cycles.request)
        self.cycles.loop.add_reader(self.fd, self.readable)

    def readable(self) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            self.end(f"connection lost: {exc!r}", closed=True)
            return
        if self.opened:
            if data:
                if len(self.rest) < 2:  # the first byte tells a close frame
                    self.rest += data
            elif self.rest.startswith(b"\x88"):
                self.end()  # the server's close frame, then its FIN
            else:
                self.end(f"no close frame from the server: {self.rest[:16]!r}", closed=True)
            return
        if not data:
            self.end("connection closed during the handshake", closed=True)
            return
        head = self.head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            self.head = head
            return
        if not head.startswith(b"HTTP/1.1 101 "):
            self.end(f"handshake refused: {head[:80]!r}")
            return
        cycles = self.cycles
        if cycles.latencies is not None:
            cycles.latencies.append(time.perf_counter_ns() - self.sent_at)
        if cycles.close == "rst":
            self.end()
            return
        self.opened = True
        self.rest = head[end + 4 :]
        try:
            self.sock.send(CLOSE_FRAME)
        except OSError as exc:
            self.end(f"sending the close frame failed: {exc!r}", closed=True)

    def end(self, error: str = "", *, closed: bool = False) -> None:
        """The connection is over (``error``: what went wrong); open the next one."""
        self.abort()
        cycles = self.cycles
        if error:
            cycles.errors.error(error)
            cycles.errors.closed += closed
        else:
            cycles.completed += 1
        self.next()

    def abort(self) -> None:
        """Close the socket now (an RST in ``rst`` mode), without opening another."""
        if self.sock is not None:
            self.cycles.loop.remove_reader(self.fd)
            self.cycles.loop.remove_writer(self.fd)
            self.sock.close()
            self.sock = None


async def handshakes(host: str, port: int, command: dict[str, Any]) -> dict[str, Any]:
    """The ``handshake`` command of ``loadclient.py``: open and end connections, K at a time.

    ``command``: ``inflight`` (K), ``close`` (one of CLOSE_MODES), ``latency``
    (keep each request-to-101 time), and either ``seconds`` (start connections
    for that long) or ``count`` (start exactly that many). Either way, the reply
    comes once every connection started has ended, so a measuring window around
    the command holds exactly the work of the handshakes it counts.
    """
    seconds = float(command.get("seconds", 0.0))
    count = int(command.get("count", 0))
    close = str(command.get("close", "frame"))
    if close not in CLOSE_MODES:
        raise ValueError(f"close must be one of {CLOSE_MODES}, not {close!r}")
    inflight = max(1, int(command.get("inflight", 1)))
    cycles = Cycles((host, port), close, count, bool(command.get("latency", False)), inflight)
    if not count and seconds > 0:
        cycles.loop.call_later(seconds, cycles.stop)
    elif not count:
        cycles.stop()  # nothing asked (this process's share of a small count)
    started = time.perf_counter()
    dialers = [Dialer(cycles) for _ in range(inflight)]
    for dialer in dialers:
        dialer.next()
    try:
        await asyncio.wait_for(asyncio.shield(cycles.done), seconds + 60)
    except TimeoutError:
        cycles.stop()
        for dialer in dialers:
            dialer.abort()
    elapsed = time.perf_counter() - started
    errors = cycles.errors
    reply: dict[str, Any] = {
        "handshakes": cycles.completed,
        "seconds": elapsed,
        "errors": errors.errors,
        "closed": errors.closed,
        "first_error": errors.first_error,
        "unfinished": cycles.active,
    }
    if cycles.latencies is not None:
        reply["latencies_ns"] = cycles.latencies
    return reply
