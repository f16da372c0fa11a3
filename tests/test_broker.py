"""Scale-out on Redis: rooms and broadcast across processes (issue 24).

Every test runs a real ``redis-server`` (the ``redis_server`` fixture). Two apps
in one test, each with its own ``RedisBroker`` (distinct node ids), are two
processes as far as Redis and the brokers are concerned; one test runs a real
second OS process. Waiting on Redis state (a subscription landing) polls with a
deadline; everything else synchronises on messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import embedws
from embedws.broker import Envelope, EnvelopeError, SequenceTracker, decode, encode
from embedws.errors import BrokerError

from .conftest import (
    MS,
    LogWaiter,
    RedisClusterServers,
    RedisServer,
    add_handler,
    client,
    seconds,
    serving,
)

PREFIX = "t"


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 5000 * MS) -> None:
    """Poll Redis-side state with a deadline (there is no event to wait on)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(seconds(0.005))


def numsub(redis: RedisServer, channel: str) -> int:
    r = redis.client()
    try:
        return int(r.pubsub_numsub(channel)[0][1])
    finally:
        r.close()


def channels(redis: RedisServer, pattern: str = f"{PREFIX}:*") -> set[str]:
    r = redis.client()
    try:
        return {c.decode() for c in r.pubsub_channels(pattern)}
    finally:
        r.close()


def redis_clients(redis: RedisServer) -> int:
    """Connections Redis has, other than the one asking."""
    r = redis.client()
    try:
        return len(r.client_list()) - 1
    finally:
        r.close()


def act(app: embedws.App, room: Any, ws: Any, message: Any) -> None:
    """What a chat client asks for: ``verb:text``."""
    verb, _, text = str(message).partition(":")
    if verb == "say":
        room.broadcast(text, exclude=ws)
    elif verb == "local":
        room.broadcast(text, exclude=ws, local=True)
    elif verb == "bin":
        room.broadcast(text.encode(), exclude=ws)
    elif verb == "all":
        app.broadcast(text, route="chat")
    elif verb == "burst":
        for i in range(int(text)):
            room.broadcast(f"b{i}", exclude=ws)
    elif verb == "tagged":  # tagged:TAG:N
        tag, _, count = text.partition(":")
        for i in range(int(count)):
            room.broadcast(f"{tag}:{i}", exclude=ws)


def chat_app(name: str, kind: str, broker: embedws.RedisBroker | None) -> embedws.App:
    app = embedws.App(name, broker=broker)

    def chat(request: Any, ws: Any, room: str) -> None:
        members = app.room(room)
        members.add(ws)
        ws.send("joined")
        for message in ws:
            act(app, members, ws, message)

    async def achat(request: Any, ws: Any, room: str) -> None:
        members = app.room(room)
        members.add(ws)
        await ws.send("joined")
        async for message in ws:
            act(app, members, ws, message)

    def other(request: Any, ws: Any) -> None:
        for _message in ws:
            pass

    async def aother(request: Any, ws: Any) -> None:
        async for _message in ws:
            pass

    add_handler(app, "/chat/<room>", kind, chat, achat, name="chat")
    add_handler(app, "/other", kind, other, aother, name="other")
    return app


def join(server: embedws.sync.Server, room: str) -> Any:
    ws = client(f"{server.url}/chat/{room}")
    assert ws.recv(timeout=seconds(5)) == "joined"
    return ws


def broker(redis: RedisServer | RedisClusterServers, **options: Any) -> embedws.RedisBroker:
    options.setdefault("prefix", PREFIX)
    return embedws.RedisBroker(redis.url, **options)


@contextlib.contextmanager
def two_servers(
    kind: str, redis: RedisServer | RedisClusterServers, **options: Any
) -> Iterator[tuple[embedws.sync.Server, embedws.sync.Server]]:
    """Two apps with a broker each on one Redis: two processes, as far as Redis knows."""
    app_a = chat_app("a", kind, broker(redis, **options))
    app_b = chat_app("b", kind, broker(redis, **options))
    with serving(app_a) as a, serving(app_b) as b:
        yield a, b


def app_of(server: embedws.sync.Server) -> embedws.App:
    app = server.async_server.app
    assert isinstance(app, embedws.App)
    return app


def broker_of(server: embedws.sync.Server) -> embedws.RedisBroker:
    found = app_of(server).broker
    assert found is not None
    return found


# The envelope (pure) -------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["json", "msgpack"])
@pytest.mark.parametrize(
    ("is_text", "data"), [(True, "héllo ☃".encode()), (False, bytes(range(256)))]
)
def test_an_envelope_round_trips(codec: Any, is_text: bool, data: bytes) -> None:
    envelope = Envelope("n1", 7, is_text, data, room="r", route=None, exclude=("n1:3",))
    raw = encode(envelope, codec)
    assert decode(raw, codec) == envelope
    if codec == "json":
        assert b'"v":1' in raw and b'"seq":7' in raw and b"pickle" not in raw


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b'{"v":2,"node":"n","seq":1,"kind":"text","data":"x"}',
        b'{"v":1,"node":"n","seq":"1","kind":"text","data":"x"}',
        b'{"v":1,"node":"n","seq":1,"kind":"binary","data":"***"}',
        b'{"v":1,"node":"n","seq":1,"kind":"text"}',
        b"\x80\x04\x95",  # the start of a pickle
    ],
)
def test_anything_else_is_refused(raw: bytes) -> None:
    with pytest.raises(EnvelopeError):
        decode(raw)


def test_sequence_gaps_and_repeats_are_told_apart() -> None:
    tracker = SequenceTracker()
    assert tracker.check("a", "c", 5) == 0  # first seen mid-stream: nothing lost
    assert tracker.check("a", "c", 6) == 0
    assert tracker.check("a", "c", 9) == 2
    assert tracker.check("a", "c", 9) is None
    assert tracker.check("b", "c", 1) == 0
    assert tracker.gaps == 2


def test_the_defaults_and_a_clear_error_for_a_bad_option(redis_server: RedisServer) -> None:
    made = broker(redis_server)
    assert made.max_message_size == 1 << 20
    assert made.codec == "json" and made.on_error == "log"
    assert made.node_id != broker(redis_server).node_id
    with pytest.raises(ValueError, match="on_error"):
        broker(redis_server, on_error="ignore")
    with pytest.raises(ValueError, match="codec"):
        broker(redis_server, codec="pickle")
    with pytest.raises(ValueError, match="another app"):
        embedws.App("x", broker=made)
        embedws.App("y", broker=made)


