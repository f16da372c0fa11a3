"""One websocket client library under test, in its own process, driven by JSON commands.

Run by ``client.py``: ``python bench/client_worker.py --port P --variant V``.
The variants are the clients compared: ``embedws-sync`` (``embedws.sync.connect``),
``websockets-sync`` (``websockets.sync.client.connect``), ``embedws-aio``
(``embedws.aio.connect``) and ``websockets-asyncio``
(``websockets.asyncio.client.connect``), all with ``compression=None,
ping_interval=None``. The same commands as ``loadclient.py``, one JSON line
each way:

* ``{"cmd": "open", "n": N}``: open N more connections, each then does one
  round trip (the sync variants take one connection only);
* ``{"cmd": "run", "size": S, "type": "text", "seconds": T, "latency": true}``:
  every connection does sequential echo round trips (``send``, then ``recv``)
  for T seconds; answers with the round trips, their times (``perf_counter_ns``
  from before ``send`` to after ``recv``) and ``own``: this process's CPU time
  (all threads, ``getrusage``), its system part and its context switches, over
  exactly those round trips;
* ``{"cmd": "close"}``, ``{"cmd": "quit"}``.

``--cprofile FILE`` profiles every thread of the process (the client library's
own threads too) and writes the stats to FILE at ``quit``.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import resource
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import clientlib
from clientlib import Errors
from servers import _Profiles

VARIANTS = ("embedws-sync", "websockets-sync", "embedws-aio", "websockets-asyncio")
SYNC_VARIANTS = ("embedws-sync", "websockets-sync")
_OPTIONS: dict[str, Any] = {"compression": None, "ping_interval": None}


def payload(size: int, kind: str) -> str | bytes:
    text = clientlib.text_payload(size)
    return text if kind == "text" else text.encode()


class Usage(NamedTuple):
    """This process's resource use so far, all threads together."""

    user: float
    system: float
    switches: int  # voluntary and involuntary context switches

    @classmethod
    def now(cls) -> Usage:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return cls(ru.ru_utime, ru.ru_stime, ru.ru_nvcsw + ru.ru_nivcsw)


class Results(Errors):
    """Round trips of one run, shared by its connections."""

    __slots__ = ("latencies", "messages")

    def __init__(self) -> None:
        super().__init__()
        self.messages = 0
        self.latencies: list[int] = []

    def wrong_size(self, reply: str | bytes, size: int) -> None:
        self.error(f"a reply of {len(reply)} characters, not {size}")

    def lost(self, exc: Exception) -> None:
        """The connection failed in the middle of the run."""
        self.closed += 1
        self.error(repr(exc))

    def reply(self, started: float, usage0: Usage, latency: bool) -> dict[str, Any]:
        usage = Usage.now()
        return {
            "messages": self.messages,
            "seconds": time.perf_counter() - started,
            "own": {
                "cpu_s": usage.user + usage.system - usage0.user - usage0.system,
                "sys_s": usage.system - usage0.system,
                "ctx_switches": usage.switches - usage0.switches,
            },
            "errors": self.errors,
            "closed": self.closed,
            "unfinished": 0,
            "first_error": self.first_error,
            "latencies_ns": self.latencies if latency else [],
        }


# Sync clients: the main thread does the round trips itself ------------------------


class SyncWorker:
    def __init__(self, variant: str, url: str) -> None:
        self.variant, self.url = variant, url
        self.ws: Any = None

    def connect(self) -> Any:
        if self.variant == "embedws-sync":
            import embedws

            return embedws.sync.connect(self.url, **_OPTIONS)
        from websockets.sync.client import connect

        return connect(self.url, **_OPTIONS)

    def open(self, n: int) -> dict[str, Any]:
        started = time.perf_counter()
        failed, first_error = 0, ""
        if n + (self.ws is not None) > 1:
            return {
                "open": int(self.ws is not None),
                "failed": n,
                "first_error": "a sync client takes one connection",
                "seconds": 0.0,
            }
        if n:
            try:
                self.ws = self.connect()
                self.ws.send("probe")
                self.ws.recv()
            except Exception as exc:
                failed, first_error = 1, repr(exc)
        return {
            "open": int(self.ws is not None),
            "failed": failed,
            "first_error": first_error,
            "seconds": time.perf_counter() - started,
        }

    def run(self, size: int, kind: str, seconds: float, latency: bool) -> dict[str, Any]:
        results = Results()
        message = payload(size, kind)
        ws = self.ws
        lap = time.perf_counter_ns
        latencies = results.latencies
        count = 0
        started, usage0 = time.perf_counter(), Usage.now()
        deadline = lap() + int(seconds * 1e9)
        try:
            while True:
                t0 = lap()
                ws.send(message)
                reply = ws.recv()
                t1 = lap()
                latencies.append(t1 - t0)
                count += 1
                if len(reply) != size:
                    results.wrong_size(reply, size)
                if t1 > deadline:
                    break
        except Exception as exc:
            results.lost(exc)
        results.messages = count
        return results.reply(started, usage0, latency)

    def close(self) -> dict[str, Any]:
        closed = 0
        if self.ws is not None:
            self.ws.close()
            self.ws, closed = None, 1
        return {"closed": closed, "aborted": 0}

    def serve(self) -> None:
        commands: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "open": lambda c: self.open(int(c["n"])),
            "run": lambda c: self.run(
                int(c["size"]), str(c["type"]), float(c["seconds"]), bool(c.get("latency"))
            ),
            "close": lambda c: self.close(),
        }
        while True:
            # A readline call, which cProfile sees (and profile_echo.drop_waits leaves
            # out), not iteration: under --cprofile, waiting for commands is not work.
            line = sys.stdin.readline()
            if not line:
                break
            command = json.loads(line)
            if command["cmd"] == "quit":
                break
            clientlib.write_reply(commands[command["cmd"]](command))
        self.close()


