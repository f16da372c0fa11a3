"""Routes and the router, in memory (pure), and route options through a server."""

from __future__ import annotations

import functools
import uuid
from typing import Any

import pytest

import embedws
from embedws.errors import MethodNotAllowed, NotFound, RouteError
from embedws.routing import Route, Router

from .conftest import client, seconds, serving


def route(uri: str, **options: Any) -> Route:
    def handler(request: Any, ws: Any, **params: Any) -> None:
        pass

    options.setdefault("name", uri)
    return Route(kind=options.pop("kind", "websocket"), uri=uri, handler=handler, **options)


@pytest.mark.parametrize(
    ("uri", "path", "params"),
    [
        ("/chat/<room>", "/chat/lobby", {"room": "lobby"}),
        ("/chat/<room>", "/chat/a%20b", {"room": "a b"}),
        ("/chat/<room:str>", "/chat/x/y", None),
        ("/n/<n:int>", "/n/-42", {"n": -42}),
        ("/n/<n:int>", "/n/4.2", None),
        ("/f/<x:float>", "/f/4.25", {"x": 4.25}),
        ("/a/<w:alpha>", "/a/abcXYZ", {"w": "abcXYZ"}),
        ("/a/<w:alpha>", "/a/abc1", None),
        ("/s/<s:slug>", "/s/hello-world-2", {"s": "hello-world-2"}),
        ("/s/<s:slug>", "/s/Hello", None),
        ("/p/<rest:path>", "/p/a/b/c.txt", {"rest": "a/b/c.txt"}),
        (
            "/u/<id:uuid>",
            "/u/12345678-1234-5678-1234-567812345678",
            {"id": uuid.UUID("12345678-1234-5678-1234-567812345678")},
        ),
        ("/u/<id:uuid>", "/u/not-a-uuid", None),
        ("/r/<code:[A-Z]{3}>", "/r/ABC", {"code": "ABC"}),
        ("/r/<code:[A-Z]{3}>", "/r/ABCD", None),
        ("/two/<a>/<b:int>", "/two/x/7", {"a": "x", "b": 7}),
    ],
)
def test_parameter_types(uri: str, path: str, params: dict[str, Any] | None) -> None:
    assert route(uri).match(path) == params


def test_strict_slashes() -> None:
    loose, strict = route("/ws"), route("/ws", strict_slashes=True)
    assert loose.match("/ws") == {} and loose.match("/ws/") == {}
    assert strict.match("/ws") == {} and strict.match("/ws/") is None
    assert route("/c/<r>").match("/c/x/") == {"r": "x"}
    assert route("/c/<r>", strict_slashes=True).match("/c/x/") is None


def test_router_finds_by_kind_host_and_method() -> None:
    router = Router()
    ws = router.add(route("/x", name="ws"))
    get = router.add(route("/x", name="get", kind="http", methods=frozenset({"GET"})))
    hosted = router.add(route("/h", name="hosted", hosts=("app.example",)))
    assert router.find("/x", "localhost", "websocket")[0] is ws
    assert router.find("/x", "localhost", "http", "GET")[0] is get
    assert router.find("/x", "localhost", "http", "HEAD")[0] is get
    with pytest.raises(MethodNotAllowed):
        router.find("/x", "localhost", "http", "POST")
    assert router.find("/h", "APP.example:8080", "websocket")[0] is hosted
    with pytest.raises(NotFound):
        router.find("/h", "other.example", "websocket")
    assert router.named_hosts() == {"app.example"}


def test_bad_routes_are_clear_errors() -> None:
    with pytest.raises(RouteError, match="not a valid regular expression"):
        route("/x/<a:[>")
    with pytest.raises(RouteError, match="appears twice"):
        route("/x/<a>/<a>")
    router = Router()
    router.add(route("/x", name="a"))
    with pytest.raises(RouteError, match="defined twice"):
        router.add(route("/x", name="b"))
    app = embedws.App("dup")

    @app.websocket("/one")
    def first(request: Any, ws: Any) -> None:
        pass

    def other(request: Any, ws: Any) -> None:
        pass

    with pytest.raises(RouteError, match="already has a route named 'first'"):
        app.add_websocket_route(other, "/two", name="first")
    with pytest.raises(RouteError, match="mode must be"):
        app.add_websocket_route(other, "/three", mode="process")


def test_url_for_versions_prefixes_and_query() -> None:
    app = embedws.App("urls")

    @app.websocket("/chat/<room>", version=2)
    def chat(request: Any, ws: Any, room: str) -> None:
        pass

    @app.websocket("/files/<rest:path>", name="files", version=1, version_prefix="/api/v")
    def serve_file(request: Any, ws: Any, rest: str) -> None:
        pass

    bp = embedws.Blueprint("admin", url_prefix="/admin")

    @bp.websocket("/live")
    def live(request: Any, ws: Any) -> None:
        pass

    app.blueprint(bp)
    assert app.url_for("chat", room="a b") == "/v2/chat/a%20b"
    assert app.url_for("chat", room="x", token="t", n=[1, 2]) == "/v2/chat/x?token=t&n=1&n=2"
    assert app.url_for("files", rest="a/b.txt") == "/api/v1/files/a/b.txt"
    assert app.url_for("admin.live") == "/admin/live"
    with pytest.raises(RouteError, match="needs a value for 'room'"):
        app.url_for("chat")
    with pytest.raises(RouteError, match="no route is named"):
        app.url_for("nope")


def test_route_options_through_a_server() -> None:
    app = embedws.App("options", strict_slashes=True)
    calls: list[str] = []

    def tag(label: str) -> Any:
        def decorator(fn: Any) -> Any:
            @functools.wraps(fn)
            def wrapper(request: Any, ws: Any, **params: Any) -> Any:
                calls.append(label)
                return fn(request, ws, **params)

            return wrapper

        return decorator

    @app.websocket("/room/<room_id:int>", apply=[tag("inner"), tag("outer")], version=1)
    def room(request: Any, ws: Any, room_id: int) -> None:
        ws.send({"room": room_id, "type": type(room_id).__name__, "name": request.name})

    @app.websocket("/loose", strict_slashes=False)
    async def loose(request: Any, ws: Any) -> None:
        await ws.send("loose")

    bp = embedws.Blueprint("bp", url_prefix="/bp")

    @bp.websocket("/sub")
    async def sub(request: Any, ws: Any) -> None:
        await ws.send(request.name)

    app.blueprint(bp)
    with serving(app) as server:
        with client(server.url + "/v1/room/7") as c:
            assert c.recv(timeout=seconds(5)) == '{"room":7,"type":"int","name":"room"}'
        assert calls == ["outer", "inner"]
        for path in ("/loose", "/loose/"):
            with client(server.url + path) as c:
                assert c.recv(timeout=seconds(5)) == "loose"
        with client(server.url + "/bp/sub") as c:
            assert c.recv(timeout=seconds(5)) == "bp.sub"
