"""Broadcast, rooms and the live connection registry, from any thread."""

from __future__ import annotations

import json
import logging
import random
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import psutil
import pytest

import embedws

from .conftest import RawClient, add_handler, client, seconds, serving


def make_app(kind: str = "thread", **config: Any) -> embedws.App:
    """``/room/<name>``: join the room, report the websocket id, then echo to the room."""
    app = embedws.App("rooms", config=config or None)

    def handler(request: Any, ws: Any, name: str) -> None:
        app.room(name).add(ws)
        ws.send({"id": ws.id, "rooms": sorted(ws.rooms)})
        for message in ws:
            app.room(name).broadcast(message, exclude=ws)

    async def ahandler(request: Any, ws: Any, name: str) -> None:
        app.room(name).add(ws)
        await ws.send({"id": ws.id, "rooms": sorted(ws.rooms)})
        async for message in ws:
            app.room(name).broadcast(message, exclude=ws)

    add_handler(app, "/room/<name>", kind, handler, ahandler, name="room")

    def idle(request: Any, ws: Any) -> None:
        ws.send({"id": ws.id})
        ws.wait_closed()

    app.add_websocket_route(idle, "/idle")
    return app


def joined(url: str, **kwargs: Any) -> tuple[Any, int]:
    c = client(url, **kwargs)
    info = json.loads(c.recv(timeout=seconds(5)))
    return c, info["id"]


