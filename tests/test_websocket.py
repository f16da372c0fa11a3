"""The websocket member table, for async handlers and sync handlers (thread, greenlet).

Each test runs once per handler kind. The `websockets` client is the peer; the
handler under test is a "remote" that performs the operation the client asks
for and answers with what it observed, so one test covers the same behaviour in
every kind of handler.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK

import embedws
from embedws.errors import ConcurrencyError, WebsocketClosed

from .conftest import MS, add_handler, client, seconds, serving


def _decode(cmd: dict[str, Any], key: str = "data") -> Any:
    value = cmd.get(key)
    if cmd.get("b64"):
        return base64.b64decode(str(value))
    return value


def _describe(message: Any) -> dict[str, Any]:
    if isinstance(message, bytes):
        return {"bytes": base64.b64encode(message).decode()}
    return {"str": message}


def _props(ws: Any) -> dict[str, Any]:
    request = ws.request
    return {
        "open": ws.open,
        "closed": ws.closed,
        "subprotocol": ws.subprotocol,
        "server_state": ws.server_state.name,
        "client_state": ws.client_state.name,
        "close_code": ws.close_code,
        "close_reason": ws.close_reason,
        "id": ws.id,
        "remote_address": list(ws.remote_address),
        "latency": ws.latency,
        "rooms": sorted(ws.rooms),
        "path": request.path,
        "args": request.args.getlist("q"),
        "kind": type(ws).__module__,
    }


def sync_remote(request: Any, ws: Any) -> None:
    for raw in ws:
        cmd = json.loads(raw)
        op = cmd["op"]
        try:
            if op == "send":
                ws.send(_decode(cmd), cmd.get("encoding", "text"))
                continue
            if op == "send_fragments":
                ws.send(iter([_decode({"data": p, "b64": cmd.get("b64")}) for p in cmd["parts"]]))
                continue
            if op == "recv":
                result = _describe(ws.recv(timeout=cmd.get("timeout")))
            elif op == "recv_twice":
                result = _recv_twice_sync(ws)
            elif op == "ping":
                waiter = ws.ping(cmd.get("data"))
                ok = waiter.wait(timeout=seconds(5))
                result = {"pong": ok, "latency": ws.latency}
            elif op == "pong":
                ws.pong(cmd.get("data", ""))
                continue
            elif op == "close":
                ws.close(cmd.get("code", 1000), cmd.get("reason", ""))
                result = {"after_close": _props(ws)}
                continue
            elif op == "props":
                result = _props(ws)
            elif op == "raise":
                raise ValueError("the handler crashed on purpose")
            elif op == "return":
                return
            elif op == "closed_error":
                raise WebsocketClosed(1000, "")
            else:
                result = {"error": f"unknown op {op}"}
        except (TimeoutError, ConcurrencyError, TypeError) as exc:
            result = {"error": type(exc).__name__, "message": str(exc)}
        ws.send(result)


def _recv_twice_sync(ws: Any) -> dict[str, Any]:
    """Another thread waits in recv; then this one tries too."""
    outcome: list[Any] = []

    def other() -> None:
        outcome.append(_describe(ws.recv(timeout=seconds(5))))

    thread = threading.Thread(target=other)
    thread.start()
    while not ws._recv_lock.locked():  # until the other thread is inside recv
        time.sleep(0)
    try:
        ws.recv(timeout=seconds(2))
        second = []
    except ConcurrencyError:
        second = ["ConcurrencyError"]
    ws.send({"ready": True})
    while thread.is_alive():  # a greenlet handler must not block the loop: switch
        embedws.sync.sleep(seconds(0.001))
    return {"first": outcome[0], "second": second}


async def async_remote(request: Any, ws: Any) -> None:
    async for raw in ws:
        cmd = json.loads(raw)
        op = cmd["op"]
        try:
            if op == "send":
                await ws.send(_decode(cmd), cmd.get("encoding", "text"))
                continue
            if op == "send_fragments":
                parts = [_decode({"data": p, "b64": cmd.get("b64")}) for p in cmd["parts"]]

                async def agen(items: list[Any]) -> Any:
                    for item in items:
                        yield item

                await ws.send(agen(parts) if cmd.get("async_iter") else iter(parts))
                continue
            if op == "recv":
                result = _describe(await ws.recv(timeout=cmd.get("timeout")))
            elif op == "recv_twice":
                task = asyncio.ensure_future(ws.recv(timeout=seconds(5)))
                await asyncio.sleep(0)  # the task is now waiting in recv
                try:
                    await ws.recv(timeout=seconds(2))
                    second = []
                except ConcurrencyError:
                    second = ["ConcurrencyError"]
                await ws.send({"ready": True})
                first = _describe(await task)
                result = {"first": first, "second": second}
            elif op == "ping":
                waiter = await ws.ping(cmd.get("data"))
                latency = await asyncio.wait_for(waiter, seconds(5))
                result = {"pong": latency >= 0, "latency": ws.latency}
            elif op == "pong":
                await ws.pong(cmd.get("data", ""))
                continue
            elif op == "close":
                await ws.close(cmd.get("code", 1000), cmd.get("reason", ""))
                continue
            elif op == "props":
                result = _props(ws)
            elif op == "raise":
                raise ValueError("the handler crashed on purpose")
            elif op == "return":
                return
            elif op == "closed_error":
                raise WebsocketClosed(1000, "")
            else:
                result = {"error": f"unknown op {op}"}
        except (TimeoutError, ConcurrencyError, TypeError) as exc:
            result = {"error": type(exc).__name__, "message": str(exc)}
        await ws.send(result)


@pytest.fixture
def remote(kind: str) -> Iterator[Any]:
    app = embedws.App("remote")
    add_handler(app, "/remote", kind, sync_remote, async_remote, subprotocols=["chat", "superchat"])
    with serving(app) as server:
        yield server


def ask(conn: Any, **cmd: Any) -> Any:
    conn.send(json.dumps(cmd))
    return json.loads(conn.recv(timeout=seconds(5)))


# send -----------------------------------------------------------------------


def test_send_str_is_a_text_frame(remote: Any) -> None:
    with client(remote.url + "/remote") as c:
        c.send(json.dumps({"op": "send", "data": "héllo ☃"}))
        assert c.recv(timeout=seconds(5)) == "héllo ☃"


def test_send_bytes_is_a_binary_frame(remote: Any) -> None:
    with client(remote.url + "/remote") as c:
        payload = bytes(range(256))
        c.send(json.dumps({"op": "send", "data": base64.b64encode(payload).decode(), "b64": True}))
        assert c.recv(timeout=seconds(5)) == payload


def test_send_dict_list_tuple_is_json_text(remote: Any) -> None:
    with client(remote.url + "/remote") as c:
        c.send(json.dumps({"op": "send", "data": {"a": [1, "é"]}}))
        assert json.loads(c.recv(timeout=seconds(5))) == {"a": [1, "é"]}
        c.send(json.dumps({"op": "send", "data": [1, 2, 3]}))
        message = c.recv(timeout=seconds(5))
        assert isinstance(message, str) and json.loads(message) == [1, 2, 3]


def test_send_with_json_encoding_encodes_anything(remote: Any) -> None:
    with client(remote.url + "/remote") as c:
        c.send(json.dumps({"op": "send", "data": "text", "encoding": "json"}))
        assert c.recv(timeout=seconds(5)) == '"text"'
        c.send(json.dumps({"op": "send", "data": 42, "encoding": "json"}))
        assert c.recv(timeout=seconds(5)) == "42"


def test_send_str_with_bytes_encoding_is_utf8_binary(remote: Any) -> None:
    with client(remote.url + "/remote") as c:
        c.send(json.dumps({"op": "send", "data": "é", "encoding": "bytes"}))
        assert c.recv(timeout=seconds(5)) == "é".encode()


def test_send_iterable_is_one_fragmented_message(remote: Any) -> None:
    with client(remote.url + "/remote") as c:
        c.send(json.dumps({"op": "send_fragments", "parts": ["ab", "c€", "d"]}))
        fragments = list(c.recv_streaming())
        assert fragments == ["ab", "c€", "d"]
        c.send(json.dumps({"op": "send_fragments", "parts": ["YQ==", "Yg=="], "b64": True}))
        assert list(c.recv_streaming()) == [b"a", b"b"]


def test_send_async_iterable_is_one_fragmented_message() -> None:
    app = embedws.App("frag")
    app.add_websocket_route(async_remote, "/remote")
    with serving(app) as server, client(server.url + "/remote") as c:
        c.send(json.dumps({"op": "send_fragments", "parts": ["x", "y", "z"], "async_iter": True}))
        assert list(c.recv_streaming()) == ["x", "y", "z"]


def test_send_an_unsupported_type_raises_type_error(remote: Any) -> None:
    with client(remote.url + "/remote") as c:
        answer = ask(c, op="send", data=None)
        assert answer["error"] == "TypeError"
        assert "cannot send NoneType" in answer["message"]


# recv -----------------------------------------------------------------------


def test_recv_returns_str_for_text_and_bytes_for_binary(remote: Any) -> None:
    with client(remote.url + "/remote") as c:
        c.send(json.dumps({"op": "recv", "timeout": 5}))
        c.send("plain text")
        assert json.loads(c.recv(timeout=seconds(5))) == {"str": "plain text"}
        c.send(json.dumps({"op": "recv", "timeout": 5}))
        c.send(b"\x00\xff")
        assert json.loads(c.recv(timeout=seconds(5))) == {
            "bytes": base64.b64encode(b"\x00\xff").decode()
        }


def test_recv_timeout_raises_timeout_error_and_loses_nothing(remote: Any) -> None:
    with client(remote.url + "/remote") as c:
        started = time.monotonic()
        assert ask(c, op="recv", timeout=100 * MS)["error"] == "TimeoutError"
        assert time.monotonic() - started >= 100 * MS
        # A message arriving after a timeout is still delivered to the next recv.
        c.send(json.dumps({"op": "recv", "timeout": 5}))
        c.send("after the timeout")
        assert json.loads(c.recv(timeout=seconds(5))) == {"str": "after the timeout"}


def test_recv_with_zero_timeout_only_returns_a_message_already_there(remote: Any) -> None:
    with client(remote.url + "/remote") as c:
        assert ask(c, op="recv", timeout=0)["error"] == "TimeoutError"
        c.send(json.dumps({"op": "recv", "timeout": 5}))
        c.send("one")
        assert json.loads(c.recv(timeout=seconds(5))) == {"str": "one"}


def test_two_concurrent_recv_raise_concurrency_error(remote: Any) -> None:
    with client(remote.url + "/remote") as c:
        c.send(json.dumps({"op": "recv_twice"}))
        assert json.loads(c.recv(timeout=seconds(5))) == {"ready": True}
        c.send("for the first")
        answer = json.loads(c.recv(timeout=seconds(5)))
        assert answer["second"] == ["ConcurrencyError"]
        assert answer["first"] == {"str": "for the first"}


def test_iteration_ends_quietly_when_the_client_closes(kind: str) -> None:
    ended = threading.Event()
    seen: list[Any] = []

    def handler(request: Any, ws: Any) -> None:
        for message in ws:
            seen.append(message)
        seen.append(("code", ws.close_code, ws.close_reason))
        ended.set()

    async def ahandler(request: Any, ws: Any) -> None:
        async for message in ws:
            seen.append(message)
        seen.append(("code", ws.close_code, ws.close_reason))
        ended.set()

    app = embedws.App("iter")
    add_handler(app, "/", kind, handler, ahandler)
    with serving(app) as server:
        with client(server.url + "/") as c:
            c.send("a")
            c.send(b"b")
            c.close(4000, "bye")
        assert ended.wait(seconds(5))
    assert seen == ["a", b"b", ("code", 4000, "bye")]


def test_bursts_on_many_connections_arrive_whole_and_in_order_before_the_close(
    kind: str,
) -> None:
    # Thread-mode handlers get their messages in batches handed over at the end
    # of each loop pass: nothing may be lost, reordered or overtaken by the close.
    connections, count = 20, 300
    seen: dict[str, list[Any]] = {}
    done = threading.Semaphore(0)

    def handler(request: Any, ws: Any) -> None:
        got = seen[request.args.get("n")] = []
        for message in ws:
            got.append(message)
        got.append(ws.close_code)
        done.release()

    async def ahandler(request: Any, ws: Any) -> None:
        got = seen[request.args.get("n")] = []
        async for message in ws:
            got.append(message)
        got.append(ws.close_code)
        done.release()

    app = embedws.App("bursts")
    add_handler(app, "/", kind, handler, ahandler)
    with serving(app) as server:
        peers = [client(f"{server.url}/?n={n}") for n in range(connections)]
        for peer in peers:
            for i in range(count):
                peer.send(str(i))
        for peer in peers:
            peer.close(4001)
        for _ in range(connections):
            assert done.acquire(timeout=seconds(10))
    expected = [str(i) for i in range(count)] + [4001]
    assert sorted(seen) == sorted(str(n) for n in range(connections))
    assert all(got == expected for got in seen.values())


# ping / pong ----------------------------------------------------------------


def test_ping_waits_for_the_pong_and_measures_latency(remote: Any) -> None:
    with client(remote.url + "/remote") as c:
        answer = ask(c, op="ping")
        assert answer["pong"] is True
        assert 0 < answer["latency"] < seconds(5)


def test_ping_with_payload_and_unsolicited_pong(remote: Any) -> None:
    with client(remote.url + "/remote") as c:
        assert ask(c, op="ping", data="custom")["pong"] is True
        pongs: list[bytes] = []
        # the websockets client ignores unsolicited pongs; check the frame is
        # accepted (the connection stays open and answers).
        c.send(json.dumps({"op": "pong", "data": "unsolicited"}))
        assert ask(c, op="props")["open"] is True
        assert pongs == []


# close ----------------------------------------------------------------------


def test_handler_closes_with_code_and_reason(remote: Any) -> None:
    with client(remote.url + "/remote") as c:
        c.send(json.dumps({"op": "close", "code": 4001, "reason": "done here"}))
        with pytest.raises(ConnectionClosed) as caught:
            c.recv(timeout=seconds(5))
        assert caught.value.rcvd is not None
        assert (caught.value.rcvd.code, caught.value.rcvd.reason) == (4001, "done here")


def test_handler_return_closes_with_1000(remote: Any) -> None:
    with client(remote.url + "/remote") as c:
        c.send(json.dumps({"op": "return"}))
        with pytest.raises(ConnectionClosedOK) as caught:
            c.recv(timeout=seconds(5))
        assert caught.value.rcvd is not None and caught.value.rcvd.code == 1000


def test_handler_crash_closes_with_1011_logs_and_others_keep_working(
    remote: Any, logs: Any
) -> None:
    with client(remote.url + "/remote") as other, client(remote.url + "/remote") as c:
        c.send(json.dumps({"op": "raise"}))
        with pytest.raises(ConnectionClosedError) as caught:
            c.recv(timeout=seconds(5))
        assert caught.value.rcvd is not None and caught.value.rcvd.code == 1011
        record = logs.wait_for("raised; closing with 1011")
        assert "the handler crashed on purpose" in (record.exc_text or "")
        assert ask(other, op="props")["open"] is True


def test_websocket_closed_escaping_a_handler_is_a_normal_end(remote: Any, logs: Any) -> None:
    with client(remote.url + "/remote") as c:
        c.send(json.dumps({"op": "closed_error"}))
        with pytest.raises(ConnectionClosedOK):
            c.recv(timeout=seconds(5))
    assert not [r for r in logs.records if r.levelname == "ERROR"]


def test_close_code_and_reason_reach_the_handler(kind: str) -> None:
    result: list[Any] = []
    done = threading.Event()

    def handler(request: Any, ws: Any) -> None:
        with pytest.raises(WebsocketClosed) as caught:
            ws.recv(timeout=seconds(5))
        result.append((ws.close_code, ws.close_reason, caught.value.code, caught.value.reason))
        result.append((ws.closed, ws.open, ws.server_state.name, ws.client_state.name))
        result.append(type(caught.value).__name__)
        done.set()

    async def ahandler(request: Any, ws: Any) -> None:
        with pytest.raises(WebsocketClosed) as caught:
            await ws.recv(timeout=seconds(5))
        result.append((ws.close_code, ws.close_reason, caught.value.code, caught.value.reason))
        result.append((ws.closed, ws.open, ws.server_state.name, ws.client_state.name))
        result.append(type(caught.value).__name__)
        done.set()

    app = embedws.App("close")
    add_handler(app, "/", kind, handler, ahandler)
    with serving(app) as server:
        with client(server.url + "/") as c:
            c.close(1001, "going")
        assert done.wait(seconds(5))
    assert result == [
        (1001, "going", 1001, "going"),
        (True, False, "CLOSED", "CLOSED"),
        "ConnectionClosedOK",
    ]


def test_abrupt_disconnect_gives_1006_and_wakes_recv(kind: str) -> None:
    result: list[Any] = []
    done = threading.Event()

    def handler(request: Any, ws: Any) -> None:
        try:
            ws.recv()
        except WebsocketClosed as exc:
            result.append((exc.code, ws.close_code, type(exc).__name__))
        done.set()

    async def ahandler(request: Any, ws: Any) -> None:
        try:
            await ws.recv()
        except WebsocketClosed as exc:
            result.append((exc.code, ws.close_code, type(exc).__name__))
        done.set()

    app = embedws.App("abrupt")
    add_handler(app, "/", kind, handler, ahandler)
    with serving(app) as server:
        c = client(server.url + "/")
        c.socket.close()  # no closing handshake
        assert done.wait(seconds(5))
    assert result == [(1006, 1006, "ConnectionClosedError")]


def test_send_after_close_raises_websocket_closed(kind: str) -> None:
    result: list[Any] = []
    done = threading.Event()

    def handler(request: Any, ws: Any) -> None:
        ws.close()
        try:
            ws.send("late")
        except WebsocketClosed as exc:
            result.append(exc.code)
        assert ws.wait_closed(1) is True
        done.set()

    async def ahandler(request: Any, ws: Any) -> None:
        await ws.close()
        try:
            await ws.send("late")
        except WebsocketClosed as exc:
            result.append(exc.code)
        assert await ws.wait_closed(1) is True
        done.set()

    app = embedws.App("late")
    add_handler(app, "/", kind, handler, ahandler)
    with serving(app) as server:
        with client(server.url + "/") as c, pytest.raises(ConnectionClosedOK):
            c.recv(timeout=seconds(5))
        assert done.wait(seconds(5))
    assert result == [1000]


def test_wait_closed_times_out_while_open(kind: str) -> None:
    result: list[Any] = []
    done = threading.Event()

    def handler(request: Any, ws: Any) -> None:
        result.append(ws.wait_closed(timeout=50 * MS))
        ws.send("waited")
        result.append(ws.wait_closed(timeout=seconds(5)))
        done.set()

    async def ahandler(request: Any, ws: Any) -> None:
        result.append(await ws.wait_closed(timeout=50 * MS))
        await ws.send("waited")
        result.append(await ws.wait_closed(timeout=seconds(5)))
        done.set()

    app = embedws.App("wait")
    add_handler(app, "/", kind, handler, ahandler)
    with serving(app) as server:
        with client(server.url + "/") as c:
            assert c.recv(timeout=seconds(5)) == "waited"
        assert done.wait(seconds(5))
    assert result == [False, True]


# properties -------------------------------------------------------------------


def test_properties_while_open(remote: Any, kind: str) -> None:
    with client(remote.url + "/remote?q=1&q=2", subprotocols=["superchat", "chat"]) as c:
        props = ask(c, op="props")
        assert props["open"] is True and props["closed"] is False
        assert props["subprotocol"] == "chat"  # the server's preference wins
        assert props["server_state"] == "OPEN" and props["client_state"] == "OPEN"
        assert props["close_code"] is None and props["close_reason"] is None
        assert isinstance(props["id"], int) and props["id"] > 0
        assert props["remote_address"] == list(c.local_address)
        assert props["rooms"] == []
        assert props["path"] == "/remote" and props["args"] == ["1", "2"]
        expected = "embedws.aio.connection" if kind == "async" else "embedws.sync.websocket"
        assert props["kind"] == expected
        ask(c, op="ping")
        assert ask(c, op="props")["latency"] > 0


def test_ids_are_unique(remote: Any) -> None:
    ids = set()
    for _ in range(3):
        with client(remote.url + "/remote") as c:
            ids.add(ask(c, op="props")["id"])
    assert len(ids) == 3


def test_server_state_is_closing_once_the_server_sent_close(kind: str) -> None:
    states: list[Any] = []
    done = threading.Event()

    def handler(request: Any, ws: Any) -> None:
        ws.close()
        states.append((ws.server_state.name, ws.client_state.name))
        done.set()

    async def ahandler(request: Any, ws: Any) -> None:
        ws.start_close(1000, "")
        states.append((ws.server_state.name, ws.client_state.name))
        await ws.wait_closed(5)
        states.append((ws.server_state.name, ws.client_state.name))
        done.set()

    app = embedws.App("states")
    add_handler(app, "/", kind, handler, ahandler)
    with serving(app) as server:
        with client(server.url + "/") as c, pytest.raises(ConnectionClosedOK):
            c.recv(timeout=seconds(5))
        assert done.wait(seconds(5))
    assert states[-1] == ("CLOSED", "CLOSED")
    if kind == "async":
        assert states[0] == ("CLOSING", "OPEN")


# limits -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [1024])
def test_max_size_is_inclusive_and_bigger_closes_1009(kind: str, size: int) -> None:
    from .conftest import echo_handlers

    app = embedws.App("max", config={"WEBSOCKET_MAX_SIZE": size})
    add_handler(app, "/", kind, *echo_handlers())
    with serving(app) as server:
        with client(server.url + "/") as c:
            c.send("x" * size)
            assert c.recv(timeout=seconds(5)) == "x" * size
            c.send(b"y" * (size + 1))
            with pytest.raises(ConnectionClosedError) as caught:
                c.recv(timeout=seconds(5))
            assert caught.value.rcvd is not None and caught.value.rcvd.code == 1009


def test_max_size_counts_all_fragments(kind: str) -> None:
    from .conftest import echo_handlers

    app = embedws.App("max", config={"WEBSOCKET_MAX_SIZE": 1000})
    add_handler(app, "/", kind, *echo_handlers())
    with serving(app) as server, client(server.url + "/") as c:
        with pytest.raises(ConnectionClosedError) as caught:
            # the server may close before the last fragment is sent
            c.send(iter(["x" * 400, "x" * 400, "x" * 400]))
            c.recv(timeout=seconds(5))
        assert caught.value.rcvd is not None and caught.value.rcvd.code == 1009


def test_compression_is_negotiated_when_enabled(kind: str) -> None:
    from .conftest import echo_handlers

    app = embedws.App("deflate", config={"WEBSOCKET_COMPRESSION": "deflate"})
    add_handler(app, "/", kind, *echo_handlers())
    with serving(app) as server, client(server.url + "/") as c:
        assert c.response is not None
        assert "permessage-deflate" in c.response.headers.get("Sec-WebSocket-Extensions", "")
        c.send("z" * 100_000)
        assert c.recv(timeout=seconds(5)) == "z" * 100_000


def test_no_compression_by_default(remote: Any) -> None:
    with client(remote.url + "/remote") as c:
        assert c.response is not None
        assert "Sec-WebSocket-Extensions" not in c.response.headers


def test_large_messages_both_ways(kind: str) -> None:
    from .conftest import echo_handlers

    app = embedws.App("large", config={"WEBSOCKET_MAX_SIZE": 8 * 2**20})
    add_handler(app, "/", kind, *echo_handlers())
    with serving(app) as server, client(server.url + "/", max_size=None) as c:
        payload = bytes(range(256)) * 16384  # 4 MiB
        c.send(payload)
        assert c.recv(timeout=seconds(10)) == payload


def test_remote_address_and_request_ip_are_the_clients_own_address(kind: str) -> None:
    def handler(request: Any, ws: Any) -> None:
        host, port = ws.remote_address[:2]
        ws.send(f"{host} {port} {request.ip}")
        ws.recv(timeout=seconds(5))

    async def ahandler(request: Any, ws: Any) -> None:
        host, port = ws.remote_address[:2]
        await ws.send(f"{host} {port} {request.ip}")
        await ws.recv(timeout=seconds(5))

    app = embedws.App("address")
    add_handler(app, "/", kind, handler, ahandler)
    with serving(app) as server, client(server.url + "/") as c:
        host, port = c.local_address[:2]
        assert c.recv(timeout=seconds(5)) == f"{host} {port} {host}"
        c.send("done")
