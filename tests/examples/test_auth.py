"""examples/auth.py (close 1008, rate limit) and examples/auth_middleware.py (HTTP 401)."""

from __future__ import annotations

import json
from contextlib import ExitStack
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosedError
from websockets.exceptions import InvalidStatus as WebsocketsInvalidStatus

import embedws
from embedws.errors import InvalidStatus

from ..conftest import LogWaiter, client, seconds, serving
from .conftest import Program, http_get, load_example, recv_json


class Clock:
    """A clock the test moves by hand, so the sliding window needs no waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_app(form: str, **options: Any) -> embedws.App:
    return load_example("auth").make_app(form == "async", **options)  # type: ignore[no-any-return]


def send(ws: Any, text: str) -> Any:
    """Send one message; the server's answer to it."""
    ws.send(text)
    return recv_json(ws)


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/ws", {}),
        ("/ws?token=wrong", {}),
        ("/ws?token=", {}),
        ("/ws", {"Authorization": "Bearer wrong"}),
        ("/ws", {"Authorization": "Basic YWxpY2U6c2VjcmV0"}),
    ],
)
def test_missing_or_invalid_token_closes_with_1008(
    form: str, path: str, headers: dict[str, str]
) -> None:
    with serving(make_app(form)) as server:
        # Accepted, then closed by the handler with "policy violation".
        with server.connect(path, headers=headers) as ws:
            with pytest.raises(embedws.WebsocketClosed) as closed:
                ws.recv(timeout=seconds(5))
            assert closed.value.code == 1008
            assert closed.value.reason == "missing or invalid token"


def test_1008_seen_by_an_independent_client(form: str) -> None:
    with serving(make_app(form)) as server:
        ws = client(server.url + "/ws?token=wrong")
        with pytest.raises(ConnectionClosedError) as closed:
            ws.recv(timeout=seconds(5))
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1008


def test_token_in_query_or_header(form: str) -> None:
    with serving(make_app(form)) as server:
        with server.connect("/ws?token=alice-secret") as ws:
            assert recv_json(ws) == {"type": "welcome", "user": "alice", "limit": 10, "window": 60}
            assert send(ws, "hi") == {"type": "echo", "user": "alice", "text": "hi"}
        with server.connect("/ws", headers={"Authorization": "Bearer bob-secret"}) as ws:
            assert recv_json(ws)["user"] == "bob"
            assert send(ws, "yo") == {"type": "echo", "user": "bob", "text": "yo"}


def test_rate_limit_after_ten_messages(form: str) -> None:
    with serving(make_app(form)) as server, server.connect("/ws?token=alice-secret") as ws:
        recv_json(ws)
        for n in range(10):
            assert send(ws, f"message {n}")["type"] == "echo"
        error = send(ws, "one too many")
        assert error["type"] == "error"
        assert error["message"] == "rate limit exceeded"
        assert 0 < error["retry_after"] <= 60
        assert send(ws, "still too many")["type"] == "error"  # until the window slides


def test_sliding_window(form: str) -> None:
    clock = Clock()
    app = make_app(form, limit=3, window=10.0, clock=clock)
    with serving(app) as server, server.connect("/ws?token=alice-secret") as ws:
        recv_json(ws)
        assert send(ws, "1")["type"] == "echo"  # at t=1000
        clock.now = 1005.0
        assert send(ws, "2")["type"] == "echo"
        assert send(ws, "3")["type"] == "echo"
        error = send(ws, "4")
        assert error["message"] == "rate limit exceeded"
        assert error["retry_after"] == 5.0  # when "1" leaves the window
        clock.now = 1010.0
        assert send(ws, "5")["type"] == "echo"  # "1" left the window: one slot free
        assert send(ws, "6")["retry_after"] == 5.0  # "2" and "3" are still in it