def test_without_the_extras_import_works_and_the_error_names_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    program = "import sys; sys.modules['redis'] = sys.modules['msgpack'] = None; import embedws"
    subprocess.run([sys.executable, "-c", program], check=True, timeout=seconds(60))
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    monkeypatch.setitem(sys.modules, "msgpack", None)
    with pytest.raises(ImportError, match=r"embedws\[redis\]"):
        embedws.RedisBroker()
    with pytest.raises(ImportError, match=r"embedws\[redis\]"):
        embedws.Emitter()
    with pytest.raises(ImportError, match=r"embedws\[msgpack\]"):
        encode(Envelope("n", 1, True, b"x"), "msgpack")


# Across processes, for every kind of handler -----------------------------------------------


def test_a_room_broadcast_reaches_both_servers_once_and_exclude_holds(
    kind: str, redis_server: RedisServer
) -> None:
    with two_servers(kind, redis_server) as (a, b):
        a1, a2, b1 = join(a, "r"), join(a, "r"), join(b, "r")
        wait_until(lambda: numsub(redis_server, f"{PREFIX}:room:r") == 2, "both subscribed")
        a1.send("say:hello")
        assert a2.recv(timeout=seconds(5)) == "hello"
        assert b1.recv(timeout=seconds(5)) == "hello"
        b1.send("say:from-b")
        assert a1.recv(timeout=seconds(5)) == "from-b"  # a1 was excluded from its own
        assert a2.recv(timeout=seconds(5)) == "from-b"  # and a2 got "hello" once
        a2.send("say:from-a2")
        assert a1.recv(timeout=seconds(5)) == "from-a2"
        assert b1.recv(timeout=seconds(5)) == "from-a2"  # no second "hello", not its own "from-b"
        a1.send("bin:raw")
        assert b1.recv(timeout=seconds(5)) == b"raw"
        assert a2.recv(timeout=seconds(5)) == b"raw"
        # Its own three publishes come back from Redis, and are dropped.
        wait_until(lambda: broker_of(a).stats()["echoes"] == 3, "a's echoes")
        assert broker_of(a).stats()["gaps"] == 0
        for ws in (a1, a2, b1):
            ws.close()


def test_messages_keep_their_order_across_processes(kind: str, redis_server: RedisServer) -> None:
    with two_servers(kind, redis_server) as (a, b):
        a1, b1, b2 = join(a, "r"), join(b, "r"), join(b, "r")
        wait_until(lambda: numsub(redis_server, f"{PREFIX}:room:r") == 2, "both subscribed")
        a1.send("burst:300")
        for ws in (b1, b2):
            assert [ws.recv(timeout=seconds(5)) for _ in range(300)] == [
                f"b{i}" for i in range(300)
            ]
        for ws in (a1, b1, b2):
            ws.close()


def test_local_stays_in_process(kind: str, redis_server: RedisServer) -> None:
    with two_servers(kind, redis_server) as (a, b):
        a1, a2, b1 = join(a, "r"), join(a, "r"), join(b, "r")
        wait_until(lambda: numsub(redis_server, f"{PREFIX}:room:r") == 2, "both subscribed")
        published = broker_of(a).stats()["published"]
        a1.send("local:here-only")
        assert a2.recv(timeout=seconds(5)) == "here-only"
        a1.send("say:everywhere")
        assert b1.recv(timeout=seconds(5)) == "everywhere"  # not "here-only"
        assert a2.recv(timeout=seconds(5)) == "everywhere"
        # Counted once Redis has answered the publish, which b may hear of first.
        wait_until(lambda: broker_of(a).stats()["published"] == published + 1, "one publish")
        assert broker_of(a).stats()["published"] == published + 1
        for ws in (a1, a2, b1):
            ws.close()


def test_app_broadcast_reaches_every_process_and_honours_the_route(
    kind: str, redis_server: RedisServer
) -> None:
    with two_servers(kind, redis_server) as (a, b):
        a1, b1 = join(a, "r"), join(b, "s")
        b_other = client(f"{b.url}/other")
        wait_until(lambda: numsub(redis_server, f"{PREFIX}:all") == 2, "both subscribed")
        a1.send("all:to-chat")  # app.broadcast(route="chat"), a1 included
        assert a1.recv(timeout=seconds(5)) == "to-chat"
        assert b1.recv(timeout=seconds(5)) == "to-chat"
        app_of(a).broadcast("to-everyone")
        assert b_other.recv(timeout=seconds(5)) == "to-everyone"  # not "to-chat"
        assert b1.recv(timeout=seconds(5)) == "to-everyone"
        for ws in (a1, b1, b_other):
            ws.close()


def test_only_rooms_with_a_local_member_are_subscribed(
    kind: str, redis_server: RedisServer
) -> None:
    with two_servers(kind, redis_server) as (a, b):
        wait_until(lambda: numsub(redis_server, f"{PREFIX}:all") == 2, "both started")
        assert channels(redis_server) == {f"{PREFIX}:all"}
        a1 = join(a, "x")
        wait_until(lambda: numsub(redis_server, f"{PREFIX}:room:x") == 1, "a subscribed to x")
        b1 = join(b, "x")
        b2 = join(b, "y")
        wait_until(lambda: numsub(redis_server, f"{PREFIX}:room:x") == 2, "b subscribed to x")
        wait_until(lambda: numsub(redis_server, f"{PREFIX}:room:y") == 1, "b subscribed to y")
        b1.close()
        wait_until(lambda: numsub(redis_server, f"{PREFIX}:room:x") == 1, "b unsubscribed x")
        # A broadcast to x then one to y: b receives them in this order, so
        # had x reached b, it would have been counted before y was delivered.
        received = broker_of(b).stats()["received"]
        app_of(a).room("x").broadcast("to-x")
        assert a1.recv(timeout=seconds(5)) == "to-x"
        app_of(a).room("y").broadcast("to-y")  # a has no member in y: it publishes all the same
        assert b2.recv(timeout=seconds(5)) == "to-y"
        assert broker_of(b).stats()["received"] == received + 1
        a1.close()
        b2.close()
        wait_until(lambda: channels(redis_server) == {f"{PREFIX}:all"}, "rooms unsubscribed")


def test_oversized_messages_are_refused(kind: str, redis_server: RedisServer) -> None:
    with two_servers(kind, redis_server, max_message_size=1000) as (a, b):
        a1, b1 = join(a, "r"), join(b, "r")
        wait_until(lambda: numsub(redis_server, f"{PREFIX}:room:r") == 2, "both subscribed")
        with pytest.raises(BrokerError, match="max_message_size"):
            app_of(a).room("r").broadcast("x" * 1001)
        assert app_of(a).room("r").broadcast("y" * 1001, local=True) == 1
        assert a1.recv(timeout=seconds(5)) == "y" * 1001
        app_of(a).room("r").broadcast("z" * 1000)
        assert b1.recv(timeout=seconds(5)) == "z" * 1000  # and nothing before it
        assert a1.recv(timeout=seconds(5)) == "z" * 1000
        assert broker_of(a).stats()["refused"] == 1
        a1.close()
        b1.close()


