"""The echo server with its HTML test page.

    python examples/echo.py            # sync handler (a plain function on a thread)
    python examples/echo.py --async    # the same with an async handler
    python examples/echo.py --port 0   # any free port (printed at start)

Open the printed http:// address in a browser: the page connects back to
``/ws`` on the same host and port (so the default origin check lets it in) and
echoes what you type.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import embedws

PAGES = Path(__file__).resolve().parent / "pages" / "echo"  # index.html and its friends


def make_app(use_async: bool = False) -> embedws.App:
    """The echo app: ``GET /`` serves the page, ``/ws`` echoes every message."""
    app = embedws.App("echo")

    app.static("/", PAGES)  # GET / serves pages/echo/index.html

    if use_async:

        @app.websocket("/ws", name="echo")
        async def echo_async(request: Any, ws: Any) -> None:
            async for message in ws:
                await ws.send(message)

    else:

        @app.websocket("/ws", name="echo")
        def echo_sync(request: Any, ws: Any) -> None:
            for message in ws:
                ws.send(message)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--async", dest="use_async", action="store_true", help="async handler")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = make_app(args.use_async)

    @app.after_server_start
    def announce(app: embedws.App) -> None:
        for server in app.servers:
            url = server.url.replace("ws", "http", 1)
            print(f"echo demo on {url}/  (Ctrl-C to stop)", flush=True)

    app.run(args.host, args.port)


if __name__ == "__main__":
    main()
