"""The load generator: raw websocket client connections driven by JSON commands.

Run by the benchmarks, one or more processes per server:
``python bench/loadclient.py --port P``. Commands come one JSON object per line
on stdin and each gets one JSON line on stdout:

* ``{"cmd": "open", "n": N}``: open N more connections (handshake, then one 16 B
  round trip, so that the server's handler is parked in ``recv``);
* ``{"cmd": "run", "size": S, "type": "text", "seconds": T}``: every connection
  does echo round trips for T seconds, then waits for the last replies. Options:
  ``"inflight": K`` messages in flight per connection (default 1: send, wait for
  the echo, send again); ``"rate": R`` paces the whole process to R messages/s
  (each connection sends its next message at its next slot, not at once);
  ``"latency": true`` returns every round-trip time;
* ``{"cmd": "close"}`` (closing handshake on every connection), ``{"cmd": "quit"}``.

Frames are built once per size and masked once with a fixed key, so the client
spends its time on socket I/O, not on framing. Replies are checked by length
and first byte (FIN + opcode) only, which is enough to notice anything but an
echo of the same size and type.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import hashlib
import json
import os
import random
import sys
import threading
import time
from typing import Any, cast

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MASK = b"\x37\xfa\x21\x3d"
_OPCODES = {"text": 0x1, "binary": 0x2}
# Close 1000, masked with _MASK.
_CLOSE_FRAME = bytes((0x88, 0x82)) + _MASK + bytes((0x03 ^ _MASK[0], 0xE8 ^ _MASK[1]))


def _header(first: int, size: int, mask_bit: int) -> bytes:
    if size < 126:
        return bytes((first, mask_bit | size))
    if size < 1 << 16:
        return bytes((first, mask_bit | 126)) + size.to_bytes(2, "big")
    return bytes((first, mask_bit | 127)) + size.to_bytes(8, "big")


def build_frame(size: int, kind: str) -> tuple[bytes, int, int]:
    """(masked client frame, length of the server's echo frame, its first byte)."""
    first = 0x80 | _OPCODES[kind]
    payload = (b"abcdefghijklmnopqrstuvwxyz0123456789" * (size // 36 + 1))[:size]
    mask = (_MASK * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(size, "big")
    frame = _header(first, size, 0x80) + _MASK + masked
    return frame, len(_header(first, size, 0)) + size, first


class Stats:
    """Counters shared by the connections of one client process."""

    __slots__ = ("closed", "errors", "first_error", "latencies", "messages")

    def __init__(self, latency: bool = False) -> None:
        self.messages = 0
        self.errors = 0
        self.closed = 0
        self.first_error = ""
        self.latencies: list[int] | None = [] if latency else None

    def error(self, what: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = what


class Phase:
    """What the connections send now, and whether they keep going."""

    __slots__ = (
        "first",
        "frame",
        "interval",
        "loop",
        "outstanding",
        "quiet",
        "reply_len",
        "running",
    )

    def __init__(
        self,
        spec: tuple[bytes, int, int],
        *,
        running: bool = True,
        interval: float = 0.0,
    ) -> None:
        self.frame, self.reply_len, self.first = spec
        self.running = running
        self.interval = interval  # seconds between one connection's sends; 0: no pacing
        self.outstanding = 0  # messages sent and not yet echoed
        self.loop = asyncio.get_running_loop()
        self.quiet: asyncio.Future[None] = self.loop.create_future()

    def stop(self) -> None:
        self.running = False
        self.settle()

    def settle(self) -> None:
        if not self.running and self.outstanding <= 0 and not self.quiet.done():
            self.quiet.set_result(None)


class Conn(asyncio.Protocol):
    """One websocket connection of the load client."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.key = base64.b64encode(os.urandom(16))
        self.handshake = bytearray()
        self.is_open = False
        self.got = 0  # bytes of the reply being received
        self.sent: collections.deque[int] = collections.deque()  # send times in flight
        self.next_at = 0.0  # loop time of the next paced send
        self.phase: Phase | None = None
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
        if not self.is_open:
            self._handshake_data(data)
            return
        phase = self.phase
        if phase is None:
            if not self.client.closing:  # while closing, it is the server's close frame
                self.client.stats.error(f"unexpected data {data[:16]!r}")
            return
        size, pos = len(data), 0
        need = phase.reply_len - self.got
        while size - pos >= need:
            if self.got == 0 and data[pos] != phase.first:
                self.client.stats.error(f"unexpected frame {data[pos : pos + 16]!r}")
            pos += need
            self.got = 0
            need = phase.reply_len
            if self.sent:
                self.client.replied(self, phase)
            else:
                self.client.stats.error("a reply to no message")
        if pos < size:
            if self.got == 0 and data[pos] != phase.first:
                self.client.stats.error(f"unexpected frame {data[pos : pos + 16]!r}")
            self.got += size - pos

    def _handshake_data(self, data: bytes) -> None:
        self.handshake += data
        end = self.handshake.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.handshake[:end])
        rest = bytes(self.handshake[end + 4 :])
        accept = base64.b64encode(hashlib.sha1(self.key + _GUID).digest())
        if not head.startswith(b"HTTP/1.1 101") or accept not in head:
            self.client.stats.error(f"handshake refused: {head[:80]!r}")
            if not self.ready.done():
                self.ready.set_result(False)
            return
        self.is_open = True
        self.handshake = bytearray()
        if not self.ready.done():
            self.ready.set_result(True)
        if rest:
            self.data_received(rest)

    def send(self, phase: Phase) -> None:
        if self.phase is not phase:
            self.phase = phase
            self.got = 0
        phase.outstanding += 1
        self.sent.append(time.perf_counter_ns())
        assert self.transport is not None
        self.transport.write(phase.frame)

    def paced_send(self, phase: Phase) -> None:
        if phase.running and self.transport is not None and not self.transport.is_closing():
            self.send(phase)

    def connection_lost(self, exc: Exception | None) -> None:
        client = self.client
        if not client.closing:
            client.stats.closed += 1
            client.stats.error(f"connection closed by the server: {exc!r}")
        if not self.ready.done():
            self.ready.set_result(False)
        phase = self.phase
        if phase is not None and self.sent:
            # Those replies will never come: don't let the phase wait for them.
            phase.outstanding -= len(self.sent)
            self.sent.clear()
            phase.settle()
        client.conns.discard(self)


class Client:
    """The connections of this process and the commands that drive them."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.host_header = f"{host}:{port}".encode()
        self.conns: set[Conn] = set()
        self.stats = Stats()
        self.closing = False

    async def open(self, n: int, concurrency: int = 64) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        probe = build_frame(16, "binary")
        gate = asyncio.Semaphore(concurrency)  # the servers' listen backlog is ~100
        failed = 0
        started = time.perf_counter()

        async def one() -> None:
            nonlocal failed
            async with gate:
                try:
                    _, conn = await loop.create_connection(lambda: Conn(self), self.host, self.port)
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
                # One round trip: the handler is then surely running and parked in recv.
                phase = Phase(probe, running=False)
                conn.send(phase)
                try:
                    await asyncio.wait_for(phase.quiet, 30)
                except TimeoutError:
                    failed += 1
                    self.stats.error("no echo of the first message")

        await asyncio.gather(*(one() for _ in range(n)))
        return {
            "event": "opened",
            "open": len(self.conns),
            "failed": failed,
            "first_error": self.stats.first_error,
            "seconds": time.perf_counter() - started,
        }

    def replied(self, conn: Conn, phase: Phase) -> None:
        stats = self.stats
        stats.messages += 1
        phase.outstanding -= 1
        sent_at = conn.sent.popleft()
        latencies = stats.latencies
        if latencies is not None:
            latencies.append(time.perf_counter_ns() - sent_at)
        if not phase.running:
            phase.settle()
        elif not phase.interval:
            conn.send(phase)
        else:
            now = phase.loop.time()
            # No catching up after a late reply: a burst would not be the asked-for rate.
            conn.next_at = max(conn.next_at + phase.interval, now)
            phase.loop.call_at(conn.next_at, conn.paced_send, phase)

    async def run(
        self,
        size: int,
        kind: str,
        seconds: float,
        *,
        inflight: int = 1,
        rate: float = 0.0,
        latency: bool = False,
    ) -> dict[str, Any]:
        conns = list(self.conns)
        self.stats = Stats(latency)
        loop = asyncio.get_running_loop()
        interval = len(conns) / rate if rate > 0 and conns else 0.0
        phase = Phase(build_frame(size, kind), interval=interval)
        started = time.perf_counter()
        now = loop.time()
        for conn in conns:
            if interval:
                # Spread the connections over one interval: no synchronized bursts.
                conn.next_at = now + random.uniform(0, interval)
                for _ in range(inflight):
                    loop.call_at(conn.next_at, conn.paced_send, phase)
            else:
                for _ in range(inflight):
                    conn.send(phase)
        loop.call_later(seconds, phase.stop)
        try:
            await asyncio.wait_for(asyncio.shield(phase.quiet), seconds + 60)
        except TimeoutError:
            pass
        elapsed = time.perf_counter() - started
        stats = self.stats
        result: dict[str, Any] = {
            "event": "result",
            "messages": stats.messages,
            "seconds": elapsed,
            "connections": len(conns),
            "errors": stats.errors,
            "closed": stats.closed,
            "first_error": stats.first_error,
            "unfinished": max(phase.outstanding, 0),
        }
        if stats.latencies is not None:
            result["latencies_ns"] = stats.latencies
        return result

    async def close(self, timeout: float = 10.0) -> dict[str, Any]:
        """Close every connection with a closing handshake (code 1000)."""
        self.closing = True
        conns = list(self.conns)
        for conn in conns:
            conn.phase = None
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
        return {"event": "closed", "closed": len(conns), "aborted": aborted}


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
        elif name == "run":
            reply = await client.run(
                int(command["size"]),
                str(command.get("type", "text")),
                float(command["seconds"]),
                inflight=int(command.get("inflight", 1)),
                rate=float(command.get("rate", 0.0)),
                latency=bool(command.get("latency", False)),
            )
        elif name == "close":
            reply = await client.close()
        elif name == "quit":
            await client.close(timeout=5.0)
            return
        else:
            reply = {"event": "error", "message": f"unknown command {name!r}"}
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