def test_redis_killed_and_restarted_rooms_come_back(kind: str, redis_server: RedisServer) -> None:
    reconnected = threading.Event()
    with two_servers(kind, redis_server) as (a, b):
        broker_of(b).on("reconnected", lambda _broker: reconnected.set())
        a1, b1 = join(a, "r"), join(b, "r")
        wait_until(lambda: numsub(redis_server, f"{PREFIX}:room:r") == 2, "both subscribed")
        redis_server.kill()
        redis_server.start()  # the same port
        restarted = time.monotonic()
        assert reconnected.wait(10_000 * MS)
        wait_until(lambda: numsub(redis_server, f"{PREFIX}:room:r") == 2, "re-subscribed")
        assert time.monotonic() - restarted < 2 + 2000 * MS
        assert broker_of(b).stats()["reconnects"] == 1
        a1.send("say:after")
        assert b1.recv(timeout=seconds(5)) == "after"
        b1.send("say:back")
        assert a1.recv(timeout=seconds(5)) == "back"
        a1.close()
        b1.close()


@pytest.mark.slow
def test_three_servers_ten_thousand_messages_each_once_in_order(
    kind: str, redis_server: RedisServer
) -> None:
    apps = [chat_app(name, kind, broker(redis_server)) for name in "abc"]
    per_sender = 3334  # three senders: 10,002 messages
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(serving(app)) for app in apps]
        senders = [join(server, "r") for server in servers]
        listeners = [join(server, "r") for server in servers]
        wait_until(lambda: numsub(redis_server, f"{PREFIX}:room:r") == 3, "all subscribed")
        for tag, ws in zip("abc", senders, strict=True):
            ws.send(f"tagged:{tag}:{per_sender}")

        def expect(ws: Any, tags: str) -> None:
            got: dict[str, list[int]] = {tag: [] for tag in tags}
            for _ in range(per_sender * len(tags)):
                tag, _, index = ws.recv(timeout=seconds(10)).partition(":")
                got[tag].append(int(index))
            assert got == {tag: list(range(per_sender)) for tag in tags}

        for ws in listeners:
            expect(ws, "abc")
        for tag, ws in zip("abc", senders, strict=True):
            expect(ws, "abc".replace(tag, ""))  # never its own
        for ws in senders + listeners:
            ws.close()
        for app in apps:
            assert app.broker is not None and app.broker.stats()["gaps"] == 0


@pytest.mark.slow
def test_ten_thousand_joins_and_leaves_leave_only_live_rooms_subscribed(
    redis_server: RedisServer,
) -> None:
    import random

    app = chat_app("a", "async", broker(redis_server))
    rng = random.Random(24)
    with serving(app) as server:
        clients = [client(f"{server.url}/other") for _ in range(20)]
        wait_until(lambda: len(app.connections) == 20, "connections registered")
        sockets = list(app.connections)
        for _ in range(10_000):
            ws = rng.choice(sockets)
            room = app.room(f"room{rng.randrange(40)}")
            if ws in room:
                room.discard(ws)
            else:
                room.add(ws)
        for name in range(20):  # empty half of them
            for ws in app.room(f"room{name}"):
                app.room(f"room{name}").discard(ws)
        live = {f"{PREFIX}:room:{name}" for name in app.rooms} | {f"{PREFIX}:all"}
        assert 1 < len(live) <= 21
        wait_until(lambda: channels(redis_server) == live, "subscriptions equal to live rooms")
        for ws in clients:
            ws.close()
        wait_until(lambda: channels(redis_server) == {f"{PREFIX}:all"}, "rooms gone")


# The rest does not depend on the kind of handler ----------------------------------------------


def test_a_killed_subscriber_connection_reconnects_without_leaking(
    redis_server: RedisServer,
) -> None:
    kill_subscribers(redis_server, 20)


@pytest.mark.slow
def test_a_hundred_reconnects_leak_nothing(redis_server: RedisServer) -> None:
    kill_subscribers(redis_server, 100)


def kill_subscribers(redis_server: RedisServer, times: int) -> None:
    reconnected = threading.Semaphore(0)
    with two_servers("async", redis_server) as (a, b):
        for server in (a, b):
            broker_of(server).on("reconnected", lambda _broker: reconnected.release())
        a1, b1 = join(a, "r"), join(b, "r")
        wait_until(lambda: numsub(redis_server, f"{PREFIX}:room:r") == 2, "both subscribed")
        a1.send("say:warm-up")  # a's publisher connects
        assert b1.recv(timeout=seconds(5)) == "warm-up"
        fds = len(os.listdir("/proc/self/fd"))
        connections = redis_clients(redis_server)
        r = redis_server.client()
        try:
            for _ in range(times):
                r.client_kill_filter(_type="pubsub")
                assert reconnected.acquire(timeout=10_000 * MS)
                assert reconnected.acquire(timeout=10_000 * MS)  # a and b
                wait_until(lambda: numsub(redis_server, f"{PREFIX}:room:r") == 2, "back")
        finally:
            r.close()
        assert len(os.listdir("/proc/self/fd")) == fds
        wait_until(lambda: redis_clients(redis_server) == connections, "no extra connection")
        a1.send("say:still")
        assert b1.recv(timeout=seconds(5)) == "still"
        a1.close()
        b1.close()


def test_stop_leaves_no_redis_connection_and_no_descriptor(redis_server: RedisServer) -> None:
    fds = len(os.listdir("/proc/self/fd"))
    app = chat_app("a", "async", broker(redis_server))
    with serving(app) as server:
        a1 = join(server, "r")
        app.room("r").broadcast("hi")  # the publisher connects
        assert a1.recv(timeout=seconds(5)) == "hi"
        wait_until(lambda: redis_clients(redis_server) == 2, "publisher and subscriber")
        a1.close()
    assert len(os.listdir("/proc/self/fd")) == fds  # closed on our side: at once
    wait_until(lambda: redis_clients(redis_server) == 0, "Redis saw them close")
    assert channels(redis_server) == set()
    with serving(app) as server:  # an app is restartable, and so is its broker
        wait_until(lambda: numsub(redis_server, f"{PREFIX}:all") == 1, "subscribed again")
    wait_until(lambda: redis_clients(redis_server) == 0, "Redis saw them close")


