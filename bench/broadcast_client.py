"""Broadcast receivers: raw websocket client connections that only read.

Run by ``broadcast.py``, one or more processes per server:
``python bench/broadcast_client.py --port P``. Commands come one JSON object
per line on stdin and each gets one JSON line on stdout:

* ``{"cmd": "open", "n": N}``: open N more connections (the opening handshake);
* ``{"cmd": "collect", "first": S, "count": C, "timeout": T}``: wait (at most T
  seconds) until every connection has received the C broadcasts from sequence
  number S on, then answer, for each of them, how many connections received it
  and when the first and the last did (``time.time_ns()``), with the sender's
  timestamp from the message; forget them afterwards;
* ``{"cmd": "close"}`` (closing handshake on every connection), ``{"cmd": "quit"}``.

Frames are parsed just enough to find each message's sequence number and
timestamp (``broadcast_server.make_message``); the receive time is taken once
per ``data_received``, before any parsing, so a slow parse does not count as
latency.
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
from typing import Any, cast

from loadclient import _CLOSE_FRAME, _GUID

_TEXT, _BINARY, _CLOSE = 0x1, 0x2, 0x8


class Receiver(asyncio.Protocol):
    """One connection: the handshake, then every frame the server sends."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.key = base64.b64encode(os.urandom(16))
        self.buffer = b""
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

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        buf = self.buffer + data if self.buffer else data
        if not self.is_open:
            buf = self._handshake(buf)
            if not self.is_open:
                self.buffer = buf
                return
        size, pos = len(buf), 0
        while size - pos >= 2:
            length = buf[pos + 1] & 0x7F  # server frames are not masked
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            end = pos + head + length
            if end > size:
                break
            opcode = buf[pos] & 0x0F
            if opcode in (_TEXT, _BINARY):
                self.client.received(buf, pos + head, now)
            elif opcode == _CLOSE and not self.client.closing:
                self.client.error(f"close frame from the server: {buf[pos : pos + 16]!r}")
            pos = end
        self.buffer = buf[pos:] if pos < size else b""

    def _handshake(self, buf: bytes) -> bytes:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return buf
        head = buf[:end]
        accept = base64.b64encode(hashlib.sha1(self.key + _GUID).digest())
        if not head.startswith(b"HTTP/1.1 101") or accept not in head:
            self.client.error(f"handshake refused: {head[:80]!r}")
            if not self.ready.done():
                self.ready.set_result(False)
            return b""
        self.is_open = True
        if not self.ready.done():
            self.ready.set_result(True)
        return buf[end + 4 :]

    def connection_lost(self, exc: Exception | None) -> None:
        client = self.client
        if not client.closing:
            client.closed += 1
            client.error(f"connection closed by the server: {exc!r}")
        if not self.ready.done():
            self.ready.set_result(False)
        client.conns.discard(self)


class Client:
    """The connections of this process and what they received."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.host_header = f"{host}:{port}".encode()
        self.conns: set[Receiver] = set()
        # seq -> [receptions, first receive ns, last receive ns, sender's ns]
        self.records: dict[int, list[int]] = {}
        self.receptions = 0  # since the last collect
        self.errors = 0
        self.closed = 0
        self.first_error = ""
        self.closing = False

    def error(self, what: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = what

    def received(self, buf: bytes, start: int, now: int) -> None:
        self.receptions += 1
        try:
            seq = int(buf[start : start + 10])
        except ValueError:
            self.error(f"not a broadcast message: {buf[start : start + 32]!r}")
            return
        record = self.records.get(seq)
        if record is None:
            self.records[seq] = [1, now, now, int(buf[start + 11 : start + 30])]
        else:
            record[0] += 1
            record[2] = max(record[2], now)

    async def open(self, n: int, concurrency: int = 64) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(concurrency)  # the servers' listen backlog is ~100
        failed = 0
        started = time.perf_counter()

        async def one() -> None:
            nonlocal failed
            async with gate:
                try:
                    _, conn = await loop.create_connection(
                        lambda: Receiver(self), self.host, self.port
                    )
                except OSError as exc:
                    failed += 1
                    self.error(f"connect failed: {exc!r}")
                    return
                try:
                    opened = await asyncio.wait_for(asyncio.shield(conn.ready), 30)
                except TimeoutError:
                    opened = False
                    self.error("handshake timed out")
                if not opened:
                    failed += 1
                    if conn.transport is not None:
                        conn.transport.abort()
                    return
                self.conns.add(conn)

        await asyncio.gather(*(one() for _ in range(n)))
        return {
            "open": len(self.conns),
            "failed": failed,
            "first_error": self.first_error,
            "seconds": time.perf_counter() - started,
        }

    async def collect(self, first: int, count: int, timeout: float) -> dict[str, Any]:
        expected = count * len(self.conns)
        deadline = time.monotonic() + timeout
        # Polled, not signalled: the check costs nothing next to 1,000 receptions.
        while self.receptions < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        missing = [0, 0, 0, 0]
        records = [self.records.pop(seq, missing) for seq in range(first, first + count)]
        self.receptions = max(self.receptions - expected, 0)
        stray = len(self.records)  # messages outside the range: a mix-up
        self.records.clear()
        return {
            "connections": len(self.conns),
            "received": [r[0] for r in records],
            "first_ns": [r[1] for r in records],
            "last_ns": [r[2] for r in records],
            "sent_ns": [r[3] for r in records],
            "stray": stray,
            "errors": self.errors,
            "closed": self.closed,
            "first_error": self.first_error,
        }

    async def close(self, timeout: float = 10.0) -> dict[str, Any]:
        """Close every connection with a closing handshake (code 1000)."""
        self.closing = True
        conns = list(self.conns)
        for conn in conns:
            if conn.transport is not None:
                conn.transport.write(_CLOSE_FRAME)
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


async def serve_commands(client: Client) -> None:
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str] = asyncio.Queue()

    def read_stdin() -> None:
        # A thread: simpler than a pipe transport, and off the hot path.
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line)
        loop.call_soon_threadsafe(commands.put_nowait, '{"cmd": "quit"}')

    threading.Thread(target=read_stdin, daemon=True).start()
    while True:
        command = json.loads(await commands.get())
        name = command["cmd"]
        if name == "open":
            reply = await client.open(int(command["n"]))
        elif name == "collect":
            reply = await client.collect(
                int(command["first"]), int(command["count"]), float(command["timeout"])
            )
        elif name == "close":
            reply = await client.close()
        elif name == "quit":
            await client.close(timeout=5.0)
            return
        else:
            reply = {"error": f"unknown command {name!r}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cpus", help="pin this process to these CPUs, e.g. '1'")
    parser.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop of the client (auto: uvloop if installed: a cheaper client)",
    )
    args = parser.parse_args()
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    main_coro = serve_commands(Client(args.host, args.port))
    if args.loop == "asyncio":
        asyncio.run(main_coro)
        return
    try:
        import uvloop
    except ImportError:
        if args.loop == "uvloop":
            raise
        asyncio.run(main_coro)
        return
    uvloop.run(main_coro)


if __name__ == "__main__":
    main()
