"""HTTP routes through the h11 front: responses, keep-alive, pipelining, limits, errors."""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

import embedws
from embedws.errors import Forbidden, NotFound
from embedws.response import HTTPResponse, empty, file, html, raw, redirect, text
from embedws.response import json as json_response

from .conftest import EARLY, MS, raw_http, seconds, serving, status_of


def make_app(**config: Any) -> embedws.App:
    app = embedws.App("http", config=config or None)

    @app.get("/")
    def index(request: Any) -> HTTPResponse:
        return html("<h1>hello</h1>")

    @app.get("/async")
    async def async_index(request: Any) -> HTTPResponse:
        return text(f"async {request.method}")

    @app.post("/echo")
    def echo_body(request: Any) -> HTTPResponse:
        return raw(request.body, content_type="application/octet-stream")

    @app.post("/json")
    async def echo_json(request: Any) -> HTTPResponse:
        return json_response({"got": request.json(), "args": request.args.getlist("a")})

    @app.get("/items/<item_id:int>")
    def item(request: Any, item_id: int) -> HTTPResponse:
        return json_response({"id": item_id, "type": type(item_id).__name__})

    @app.get("/redirect")
    def go(request: Any) -> HTTPResponse:
        return redirect("/")

    @app.get("/empty")
    def nothing(request: Any) -> HTTPResponse:
        return empty()

    @app.get("/forbidden")
    def forbidden(request: Any) -> HTTPResponse:
        raise Forbidden("not for you")

    @app.get("/crash")
    def crash(request: Any) -> HTTPResponse:
        raise RuntimeError("secret detail")

    @app.get("/not-a-response")
    def bad(request: Any) -> Any:
        return "just a string"

    @app.get("/headers")
    def headers(request: Any) -> HTTPResponse:
        return json_response(
            {
                "x": request.headers.get("X-Custom"),
                "all": request.headers.getall("x-multi"),
                "cookies": request.cookies,
                "host": request.host,
                "url": request.url,
                "ip": request.ip,
                "remote_addr": request.remote_addr,
            },
            headers={"X-Answer": "42"},
        )

    @app.websocket("/ws")
    def ws_route(request: Any, ws: Any) -> None:
        ws.send("hi")

    return app


@pytest.fixture
def server() -> Any:
    with serving(make_app()) as running:
        yield running


def get(
    port: int, path: str, method: str = "GET", body: bytes | None = None, **headers: str
) -> Any:
    return get_with(port, path, headers, method, body)


