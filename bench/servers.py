"""Echo servers under test, one per process: ``python bench/servers.py --kind KIND``.

Prints ``PORT <n>`` on stdout once listening (the embedws kinds add
``embedws=<path of the package imported>``), then serves on 127.0.0.1 until
SIGTERM/SIGINT (or ``--lifetime`` seconds, so a forgotten server still stops).
Every server echoes each message back as it came (text as text, binary as
binary), with keepalive pings and compression off.

``--embedws-from DIR``: the embedws kinds must import embedws from the checkout
DIR (the driver puts DIR on ``PYTHONPATH``); the server refuses to start if
they do not, so a baseline can never silently measure the wrong code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

KINDS = (
    "embedws-async",
    "embedws-thread",
    "embedws-greenlet",
    "websockets-asyncio",
    "websockets-sync",
)
# Other libraries, for the benchmarks that name them (not in the echo benchmarks' defaults).
OTHER_KINDS = ("aiohttp", "embedws-trio", "websockets-trio")
ALL_KINDS = KINDS + OTHER_KINDS

# Room for --idle 10000 (and the sync kinds' one thread per connection).
_MAX_CONNECTIONS = 50_000


def _announce(port: int, extra: str = "") -> None:
    print(f"PORT {port}{' ' + extra if extra else ''}", flush=True)


def _embedws_origin(required_dir: str | None) -> Path:
    """The folder embedws was imported from; exit (no PORT line) if not ``required_dir``'s."""
    import embedws

    origin = Path(embedws.__file__).resolve().parent
    if required_dir is not None and origin != Path(required_dir).resolve() / "embedws":
        sys.exit(f"embedws was imported from {origin}, not from {required_dir}")
    return origin


class _Profiles:
    """cProfile for every thread of the process (cProfile itself sees one thread)."""

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        self._enable_here()
        threading.setprofile(self._thread_hook)

    def _enable_here(self) -> None:
        profile = cProfile.Profile()
        with self._lock:
            self.profiles.append(profile)
        profile.enable()

    def _thread_hook(self, frame: FrameType, event: str, arg: Any) -> None:
        # Called on the first event of each new thread: swap in a real profiler.
        sys.setprofile(None)
        self._enable_here()

    def dump(self, path: str) -> None:
        import pstats

        with self._lock:
            profiles = list(self.profiles)
        for profile in profiles:
            profile.create_stats()
        stats = pstats.Stats(profiles[0])
        for profile in profiles[1:]:
            if profile.stats:
                stats.add(profile)
        stats.dump_stats(path)


def _exit_on_signal(on_exit: Callable[[], None]) -> None:
    """Exit at once on SIGTERM/SIGINT: nothing to shut down gracefully in a benchmark."""

    def handler(signum: int, frame: FrameType | None) -> None:
        try:
            on_exit()
        finally:
            os._exit(0)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _exit_later(seconds: float) -> None:
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGTERM))
    timer.daemon = True
    timer.start()


def serve_embedws(mode: str, required_dir: str | None) -> None:
    import embedws

    origin = _embedws_origin(required_dir)
    app = embedws.App(
        "bench",
        config={
            "WEBSOCKET_PING_INTERVAL": None,
            "MAX_CONNECTIONS": _MAX_CONNECTIONS,
            "SYNC_HANDLER_THREADS": _MAX_CONNECTIONS,
        },
    )
    if mode == "trio":  # the async handler, with aio.serve inside trio.run
        import trio

        async def trio_echo(request: embedws.Request, ws: Any) -> None:
            async for message in ws:
                await ws.send(message)

        app.add_websocket_route(trio_echo, "/")

        async def main() -> None:
            async with embedws.aio.serve(app, "127.0.0.1", 0) as server:
                _announce(server.sockets[0].getsockname()[1], f"embedws={origin}")
                await trio.sleep_forever()

        trio.run(main)
        return
    if mode == "async":

        async def echo(request: embedws.Request, ws: Any) -> None:
            async for message in ws:
                await ws.send(message)

        app.add_websocket_route(echo, "/")
    else:

        def sync_echo(request: embedws.Request, ws: Any) -> None:
            for message in ws:
                ws.send(message)

        app.add_websocket_route(sync_echo, "/", mode=mode)
    server = app.start(port=0)
    _announce(server.port, f"embedws={origin}")
    server.wait()


