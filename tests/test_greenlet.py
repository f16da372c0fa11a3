"""Greenlet mode specifics: the app-wide switch, sleep, the blocked-loop warning,
and thousands of parked handlers."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import greenlet
import pytest

import embedws
from embedws.sync.runner import GreenletRunner

from .conftest import EARLY, MS, client, seconds, serving


def test_sync_handler_mode_greenlet_runs_every_sync_handler_on_the_loop() -> None:
    app = embedws.App("greenlets", config={"SYNC_HANDLER_MODE": "greenlet"})
    where: list[tuple[str, bool]] = []

    @app.websocket("/default")
    def default(request: Any, ws: Any) -> None:
        where.append((threading.current_thread().name, greenlet.getcurrent().parent is not None))
        ws.send("ok")

    @app.websocket("/thread", mode="thread")
    def threaded(request: Any, ws: Any) -> None:
        where.append((threading.current_thread().name, greenlet.getcurrent().parent is not None))
        ws.send("ok")

    with serving(app) as server:
        for path in ("/default", "/thread"):
            with client(server.url + path) as c:
                assert c.recv(timeout=seconds(5)) == "ok"
    assert where[0] == ("embedws-loop", True)
    assert where[1][0].startswith("embedws-handler") and where[1][1] is False


def test_sleep_switches_so_greenlet_handlers_sleep_together() -> None:
    app = embedws.App("sleepers", config={"SYNC_HANDLER_MODE": "greenlet"})

    @app.websocket("/")
    def sleeper(request: Any, ws: Any) -> None:
        ws.recv(timeout=seconds(5))
        embedws.sync.sleep(300 * MS)
        ws.send("woke")

    with serving(app) as server:
        clients = [client(server.url + "/") for _ in range(10)]
        started = time.monotonic()
        for c in clients:
            c.send("sleep")
        assert [c.recv(timeout=seconds(5)) for c in clients] == ["woke"] * 10
        elapsed = time.monotonic() - started
        for c in clients:
            c.close()
    assert 300 * MS - EARLY <= elapsed < 10 * 300 * MS / 2  # together, not one after another


def test_sleep_outside_a_greenlet_handler_just_sleeps() -> None:
    started = time.monotonic()
    embedws.sync.sleep(50 * MS)
    assert time.monotonic() - started >= 50 * MS


def test_sleep_in_an_async_handler_raises_instead_of_stalling_the_loop() -> None:
    app = embedws.App("async-sleeper")

    @app.websocket("/")
    async def sleeper(request: Any, ws: Any) -> None:
        try:
            embedws.sync.sleep(seconds(5))
        except RuntimeError as exc:
            await ws.send(f"refused: {exc}")

    with serving(app) as server, client(server.url + "/") as c:
        started = time.monotonic()
        answer = c.recv(timeout=seconds(5))
        assert time.monotonic() - started < seconds(1)
    assert isinstance(answer, str)
    assert answer.startswith("refused: embedws.sync.sleep() blocks")
    assert "asyncio.sleep()" in answer


def test_sleep_in_a_trio_task_raises() -> None:
    trio = pytest.importorskip("trio")

    async def main() -> str:
        try:
            embedws.sync.sleep(seconds(5))
        except RuntimeError as exc:
            return str(exc)
        return "slept"

    assert "trio.sleep()" in trio.run(main)


def test_a_greenlet_handler_that_blocks_the_loop_is_named_in_a_warning(logs: Any) -> None:
    app = embedws.App(
        "blocker", config={"SYNC_HANDLER_MODE": "greenlet", "LOOP_BLOCK_WARNING": 0.05}
    )

    @app.websocket("/")
    def blocker(request: Any, ws: Any) -> None:
        ws.recv(timeout=seconds(5))
        time.sleep(seconds(0.2))  # the mistake the warning is for
        ws.send("done")

    with serving(app) as server, client(server.url + "/") as c:
        c.send("go")
        assert c.recv(timeout=seconds(5)) == "done"
    record = logs.wait_for("blocked the event loop")
    assert "blocker" in record.getMessage()


def test_a_greenlet_handler_crash_and_stop_behave_as_in_thread_mode(logs: Any) -> None:
    app = embedws.App("crash", config={"SYNC_HANDLER_MODE": "greenlet"})

    @app.websocket("/")
    def crash(request: Any, ws: Any) -> None:
        ws.recv(timeout=seconds(5))
        raise RuntimeError("greenlet crash")

    from websockets.exceptions import ConnectionClosedError

    with serving(app) as server, client(server.url + "/") as c:
        c.send("crash now")
        with pytest.raises(ConnectionClosedError) as caught:
            c.recv(timeout=seconds(5))
        assert caught.value.rcvd is not None and caught.value.rcvd.code == 1011
    assert "greenlet crash" in (logs.wait_for("raised; closing with 1011").exc_text or "")


def test_greenlet_handlers_reuse_their_greenlets_and_start_with_an_empty_context() -> None:
    # A finished handler's greenlet runs the next handler (a new greenlet costs
    # a stack chunk mapped and unmapped); nothing of the last handler shows.
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    app = embedws.App("reuse", config={"SYNC_HANDLER_MODE": "greenlet"})
    seen: list[tuple[int, str]] = []

    @app.websocket("/")
    def handler(request: Any, ws: Any) -> None:
        seen.append((id(greenlet.getcurrent()), var.get()))
        var.set(ws.recv(timeout=seconds(5)))
        if var.get() == "crash":
            raise RuntimeError("a crash leaves the greenlet usable")
        ws.send(var.get())

    with serving(app) as server:
        for word in ("one", "crash", "two", "three"):
            with client(server.url + "/") as c:
                c.send(word)
                if word != "crash":
                    assert c.recv(timeout=seconds(5)) == word
    assert [value for _, value in seen] == ["unset"] * 4
    assert len({glet for glet, _ in seen}) == 1  # each handler had ended before the next came
    assert not [g for g in gc.get_objects() if id(g) == seen[0][0] and not g.dead]  # stop ended it


@pytest.mark.slow
def test_five_thousand_parked_greenlet_handlers_all_echo() -> None:
    count = 5000
    app = embedws.App(
        "many-greenlets",
        config={"SYNC_HANDLER_MODE": "greenlet", "WEBSOCKET_PING_INTERVAL": None},
    )

    @app.websocket("/")
    def echo(request: Any, ws: Any) -> None:
        for message in ws:
            ws.send(message)

    script = textwrap.dedent(
        """
        import asyncio, os, resource, sys
        from websockets.asyncio.client import connect

        FACTOR = float(os.environ.get("EMBEDWS_TESTS_TIMEOUT_FACTOR", "1"))  # as the suite's MS

        async def main():
            url, count = sys.argv[1], int(sys.argv[2])
            resource.setrlimit(resource.RLIMIT_NOFILE, (count + 200, count + 200))
            sem = asyncio.Semaphore(200)
            async def open_one(i):
                async with sem:
                    return await connect(url, ping_interval=None, open_timeout=60 * FACTOR,
                                         compression=None)
            conns = await asyncio.gather(*(open_one(i) for i in range(count)))
            print("open", flush=True)
            sys.stdin.readline()  # the test checks the server holds them all
            async def echo(i, ws):
                await ws.send(f"m{i}")
                return await ws.recv() == f"m{i}"
            results = await asyncio.gather(*(echo(i, ws) for i, ws in enumerate(conns)))
            print(sum(results), flush=True)
            await asyncio.gather(*(ws.close() for ws in conns))

        asyncio.run(main())
        """
    )
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1000), hard))
    try:
        with serving(app) as server:
            with subprocess.Popen(
                [sys.executable, "-c", script, server.url + "/", str(count)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ) as process:
                try:
                    assert process.stdout is not None and process.stdin is not None
                    assert process.stdout.readline().strip() == "open", process.stderr
                    assert len(app.connections) == count
                    assert threading.active_count() < 20  # no thread per connection
                    process.stdin.write("\n")
                    process.stdin.flush()
                    assert process.stdout.readline().strip() == str(count)
                    process.wait(seconds(60))
                finally:
                    process.kill()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_blocking_recv_on_the_loop_thread_raises_instead_of_deadlocking() -> None:
    # An async handler runs on the loop thread that also serves our sync clients:
    # a sync recv there would wait for the loop it blocks.
    app = embedws.App("blocking-recv")
    peers: list[Any] = []

    @app.websocket("/peer")
    def peer(request: Any, ws: Any) -> None:
        ws.recv(timeout=seconds(5))

    @app.websocket("/")
    async def handler(request: Any, ws: Any) -> None:
        try:
            peers[0].recv(timeout=seconds(1))
        except RuntimeError as exc:
            await ws.send(f"RuntimeError: {exc}")

    with serving(app) as server:
        with embedws.sync.connect(server.url + "/peer") as sync_client:
            peers.append(sync_client)
            with client(server.url + "/") as c:
                reply = c.recv(timeout=seconds(5))
            sync_client.send("bye")
    assert isinstance(reply, str) and reply.startswith("RuntimeError: recv() blocks")
    assert "event loop thread" in reply


def test_a_stale_wake_up_of_an_idle_greenlet_worker_is_harmless() -> None:
    # A parked handler may be woken twice in one pass (a message, and a watcher or
    # a timer): the second switch can reach its greenlet once it is idle.
    async def main() -> None:
        runner = GreenletRunner(asyncio.get_running_loop())
        worker = await asyncio.wait_for(runner.call(greenlet.getcurrent), seconds(5))
        assert worker.switch() == ()  # the stale wake-up: straight back, nothing run
        assert not worker.dead
        again = await asyncio.wait_for(runner.call(greenlet.getcurrent), seconds(5))
        assert again is worker  # and it runs the next job
        await runner.shutdown(asyncio.get_running_loop().time() + seconds(1))
        assert worker.dead

    asyncio.run(main())