def get_with(
    port: int, path: str, headers: dict[str, str], method: str = "GET", body: bytes | None = None
) -> Any:
    """`get` with headers whose names are not Python identifiers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=seconds(5))
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response, data


def test_sync_and_async_http_handlers(server: Any) -> None:
    response, body = get(server.port, "/")
    assert response.status == 200
    assert response.getheader("Content-Type") == "text/html; charset=utf-8"
    assert body == b"<h1>hello</h1>"
    response, body = get(server.port, "/async")
    assert (response.status, body) == (200, b"async GET")
    assert response.getheader("Date")


def test_request_body_and_json(server: Any) -> None:
    _, body = get(server.port, "/echo", "POST", b"\x00binary\xff")
    assert body == b"\x00binary\xff"
    _, body = get(
        server.port,
        "/json?a=1&a=2",
        "POST",
        json.dumps({"k": "é"}).encode(),
        **{"Content-Type": "application/json"},
    )
    assert json.loads(body) == {"got": {"k": "é"}, "args": ["1", "2"]}


def test_invalid_json_body_is_400(server: Any) -> None:
    response, _ = get(server.port, "/json", "POST", b"{not json")
    assert response.status == 400


def test_path_parameters_are_converted(server: Any) -> None:
    response, body = get(server.port, "/items/42")
    assert json.loads(body) == {"id": 42, "type": "int"}
    response, _ = get(server.port, "/items/abc")
    assert response.status == 404


def test_response_helpers(server: Any, tmp_path: Path) -> None:
    response, _ = get(server.port, "/redirect")
    assert response.status == 302 and response.getheader("Location") == "/"
    response, body = get(server.port, "/empty")
    assert response.status == 204 and body == b""
    assert response.getheader("Content-Length") is None
    target = tmp_path / "page.css"
    target.write_text("body{}")
    served = file(target)  # streamed when sent: nothing read yet
    assert served.body == b"" and served.size == 6
    assert served.content_type == "text/css; charset=utf-8"
    with pytest.raises(NotFound):
        file(tmp_path / "missing.txt")


def test_headers_cookies_and_request_properties(server: Any) -> None:
    conn = socket.create_connection(("127.0.0.1", server.port), timeout=seconds(5))
    conn.sendall(
        b"GET /headers?x=1 HTTP/1.1\r\nHost: localhost:1234\r\nX-Custom: v\r\n"
        b"X-Multi: a\r\nX-Multi: b\r\nCookie: session=abc; theme=dark\r\n"
        b"X-Forwarded-For: 10.0.0.1\r\nConnection: close\r\n\r\n"
    )
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    conn.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"x-answer: 42" in head.lower()
    info = json.loads(body)
    assert info["x"] == "v" and info["all"] == ["a", "b"]
    assert info["cookies"] == {"session": "abc", "theme": "dark"}
    assert info["host"] == "localhost:1234"
    assert info["url"] == "http://localhost:1234/headers?x=1"
    assert info["ip"] == "127.0.0.1"
    assert info["remote_addr"] == ""  # X-Forwarded-For is not trusted by default


def test_remote_addr_from_trusted_proxies() -> None:
    app = make_app(PROXIES_COUNT=1)
    with serving(app) as server:
        _, body = get_with(server.port, "/headers", {"X-Forwarded-For": "203.0.113.9"})
        assert json.loads(body)["remote_addr"] == "203.0.113.9"
    app = make_app(PROXIES_COUNT=1, REAL_IP_HEADER="X-Real-IP")
    with serving(app) as server:
        _, body = get_with(server.port, "/headers", {"X-Real-IP": "198.51.100.7"})
        assert json.loads(body)["remote_addr"] == "198.51.100.7"


def test_keep_alive_serves_several_requests_on_one_connection(server: Any) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=seconds(5))
    for _ in range(3):
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.read() == b"<h1>hello</h1>"
        assert not response.will_close
    conn.close()


def test_pipelined_requests_are_answered_in_order(server: Any) -> None:
    requests = (
        b"GET /items/1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /items/3 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    data = raw_http(server.port, requests)
    assert data.count(b"HTTP/1.1 200") == 3
    first, second, third = data.index(b'"id":1'), data.index(b"hello"), data.index(b'"id":3')
    assert first < second < third


def test_head_gets_headers_without_body(server: Any) -> None:
    data = raw_http(server.port, b"HEAD / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert status_of(data) == 200
    assert b"content-length: 14" in data.lower()
    assert data.endswith(b"\r\n\r\n")


def test_unknown_path_is_404(server: Any) -> None:
    response, body = get(server.port, "/nowhere")
    assert response.status == 404 and b"/nowhere" in body


def test_wrong_method_is_405(server: Any) -> None:
    response, _ = get(server.port, "/echo", "GET")
    assert response.status == 405


def test_plain_http_on_a_websocket_route_is_426(server: Any) -> None:
    response, _ = get(server.port, "/ws")
    assert response.status == 426
    assert response.getheader("Upgrade") == "websocket"


def test_http_exceptions_and_crashes(server: Any, logs: Any) -> None:
    response, body = get(server.port, "/forbidden")
    assert response.status == 403 and b"not for you" in body
    response, body = get(server.port, "/crash")
    assert response.status == 500
    assert b"secret detail" not in body  # details go to the log, not to the client
    logs.wait_for("error while handling GET /crash")
    response, _ = get(server.port, "/not-a-response")
    assert response.status == 500
    logs.wait_for("not an HTTPResponse")
    response, _ = get(server.port, "/")  # still serving
    assert response.status == 200


@pytest.mark.parametrize(
    ("fmt", "content_type", "check"),
    [
        ("json", "application/json", lambda b: json.loads(b)["status"] == 404),
        ("html", "text/html; charset=utf-8", lambda b: b"<h1>404 Not Found</h1>" in b),
        ("text", "text/plain; charset=utf-8", lambda b: b.startswith(b"404 Not Found")),
    ],
)
def test_error_format(fmt: str, content_type: str, check: Any) -> None:
    app = embedws.App("fmt", error_format=fmt)
    with serving(app) as server:
        response, body = get(server.port, "/missing")
    assert response.status == 404
    assert response.getheader("Content-Type") == content_type
    assert check(body)


def test_route_error_format_applies_to_its_errors() -> None:
    app = embedws.App("fmt")

    @app.get("/api", error_format="json")
    def api(request: Any) -> HTTPResponse:
        raise NotFound("no such thing")

    with serving(app) as server:
        _, body = get(server.port, "/api")
    assert json.loads(body) == {
        "description": "Not Found",
        "status": 404,
        "message": "no such thing",
    }


def test_body_over_the_limit_is_413(logs: Any) -> None:
    with serving(make_app(REQUEST_MAX_SIZE=100)) as server:
        response, _ = get(server.port, "/echo", "POST", b"x" * 100)
        assert response.status == 200
        response, _ = get(server.port, "/echo", "POST", b"x" * 101)
        assert response.status == 413
        chunked = (
            b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"64\r\n" + b"y" * 100 + b"\r\n64\r\n" + b"y" * 100 + b"\r\n0\r\n\r\n"
        )
        assert status_of(raw_http(server.port, chunked)) == 413


def test_header_block_over_the_limit_is_431() -> None:
    with serving(make_app(REQUEST_MAX_HEADER_SIZE=1024)) as server:
        request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n"
        assert status_of(raw_http(server.port, request)) == 431
        many = b"".join(b"X-%d: v\r\n" % i for i in range(200))
        request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + many + b"\r\n"
        assert status_of(raw_http(server.port, request)) == 431
        response, _ = get(server.port, "/")
        assert response.status == 200


def test_garbage_is_400_and_the_server_keeps_serving(server: Any) -> None:
    assert status_of(raw_http(server.port, b"\x16\x03\x01garbage\r\n\r\n")) == 400
    assert status_of(raw_http(server.port, b"GET / HTTP/1.1\r\n\r\n")) == 400  # no Host
    response, _ = get(server.port, "/")
    assert response.status == 200


def test_idle_keep_alive_connection_is_closed() -> None:
    with serving(make_app(KEEP_ALIVE_TIMEOUT=100 * MS)) as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=seconds(5))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        started = time.monotonic()
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        elapsed = time.monotonic() - started
        sock.close()
    assert status_of(data) == 200
    assert 100 * MS - EARLY <= elapsed < seconds(3)


def test_slow_request_gets_408_and_a_silent_client_is_dropped() -> None:
    with serving(make_app(REQUEST_TIMEOUT=200 * MS)) as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=seconds(5))
        sock.sendall(b"GET / HTTP/1.1\r\nHo")  # and nothing more
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        sock.close()
        assert status_of(data) == 408
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=seconds(5))
        assert sock.recv(100) == b""  # closed without a word
        sock.close()


def test_on_request_middleware_can_answer_and_sets_ctx() -> None:
    app = make_app()
    seen: list[Any] = []

    @app.on_request
    def auth(request: Any) -> HTTPResponse | None:
        if request.path == "/":
            return text("denied", status=401)
        request.ctx.user = "alice"
        return None

    @app.get("/me")
    async def me(request: Any) -> HTTPResponse:
        seen.append(request.ctx.user)
        return text(request.ctx.user)

    with serving(app) as server:
        response, body = get(server.port, "/")
        assert (response.status, body) == (401, b"denied")
        response, body = get(server.port, "/me")
        assert (response.status, body) == (200, b"alice")
    assert seen == ["alice"]


def test_on_response_middleware_sees_every_response() -> None:
    app = make_app()

    @app.on_response
    async def stamp(request: Any, response: HTTPResponse) -> None:
        response.headers["X-Stamp"] = f"{request.method} {response.status}"

    with serving(app) as server:
        response, _ = get(server.port, "/")
        assert response.getheader("X-Stamp") == "GET 200"
        response, _ = get(server.port, "/nowhere")
        assert response.getheader("X-Stamp") == "GET 404"


def test_host_routes() -> None:
    app = embedws.App("hosts")

    @app.get("/", host="example.com", name="example")
    def example(request: Any) -> HTTPResponse:
        return text("example")

    @app.get("/", name="other")
    def other(request: Any) -> HTTPResponse:
        return text("other")

    with serving(app) as server:
        _, body = get(server.port, "/", Host="example.com:8080")
        assert body == b"example"
        _, body = get(server.port, "/", Host="localhost")
        assert body == b"other"


def test_past_max_connections_http_requests_get_503() -> None:
    with serving(make_app(MAX_CONNECTIONS=1)) as server:
        holder = http.client.HTTPConnection("127.0.0.1", server.port, timeout=seconds(5))
        holder.request("GET", "/")
        assert holder.getresponse().read() == b"<h1>hello</h1>"  # kept alive: 1 open
        response, _ = get(server.port, "/")
        assert response.status == 503
        holder.close()
        deadline = time.monotonic() + seconds(5)
        while get(server.port, "/")[0].status == 503:  # until the server saw the close
            assert time.monotonic() < deadline


# cross-site requests ---------------------------------------------------------------


def post_from(port: int, path: str, body: bytes, **headers: str) -> tuple[int, bytes]:
    response, data = get(port, path, "POST", body, **headers)
    return response.status, data


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data"]
)
@pytest.mark.parametrize(
    "origin", ["http://evil.example", "http://localhost:3000", "http://127.0.0.1:1", "null"]
)
def test_a_cross_site_post_is_refused_with_403(server: Any, origin: str, content_type: str) -> None:
    # The bodies a page can send without a CORS preflight: a form, or text/plain fetch.
    status, body = post_from(
        server.port, "/json", b'{"rm": "-rf"}', Origin=origin, **{"Content-Type": content_type}
    )
    assert status == 403
    assert b"WEBSOCKET_ORIGINS" in body


def test_same_origin_and_non_browser_posts_pass(server: Any) -> None:
    own = f"http://127.0.0.1:{server.port}"
    for headers in ({"Origin": own}, {"Origin": f"http://localhost:{server.port}"}, {}):
        status, body = post_from(server.port, "/echo", b"payload", **headers)
        assert (status, body) == (200, b"payload"), headers
    # Without Origin, a browser still says where the request came from.
    assert post_from(server.port, "/echo", b"x", **{"Sec-Fetch-Site": "same-origin"})[0] == 200
    assert post_from(server.port, "/echo", b"x", **{"Sec-Fetch-Site": "none"})[0] == 200
    assert post_from(server.port, "/echo", b"x", **{"Sec-Fetch-Site": "cross-site"})[0] == 403
    assert post_from(server.port, "/echo", b"x", **{"Sec-Fetch-Site": "same-site"})[0] == 403


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_every_unsafe_method_is_checked_and_safe_ones_are_not(method: str) -> None:
    app = embedws.App("methods")
    ran: list[str] = []

    @app.route("/thing", methods=["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"])
    def thing(request: Any) -> HTTPResponse:
        ran.append(request.method)
        return text("done")

    with serving(app) as server:
        assert get(server.port, "/thing", method, Origin="http://evil.example")[0].status == 403
        for safe in ("GET", "HEAD", "OPTIONS"):
            assert get(server.port, "/thing", safe, Origin="http://evil.example")[0].status == 200
    assert ran == ["GET", "HEAD", "OPTIONS"]  # the refused request ran nothing


def test_websocket_origins_opens_http_routes_too() -> None:
    app = make_app(WEBSOCKET_ORIGINS=["https://app.example", "loopback"])
    with serving(app) as server:
        for origin in ("https://app.example", "http://localhost:3000"):
            assert post_from(server.port, "/echo", b"ok", Origin=origin) == (200, b"ok")
        assert post_from(server.port, "/echo", b"no", Origin="https://evil.example")[0] == 403
    with serving(make_app(WEBSOCKET_ORIGINS="*")) as server:
        assert post_from(server.port, "/echo", b"ok", Origin="https://evil.example")[0] == 200


def test_behind_a_tls_proxy_the_own_origin_is_https() -> None:
    app = make_app(PROXIES_COUNT=1)
    with serving(app) as server:
        headers = {"Host": "app.example", "X-Forwarded-Proto": "https"}
        status, _ = post_from(server.port, "/echo", b"x", Origin="https://app.example", **headers)
        # the Host check (ALLOWED_HOSTS) still refuses a name it does not know on loopback
        assert status == 403
    app = make_app(PROXIES_COUNT=1, ALLOWED_HOSTS=["app.example"])
    with serving(app) as server:
        headers = {"Host": "app.example", "X-Forwarded-Proto": "https"}
        ok = post_from(server.port, "/echo", b"x", Origin="https://app.example", **headers)
        assert ok == (200, b"x")
        plain = {"Host": "app.example"}  # no proxy said https: port 80 is not the page's 443
        assert (
            post_from(server.port, "/echo", b"x", Origin="https://app.example", **plain)[0] == 403
        )
