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
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar, cast

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MASK = b"\x37\xfa\x21\x3d"
# Close 1000, masked with MASK.
CLOSE_FRAME = bytes((0x88, 0x82)) + MASK + bytes((0x03 ^ MASK[0], 0xE8 ^ MASK[1]))
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
        self.transport.write(
            b"GET / HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (self.client.host_header, self.key)
        )

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