def test_a_subscription_redis_refuses_backs_off(redis_server: RedisServer, logs: LogWaiter) -> None:
    # SUBSCRIBE goes out fine and the refusal comes back as a reply (here NOPERM;
    # on a cluster MOVED or CLUSTERDOWN): the session did not work, so the
    # back-off must grow, not start over at 0.1 s every time.
    r = redis_server.client()
    try:
        r.execute_command("ACL", "SETUSER", "nochannels", "on", ">pw", "~*", "+@all")
        r.execute_command("ACL", "SETUSER", "nochannels", "resetchannels")
    finally:
        r.close()
    url = f"redis://nochannels:pw@127.0.0.1:{redis_server.port}/0"
    app = chat_app("a", "async", embedws.RedisBroker(url, prefix=PREFIX))
    with serving(app):
        logs.wait_for("again in 0.4 s", level=logging.WARNING)
        retries = [m for m in logs.messages() if m.startswith("Redis subscriber")]
        assert "no permissions" in retries[0]
        assert [m.rpartition("again in ")[2] for m in retries[:3]] == ["0.1 s", "0.2 s", "0.4 s"]
        assert broker_of_app(app).stats()["reconnects"] >= 2


def broker_of_app(app: embedws.App) -> embedws.RedisBroker:
    assert app.broker is not None
    return app.broker


def test_redis_down_at_start_serves_locally_then_subscribes(
    redis_server: RedisServer, logs: LogWaiter
) -> None:
    redis_server.kill()
    app = chat_app("a", "thread", broker(redis_server, connect_timeout=500 * MS))
    started = time.monotonic()
    with serving(app) as server:
        assert time.monotonic() - started < 5000 * MS
        logs.wait_for("not subscribed to Redis", level=logging.WARNING)
        a1, a2 = join(server, "r"), join(server, "r")
        a1.send("say:local-still-works")
        assert a2.recv(timeout=seconds(5)) == "local-still-works"
        redis_server.start()
        wait_until(lambda: numsub(redis_server, f"{PREFIX}:room:r") == 1, "subscribed at last")
        with embedws.Emitter(redis_server.url, prefix=PREFIX) as emit:
            emit.room("r").broadcast("via-redis")
        assert a1.recv(timeout=seconds(5)) == "via-redis"
        assert a2.recv(timeout=seconds(5)) == "via-redis"
        a1.close()
        a2.close()


def test_on_the_programs_own_loop_with_aio_serve(redis_server: RedisServer) -> None:
    from websockets.asyncio.client import connect

    app = chat_app("a", "async", broker(redis_server))

    async def program() -> None:
        async with embedws.aio.serve(app, "127.0.0.1", 0) as server:
            async with connect(f"{server.url}/chat/r") as ws:
                assert await ws.recv() == "joined"
                async with embedws.AsyncEmitter(redis_server.url, prefix=PREFIX) as emit:
                    deadline = asyncio.get_running_loop().time() + 5000 * MS
                    while f"{PREFIX}:room:r" not in (app.broker.channels if app.broker else ()):
                        assert asyncio.get_running_loop().time() < deadline
                        await asyncio.sleep(
                            seconds(0.005)
                        )  # polling the broker's state, with a deadline
                    await emit.room("r").broadcast("to-the-program")
                    async with asyncio.timeout(5):
                        assert await ws.recv() == "to-the-program"

    asyncio.run(program())
    # Stopped with the server, on the program's loop (Redis notices the closes soon after).
    wait_until(lambda: redis_clients(redis_server) == 0, "connections closed")


def test_a_full_publish_queue_drops_the_newest(redis_server: RedisServer) -> None:
    # An async handler's burst runs in one step of the loop: the publisher task
    # cannot take anything off the queue meanwhile.
    with two_servers("async", redis_server, max_queue=5) as (a, b):
        a1, b1 = join(a, "r"), join(b, "r")
        wait_until(lambda: numsub(redis_server, f"{PREFIX}:room:r") == 2, "both subscribed")
        a1.send("burst:12")
        assert [b1.recv(timeout=seconds(5)) for _ in range(5)] == [f"b{i}" for i in range(5)]
        a1.send("say:next")
        assert b1.recv(timeout=seconds(5)) == "next"
        assert broker_of(a).stats()["dropped_queue_full"] == 7
        assert broker_of(b).stats()["gaps"] == 0  # dropped before numbering
        a1.close()
        b1.close()


def test_on_error_raise_makes_the_next_broadcast_fail(redis_server: RedisServer) -> None:
    failed = threading.Event()
    made = broker(redis_server, on_error="raise", socket_timeout=1000 * MS)
    made.on("publish_failed", lambda _broker, error, count: failed.set())
    app = chat_app("a", "async", made)
    with serving(app) as server:
        a1 = join(server, "r")
        redis_server.kill()
        assert app.room("r").broadcast("lost") == 1  # local delivery does not wait
        assert a1.recv(timeout=seconds(5)) == "lost"
        assert failed.wait(10_000 * MS)
        with pytest.raises(BrokerError, match="could not be published"):
            app.room("r").broadcast("refused")
        assert app.room("r").broadcast("sent") == 1  # the error was reported once
        assert a1.recv(timeout=seconds(5)) == "sent"
        assert made.stats()["publish_failed"] >= 1
        a1.close()


def test_a_gap_in_a_peers_sequence_is_reported(redis_server: RedisServer) -> None:
    gaps: list[tuple[str, str, int]] = []
    seen = threading.Event()
    app = chat_app("a", "async", broker(redis_server))
    assert app.broker is not None

    def gap(_broker: Any, node: str, channel: str, missing: int) -> None:
        gaps.append((node, channel, missing))
        seen.set()

    app.broker.on("gap")(gap)  # a call, not a decorator: on() is typed loosely

    with serving(app) as server:
        a1 = join(server, "r")
        wait_until(lambda: numsub(redis_server, f"{PREFIX}:room:r") == 1, "subscribed")
        r = redis_server.client()
        try:
            for seq in (1, 2, 6):
                r.publish(
                    f"{PREFIX}:room:r", encode(Envelope("peer", seq, True, f"m{seq}".encode(), "r"))
                )
            r.publish(f"{PREFIX}:room:r", b"garbage")
            r.publish(f"{PREFIX}:room:r", encode(Envelope("peer", 6, True, b"again", "r")))
            r.publish(f"{PREFIX}:room:r", encode(Envelope("peer", 7, True, b"m7", "r")))
        finally:
            r.close()
        assert [a1.recv(timeout=seconds(5)) for _ in range(4)] == ["m1", "m2", "m6", "m7"]
        assert seen.wait(seconds(5))
        assert gaps == [("peer", f"{PREFIX}:room:r", 3)]
        stats = app.broker.stats()
        assert (stats["gaps"], stats["invalid"], stats["repeats"]) == (3, 1, 1)
        a1.close()