def test_budget_shared_per_user_and_state_dropped(form: str, logs: LogWaiter) -> None:
    app = make_app(form, limit=3, window=60.0, clock=Clock())
    limiter = app.ctx.limiter
    with serving(app) as server, ExitStack() as stack:
        alice1 = stack.enter_context(server.connect("/ws?token=alice-secret"))
        alice2 = stack.enter_context(server.connect("/ws?token=alice-secret"))
        bob = stack.enter_context(server.connect("/ws?token=bob-secret"))
        for ws in (alice1, alice2, bob):
            recv_json(ws)  # welcome: the user is counted
        assert limiter.users() == {"alice": 2, "bob": 1}
        assert send(alice1, "a")["type"] == "echo"
        assert send(alice1, "b")["type"] == "echo"
        assert send(alice2, "c")["type"] == "echo"
        assert send(alice2, "d")["type"] == "error"  # alice's third was her last
        assert send(bob, "e")["type"] == "echo"  # bob has his own budget

        alice1.close()
        logs.wait_for("alice: a connection closed")
        assert limiter.users() == {"alice": 1, "bob": 1}
        assert send(alice2, "f")["type"] == "error"  # the budget survives while alice is here

        alice2.close()
        logs.wait_for("alice: last connection closed, rate-limit state dropped")
        assert limiter.users() == {"bob": 1}
        with server.connect("/ws?token=alice-secret") as again:
            recv_json(again)
            for text in "ghi":  # a fresh budget
                assert send(again, text)["type"] == "echo"


def test_auth_program(program_args: list[str]) -> None:
    with Program("auth", *program_args, "--limit", "2", "--window", "60") as program:
        ws = client(
            program.ws_url + "/ws", additional_headers={"Authorization": "Bearer bob-secret"}
        )
        try:
            assert json.loads(ws.recv(timeout=seconds(5)))["limit"] == 2
            for text in ("one", "two", "three"):
                ws.send(text)
            answers = [json.loads(ws.recv(timeout=seconds(5))) for _ in range(3)]
            assert [a["type"] for a in answers] == ["echo", "echo", "error"]
        finally:
            ws.close()
        refused = client(program.ws_url + "/ws")
        with pytest.raises(ConnectionClosedError) as closed:
            refused.recv(timeout=seconds(5))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert program.stop() == 0


# The middleware variant ---------------------------------------------------------------


@pytest.fixture
def middleware_app() -> embedws.App:
    return load_example("auth_middleware").make_app()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("path", "headers"),
    [("/ws", {}), ("/ws?token=wrong", {}), ("/ws", {"Authorization": "Bearer wrong"})],
)
def test_middleware_refuses_the_handshake_with_401(
    middleware_app: embedws.App, path: str, headers: dict[str, str]
) -> None:
    with serving(middleware_app) as server:
        with pytest.raises(InvalidStatus) as refused:
            server.connect(path, headers=headers)
        assert refused.value.status == 401
        assert refused.value.headers["WWW-Authenticate"] == 'Bearer realm="embedws"'
        assert len(middleware_app.connections) == 0  # no websocket, no handler


def test_middleware_lets_users_in_and_leaves_http_open(middleware_app: embedws.App) -> None:
    with serving(middleware_app) as server:
        status, _, body = http_get(f"http://127.0.0.1:{server.port}/")
        assert status == 200
        assert "public" in body
        with server.connect("/ws?token=alice-secret") as ws:
            assert recv_json(ws) == {"type": "welcome", "user": "alice"}
            assert send(ws, "hi") == {"type": "echo", "user": "alice", "text": "hi"}
        with server.connect("/ws", headers={"Authorization": "Bearer bob-secret"}) as ws:
            assert recv_json(ws)["user"] == "bob"


def test_auth_middleware_program() -> None:
    with Program("auth_middleware") as program:
        with pytest.raises(WebsocketsInvalidStatus) as refused:
            client(program.ws_url + "/ws?token=nope")
        assert refused.value.response.status_code == 401
        ws = client(program.ws_url + "/ws?token=alice-secret")
        try:
            assert json.loads(ws.recv(timeout=seconds(5)))["user"] == "alice"
        finally:
            ws.close()
        assert program.stop() == 0
