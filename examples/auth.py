"""An authenticated, rate-limited websocket (authentication inside the handler).

    python examples/auth.py                        # sync handler
    python examples/auth.py --async                # the same with an async handler
    python examples/auth.py --limit 3 --window 10  # 3 messages per 10 s per user

Connect with a token from the table below, in the query string (what a browser
can do) or in an ``Authorization: Bearer`` header (what other clients should
do: query strings end up in logs)::

    python -m websockets "ws://127.0.0.1:8000/ws?token=alice-secret"

The handler accepts every handshake, then closes with 1008 (policy violation)
when the token is missing or unknown. ``examples/auth_middleware.py`` shows the
better practice: refusing the handshake itself with HTTP 401.

Each user may send ``--limit`` messages (default 10) in any ``--window``
seconds (default 60), a sliding window shared by all of the user's
connections; past it a message gets ``{"type": "error", "message": "rate limit
exceeded", "retry_after": seconds}`` and is dropped. Other messages are echoed
as ``{"type": "echo", "user", "text"}``. A user's state goes away when their
last connection closes.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import embedws

logger = logging.getLogger("examples.auth")

#: token → user. A real program asks its user store (and compares tokens with
#: ``hmac.compare_digest``); a table keeps the example self-contained.
TOKENS = {"alice-secret": "alice", "bob-secret": "bob"}


def token_of(request: Any) -> str | None:
    """The token from ``?token=`` or from ``Authorization: Bearer <token>``."""
    token = request.args.get("token")
    if token:
        return str(token)
    scheme, _, value = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def user_of(request: Any) -> str | None:
    """The user the request's token belongs to, or ``None``."""
    token = token_of(request)
    return TOKENS.get(token) if token is not None else None


@dataclass
class _UserState:
    connections: int = 0
    sent: deque[float] = field(default_factory=deque)  # times of accepted messages, oldest first


class RateLimiter:
    """At most ``limit`` messages per user in any ``window`` seconds (a sliding window).

    Users are counted from their first connection to the close of their last
    one; a user with two connections shares one budget.
    Thread contract: every method is safe from any thread (sync handlers run
    on many threads at once).
    """

    def __init__(
        self, limit: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()  # guards _users
        self._users: dict[str, _UserState] = {}

    def connect(self, user: str) -> None:
        """Count one more connection of ``user``."""
        with self._lock:
            self._users.setdefault(user, _UserState()).connections += 1

    def disconnect(self, user: str) -> bool:
        """Count one connection less; ``True`` when it was the last (the state is gone)."""
        with self._lock:
            state = self._users[user]
            state.connections -= 1
            if state.connections == 0:
                del self._users[user]
                return True
            return False

    def allow(self, user: str) -> float | None:
        """Take one message from ``user``'s budget.

        Returns:
            ``None`` if the message may go through, else the seconds until it would.
        """
        now = self._clock()
        with self._lock:
            sent = self._users[user].sent
            while sent and sent[0] <= now - self.window:
                sent.popleft()
            if len(sent) >= self.limit:
                return sent[0] + self.window - now
            sent.append(now)
            return None

    def users(self) -> dict[str, int]:
        """The users with state, and how many connections each has (a snapshot)."""
        with self._lock:
            return {user: state.connections for user, state in self._users.items()}


def reply(limiter: RateLimiter, user: str, message: str | bytes) -> dict[str, Any]:
    """The answer to one message: its echo, or the rate-limit error."""
    retry_after = limiter.allow(user)
    if retry_after is not None:
        return {
            "type": "error",
            "message": "rate limit exceeded",
            "limit": limiter.limit,
            "window": limiter.window,
            "retry_after": round(retry_after, 3),
        }
    text = message if isinstance(message, str) else f"<{len(message)} bytes>"
    return {"type": "echo", "user": user, "text": text}


def make_app(
    use_async: bool = False,
    *,
    limit: int = 10,
    window: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
) -> embedws.App:
    """The app: ``/ws`` for users with a token. ``app.ctx.limiter`` is the rate limiter."""
    app = embedws.App("auth")
    limiter = app.ctx.limiter = RateLimiter(limit, window, clock)
    refused = {"code": 1008, "reason": "missing or invalid token"}

    def welcome(user: str) -> dict[str, Any]:
        return {"type": "welcome", "user": user, "limit": limit, "window": window}

    def gone(user: str) -> None:
        if limiter.disconnect(user):
            logger.info("%s: last connection closed, rate-limit state dropped", user)
        else:
            logger.info("%s: a connection closed, the others share the budget", user)

    if use_async:

        @app.websocket("/ws", name="ws")
        async def ws_async(request: Any, ws: Any) -> None:
            user = user_of(request)
            if user is None:
                await ws.close(**refused)
                return
            limiter.connect(user)
            try:
                await ws.send(welcome(user))
                async for message in ws:
                    await ws.send(reply(limiter, user, message))
            finally:
                gone(user)

    else:

        @app.websocket("/ws", name="ws")
        def ws_sync(request: Any, ws: Any) -> None:
            user = user_of(request)
            if user is None:
                ws.close(**refused)
                return
            limiter.connect(user)
            try:
                ws.send(welcome(user))
                for message in ws:
                    ws.send(reply(limiter, user, message))
            finally:
                gone(user)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--async", dest="use_async", action="store_true", help="async handler")
    parser.add_argument("--limit", type=int, default=10, help="messages per window (default 10)")
    parser.add_argument("--window", type=float, default=60.0, help="seconds (default 60)")
    args = parser.parse_args()
    if args.limit < 1 or args.window <= 0:
        parser.error("--limit and --window must be positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = make_app(args.use_async, limit=args.limit, window=args.window)

    @app.after_server_start
    def announce(app: embedws.App) -> None:
        for server in app.servers:
            print(f"auth demo on {server.url}/ws?token=alice-secret  (Ctrl-C to stop)", flush=True)

    app.run(args.host, args.port)


if __name__ == "__main__":
    main()
