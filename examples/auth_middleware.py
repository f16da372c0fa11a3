"""Authentication the better way: refuse the handshake with HTTP 401 in middleware.

    python examples/auth_middleware.py
    python examples/auth_middleware.py --port 0   # any free port (printed at start)

``examples/auth.py`` accepts every websocket and closes it with 1008 when the
token is bad: the handler thread starts, the upgrade succeeds, and a browser
only learns the close code. Here an ``@app.on_request`` middleware checks the
token *before* the upgrade is accepted: a bad token gets ``401 Unauthorized``
(with ``WWW-Authenticate``), no websocket is opened, no handler runs. The user
it found reaches the handler as ``request.ctx.user``.

Only the websocket route is protected: the middleware looks at the matched
route, so ``GET /`` (a public page) needs no token. Tokens come from
``?token=`` or ``Authorization: Bearer``, read by ``auth.py``'s ``user_of``::

    python -m websockets "ws://127.0.0.1:8000/ws?token=alice-secret"

``auth.py``'s per-user rate limiter works unchanged on top of this: call it
with ``request.ctx.user``.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from auth import user_of  # this folder: the same tokens as examples/auth.py

import embedws
from embedws.response import HTTPResponse, text

logger = logging.getLogger("examples.auth_middleware")


def make_app() -> embedws.App:
    """The app: ``GET /`` is public, ``/ws`` needs a token."""
    app = embedws.App("auth-middleware")

    @app.on_request
    def authenticate(request: Any) -> HTTPResponse | None:
        # Runs before every handler and handshake, on a thread of its own (a
        # def middleware runs off the event loop): a database call here would
        # stall no connection. Routes other than websockets pass untouched.
        if request.route is None or request.route.kind != "websocket":
            return None
        user = user_of(request)
        if user is None:
            logger.info("refused %s: missing or invalid token", request.path)
            return text(
                "missing or invalid token\n",
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="embedws"'},
            )
        request.ctx.user = user
        return None

    @app.route("/")
    def index(request: Any) -> HTTPResponse:
        return text("public page: no token needed here; /ws needs one\n")

    @app.websocket("/ws")
    def ws_handler(request: Any, ws: Any) -> None:
        user = request.ctx.user  # set by authenticate(): this handler only runs for users
        ws.send({"type": "welcome", "user": user})
        for message in ws:
            shown = message if isinstance(message, str) else f"<{len(message)} bytes>"
            ws.send({"type": "echo", "user": user, "text": shown})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = make_app()

    @app.after_server_start
    def announce(app: embedws.App) -> None:
        for server in app.servers:
            print(f"auth middleware demo on {server.url}/ws?token=alice-secret", flush=True)

    app.run(args.host, args.port)


if __name__ == "__main__":
    main()