def wait_until(predicate: Any, timeout: float = seconds(5.0)) -> None:
    """For registry state that changes on the loop after a client acts."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(seconds(0.005))


def test_broadcast_from_another_thread_reaches_the_room_and_no_one_else(kind: str) -> None:
    app = make_app(kind)
    with serving(app) as server:
        members = [joined(server.url + "/room/a")[0] for _ in range(3)]
        outsider, _ = joined(server.url + "/room/b")
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(app.room("a").broadcast("news")))
        thread.start()
        thread.join(seconds(5))
        assert result == [3]
        assert [c.recv(timeout=seconds(5)) for c in members] == ["news"] * 3
        with pytest.raises(TimeoutError):
            outsider.recv(timeout=seconds(0.2))
        for c in [*members, outsider]:
            c.close()


def test_exclude_one_or_several(kind: str) -> None:
    app = make_app(kind)
    with serving(app) as server:
        (a, a_id), (b, b_id), (c, _) = (joined(server.url + "/room/x") for _ in range(3))
        a.send("from a")  # the handler broadcasts it to the room, excluding a
        assert b.recv(timeout=seconds(5)) == "from a" and c.recv(timeout=seconds(5)) == "from a"
        ws_a, ws_b = app.connections.get(a_id), app.connections.get(b_id)
        assert app.room("x").broadcast("not a, not b", exclude=[ws_a, ws_b]) == 1
        assert c.recv(timeout=seconds(5)) == "not a, not b"
        for other in (a, b):
            with pytest.raises(TimeoutError):
                other.recv(timeout=seconds(0.1))
        for conn in (a, b, c):
            conn.close()


def test_mixed_sync_and_async_handlers_share_rooms() -> None:
    app = embedws.App("mixed")

    @app.websocket("/sync/<name>")
    def sync_member(request: Any, ws: Any, name: str) -> None:
        app.room(name).add(ws)
        ws.send("joined")
        for message in ws:
            app.room(name).broadcast(f"sync says {message}", exclude=ws)

    @app.websocket("/async/<name>")
    async def async_member(request: Any, ws: Any, name: str) -> None:
        app.room(name).add(ws)
        await ws.send("joined")
        async for message in ws:
            app.room(name).broadcast(f"async says {message}", exclude=ws)

    @app.websocket("/greenlet/<name>", mode="greenlet")
    def greenlet_member(request: Any, ws: Any, name: str) -> None:
        sync_member(request, ws, name)

    with serving(app) as server:
        clients = [client(server.url + f"/{kind}/shared") for kind in ("sync", "async", "greenlet")]
        for c in clients:
            assert c.recv(timeout=seconds(5)) == "joined"
        assert app.rooms == {"shared": 3}
        clients[0].send("hi")
        assert clients[1].recv(timeout=seconds(5)) == "sync says hi"
        assert clients[2].recv(timeout=seconds(5)) == "sync says hi"
        clients[1].send("yo")
        assert clients[0].recv(timeout=seconds(5)) == "async says yo"
        assert clients[2].recv(timeout=seconds(5)) == "async says yo"
        for c in clients:
            c.close()


def test_connections_view_rooms_and_ws_rooms() -> None:
    app = make_app()
    with serving(app) as server:
        (a, a_id), (b, b_id) = joined(server.url + "/room/r1"), joined(server.url + "/room/r2")
        idle, idle_id = joined(server.url + "/idle")
        assert len(app.connections) == 3
        assert {ws.id for ws in app.connections} == {a_id, b_id, idle_id}
        ws_a = app.connections.get(a_id)
        assert isinstance(ws_a, embedws.sync.Websocket) and ws_a in app.connections
        assert app.connections.get(10**9) is None
        assert {ws.id for ws in app.connections.by_route("room")} == {a_id, b_id}
        assert app.rooms == {"r1": 1, "r2": 1}
        app.room("r2").add(ws_a)
        assert ws_a.rooms == frozenset({"r1", "r2"})
        assert ws_a in app.room("r2") and len(app.room("r2")) == 2
        assert {ws.id for ws in app.room("r2")} == {a_id, b_id}
        app.room("r2").discard(ws_a)
        app.room("r2").discard(ws_a)  # twice is fine
        assert ws_a not in app.room("r2") and ws_a.rooms == frozenset({"r1"})
        assert app.broadcast("everyone") == 3
        assert [c.recv(timeout=seconds(5)) for c in (a, b, idle)] == ["everyone"] * 3
        assert app.broadcast("rooms only", route="room", exclude=ws_a) == 1
        assert b.recv(timeout=seconds(5)) == "rooms only"
        for c in (a, b, idle):
            c.close()
        wait_until(lambda: len(app.connections) == 0)
        assert app.rooms == {}


@pytest.mark.parametrize("how", ["close", "reset", "server stop"])
def test_rooms_are_cleaned_up_on_disconnect(how: str) -> None:
    app = make_app()
    server = app.start(port=0)
    try:
        peer = RawClient(server.port, "/room/gone")
        assert b'"id"' in b"".join(bytes(f.data) for f in peer.events(until_close=False))
        wait_until(lambda: app.rooms == {"gone": 1})
        if how == "close":
            from websockets.frames import Close

            peer.send_frame(8, Close(1000, "").serialize())
            peer.events()  # the close reply, then the server's EOF
            peer.close()
        elif how == "reset":
            peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
            peer.close()
        else:
            answering = threading.Thread(target=peer.events)  # answers the 1001
            answering.start()
            server.stop()
            answering.join(seconds(5))
        wait_until(lambda: app.rooms == {} and len(app.connections) == 0)
        peer.close()
    finally:
        server.stop()


def test_broadcast_encodings_and_compression() -> None:
    app = make_app(WEBSOCKET_COMPRESSION="deflate")
    with serving(app) as server:
        plain, _ = joined(server.url + "/room/enc", compression=None)
        deflated, _ = joined(server.url + "/room/enc")
        assert plain.response.headers.get("Sec-WebSocket-Extensions") is None
        assert "permessage-deflate" in deflated.response.headers["Sec-WebSocket-Extensions"]
        room = app.room("enc")
        room.broadcast({"k": "é"})
        room.broadcast(b"\x00\x01")
        room.broadcast("s", encoding="bytes")
        room.broadcast(iter(["frag", "ment"]))
        room.broadcast("z" * 10000)
        for c in (plain, deflated):
            assert c.recv(timeout=seconds(5)) == '{"k":"é"}'
            assert c.recv(timeout=seconds(5)) == b"\x00\x01"
            assert c.recv(timeout=seconds(5)) == b"s"
            assert c.recv(timeout=seconds(5)) == "fragment"
            assert c.recv(timeout=seconds(5)) == "z" * 10000
        with pytest.raises(TypeError):
            room.broadcast(object())
        plain.close()
        deflated.close()


def test_broadcasts_and_sends_from_one_thread_keep_their_order() -> None:
    app = embedws.App("order")
    holder: dict[str, Any] = {}
    ready = threading.Event()

    @app.websocket("/")
    def handler(request: Any, ws: Any) -> None:
        app.room("o").add(ws)
        holder["ws"] = ws
        ready.set()
        ws.wait_closed()

    with serving(app) as server, client(server.url + "/") as c:
        assert ready.wait(seconds(5))

        def mixed() -> None:
            for i in range(200):
                if i % 2:
                    holder["ws"].send(str(i))
                else:
                    app.room("o").broadcast(str(i))

        thread = threading.Thread(target=mixed)
        thread.start()
        got = [c.recv(timeout=seconds(5)) for _ in range(200)]
        thread.join(seconds(5))
    assert got == [str(i) for i in range(200)]


def test_a_reader_that_stops_does_not_delay_the_others_and_is_dropped() -> None:
    app = make_app(WEBSOCKET_WRITE_TIMEOUT=0.5)
    with serving(app) as server:
        slow = RawClient(server.port, "/room/busy", rcvbuf=4096)
        fast, _ = joined(server.url + "/room/busy")
        wait_until(lambda: app.rooms == {"busy": 2})
        payload = "x" * 65536
        started = time.monotonic()
        for _ in range(200):  # 13 MB: far more than the kernel's socket buffers
            app.room("busy").broadcast(payload)
            assert fast.recv(timeout=seconds(5)) == payload  # never held up by the slow one
        assert time.monotonic() - started < seconds(10)
        wait_until(lambda: app.rooms == {"busy": 1}, timeout=seconds(5))  # the slow one is gone
        fast.close()
        slow.close()


def test_random_joins_leaves_and_broadcasts_from_8_threads_stay_consistent() -> None:
    app = make_app()
    with serving(app) as server:
        clients = []
        for _ in range(12):  # unbounded queues: nobody needs to read the broadcasts
            c, _ = joined(server.url + "/idle", max_queue=None)
            clients.append(c)
        sockets = list(app.connections)
        rooms = [f"r{i}" for i in range(5)]
        errors: list[BaseException] = []

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            try:
                for _ in range(10_000 // 8):
                    room = app.room(rng.choice(rooms))
                    action = rng.random()
                    ws = rng.choice(sockets)
                    if action < 0.4:
                        room.add(ws)
                    elif action < 0.8:
                        room.discard(ws)
                    elif action < 0.95:
                        room.broadcast("b", exclude=ws)
                    else:
                        _ = (len(room), list(room), ws in room, ws.rooms, app.rooms)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(seconds(30))
        assert errors == []
        # Each room's members know they are in it, and nobody claims a room
        # that does not list them.
        sizes = app.rooms
        for ws in sockets:
            for name in ws.rooms:
                assert ws in app.room(name)
        for name, size in sizes.items():
            members = list(app.room(name))
            assert size == len(members) > 0
            assert all(name in ws.rooms for ws in members)
        for c in clients:
            c.close()
        wait_until(lambda: app.rooms == {} and len(app.connections) == 0)


# large broadcasts --------------------------------------------------------------------

READERS = """
import os, sys, threading
from websockets.sync.client import connect