# The websockets handlers end quietly when the peer vanishes, as embedws's and aiohttp's
# loops do: uncaught, websockets logs ConnectionClosedError with a traceback for each
# connection reset (handshake.py --close rst), and the row would measure that logging.


def serve_websockets_asyncio() -> None:
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosedError

    async def echo(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosedError):
            async for message in ws:
                await ws.send(message)

    async def main() -> None:
        async with serve(echo, "127.0.0.1", 0, ping_interval=None, compression=None) as server:
            _announce(server.sockets[0].getsockname()[1])
            await server.serve_forever()

    asyncio.run(main())


def serve_websockets_sync() -> None:
    from websockets.exceptions import ConnectionClosedError
    from websockets.sync.server import ServerConnection, serve

    def echo(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosedError):
            for message in ws:
                ws.send(message)

    with serve(echo, "127.0.0.1", 0, ping_interval=None, compression=None) as server:
        _announce(server.socket.getsockname()[1])
        server.serve_forever()


def serve_websockets_trio() -> None:
    import functools

    import trio
    from websockets.exceptions import ConnectionClosedError
    from websockets.trio.server import ServerConnection, serve

    async def echo(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosedError):
            async for message in ws:
                await ws.send(message)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                functools.partial(
                    serve, echo, 0, host="127.0.0.1", ping_interval=None, compression=None
                )
            )
            _announce(server.listeners[0].socket.getsockname()[1])

    trio.run(main)


def serve_aiohttp() -> None:
    from aiohttp import WSMsgType, web

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=None, compress=False)
        await ws.prepare(request)
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await ws.send_str(message.data)
            elif message.type == WSMsgType.BINARY:
                await ws.send_bytes(message.data)
        return ws

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/", echo)
        # No access log: the other servers log nothing per connection either.
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        _announce(runner.addresses[0][1])
        await asyncio.Event().wait()  # until SIGTERM (_exit_on_signal)

    asyncio.run(main())


def _warm_malloc() -> None:
    """Put every server in the fast mode of glibc's malloc, as a long-running one is.

    asyncio's plain ``Protocol`` transports read with ``sock.recv(256 KiB)``:
    a 256 KiB allocation, shrunk to what came. Above glibc's mmap threshold
    (128 KiB at start) each such read costs an mmap, an mremap and an munmap,
    the slow mode that made websockets' and aiohttp's cost bimodal. Once a
    large block has been freed (any message over 128 KiB does it), glibc
    raises the threshold and those reads come from the heap: the fast mode,
    where a server stays for the rest of its life. Freeing one 4 MiB block
    at start puts every server there, so that no reference is measured in a
    mode that flatters embedws (which reads into one buffer, in either mode).
    """
    block = bytearray(4 * 2**20)
    del block


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=ALL_KINDS, required=True)
    parser.add_argument(
        "--embedws-from", metavar="DIR", help="refuse to start unless embedws comes from DIR"
    )
    parser.add_argument("--profile", metavar="FILE", help="write cProfile stats here on exit")
    parser.add_argument("--lifetime", type=float, default=900.0, help="exit after this long")
    parser.add_argument("--cpus", help="pin the process to these CPUs, e.g. '0'")
    args = parser.parse_args()
    if args.cpus:
        # Before any thread starts: threads inherit the affinity of their creator.
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})

    profiles: _Profiles | None = None
    if args.profile:
        profiles = _Profiles()
        profiles.start()

    def on_exit() -> None:
        if profiles is not None:
            profiles.dump(args.profile)
        sys.stdout.flush()

    _exit_on_signal(on_exit)
    _exit_later(args.lifetime)
    _warm_malloc()
    if args.kind.startswith("embedws-"):
        serve_embedws(args.kind.removeprefix("embedws-"), args.embedws_from)
    elif args.kind == "websockets-asyncio":
        serve_websockets_asyncio()
    elif args.kind == "aiohttp":
        serve_aiohttp()
    elif args.kind == "websockets-trio":
        serve_websockets_trio()
    else:
        serve_websockets_sync()


if __name__ == "__main__":
    main()
