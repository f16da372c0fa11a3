"""A command-line script that serves websockets in the background and talks to them.

    python examples/cli.py

No ``async`` anywhere: ``app.start(port=0)`` returns once the server listens on
a free port, the script talks to it with the blocking client
(``embedws.sync.connect``), prints what it got, stops the server and exits 0,
leaving no thread behind (it checks). It shows:

* an echo round trip (text, JSON, binary);
* a broadcast to a room of subscribers, from the script's own thread;
* subprotocol negotiation (the server picks its favourite that the client offers).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import Any

import embedws
import embedws.sync

#: How long any single wait may take before the script gives up (seconds).
TIMEOUT = 5.0


def make_app() -> embedws.App:
    """``/echo`` echoes, ``/news`` joins the "news" room, ``/chat`` speaks two subprotocols."""
    app = embedws.App("cli")

    @app.websocket("/echo")
    def echo(request: Any, ws: Any) -> None:
        for message in ws:
            ws.send(message)

    @app.websocket("/news")
    def news(request: Any, ws: Any) -> None:
        app.room("news").add(ws)
        # Tell the subscriber it is in: a broadcast made after this reaches it.
        ws.send({"subscribed": "news"})
        ws.wait_closed()  # the room does the sending; leaving is automatic

    @app.websocket("/chat", subprotocols=["chat.v2", "chat.v1"])
    def chat(request: Any, ws: Any) -> None:
        ws.send(f"you speak {ws.subprotocol}")

    return app


def recv_text(ws: embedws.sync.Websocket) -> str:
    """The next message, which must be text."""
    message = ws.recv(timeout=TIMEOUT)
    if not isinstance(message, str):
        raise TypeError(f"expected a text message, got {message!r}")
    return message


def run(verbose: bool = True) -> list[str]:
    """Start the server, talk to it, stop it; return the lines printed."""
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        if verbose:
            print(line, flush=True)

    app = make_app()
    server = app.start(port=0)
    try:
        say(f"server listening on {server.url}")

        with embedws.sync.connect(server.url + "/echo") as ws:
            ws.send("hello")
            say(f"echo: {recv_text(ws)}")
            ws.send({"answer": 42})  # a dict goes out as JSON text
            say(f"echo json: {json.loads(ws.recv(timeout=TIMEOUT))}")
            ws.send(b"\x00\x01\x02")
            say(f"echo binary: {ws.recv(timeout=TIMEOUT)!r}")

        subscribers = [embedws.sync.connect(server.url + "/news") for _ in range(2)]
        try:
            for sub in subscribers:
                sub.recv(timeout=TIMEOUT)  # {"subscribed": "news"}: now in the room
            sent_to = app.room("news").broadcast("extra! extra!")
            say(f"broadcast to {sent_to} subscribers")
            for number, sub in enumerate(subscribers, 1):
                say(f"subscriber {number} got: {recv_text(sub)}")
        finally:
            for sub in subscribers:
                sub.close()

        with embedws.sync.connect(server.url + "/chat", subprotocols=["chat.v1"]) as ws:
            say(f"subprotocol: {ws.subprotocol}; server says: {recv_text(ws)}")
    finally:
        server.stop()
    say("server stopped")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    run()
    # stop() joined the server's threads and the client's loop thread is gone
    # with the last client: a script can simply end here.
    left = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if left:
        print(f"threads left running: {left}", file=sys.stderr)
        return 1
    print("no threads left: bye")
    return 0


if __name__ == "__main__":
    sys.exit(main())