FACTOR = float(os.environ.get("EMBEDWS_TESTS_TIMEOUT_FACTOR", "1"))  # as the suite's MS

url, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ready = threading.Barrier(4)
results = []

def read():
    with connect(url, max_size=None, open_timeout=10 * FACTOR) as ws:
        ws.recv(timeout=10 * FACTOR)  # joined
        ready.wait()
        got = [ws.recv(timeout=30 * FACTOR) for _ in range(count)]
        results.append(all(m == bytes([i]) * size for i, m in enumerate(got)))

threads = [threading.Thread(target=read) for _ in range(3)]
for thread in threads:
    thread.start()
ready.wait()
print("ready", flush=True)
for thread in threads:
    thread.join()
print("whole and in order" if results == [True] * 3 else f"wrong: {results}", flush=True)
"""


def test_a_burst_of_large_broadcasts_reaches_readers_and_drops_only_the_one_that_stops(
    kind: str,
) -> None:
    app = make_app(kind, WEBSOCKET_WRITE_TIMEOUT=2)
    count, size = 20, 2**20
    payloads = [bytes([i]) * size for i in range(count)]
    process = psutil.Process()
    with serving(app) as server:
        stuck = RawClient(server.port, "/room/burst", rcvbuf=4096)  # reads its welcome only
        stuck_id = json.loads(stuck.events(until_close=False)[0].data)["id"]
        with subprocess.Popen(
            [sys.executable, "-c", READERS, server.url + "/room/burst", str(count), str(size)],
            stdout=subprocess.PIPE,
            text=True,
        ) as readers:
            assert readers.stdout is not None
            assert readers.stdout.readline().strip() == "ready"
            wait_until(lambda: app.rooms == {"burst": 4})
            peak, before = [0], process.memory_info().rss
            sampling = threading.Event()

            def sample() -> None:
                while not sampling.is_set():
                    peak[0] = max(peak[0], process.memory_info().rss - before)
                    sampling.wait(seconds(0.005))

            sampler = threading.Thread(target=sample)
            sampler.start()
            started = time.monotonic()
            for payload in payloads:  # a plain thread, as fast as it can
                app.room("burst").broadcast(payload)
            try:
                assert readers.stdout.readline().strip() == "whole and in order"
                # The reader that stopped goes within the write timeout.
                wait_until(lambda: app.connections.get(stuck_id) is None, timeout=seconds(10))
                dropped_after = time.monotonic() - started
            finally:
                sampling.set()
                sampler.join()
                readers.kill()
        stuck.close()
    assert dropped_after < 2 + seconds(3), dropped_after
    # The 20 MiB are held once, not once per recipient, and never past the cap.
    assert peak[0] < app.config.WEBSOCKET_MAX_BACKLOG, peak[0]


def test_a_reader_more_than_max_backlog_behind_is_dropped_at_once(logs: Any) -> None:
    app = make_app(WEBSOCKET_WRITE_TIMEOUT=60, WEBSOCKET_MAX_BACKLOG=2**20)
    with serving(app) as server:
        slow = RawClient(server.port, "/room/behind", rcvbuf=4096)
        fast, _ = joined(server.url + "/room/behind")
        wait_until(lambda: app.rooms == {"behind": 2})
        payload = b"x" * 65536
        sent = 0
        while app.rooms == {"behind": 2}:
            app.room("behind").broadcast(payload)
            assert fast.recv(timeout=seconds(5)) == payload
            sent += 1
            assert sent < 200, "the reader that stopped was never dropped"
        # Past 1 MiB and what the kernel holds, long before the 60 s write timeout.
        assert sent * len(payload) > 2**20
        logs.wait_for("WEBSOCKET_MAX_BACKLOG is 1048576", level=logging.WARNING)
        fast.close()
        slow.close()
