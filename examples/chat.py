"""A multi-room chat server with a browser page.

    python examples/chat.py            # sync handlers (plain functions on threads)
    python examples/chat.py --async    # the same with async handlers
    python examples/chat.py --port 0   # any free port (printed at start)

Open the printed http:// address in two browser tabs, join the same room and
chat. The protocol, all JSON text messages on ``/ws/chat/<room_id>``:

* on connect the newcomer gets ``{"type": "welcome", "room", "client_id",
  "members"}`` and the others in the room ``{"type": "join", "room",
  "client_id", "clients"}``;
* ``{"type": "chat", "text": "..."}`` in becomes ``{"type": "chat", "room",
  "from", "text"}`` out, to everyone in the room *including the sender*: the
  sender's page shows its own line when the server relays it, so every member
  sees the same messages in the same order;
* the others get ``{"type": "leave", "room", "client_id", "clients"}`` when a
  member disconnects;
* input that is not a JSON object gets ``{"type": "error", "message": "Invalid
  JSON format"}``, an unknown ``type`` or a chat without text another error.

Rooms are embedws rooms: made on first use, gone once empty. ``GET /api/rooms``
lists them: ``{"rooms": [{"name", "clients"}], "total_clients"}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from pathlib import Path
from typing import Any

import embedws
from embedws.response import HTTPResponse
from embedws.response import json as json_response

logger = logging.getLogger("examples.chat")

#: Longest chat text relayed; longer ones get an error (keeps one client from
#: flooding the others' screens).
MAX_TEXT = 2000

PAGES = Path(__file__).resolve().parent / "pages" / "chat"  # index.html and its friends


def client_id_of(ws: Any) -> str:
    """The name other members see: derived from the connection's id, unique in the app."""
    return f"user-{ws.id}"


def interpret(message: str | bytes, room_id: str, client_id: str) -> tuple[bool, dict[str, Any]]:
    """Decide what to do with one incoming message.

    Returns:
        ``(True, chat)`` to broadcast ``chat`` to the room, or ``(False,
        error)`` to answer the sender alone.
    """
    try:
        data = json.loads(message)
    except ValueError:  # binary that is not UTF-8 raises UnicodeDecodeError, a ValueError
        data = None
    if not isinstance(data, dict):
        return False, {"type": "error", "message": "Invalid JSON format"}
    if data.get("type") != "chat":
        return False, {"type": "error", "message": f"Unknown message type: {data.get('type')!r}"}
    text = data.get("text")
    if not isinstance(text, str) or not text.strip():
        return False, {"type": "error", "message": "A chat message needs a non-empty text"}
    if len(text) > MAX_TEXT:
        return False, {"type": "error", "message": f"Text longer than {MAX_TEXT} characters"}
    return True, {"type": "chat", "room": room_id, "from": client_id, "text": text}


def make_app(use_async: bool = False) -> embedws.App:
    """The chat app: ``GET /`` (the page), ``GET /api/rooms``, ``/ws/chat/<room_id>``."""
    app = embedws.App("chat")

    app.static("/", PAGES)  # GET / serves pages/chat/index.html

    @app.get("/api/rooms")
    def rooms(request: Any) -> HTTPResponse:
        # One snapshot, so the list and the total always agree; every chat
        # client is in exactly one room.
        sizes = app.rooms
        listing = [{"name": name, "clients": n} for name, n in sorted(sizes.items())]
        return json_response({"rooms": listing, "total_clients": sum(sizes.values())})

    def welcome(room: Any, ws: Any, room_id: str) -> dict[str, Any]:
        members = sorted(client_id_of(other) for other in room if other is not ws)
        return {
            "type": "welcome",
            "room": room_id,
            "client_id": client_id_of(ws),
            "members": members,
        }

    def join_notice(room: Any, room_id: str, client_id: str) -> dict[str, Any]:
        return {"type": "join", "room": room_id, "client_id": client_id, "clients": len(room)}

    def leave(room: Any, ws: Any, room_id: str, client_id: str) -> None:
        # Leave explicitly (the room would drop us once the TCP connection is
        # gone, but the notice should carry the new count).
        room.discard(ws)
        room.broadcast(
            {"type": "leave", "room": room_id, "client_id": client_id, "clients": len(room)}
        )
        logger.info("%s left room %s", client_id, room_id)

    if use_async:

        @app.websocket("/ws/chat/<room_id>", name="chat")
        async def chat_async(request: Any, ws: Any, room_id: str) -> None:
            room, client_id = app.room(room_id), client_id_of(ws)
            # Handlers all run on the loop: nothing interleaves with these
            # lines (sending a first message does not wait), so the members
            # list, the join and the notice are consistent.
            await ws.send(welcome(room, ws, room_id))
            room.add(ws)
            room.broadcast(join_notice(room, room_id, client_id), exclude=ws)
            logger.info("%s joined room %s", client_id, room_id)
            try:
                async for message in ws:
                    relay, out = interpret(message, room_id, client_id)
                    if relay:
                        room.broadcast(out)  # a plain call here too: it never blocks
                    else:
                        await ws.send(out)
            finally:
                leave(room, ws, room_id, client_id)

    else:
        # Sync handlers run on threads at once: joins are serialized so that two
        # newcomers each either list the other as a member or get its join
        # notice, never neither.
        joining = threading.Lock()

        @app.websocket("/ws/chat/<room_id>", name="chat")
        def chat_sync(request: Any, ws: Any, room_id: str) -> None:
            room, client_id = app.room(room_id), client_id_of(ws)
            with joining:
                # The welcome is queued before we join: a member's chat, sent
                # once we are in, cannot overtake it. (A first, small send never
                # waits, so no handler holds the lock across a wait, greenlet
                # mode included.)
                ws.send(welcome(room, ws, room_id))
                room.add(ws)
                room.broadcast(join_notice(room, room_id, client_id), exclude=ws)
            logger.info("%s joined room %s", client_id, room_id)
            try:
                for message in ws:
                    relay, out = interpret(message, room_id, client_id)
                    if relay:
                        room.broadcast(out)
                    else:
                        ws.send(out)
            finally:
                leave(room, ws, room_id, client_id)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--async", dest="use_async", action="store_true", help="async handlers")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = make_app(args.use_async)

    @app.after_server_start
    def announce(app: embedws.App) -> None:
        for server in app.servers:
            url = server.url.replace("ws", "http", 1)
            print(f"chat demo on {url}/  (Ctrl-C to stop)", flush=True)

    app.run(args.host, args.port)


if __name__ == "__main__":
    main()