def test_exclude_names_connections_of_the_receiving_node(redis_server: RedisServer) -> None:
    app = chat_app("a", "async", broker(redis_server))
    assert app.broker is not None
    with serving(app) as server, embedws.Emitter(redis_server.url, prefix=PREFIX) as emit:
        a1, a2 = join(server, "r"), join(server, "r")
        wait_until(lambda: numsub(redis_server, f"{PREFIX}:room:r") == 1, "subscribed")
        (first,) = [ws for ws in app.room("r") if ws.id == min(w.id for w in app.room("r"))]
        emit.room("r").broadcast("not-first", exclude=[f"{app.broker.node_id}:{first.id}"])
        emit.room("r").broadcast("both")
        received = {ws: [ws.recv(timeout=seconds(5))] for ws in (a1, a2)}
        for ws in (a1, a2):
            if received[ws] == ["both"]:  # the excluded one
                continue
            received[ws].append(ws.recv(timeout=seconds(5)))
        assert sorted(map(tuple, received.values())) == [("both",), ("not-first", "both")]
        a1.close()
        a2.close()


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_the_sync_emitter_reaches_rooms_and_routes(redis_server: RedisServer, codec: str) -> None:
    with (
        two_servers("thread", redis_server, codec=codec) as (a, b),
        embedws.Emitter(redis_server.url, prefix=PREFIX, codec=codec) as emit,
    ):
        a1, b1 = join(a, "r"), join(b, "r")
        b_other = client(f"{b.url}/other")
        wait_until(lambda: numsub(redis_server, f"{PREFIX}:room:r") == 2, "both subscribed")
        emit.room("r").broadcast("to-room")
        emit.room("r").broadcast(b"\x00\xff")
        emit.broadcast({"to": "chat"}, route="chat")
        emit.broadcast("to-all")
        for ws in (a1, b1):
            assert ws.recv(timeout=seconds(5)) == "to-room"
            assert ws.recv(timeout=seconds(5)) == b"\x00\xff"
            assert ws.recv(timeout=seconds(5)) == '{"to":"chat"}'
            assert ws.recv(timeout=seconds(5)) == "to-all"
        assert b_other.recv(timeout=seconds(5)) == "to-all"
        with pytest.raises(BrokerError, match="max_message_size"):
            emit.broadcast("x" * ((1 << 20) + 1))
        for ws in (a1, b1, b_other):
            ws.close()


def test_the_async_emitter(redis_server: RedisServer) -> None:
    with two_servers("async", redis_server) as (a, b):
        a1, b1 = join(a, "r"), join(b, "r")
        wait_until(lambda: numsub(redis_server, f"{PREFIX}:room:r") == 2, "both subscribed")

        async def emit() -> None:
            async with embedws.AsyncEmitter(redis_server.url, prefix=PREFIX) as emitter:
                await emitter.room("r").broadcast("from-async")
                await emitter.broadcast("to-all")

        asyncio.run(emit())
        for ws in (a1, b1):
            assert ws.recv(timeout=seconds(5)) == "from-async"
            assert ws.recv(timeout=seconds(5)) == "to-all"
        a1.close()
        b1.close()


def test_an_emitter_with_redis_down_raises(redis_server: RedisServer) -> None:
    emit = embedws.Emitter(redis_server.url, prefix=PREFIX, socket_timeout=1000 * MS)
    redis_server.kill()
    try:
        with pytest.raises(BrokerError, match="could not publish"):
            emit.broadcast("x")
    finally:
        emit.close()


def test_sharded_pub_sub(redis_server: RedisServer) -> None:
    # Redis 7 accepts SSUBSCRIBE/SPUBLISH outside a cluster.
    with two_servers("async", redis_server, sharded=True) as (a, b):
        a1, b1 = join(a, "r"), join(b, "r")
        r = redis_server.client()
        try:
            wait_until(
                lambda: f"{PREFIX}:room:r".encode() in r.execute_command("PUBSUB SHARDCHANNELS"),
                "sharded subscription",
            )
            assert r.pubsub_shardnumsub(f"{PREFIX}:room:r") == [(f"{PREFIX}:room:r".encode(), 2)]
            assert numsub(redis_server, f"{PREFIX}:room:r") == 0
        finally:
            r.close()
        a1.send("say:sharded")
        assert b1.recv(timeout=seconds(5)) == "sharded"
        with embedws.Emitter(redis_server.url, prefix=PREFIX, sharded=True) as emit:
            emit.room("r").broadcast("emitted")
        assert a1.recv(timeout=seconds(5)) == "emitted"
        assert b1.recv(timeout=seconds(5)) == "emitted"
        a1.close()
        b1.close()


# Redis Cluster: each channel on the node that owns its slot -----------------------------------

# What today's sharded broker is asked for on a cluster; the cluster tests use it.
CLUSTER = {"cluster": True}


def rooms_on_different_nodes(cluster: RedisClusterServers) -> tuple[str, str]:
    """Two rooms whose channels live on two different nodes, neither the node of ``all``."""
    others = {cluster.owner(f"{PREFIX}:all").port}
    found: list[str] = []
    for i in range(1000):
        name = f"r{i}"
        port = cluster.owner(f"{PREFIX}:room:{name}").port
        if port not in others:
            others.add(port)
            found.append(name)
            if len(found) == 2:
                return found[0], found[1]
    raise AssertionError("no two rooms on two other nodes")


def shardnumsub(cluster: RedisClusterServers, channel: str) -> int:
    """Subscribers of a shard channel, asked of the node that owns it."""
    r = cluster.owner(channel).client()
    try:
        return int(r.pubsub_shardnumsub(channel)[0][1])
    finally:
        r.close()


def wait_subscribed(
    cluster: RedisClusterServers, rooms: tuple[str, ...], count: int = 2, servers: int = 2
) -> None:
    """``count`` subscribers of each room's channel, and ``servers`` of ``all``, on their nodes."""
    wait_until(
        lambda: shardnumsub(cluster, f"{PREFIX}:all") == servers,
        f"{servers} subscribers of {PREFIX}:all on its node",
    )
    for channel in [f"{PREFIX}:room:{room}" for room in rooms]:
        wait_until(
            lambda channel=channel: shardnumsub(cluster, channel) == count,  # type: ignore[misc]
            f"{count} subscribers of {channel} on its node",
        )


