"""Request parsing hardening (issue 20): path parameters, dot segments, Host values, framing.

The wire tests send exact bytes to a real server and read its answer; the
parsers behind them (routing, security, request: pure modules) are tested in
memory at the end.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

import embedws
from embedws.errors import BadRequest
from embedws.request import Request, check_head
from embedws.response import HTTPResponse, raw
from embedws.response import json as json_response
from embedws.routing import Route, check_path
from embedws.security import host_allowed, origin_allowed, split_host

from .conftest import client, raw_http, seconds, serving, status_of, upgrade_request


def make_app() -> embedws.App:
    app = embedws.App("request-hardening")

    # Each handler answers what it received, so the test reads it off the wire.
    @app.get("/dl/<name>")
    def download(request: Any, name: str) -> HTTPResponse:
        return json_response({"name": name})

    @app.get("/typed/<name:str>")
    def typed(request: Any, name: str) -> HTTPResponse:
        return json_response({"name": name})

    @app.get("/re/<code:[^/]+>")
    def regex(request: Any, code: str) -> HTTPResponse:
        return json_response({"code": code})

    @app.get("/files/<rest:path>")
    def files(request: Any, rest: str) -> HTTPResponse:
        return json_response({"rest": rest})

    @app.get("/page")
    def page(request: Any) -> HTTPResponse:
        return json_response({"host": request.host})

    @app.post("/post")
    def post(request: Any) -> HTTPResponse:
        return raw(request.body, content_type="application/octet-stream")

    @app.websocket("/room/<room>")
    async def room(request: Any, ws: Any, room: str) -> None:
        await ws.send(room)

    return app


@pytest.fixture
def server() -> Iterator[Any]:
    with serving(make_app()) as running:
        yield running


def get(port: int, path: str, *, host: bytes = b"127.0.0.1") -> tuple[int, bytes]:
    """(status, body) of one GET sent as exact bytes."""
    request = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + host + b"\r\n"
    answer = raw_http(port, request + b"Connection: close\r\n\r\n")
    return status_of(answer), answer.partition(b"\r\n\r\n")[2]


def received(port: int, path: str) -> dict[str, Any]:
    """What the handler of ``path`` received (it must answer 200)."""
    status, body = get(port, path)
    assert status == 200, (path, body)
    result: dict[str, Any] = json.loads(body)
    return result


# path parameters ---------------------------------------------------------------------------


def test_an_encoded_slash_never_reaches_a_parameter_that_is_not_a_path(server: Any) -> None:
    for path in ("/dl/a%2Fsecret.txt", "/dl/a%2fb", "/typed/x%2Fy", "/re/x%2Fy", "/dl/%2F"):
        status, body = get(server.port, path)
        assert (status, body) == (404, f"404 Not Found: no route for {path}\n".encode())
    # The example: "..%2Fsecret.txt" is one segment, whose value would hold a "/".
    assert get(server.port, "/dl/..%2Fsecret.txt")[0] == 404
    # A websocket route's parameter too: the upgrade finds no route.
    answer = raw_http(server.port, upgrade_request("/room/a%2Fb"))
    assert status_of(answer) == 404
    # What a parameter may hold still arrives decoded.
    assert received(server.port, "/dl/report.txt") == {"name": "report.txt"}
    assert received(server.port, "/dl/a%20b") == {"name": "a b"}
    assert received(server.port, "/typed/%C3%A9t%C3%A9%20%E2%82%AC") == {"name": "été €"}
    assert received(server.port, "/re/a%25b") == {"code": "a%b"}
    with client(server.url + "/room/caf%C3%A9%20bar") as ws:
        assert ws.recv(timeout=seconds(5)) == "café bar"


def test_a_path_parameter_never_receives_a_dot_dot_segment_or_nul(server: Any) -> None:
    for path in (
        "/files/a/../b",
        "/files/..",
        "/files/a/%2e%2E/b",
        "/files/a%00b",
        "/files/a.txt%00.png",
    ):
        assert get(server.port, path)[0] == 400, path
    # Encoded slashes make no segments of the request path, but the decoded
    # value would hold a ".." segment: no match.
    for path in ("/files/..%2fb", "/files/a%2F..%2Fb", "/files/a%2F%2E%2E"):
        assert get(server.port, path)[0] == 404, path
    # An encoded leading slash would make os.path.join(root, rest) absolute.
    assert get(server.port, "/files/%2Fetc%2Fpasswd")[0] == 404
    # Slashes, encoded or not, dots inside names, UTF-8: all still arrive.
    assert received(server.port, "/files/a%2Fb/c.txt") == {"rest": "a/b/c.txt"}
    assert received(server.port, "/files/dir/.hidden") == {"rest": "dir/.hidden"}
    assert received(server.port, "/files/a..b/...") == {"rest": "a..b/..."}
    assert received(server.port, "/files/caf%C3%A9/menu%20du%20jour.pdf") == {
        "rest": "café/menu du jour.pdf"
    }


def test_dot_segments_and_nul_in_any_path_are_400_before_routing(server: Any) -> None:
    for path in (
        "/a/../b",
        "/a/%2e%2E/b",
        "/page/..",
        "/page/.",
        "/./page",
        "/%2E/page",
        "/nowhere/../page",
    ):
        status, body = get(server.port, path)
        assert status == 400, path
        assert b"dot segment" in body and b"browsers" in body, body
    status, body = get(server.port, "/page%00")
    assert status == 400 and b"NUL" in body, body
    answer = raw_http(server.port, upgrade_request("/room/../room/x"))
    assert status_of(answer) == 400
    assert get(server.port, "/page")[0] == 200  # still serving, and the plain path is fine
    assert get(server.port, "/page?next=/a/../b%00")[0] == 200  # the query is not the path


# Host ----------------------------------------------------------------------------------------

INVALID_HOSTS = [
    b"127.0.0.1:evil.com",
    b"localhost:80:evil.com",
    b"[::1].evil.com",
    b"[::1]:80:evil.com",
    b"localhost:",
    b"localhost:http",
    b"localhost:65536",
    b"localhost:123456",
    b"localhost:-1",
    b"local host",
    b"a@localhost",
    b"localhost/evil",
    b"[::1",
    b"[evil.com]",
    b"[::1%25lo]",
    b"caf\xe9.example",
    b"",
]


def test_a_host_that_is_not_host_and_port_is_400_before_any_other_check() -> None:
    # ALLOWED_HOSTS="*" switches the rebinding guard off: only the syntax is checked.
    for config in ({}, {"ALLOWED_HOSTS": "*"}):
        with serving(make_app(), **config) as server:
            for host in INVALID_HOSTS:
                status, body = get(server.port, "/page", host=host)
                assert status == 400, (config, host, body)
                assert b"Host" in body and b"host[:port]" in body, body
                assert get(server.port, "/nowhere", host=host)[0] == 400  # before routing
                upgrade = upgrade_request("/room/x").replace(b"Host: 127.0.0.1", b"Host: " + host)
                assert status_of(raw_http(server.port, upgrade)) == 400, (config, host)
    # Every valid form still gets in ...
    with serving(make_app()) as server:
        for host in (b"localhost", b"LocalHost:8080", b"127.0.0.1:65535", b"[::1]", b"[::1]:1"):
            status, body = get(server.port, "/page", host=host)
            assert (status, json.loads(body)) == (200, {"host": host.decode()})
            upgrade = upgrade_request("/room/x", host=host.decode())
            assert status_of(raw_http(server.port, upgrade, read_all=False)) == 101
        assert status_of(raw_http(server.port, b"GET /page HTTP/1.0\r\n\r\n")) == 200  # no Host
        # ... the rebinding guard still refuses well-formed foreign names ...
        assert get(server.port, "/page", host=b"evil.example")[0] == 403
        # ... and h11 itself refuses a second Host header (not checked twice).
        answer = raw_http(
            server.port, b"GET /page HTTP/1.1\r\nHost: localhost\r\nHost: evil.com\r\n\r\n"
        )
        assert status_of(answer) == 400
    with serving(make_app(), ALLOWED_HOSTS="*") as server:
        for host in (b"my_host.example:443", b"10.0.0.1", b"[2001:DB8::1]:8080", b"a-b.c."):
            assert get(server.port, "/page", host=host)[0] == 200, host


# Content-Length with Transfer-Encoding -------------------------------------------------------


def test_content_length_with_transfer_encoding_is_400_and_the_connection_closes(
    server: Any,
) -> None:
    smuggled = b"GET /page HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    for framing in (
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
    ):
        request = b"POST /post HTTP/1.1\r\nHost: 127.0.0.1\r\n" + framing + b"\r\n"
        answer = raw_http(server.port, request + b"5\r\nhello\r\n0\r\n\r\n" + smuggled)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), answer
        assert b"connection: close" in head.lower()
        assert b"Content-Length" in body and b"Transfer-Encoding" in body, body
        assert answer.count(b"HTTP/1.1") == 1  # closed: the pipelined request is never read
    upgrade = upgrade_request("/room/x").replace(
        b"\r\n\r\n", b"\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert status_of(raw_http(server.port, upgrade + b"0\r\n\r\n")) == 400
    # Either framing alone still works, and keeps the connection alive.
    chunked = b"POST /post HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    sized = b"POST /post HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nworld"
    closing = b"GET /page HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    answer = raw_http(server.port, chunked + b"5\r\nhello\r\n0\r\n\r\n" + sized + closing)
    assert answer.count(b"HTTP/1.1 200 OK") == 3, answer
    assert b"\r\n\r\nhello" in answer and b"\r\n\r\nworld" in answer


# the parsers, in memory ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/", "/a/b", "/a/.hidden", "/a/b.", "/a/..b", "/a/.../b", "/a%20b", "/%C3%A9", "/a%2Fb",
     "/a%2e", "/%2ea", "/a%252e%252e/b", "/a//b", "/a%25", "/a/..%2fb", "/a%2F.."],
)  # fmt: skip
def test_check_path_lets_ordinary_paths_through(path: str) -> None:
    check_path(path)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/a/../b", "dot segment"),
        ("/a/./b", "dot segment"),
        ("/..", "dot segment"),
        ("/a/.", "dot segment"),
        ("..", "dot segment"),
        ("../a", "dot segment"),
        ("/a/%2e%2E/b", "dot segment"),
        ("/a/%2E/b", "dot segment"),
        ("/a%00", "NUL"),
        ("/a/%00/b", "NUL"),
    ],
)
def test_check_path_refuses_dot_segments_and_nul(path: str, reason: str) -> None:
    with pytest.raises(BadRequest, match=reason) as caught:
        check_path(path)
    assert caught.value.status_code == 400 and repr(path) in str(caught.value)


def route(uri: str) -> Route:
    return Route(kind="http", uri=uri, handler=lambda request, **params: None, name=uri)


@pytest.mark.parametrize(
    ("uri", "path", "params"),
    [
        ("/dl/<name>", "/dl/..%2Fsecret.txt", None),
        ("/dl/<name>", "/dl/a%2fb", None),
        ("/dl/<name>", "/dl/a%00", None),
        ("/dl/<name>", "/dl/a%20b", {"name": "a b"}),
        ("/dl/<name>", "/dl/..", {"name": ".."}),  # no slash: it names nothing outside
        ("/dl/<name:str>", "/dl/x%2Fy", None),
        ("/dl/<name:slug>", "/dl/a%2Fb", None),
        ("/dl/<code:[^?]+>", "/dl/a%2Fb", None),
        ("/dl/<code:.+>", "/dl/a/b", None),  # a regular expression is not a path either
        ("/p/<rest:path>", "/p/a%2Fb/c", {"rest": "a/b/c"}),
        ("/p/<rest:path>", "/p/a/./b", {"rest": "a/./b"}),
        ("/p/<rest:path>", "/p/a..b/...", {"rest": "a..b/..."}),
        ("/p/<rest:path>", "/p/a/../b", None),
        ("/p/<rest:path>", "/p/..", None),
        ("/p/<rest:path>", "/p/a/..", None),
        ("/p/<rest:path>", "/p/%2e%2e/b", None),
        ("/p/<rest:path>", "/p/a%2F..%2Fb", None),
        ("/p/<rest:path>", "/p/%2Fetc/passwd", None),
        ("/p/<rest:path>", "/p/a%00b", None),
    ],
)
def test_parameters_never_hold_what_leaves_a_directory(
    uri: str, path: str, params: dict[str, Any] | None
) -> None:
    assert route(uri).match(path) == params


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("localhost", ("localhost", None)),
        ("LocalHost:8080", ("localhost", 8080)),
        ("localhost.", ("localhost.", None)),
        ("my_host.example:443", ("my_host.example", 443)),
        ("127.0.0.1:65535", ("127.0.0.1", 65535)),
        ("127.0.0.1:080", ("127.0.0.1", 80)),
        ("[::1]", ("[::1]", None)),
        ("[::1]:1", ("[::1]", 1)),
        ("[2001:DB8::1]:8080", ("[2001:db8::1]", 8080)),
        ("[::ffff:127.0.0.1]", ("[::ffff:127.0.0.1]", None)),
    ],
)
def test_split_host_reads_host_and_port(value: str, parsed: tuple[str, int | None]) -> None:
    assert split_host(value) == parsed


@pytest.mark.parametrize(
    "value",
    [
        *(host.decode("latin-1") for host in INVALID_HOSTS),
        " localhost",
        "localhost ",
        "localhost:99999",
        "localhost:8o",
        "[::1]:",
        "[1:2:3:4:5:6:7:8:9]",
        "[v1.fe]",
        "::1",
        "a%2eb",
        "ex\u0430mple.com",
    ],
)
def test_split_host_refuses_anything_else(value: str) -> None:
    assert split_host(value) is None


def test_the_host_and_origin_checks_never_read_an_invalid_host_leniently() -> None:
    for value in ("127.0.0.1:evil.com", "localhost:80:evil.com", "[::1].evil.com", "localhost:"):
        assert not host_allowed(value, allowed=None, loopback_only=True, named_hosts=())
        assert not host_allowed(value, allowed=["evil.com"], loopback_only=True, named_hosts=())
    assert host_allowed("localhost:8080", allowed=None, loopback_only=True, named_hosts=())
    assert not origin_allowed("http://x.example:8080", "x.example:8080:y", tls=False, allowed=None)
    assert origin_allowed("http://x.example:8080", "X.Example:8080", tls=False, allowed=None)


def head(target: bytes, *headers: tuple[bytes, bytes], version: str = "1.1") -> Request:
    return Request("GET", target, list(headers), http_version=version)


def test_check_head_refuses_a_bad_host_then_ambiguous_framing_then_the_path() -> None:
    framing = ((b"content-length", b"3"), (b"transfer-encoding", b"chunked"))
    with pytest.raises(BadRequest, match=r"invalid Host header '127\.0\.0\.1:evil': expected"):
        check_head(head(b"/a/../b", (b"host", b"127.0.0.1:evil"), *framing))
    with pytest.raises(BadRequest, match="both Content-Length and Transfer-Encoding"):
        check_head(head(b"/a/../b", (b"host", b"localhost"), *framing))
    with pytest.raises(BadRequest, match="dot segment"):
        check_head(head(b"/a/../b?x=1", (b"host", b"localhost")))
    check_head(head(b"/a/b?next=/../%00", (b"host", b"localhost:8000")))
    check_head(head(b"/a/b", *framing[:1], version="1.0"))  # HTTP/1.0 may omit Host
