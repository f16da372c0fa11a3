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

import asyncio
import time
from typing import Any

import clientlib
from clientlib import RawClient, RawConnection

_TEXT, _BINARY, _CLOSE = 0x1, 0x2, 0x8


class Receiver(RawConnection):
    """One connection: the handshake, then every frame the server sends."""

    client: Client

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self.buffer = b""

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
                self.client.stats.error(f"close frame from the server: {buf[pos : pos + 16]!r}")
            pos = end
        self.buffer = buf[pos:] if pos < size else b""

    def _handshake(self, buf: bytes) -> bytes:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return buf
        return buf[end + 4 :] if self.handshake_done(buf[:end]) else b""


class Client(RawClient[Receiver]):
    """The connections of this process and what they received."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        # seq -> [receptions, first receive ns, last receive ns, sender's ns]
        self.records: dict[int, list[int]] = {}
        self.receptions = 0  # since the last collect

    def connection(self) -> Receiver:
        return Receiver(self)

    def commands(self) -> dict[str, clientlib.Handler]:
        return {
            "collect": lambda c: self.collect(int(c["first"]), int(c["count"]), float(c["timeout"]))
        }

    def received(self, buf: bytes, start: int, now: int) -> None:
        self.receptions += 1
        try:
            seq = int(buf[start : start + 10])
        except ValueError:
            self.stats.error(f"not a broadcast message: {buf[start : start + 32]!r}")
            return
        record = self.records.get(seq)
        if record is None:
            self.records[seq] = [1, now, now, int(buf[start + 11 : start + 30])]
        else:
            record[0] += 1
            record[2] = max(record[2], now)

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
            "errors": self.stats.errors,
            "closed": self.stats.closed,
            "first_error": self.stats.first_error,
        }


if __name__ == "__main__":
    Client.main(__doc__)