def test_cluster_options_are_checked(redis_server: RedisServer) -> None:
    assert broker(redis_server, cluster=True).sharded
    assert not broker(redis_server).sharded and broker(redis_server, sharded=True).sharded
    with pytest.raises(ValueError, match="cluster=True needs sharded"):
        broker(redis_server, cluster=True, sharded=False)
    with pytest.raises(ValueError, match="not with streams"):
        broker(redis_server, cluster=True, mode="streams")
    with pytest.raises(ValueError, match="cluster=True needs sharded"):
        embedws.Emitter(redis_server.url, cluster=True, sharded=False)
    with pytest.raises(ValueError, match="not with streams"):
        embedws.AsyncEmitter(redis_server.url, cluster=True, mode="streams")


def test_a_cluster_carries_rooms_on_different_nodes(
    kind: str, redis_cluster: RedisClusterServers
) -> None:
    x, y = rooms_on_different_nodes(redis_cluster)
    with two_servers(kind, redis_cluster, **CLUSTER) as (a, b):
        ax, bx, ay, by = join(a, x), join(b, x), join(a, y), join(b, y)
        b_other = client(f"{b.url}/other")
        wait_subscribed(redis_cluster, (x, y))
        ax.send("say:on-x")
        assert bx.recv(timeout=seconds(5)) == "on-x"
        by.send("say:on-y")
        assert ay.recv(timeout=seconds(5)) == "on-y"
        ay.send("all:to-chat")  # app.broadcast(route="chat") on {prefix}:all
        for ws in (ax, bx, ay, by):
            assert ws.recv(timeout=seconds(5)) == "to-chat"
        app_of(a).broadcast("to-everyone")
        for ws in (ax, bx, ay, by, b_other):
            assert ws.recv(timeout=seconds(5)) == "to-everyone"
        for server in (a, b):
            stats = broker_of(server).stats()
            assert stats["publish_failed"] == 0 and stats["reconnects"] == 0
        for ws in (ax, bx, ay, by, b_other):
            ws.close()
        # The last member left: each room's channel is dropped on its own node.
        wait_until(
            lambda: (
                shardnumsub(redis_cluster, f"{PREFIX}:room:{x}") == 0
                and shardnumsub(redis_cluster, f"{PREFIX}:room:{y}") == 0
            ),
            "rooms unsubscribed",
        )


def test_emitters_reach_rooms_on_different_nodes(redis_cluster: RedisClusterServers) -> None:
    x, y = rooms_on_different_nodes(redis_cluster)
    with two_servers("async", redis_cluster, **CLUSTER) as (a, b):
        ax, by = join(a, x), join(b, y)
        wait_subscribed(redis_cluster, (x, y), count=1)
        with embedws.Emitter(redis_cluster.url, prefix=PREFIX, cluster=True) as emit:
            emit.room(x).broadcast("sync-x")
            emit.room(y).broadcast("sync-y")
            emit.broadcast("sync-all")
        assert ax.recv(timeout=seconds(5)) == "sync-x"
        assert by.recv(timeout=seconds(5)) == "sync-y"

        async def emit_async() -> None:
            async with embedws.AsyncEmitter(
                redis_cluster.url, prefix=PREFIX, cluster=True
            ) as emitter:
                await emitter.room(x).broadcast("async-x")
                await emitter.room(y).broadcast("async-y")
                await emitter.broadcast("async-all")

        asyncio.run(emit_async())
        assert ax.recv(timeout=seconds(5)) == "sync-all"
        assert ax.recv(timeout=seconds(5)) == "async-x"
        assert ax.recv(timeout=seconds(5)) == "async-all"
        assert by.recv(timeout=seconds(5)) == "sync-all"
        assert by.recv(timeout=seconds(5)) == "async-y"
        assert by.recv(timeout=seconds(5)) == "async-all"
        ax.close()
        by.close()


def test_emitters_with_the_channels_node_down_raise(redis_cluster: RedisClusterServers) -> None:
    x, _y = rooms_on_different_nodes(redis_cluster)
    emit = embedws.Emitter(redis_cluster.url, prefix=PREFIX, cluster=True, socket_timeout=1000 * MS)
    try:
        emit.room(x).broadcast("reaches-redis")  # the slot map is read
        down = redis_cluster.owner(f"{PREFIX}:room:{x}")
        down.kill()
        started = time.monotonic()
        with pytest.raises(BrokerError, match="could not publish"):
            emit.room(x).broadcast("lost")
        # Two tries of the cluster client's, twice; no back-off of seconds between.
        assert time.monotonic() - started < 4000 * MS
    finally:
        emit.close()

    async def emit_async() -> None:
        # Its only seed is the node that is down: a cluster error, not a RedisError.
        async with embedws.AsyncEmitter(
            down.url, prefix=PREFIX, cluster=True, socket_timeout=1000 * MS
        ) as emitter:
            with pytest.raises(BrokerError, match="could not publish"):
                await emitter.room(x).broadcast("lost")

    started = time.monotonic()
    asyncio.run(emit_async())
    assert time.monotonic() - started < 4000 * MS


def cluster_rooms_work(a: Any, b: Any, rooms: dict[str, tuple[Any, Any]], word: str) -> None:
    for room, (on_a, on_b) in rooms.items():
        on_a.send(f"say:{word}-{room}")
        assert on_b.recv(timeout=seconds(5)) == f"{word}-{room}"
        on_b.send(f"say:back-{room}")
        assert on_a.recv(timeout=seconds(5)) == f"back-{room}"


def test_a_killed_and_restarted_cluster_node_is_survived(
    redis_cluster: RedisClusterServers,
) -> None:
    x, y = rooms_on_different_nodes(redis_cluster)
    reconnected = threading.Semaphore(0)
    with two_servers("async", redis_cluster, **CLUSTER) as (a, b):
        for server in (a, b):
            broker_of(server).on("reconnected", lambda _broker: reconnected.release())
        rooms = {x: (join(a, x), join(b, x)), y: (join(a, y), join(b, y))}
        wait_subscribed(redis_cluster, (x, y))
        cluster_rooms_work(a, b, rooms, "before")
        node = redis_cluster.owner(f"{PREFIX}:room:{y}")
        node.kill()
        # The rooms of the other nodes go on meanwhile, and so does {prefix}:all.
        cluster_rooms_work(a, b, {x: rooms[x]}, "during")
        rooms[x][1].send("all:to-chat")
        for pair in rooms.values():
            for ws in pair:
                assert ws.recv(timeout=seconds(5)) == "to-chat"
        node.start()  # the same port and nodes.conf: the same node, its slots again
        redis_cluster.wait_ok()
        assert reconnected.acquire(timeout=10_000 * MS)
        assert reconnected.acquire(timeout=10_000 * MS)  # a and b
        wait_subscribed(redis_cluster, (x, y))
        cluster_rooms_work(a, b, rooms, "after")
        for server in (a, b):
            assert broker_of(server).stats()["reconnects"] >= 1
        for pair in rooms.values():
            for ws in pair:
                ws.close()


