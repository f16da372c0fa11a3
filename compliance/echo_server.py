"""An echo server for the Autobahn|Testsuite fuzzing client.

Usage: ``python compliance/echo_server.py MODE`` where MODE is ``async``, ``thread`` or
``greenlet`` (an embedws app whose one route at ``/`` echoes every message), ``trio`` (the
``async`` app served by ``embedws.aio.serve`` inside ``trio.run``) or ``websockets`` (the
``websockets`` library's own asyncio server, as a reference).

It listens on 127.0.0.1 on a port the OS picks, writes that port as the first line of its
standard output, and serves until SIGTERM or Ctrl-C, then stops gracefully. Logs go to
standard error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from types import FrameType
from typing import Any

import trio
from websockets.asyncio.server import ServerConnection, serve

import embedws
from embedws import aio, sync

MODES = ("async", "thread", "greenlet", "trio", "websockets")
HOST = "127.0.0.1"
MAX_SIZE = 2**25
CONFIG: dict[str, Any] = {
    "WEBSOCKET_COMPRESSION": "deflate",
    "WEBSOCKET_MAX_SIZE": MAX_SIZE,
    "WEBSOCKET_PING_INTERVAL": None,
}
STOP_TIMEOUT = 30.0  # seconds for the graceful shutdown


def build_app(mode: str) -> embedws.App:
    """An app with one echo route at ``/``: a coroutine, or a plain function run in ``mode``."""
    app = embedws.App("autobahn", config=CONFIG)
    if mode in ("async", "trio"):

        async def echo_async(request: embedws.Request, ws: aio.Websocket) -> None:
            async for message in ws:
                await ws.send(message)

        app.add_websocket_route(echo_async, "/")
    else:

        def echo_sync(request: embedws.Request, ws: sync.Websocket) -> None:
            for message in ws:
                ws.send(message)

        app.add_websocket_route(echo_sync, "/", mode=mode)
    return app


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def serve_embedws(mode: str) -> None:
    """Serve the echo app until SIGTERM / Ctrl-C."""
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    server = build_app(mode).start(HOST, 0)
    try:
        print(server.port, flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        server.stop(timeout=STOP_TIMEOUT)


async def _serve_trio() -> None:
    """The async app inside trio, until SIGTERM / SIGINT (leaving the block stops it)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with aio.serve(
            build_app("trio"), HOST, 0, GRACEFUL_SHUTDOWN_TIMEOUT=STOP_TIMEOUT
        ) as server:
            print(server.port, flush=True)
            async for _ in signals:
                break


async def _serve_websockets() -> None:
    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.cancel)
    async with serve(
        echo, HOST, 0, compression="deflate", max_size=MAX_SIZE, ping_interval=None
    ) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        try:
            await stop
        except asyncio.CancelledError:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=MODES)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if args.mode == "websockets":
        asyncio.run(_serve_websockets())
    elif args.mode == "trio":
        trio.run(_serve_trio)
    else:
        serve_embedws(args.mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
