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
* ``{"cmd": "handshake", "seconds": T, "inflight": K, "close": "frame"}``: no
  lasting connection; K at a time, open a connection (the opening handshake,
  one prebuilt request with a fixed key, only the status line checked), end it
  (``"close": "frame"``: closing handshake, then the server closes TCP;
  ``"rst"``: reset at once) and open the next, for T seconds (or ``"count": N``
  connections), then wait for the last ones to end. ``"latency": true`` returns
  each request-to-101 time. See :func:`clientlib.handshakes`;
* ``{"cmd": "close"}`` (closing handshake on every connection), ``{"cmd": "quit"}``.

Frames are built once per size and masked once with a fixed key, so the client
spends its time on socket I/O, not on framing. Replies are checked by length
and first byte (FIN + opcode) only, which is enough to notice anything but an
echo of the same size and type.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from typing import Any

import clientlib
from clientlib import MASK, Errors, RawClient, RawConnection

_OPCODES = {"text": 0x1, "binary": 0x2}


def _header(first: int, size: int, mask_bit: int) -> bytes:
    if size < 126:
        return bytes((first, mask_bit | size))
    if size < 1 << 16:
        return bytes((first, mask_bit | 126)) + size.to_bytes(2, "big")
    return bytes((first, mask_bit | 127)) + size.to_bytes(8, "big")


def build_frame(size: int, kind: str) -> tuple[bytes, int, int]:
    """(masked client frame, length of the server's echo frame, its first byte)."""
    first = 0x80 | _OPCODES[kind]
    payload = clientlib.text_payload(size).encode()
    mask = (MASK * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(size, "big")
    frame = _header(first, size, 0x80) + MASK + masked
    return frame, len(_header(first, size, 0)) + size, first


_PROBE = build_frame(16, "binary")  # the round trip of each new connection


class Stats(Errors):
    """Counters shared by the connections of one client process."""

    __slots__ = ("latencies", "messages")

    def __init__(self, latency: bool = False) -> None:
        super().__init__()
        self.messages = 0
        self.latencies: list[int] | None = [] if latency else None


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


class Conn(RawConnection):
    """One websocket connection of the load client."""

    client: Client

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self.handshake = bytearray()
        self.got = 0  # bytes of the reply being received
        self.sent: collections.deque[int] = collections.deque()  # send times in flight
        self.next_at = 0.0  # loop time of the next paced send
        self.phase: Phase | None = None

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
        if not self.handshake_done(head):
            return
        self.handshake = bytearray()
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
        phase = self.phase
        if phase is not None and self.sent:
            # Those replies will never come: don't let the phase wait for them.
            phase.outstanding -= len(self.sent)
            self.sent.clear()
            phase.settle()
        super().connection_lost(exc)


class Client(RawClient[Conn]):
    """The connections of this process and the commands that drive them."""

    stats: Stats

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.stats = Stats()

    def connection(self) -> Conn:
        return Conn(self)

    async def check_open(self, conn: Conn) -> bool:
        # One round trip: the handler is then surely running and parked in recv.
        phase = Phase(_PROBE, running=False)
        conn.send(phase)
        try:
            await asyncio.wait_for(phase.quiet, 30)
        except TimeoutError:
            self.stats.error("no echo of the first message")
            return False
        return True

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

    def commands(self) -> dict[str, clientlib.Handler]:
        return {
            "run": self.run,
            "handshake": lambda command: clientlib.handshakes(self.host, self.port, command),
        }

    async def run(self, command: dict[str, Any]) -> dict[str, Any]:
        """The ``run`` command (see the top of this file)."""
        size, seconds = int(command["size"]), float(command["seconds"])
        kind = str(command.get("type", "text"))
        inflight = int(command.get("inflight", 1))
        rate = float(command.get("rate", 0.0))
        latency = bool(command.get("latency", False))
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
        for conn in self.conns:
            conn.phase = None  # what comes now is the server's close frame
        return await super().close(timeout)


if __name__ == "__main__":
    Client.main(__doc__)