def test_killed_cluster_subscriber_connections_are_survived(
    redis_cluster: RedisClusterServers,
) -> None:
    x, y = rooms_on_different_nodes(redis_cluster)
    reconnected = threading.Semaphore(0)
    with two_servers("async", redis_cluster, **CLUSTER) as (a, b):
        for server in (a, b):
            broker_of(server).on("reconnected", lambda _broker: reconnected.release())
        rooms = {x: (join(a, x), join(b, x)), y: (join(a, y), join(b, y))}
        wait_subscribed(redis_cluster, (x, y))
        cluster_rooms_work(a, b, rooms, "warm-up")  # the publishers connect
        fds = len(os.listdir("/proc/self/fd"))
        connections = cluster_clients(redis_cluster)
        for round_ in range(10):
            victim = redis_cluster.nodes[round_ % len(redis_cluster.nodes)].client()
            try:
                assert victim.client_kill_filter(_type="pubsub") >= 1
            finally:
                victim.close()
            assert reconnected.acquire(timeout=10_000 * MS)
            assert reconnected.acquire(timeout=10_000 * MS)
            wait_subscribed(redis_cluster, (x, y))
            cluster_rooms_work(a, b, rooms, f"round{round_}")
        assert len(os.listdir("/proc/self/fd")) == fds
        wait_until(lambda: cluster_clients(redis_cluster) == connections, "no extra connection")
        for pair in rooms.values():
            for ws in pair:
                ws.close()
    wait_until(lambda: cluster_clients(redis_cluster) == [0, 0, 0], "Redis saw them all close")


def cluster_clients(cluster: RedisClusterServers) -> list[int]:
    """Connections each node has, other than the one asking."""
    return [redis_clients(node) for node in cluster.nodes]


def test_a_cluster_broker_stops_without_a_connection_or_descriptor_left(
    redis_cluster: RedisClusterServers,
) -> None:
    x, y = rooms_on_different_nodes(redis_cluster)
    fds = len(os.listdir("/proc/self/fd"))
    app = chat_app("a", "async", broker(redis_cluster, **CLUSTER))
    for _ in range(2):  # an app is restartable, and so is its broker
        with serving(app) as server:
            ax, ay = join(server, x), join(server, y)
            wait_subscribed(redis_cluster, (x, y), count=1, servers=1)
            app.room(x).broadcast("hi")  # the publisher connects
            assert ax.recv(timeout=seconds(5)) == "hi"
            ax.close()
            ay.close()
        assert len(os.listdir("/proc/self/fd")) == fds  # closed on our side: at once
        wait_until(lambda: cluster_clients(redis_cluster) == [0, 0, 0], "Redis saw them close")


def test_a_cluster_node_that_refuses_the_subscription_is_retried_with_back_off(
    redis_cluster: RedisClusterServers, logs: LogWaiter
) -> None:
    for node in redis_cluster.nodes:  # ACLs are per node
        r = node.client()
        try:
            r.execute_command("ACL", "SETUSER", "nochannels", "on", ">pw", "~*", "+@all")
            r.execute_command("ACL", "SETUSER", "nochannels", "resetchannels")
        finally:
            r.close()
    seed = redis_cluster.nodes[0].port
    url = f"redis://nochannels:pw@127.0.0.1:{seed}"
    app = chat_app("a", "async", embedws.RedisBroker(url, prefix=PREFIX, cluster=True))
    with serving(app):
        # The refusal comes back as a reply to SSUBSCRIBE: no hot loop at 0.1 s.
        logs.wait_for("channels wait (0.4 s)", level=logging.WARNING)
        lost = [m for m in logs.messages() if m.startswith("Redis Cluster node")]
        assert "no permissions" in lost[0]
        assert [m.rpartition("wait ")[2] for m in lost[:3]] == ["(0.1 s)", "(0.2 s)", "(0.4 s)"]


def test_a_slot_moved_under_a_live_subscription_is_followed(
    redis_cluster: RedisClusterServers,
) -> None:
    from redis.crc import key_slot

    x, y = rooms_on_different_nodes(redis_cluster)
    reconnected = threading.Semaphore(0)
    with two_servers("async", redis_cluster, **CLUSTER) as (a, b):
        for server in (a, b):
            broker_of(server).on("reconnected", lambda _broker: reconnected.release())
        rooms = {x: (join(a, x), join(b, x)), y: (join(a, y), join(b, y))}
        wait_subscribed(redis_cluster, (x, y))
        channel = f"{PREFIX}:room:{x}"
        source, target = redis_cluster.owner(channel), redis_cluster.owner(f"{PREFIX}:room:{y}")
        slot = key_slot(channel.encode())
        clients = {node.port: node.client() for node in redis_cluster.nodes}
        try:
            ids = {port: r.execute_command("CLUSTER MYID").decode() for port, r in clients.items()}
            clients[target.port].execute_command(
                "CLUSTER SETSLOT", slot, "IMPORTING", ids[source.port]
            )
            clients[source.port].execute_command(
                "CLUSTER SETSLOT", slot, "MIGRATING", ids[target.port]
            )
            for port in (target.port, source.port):  # the slot holds no keys: nothing to move
                clients[port].execute_command("CLUSTER SETSLOT", slot, "NODE", ids[target.port])
        finally:
            for r in clients.values():
                r.close()
        # The slot's subscribers on the old node are dropped (an sunsubscribe
        # they did not ask for): each broker subscribes again, on the new owner.
        assert reconnected.acquire(timeout=10_000 * MS)
        assert reconnected.acquire(timeout=10_000 * MS)
        wait_until(lambda: redis_cluster.owner(channel).port == target.port, "the slot moved")
        wait_subscribed(redis_cluster, (x, y))
        cluster_rooms_work(a, b, rooms, "moved")
        for pair in rooms.values():
            for ws in pair:
                ws.close()


# Streams mode, and what pub/sub loses while cut off --------------------------------------------


