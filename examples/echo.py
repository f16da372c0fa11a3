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
from typing import Any

import embedws
from embedws.response import HTTPResponse, html

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>embedws echo</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; }
  #log { border: 1px solid #ccc; min-height: 12rem; padding: .5rem; white-space: pre-wrap; }
  #status.open { color: green; } #status.closed { color: #b00; }
</style>
</head>
<body>
<h1>embedws echo</h1>
<p>Status: <span id="status">connecting…</span></p>
<form id="form">
  <input id="message" autocomplete="off" placeholder="Type a message" autofocus>
  <button type="submit">Send</button>
</form>
<div id="log"></div>
<script>
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws`);
  const status = document.getElementById("status");
  const log = document.getElementById("log");
  function line(text, cls) {
    const div = document.createElement("div");
    div.textContent = text;
    div.className = cls;
    log.appendChild(div);
  }
  ws.onopen = () => { status.textContent = "open"; status.className = "open"; };
  ws.onclose = (e) => { status.textContent = `closed (${e.code})`; status.className = "closed"; };
  ws.onmessage = (e) => line(`< ${e.data}`, "received");
  document.getElementById("form").onsubmit = (e) => {
    e.preventDefault();
    const input = document.getElementById("message");
    if (input.value && ws.readyState === WebSocket.OPEN) {
      ws.send(input.value);
      line(`> ${input.value}`, "sent");
      input.value = "";
    }
  };
</script>
</body>
</html>
"""


def make_app(use_async: bool = False) -> embedws.App:
    """The echo app: ``GET /`` serves the page, ``/ws`` echoes every message."""
    app = embedws.App("echo")

    @app.route("/")
    def index(request: Any) -> HTTPResponse:
        return html(PAGE)

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