# Async clients: one task per connection on this process's event loop ------------


class AsyncWorker:
    def __init__(self, variant: str, url: str) -> None:
        self.variant, self.url = variant, url
        self.conns: list[Any] = []

    async def connect(self) -> Any:
        if self.variant == "embedws-aio":
            import embedws

            return await embedws.aio.connect(self.url, **_OPTIONS)
        from websockets.asyncio.client import connect

        return await connect(self.url, **_OPTIONS)

    async def open(self, n: int) -> dict[str, Any]:
        started = time.perf_counter()
        gate = asyncio.Semaphore(64)
        errors: list[str] = []

        async def one() -> None:
            async with gate:
                try:
                    ws = await self.connect()
                    await ws.send("probe")
                    await ws.recv()
                except Exception as exc:
                    errors.append(repr(exc))
                    return
                self.conns.append(ws)

        await asyncio.gather(*(one() for _ in range(n)))
        return {
            "open": len(self.conns),
            "failed": len(errors),
            "first_error": errors[0] if errors else "",
            "seconds": time.perf_counter() - started,
        }

    async def run(self, size: int, kind: str, seconds: float, latency: bool) -> dict[str, Any]:
        results = Results()
        message = payload(size, kind)
        lap = time.perf_counter_ns
        latencies = results.latencies
        deadline = lap() + int(seconds * 1e9)

        async def round_trips(ws: Any) -> None:
            count = 0
            try:
                while True:
                    t0 = lap()
                    await ws.send(message)
                    reply = await ws.recv()
                    t1 = lap()
                    latencies.append(t1 - t0)
                    count += 1
                    if len(reply) != size:
                        results.wrong_size(reply, size)
                    if t1 > deadline:
                        break
            except Exception as exc:
                results.lost(exc)
            results.messages += count

        started, usage0 = time.perf_counter(), Usage.now()
        await asyncio.gather(*(round_trips(ws) for ws in self.conns))
        return results.reply(started, usage0, latency)

    async def close(self) -> dict[str, Any]:
        conns, self.conns = self.conns, []
        outcomes = await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)
        return {"closed": len(conns), "aborted": sum(1 for o in outcomes if o is not None)}

    async def serve(self) -> None:
        await clientlib.serve_commands(
            {
                "open": lambda c: self.open(int(c["n"])),
                "run": lambda c: self.run(
                    int(c["size"]), str(c["type"]), float(c["seconds"]), bool(c.get("latency"))
                ),
                "close": lambda c: self.close(),
            },
            self.close,
        )


def main() -> None:
    parser = clientlib.arg_parser(
        __doc__,
        loop_default="asyncio",
        loop_help="event loop of the aio variants (auto: uvloop if installed)",
    )
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    parser.add_argument("--cprofile", metavar="FILE", help="profile; write the stats at quit")
    args = clientlib.parse_args(parser)
    if args.cprofile:
        # Before the client library starts its threads: each new thread gets its profiler.
        profiles = _Profiles()
        profiles.start()
        atexit.register(profiles.dump, args.cprofile)
    url = f"ws://{args.host}:{args.port}/"
    if args.variant in SYNC_VARIANTS:
        SyncWorker(args.variant, url).serve()
        return
    clientlib.run(AsyncWorker(args.variant, url).serve(), args.loop)


if __name__ == "__main__":
    main()