class CutProxy:
    """A TCP relay to Redis that the test can cut: its connections reset, new ones shut at once.

    Threads of its own (not the library's); closed by ``close``.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.is_cut = threading.Event()
        self.refused = 0  # connections shut at once while cut
        self.lock = threading.Lock()  # guards socks
        self.socks: set[socket.socket] = set()
        self.threads = [threading.Thread(target=self._accept, name="proxy-accept")]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self.is_cut.is_set():
                conn.close()
                self.refused += 1
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.socks.update((conn, upstream))
            for src, dst in ((conn, upstream), (upstream, conn)):
                thread = threading.Thread(target=self._pump, args=(src, dst), name="proxy-pump")
                self.threads.append(thread)
                thread.start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self.lock:
                self.socks.discard(src)
            src.close()

    def cut(self) -> None:
        self.is_cut.set()
        with self.lock:
            socks = list(self.socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        self.is_cut.clear()

    def close(self) -> None:
        self.cut()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for thread in self.threads:
            thread.join(seconds(10))


@contextlib.contextmanager
def b_behind_a_proxy(
    redis: RedisServer, **options: Any
) -> Iterator[tuple[embedws.sync.Server, embedws.sync.Server, CutProxy]]:
    """App a on Redis, app b on Redis through a proxy the test can cut."""
    proxy = CutProxy(redis.port)
    options.setdefault("prefix", PREFIX)
    app_a = chat_app("a", "async", embedws.RedisBroker(redis.url, **options))
    app_b = chat_app("b", "async", embedws.RedisBroker(proxy.url, **options))
    try:
        with serving(app_a) as a, serving(app_b) as b:
            yield a, b, proxy
    finally:
        proxy.close()


def test_streams_mode_broadcasts_across_processes(kind: str, redis_server: RedisServer) -> None:
    with two_servers(kind, redis_server, mode="streams") as (a, b):
        a1, a2, b1 = join(a, "r"), join(a, "r"), join(b, "r")
        room = f"{PREFIX}:room:r"
        wait_until(lambda: room in broker_of(b).channels, "b reads the room's stream")
        a1.send("say:hello")
        assert a2.recv(timeout=seconds(5)) == "hello"
        assert b1.recv(timeout=seconds(5)) == "hello"
        b1.send("say:back")
        assert a1.recv(timeout=seconds(5)) == "back"  # not its own "hello"
        assert a2.recv(timeout=seconds(5)) == "back"
        with embedws.Emitter(redis_server.url, prefix=PREFIX, mode="streams") as emit:
            emit.room("r").broadcast("emitted")
        for ws in (a1, a2, b1):
            assert ws.recv(timeout=seconds(5)) == "emitted"
        r = redis_server.client()
        try:
            assert r.xlen(room) == 3
            assert channels(redis_server) == set()  # no pub/sub at all
        finally:
            r.close()
        for ws in (a1, a2, b1):
            ws.close()
        wait_until(lambda: room not in broker_of(b).channels, "b stops reading the room")
    r = redis_server.client()
    try:
        assert not r.keys(f"{PREFIX}:control:*")  # each node deleted its control stream
    finally:
        r.close()


def test_streams_mode_delivers_what_was_published_while_cut_off(
    redis_server: RedisServer,
) -> None:
    reconnected = threading.Event()
    with b_behind_a_proxy(redis_server, mode="streams") as (a, b, proxy):
        broker_of(b).on("reconnected", lambda _broker: reconnected.set())
        b1 = join(b, "r")
        wait_until(lambda: f"{PREFIX}:room:r" in broker_of(b).channels, "b reads the room")
        proxy.cut()
        for i in range(1000):
            app_of(a).room("r").broadcast(f"m{i}")
        wait_until(lambda: broker_of(a).stats()["published"] == 1000, "all published")
        # b is really cut off: it tried to come back, and could not.
        wait_until(lambda: proxy.refused >= 2, "b's attempts while cut off")
        proxy.restore()
        assert reconnected.wait(10_000 * MS)
        assert [b1.recv(timeout=seconds(5)) for _ in range(1000)] == [f"m{i}" for i in range(1000)]
        app_of(a).room("r").broadcast("end")
        assert b1.recv(timeout=seconds(5)) == "end"  # each once: nothing delivered twice
        assert broker_of(b).stats()["gaps"] == 0
        b1.close()


def test_pub_sub_loses_what_was_published_while_cut_off_and_reports_the_gap(
    redis_server: RedisServer,
) -> None:
    reconnected = threading.Event()
    gaps: list[int] = []
    with b_behind_a_proxy(redis_server) as (a, b, proxy):
        broker_of(b).on("reconnected", lambda _broker: reconnected.set())
        broker_of(b).on("gap", lambda _broker, node, channel, missing: gaps.append(missing))
        b1 = join(b, "r")
        wait_until(lambda: numsub(redis_server, f"{PREFIX}:room:r") == 1, "b subscribed")
        app_of(a).room("r").broadcast("before")
        assert b1.recv(timeout=seconds(5)) == "before"
        proxy.cut()
        for i in range(100):
            app_of(a).room("r").broadcast(f"m{i}")
        wait_until(lambda: broker_of(a).stats()["published"] == 101, "all published")
        proxy.restore()
        assert reconnected.wait(10_000 * MS)
        wait_until(lambda: numsub(redis_server, f"{PREFIX}:room:r") == 1, "re-subscribed")
        app_of(a).room("r").broadcast("after")
        assert b1.recv(timeout=seconds(5)) == "after"
        assert gaps == [100]
        assert broker_of(b).stats()["gaps"] == 100
        b1.close()


PROGRAM = """
import sys
import embedws

app = embedws.App("second", broker=embedws.RedisBroker(sys.argv[1], prefix=sys.argv[2]))

@app.websocket("/chat/<room>")
def chat(request, ws, room):
    members = app.room(room)
    members.add(ws)
    ws.send("joined")
    for message in ws:
        members.broadcast(message, exclude=ws)

server = app.start(port=0)
print(server.url, flush=True)
sys.stdin.read()
server.stop()
"""


def test_a_second_os_process(kind: str, redis_server: RedisServer) -> None:
    app = chat_app("first", kind, broker(redis_server))
    with (
        serving(app) as server,
        subprocess.Popen(
            [sys.executable, "-c", PROGRAM, redis_server.url, PREFIX],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        ) as process,
    ):
        try:
            assert process.stdout is not None and process.stdin is not None
            url = process.stdout.readline().strip()
            assert url.startswith("ws://")
            mine, theirs = join(server, "r"), client(f"{url}/chat/r")
            assert theirs.recv(timeout=seconds(5)) == "joined"
            wait_until(lambda: numsub(redis_server, f"{PREFIX}:room:r") == 2, "both subscribed")
            mine.send("say:to-the-other")
            assert theirs.recv(timeout=seconds(5)) == "to-the-other"
            theirs.send("from-the-other")
            assert mine.recv(timeout=seconds(5)) == "from-the-other"
            mine.close()
            theirs.close()
            process.stdin.close()
            assert process.wait(timeout=seconds(30)) == 0
        finally:
            process.kill()
