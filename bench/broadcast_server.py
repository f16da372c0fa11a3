"""Broadcast servers under test, one per process: ``python bench/broadcast_server.py --kind KIND``.

Every client that connects joins the broadcast group and then only waits for
the close. Prints ``PORT <n>`` once listening, then takes JSON commands on
stdin, one per line, each answered with one JSON line on stdout:

* ``{"cmd": "wait", "n": N, "timeout": T}``: wait until N clients are in the
  group; answers ``{"members": n}``;
* ``{"cmd": "broadcast", "count": C, "interval": I, "size": S, "trigger": "thread"}``:
  C broadcasts of an S-byte text message, one every I seconds (on a fixed
  schedule, never catching up in a burst), made from a plain thread
  (``"thread"``) or from a task on the server's event loop (``"loop"``);
  answers with the first sequence number, the time each call took and how many
  recipients each reached;
* ``{"cmd": "quit"}``.

Each message starts with ``"<seq:010d> <time.time_ns():019d> "``: the sequence
number and the sender's wall-clock time just before the broadcast call, which
the clients (same machine, same clock) subtract from their receive time. The
rest is filler. Keepalive pings and compression are off. SIGTERM, SIGINT or
``--lifetime`` seconds end the process at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from servers import _announce, _exit_later, _exit_on_signal

KINDS = ("embedws-thread", "embedws-async", "websockets-asyncio")
TRIGGERS = ("thread", "loop")
HEADER = len("0000000000 0000000000000000000 ")  # what make_message puts before the filler
ROOM = "all"

_T = TypeVar("_T")


def make_message(seq: int, size: int, filler: str) -> str:
    """The broadcast message ``seq``, stamped with the wall-clock time now."""
    return f"{seq:010d} {time.time_ns():019d} {filler[: size - HEADER]}"


class Target:
    """One server's broadcast group, as the schedules see it."""

    loop: asyncio.AbstractEventLoop
    port: int

    def members(self) -> int:
        raise NotImplementedError

    def on_loop(self, message: str) -> int:
        """Broadcast from the server's event loop; how many it reached (-1: unknown)."""
        raise NotImplementedError

    def from_thread(self, message: str) -> int:
        """Broadcast from a plain thread (not the loop's)."""
        raise NotImplementedError

    def run_on_loop(self, coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


class EmbedwsTarget(Target):
    """An ``embedws.App`` started with ``app.start()``; clients join ``app.room("all")``."""

    def __init__(self, mode: str) -> None:
        import embedws

        self.app = app = embedws.App(
            "bench",
            config={
                "WEBSOCKET_PING_INTERVAL": None,
                "MAX_CONNECTIONS": 50_000,
                "SYNC_HANDLER_THREADS": 5_000,
            },
        )
        if mode == "async":

            async def join(request: embedws.Request, ws: Any) -> None:
                app.room(ROOM).add(ws)
                await ws.wait_closed()

            app.add_websocket_route(join, "/")
        else:

            def sync_join(request: embedws.Request, ws: Any) -> None:
                app.room(ROOM).add(ws)
                ws.wait_closed()

            app.add_websocket_route(sync_join, "/", mode=mode)
        self.server = app.start(port=0)
        self.loop = self.server.async_server.loop
        self.port = self.server.port
        self.room = app.room(ROOM)

    def members(self) -> int:
        return len(self.room)

    def on_loop(self, message: str) -> int:
        return self.room.broadcast(message)

    def from_thread(self, message: str) -> int:
        # The same call: embedws's broadcast is meant to be called from any thread.
        return self.room.broadcast(message)


class WebsocketsTarget(Target):
    """``websockets.asyncio.server.serve`` on a loop thread; ``broadcast(server.connections)``."""

    def __init__(self) -> None:
        from websockets.asyncio.server import Server, ServerConnection, broadcast, serve

        self._broadcast = broadcast
        self.loop = asyncio.new_event_loop()
        started: list[Server] = []  # the server, once listening
        ready = threading.Event()

        async def handler(ws: ServerConnection) -> None:
            await ws.wait_closed()

        async def main() -> None:
            async with serve(handler, "127.0.0.1", 0, ping_interval=None, compression=None) as srv:
                started.append(srv)
                ready.set()
                await srv.serve_forever()

        thread = threading.Thread(
            target=self.loop.run_until_complete, args=(main(),), name="websockets-loop", daemon=True
        )
        thread.start()
        if not ready.wait(30):
            raise RuntimeError("the websockets server did not start")
        self.server = started[0]
        self.port = int(self.server.sockets[0].getsockname()[1])

    def members(self) -> int:
        async def count() -> int:
            return len(self.server.connections)

        return self.run_on_loop(count(), 30)

    def on_loop(self, message: str) -> int:
        connections = self.server.connections
        self._broadcast(connections, message)
        return len(connections)

    def from_thread(self, message: str) -> int:
        # websockets has no thread-safe broadcast: hand the call to its loop.
        self.loop.call_soon_threadsafe(self.on_loop, message)
        return -1


def make_target(kind: str) -> Target:
    if kind.startswith("embedws-"):
        return EmbedwsTarget(kind.removeprefix("embedws-"))
    return WebsocketsTarget()


class Broadcasts:
    """The broadcasts of one command: their messages, how long each call took, whom it reached."""

    def __init__(self, first: int, count: int, interval: float, size: int) -> None:
        self.first, self.count, self.interval, self.size = first, count, interval, size
        self.filler = "x" * max(size - HEADER, 0)
        self.calls: list[int] = []
        self.reached: list[int] = []

    def send(self, i: int, send: Callable[[str], int]) -> None:
        """The ``i``-th broadcast, made with ``send``, timed."""
        t0 = time.perf_counter_ns()
        self.reached.append(send(make_message(self.first + i, self.size, self.filler)))
        self.calls.append(time.perf_counter_ns() - t0)


class Broadcaster:
    """Runs the broadcast schedules and numbers the messages."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.next_seq = 0

    def run(self, count: int, interval: float, size: int, trigger: str) -> dict[str, Any]:
        broadcasts = Broadcasts(self.next_seq, count, interval, size)
        self.next_seq += count
        if trigger == "thread":
            self._on_thread(broadcasts)
        else:
            self.target.run_on_loop(self._on_loop(broadcasts), count * interval + 60)
        return {
            "first": broadcasts.first,
            "count": count,
            "call_ns": broadcasts.calls,
            "reached": broadcasts.reached,
        }

    def _on_thread(self, broadcasts: Broadcasts) -> None:
        send = self.target.from_thread
        start = time.perf_counter() + 0.005
        for i in range(broadcasts.count):
            delay = start + i * broadcasts.interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            broadcasts.send(i, send)

    async def _on_loop(self, broadcasts: Broadcasts) -> None:
        send = self.target.on_loop
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.005
        for i in range(broadcasts.count):
            delay = start + i * broadcasts.interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            broadcasts.send(i, send)


def wait_members(target: Target, n: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    members = target.members()
    while members < n and time.monotonic() < deadline:
        time.sleep(0.05)
        members = target.members()
    return members


def serve_commands(target: Target) -> None:
    """The main thread: one JSON command per stdin line, one JSON reply each."""
    broadcaster = Broadcaster(target)
    handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
        "wait": lambda c: {"members": wait_members(target, int(c["n"]), float(c["timeout"]))},
        "broadcast": lambda c: broadcaster.run(
            int(c["count"]), float(c["interval"]), int(c["size"]), str(c["trigger"])
        ),
    }
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            break
        handler = handlers.get(command["cmd"])
        if handler is None:
            reply = {"error": f"unknown command {command['cmd']!r}"}
        else:
            reply = handler(command)
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--lifetime", type=float, default=900.0, help="exit after this long")
    parser.add_argument("--cpus", help="pin the process to these CPUs, e.g. '0'")
    args = parser.parse_args()
    if args.cpus:
        # Before any thread starts: threads inherit the affinity of their creator.
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    _exit_on_signal(sys.stdout.flush)
    _exit_later(args.lifetime)
    target = make_target(args.kind)
    _announce(target.port)
    serve_commands(target)
    os._exit(0)  # nothing to shut down gracefully in a benchmark


if __name__ == "__main__":
    main()
