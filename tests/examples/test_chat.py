"""examples/chat.py: rooms, welcome/join/leave notices, broadcast, errors, /api/rooms."""

from __future__ import annotations

import json
from contextlib import ExitStack
from typing import Any

import pytest

import embedws
from embedws.sync import Server

from ..conftest import LogWaiter, client, seconds, serving
from .conftest import Program, http_get, load_example, recv_json


@pytest.fixture
def app(form: str) -> embedws.App:
    return load_example("chat").make_app(form == "async")  # type: ignore[no-any-return]


def join(stack: ExitStack, server: Server, room: str) -> tuple[Any, str]:
    """A client in ``room`` (closed with the stack), and the id its welcome gave it."""
    ws = stack.enter_context(server.connect(f"/ws/chat/{room}"))
    welcome = recv_json(ws)
    assert welcome["type"] == "welcome"
    assert welcome["room"] == room
    return ws, welcome["client_id"]


def chat(ws: Any, text: str) -> None:
    ws.send(json.dumps({"type": "chat", "text": text}))


def rooms(server: Server) -> Any:
    status, content_type, body = http_get(f"http://127.0.0.1:{server.port}/api/rooms")
    assert status == 200
    assert content_type.startswith("application/json")
    return json.loads(body)


def test_welcome_join_chat_leave(app: embedws.App) -> None:
    with serving(app) as server, ExitStack() as stack:
        alice, alice_id = join(stack, server, "lobby")
        with server.connect("/ws/chat/lobby") as bob:
            welcome = recv_json(bob)
            bob_id = welcome["client_id"]
            assert welcome == {
                "type": "welcome",
                "room": "lobby",
                "client_id": bob_id,
                "members": [alice_id],
            }
            assert bob_id != alice_id
            # The others hear of the newcomer; the newcomer only gets its welcome.
            assert recv_json(alice) == {
                "type": "join",
                "room": "lobby",
                "client_id": bob_id,
                "clients": 2,
            }
            chat(bob, "hi all")
            expected = {"type": "chat", "room": "lobby", "from": bob_id, "text": "hi all"}
            assert recv_json(bob) == expected  # the sender gets its own message too...
            assert recv_json(alice) == expected  # ...and so does everyone else
            chat(alice, "hello bob")
            assert recv_json(bob)["text"] == "hello bob"
            assert recv_json(alice)["text"] == "hello bob"
        assert recv_json(alice) == {
            "type": "leave",
            "room": "lobby",
            "client_id": bob_id,
            "clients": 1,
        }


def test_errors_go_to_the_sender_only(app: embedws.App) -> None:
    with serving(app) as server, ExitStack() as stack:
        alice, _ = join(stack, server, "lobby")
        bob, bob_id = join(stack, server, "lobby")
        assert recv_json(alice)["type"] == "join"
        for bad in ("not json", "[1, 2]", b"\xff\xfe", '"a string"'):
            bob.send(bad)
            assert recv_json(bob) == {"type": "error", "message": "Invalid JSON format"}
        bob.send(json.dumps({"type": "dance"}))
        assert recv_json(bob)["type"] == "error"
        bob.send(json.dumps({"type": "chat", "text": ""}))
        assert recv_json(bob)["type"] == "error"
        chat(bob, "still here")
        assert recv_json(bob)["text"] == "still here"
        # Alice saw none of the errors: her next message is the chat.
        assert recv_json(alice) == {
            "type": "chat",
            "room": "lobby",
            "from": bob_id,
            "text": "still here",
        }


def test_rooms_are_separate_and_listed(app: embedws.App, logs: LogWaiter) -> None:
    with serving(app) as server, ExitStack() as stack:
        assert rooms(server) == {"rooms": [], "total_clients": 0}
        alice, alice_id = join(stack, server, "red")
        bob, _ = join(stack, server, "red")
        assert recv_json(alice)["type"] == "join"
        with server.connect("/ws/chat/blue") as carol:
            carol_id = recv_json(carol)["client_id"]
            # A sync handler sends the welcome before it joins the room.
            logs.wait_for(f"{carol_id} joined room blue")
            assert rooms(server) == {
                "rooms": [{"name": "blue", "clients": 1}, {"name": "red", "clients": 2}],
                "total_clients": 3,
            }
            chat(carol, "anyone in blue?")
            assert recv_json(carol)["text"] == "anyone in blue?"
            chat(bob, "red only")
            # Alice's next message is Bob's: Carol's went to her room only.
            assert recv_json(alice)["text"] == "red only"
        # The handler logs once it left the room (after the leave notice).
        logs.wait_for(f"{carol_id} left room blue")
        assert rooms(server) == {"rooms": [{"name": "red", "clients": 2}], "total_clients": 2}
        bob.close()
        assert recv_json(alice)["type"] == "leave"
        alice.close()
        logs.wait_for(f"{alice_id} left room red")
        # Both have left: the empty room is gone by itself.
        assert rooms(server) == {"rooms": [], "total_clients": 0}


def test_chat_program(program_args: list[str]) -> None:
    with Program("chat", *program_args) as program:
        status, content_type, page = http_get(program.http_url + "/")
        assert status == 200
        assert content_type.startswith("text/html")
        for needle in ('id="room"', 'id="message"', 'id="send"', 'id="messages"', "location.host"):
            assert needle in page
        ws = client(program.ws_url + "/ws/chat/lobby")  # the `websockets` client
        try:
            welcome = json.loads(ws.recv(timeout=seconds(5)))
            assert welcome["type"] == "welcome"
            ws.send(json.dumps({"type": "chat", "text": "hi"}))
            assert json.loads(ws.recv(timeout=seconds(5)))["text"] == "hi"
            assert json.loads(http_get(program.http_url + "/api/rooms")[2])["total_clients"] == 1
        finally:
            ws.close()
        assert program.stop() == 0
