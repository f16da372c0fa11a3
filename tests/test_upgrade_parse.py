"""The upgrade fast path's parser against h11, which it stands in for (``handshake.parse_upgrade``).

Whatever head the fast path takes, h11 must read the same request from it:
the same method, target and headers (lowercase names, values as sent), with
no body. The heads are random, built to hit the edges where the two parsers
could part: control characters and obs-text, obsolete line folding, bare LF,
duplicate Host, body headers, other methods and versions. And end to end: the
first upgrade of a connection goes the fast way, everything else the h11 way,
and both answer alike.
"""

from __future__ import annotations

import socket

import h11
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import embedws
from embedws.handshake import parse_upgrade

from .conftest import MS, echo_handlers, serving

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
TOKEN = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

names = st.one_of(
    st.sampled_from(["Host", "Upgrade", "Connection", "Origin", "X-A", "content-length"]),
    st.sampled_from(["Transfer-Encoding", "Sec-WebSocket-Key", "Sec-WebSocket-Version"]),
    st.text(alphabet=TOKEN, min_size=1, max_size=8),
    st.binary(min_size=0, max_size=6).map(lambda b: b.decode("latin-1")),  # anything, even ":"
).map(lambda name: name.encode("latin-1"))
values = st.one_of(
    st.sampled_from([b"websocket", b"Upgrade", b"127.0.0.1:8000", b"13", KEY, b"0", b""]),
    st.binary(max_size=12),
    st.binary(max_size=6).map(lambda b: b" \t" + b + b"\t "),
)
header_lines = st.lists(
    st.tuples(names, values).map(lambda nv: nv[0] + b":" + nv[1]),
    max_size=8,
)
request_lines = st.tuples(
    st.sampled_from([b"GET", b"get", b"POST", b"HEAD"]),
    st.one_of(st.sampled_from([b"/", b"/ws", b"/a?b=c", b"*"]), st.binary(max_size=8)),
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"http/1.1"]),
).map(b" ".join)
line_ends = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"])


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    lines = [draw(request_lines)]
    lines += [b"Host: 127.0.0.1:8000", b"Upgrade: websocket"] if draw(st.booleans()) else []
    lines += draw(header_lines)
    if draw(st.booleans()):  # obsolete line folding
        lines.append(b" " + draw(values))
    shuffled = [lines[0], *draw(st.permutations(lines[1:]))]
    return b"".join(line + draw(line_ends) for line in shuffled) + b"\r\n"


def h11_reading(head: bytes) -> tuple[str, bytes, list[tuple[bytes, bytes]]] | None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head)
    try:
        request, end = conn.next_event(), conn.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(request, h11.Request) or not isinstance(end, h11.EndOfMessage):
        return None
    return request.method.decode(), bytes(request.target), list(request.headers)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(heads())
@example(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n")
@example(b"GET /ws HTTP/1.1\r\nHost: a\r\nHost: b\r\nUpgrade: websocket\r\n\r\n")
@example(b"GET /\x01 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n")
@example(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nX: a\x01b\r\n\r\n")
@example(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nX: a\r\n b\r\n\r\n")
@example(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n")
def test_a_head_the_fast_path_takes_is_the_request_h11_reads(head: bytes) -> None:
    fast = parse_upgrade(head)
    if fast is None:
        return  # h11's to answer, as before
    read = h11_reading(head)
    assert read is not None, "the fast path took a head h11 refuses"
    method, target, headers = read
    assert (method, target) == (fast.method, fast.path.encode("ascii"))
    assert headers == [
        (name.lower().encode("ascii"), value.encode("latin-1"))
        for name, value in fast.headers.raw_items()
    ]


def test_a_browsers_upgrade_takes_the_fast_path() -> None:
    head = (
        b"GET /chat?room=1 HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nConnection: Upgrade\r\n"
        b"Pragma: no-cache\r\nUpgrade: websocket\r\nOrigin: http://127.0.0.1:8000\r\n"
        b"Sec-WebSocket-Version: 13\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n"
        b"Accept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\n"
        b"Sec-WebSocket-Key: " + KEY + b"\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    )
    request = parse_upgrade(head)
    assert request is not None and request.path == "/chat?room=1"


def _exchange(port: int, data: bytes, answers: int) -> bytes:
    """Send ``data``; what came back once ``answers`` heads have (or the server closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5000 * MS) as sock:
        sock.sendall(data)
        received = b""
        while received.count(b"\r\n\r\n") < answers:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


@pytest.mark.parametrize(
    ("first", "status"),
    [
        (b"", b"101"),  # the fast way
        (b"GET /page HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"101"),  # h11's: not the first
    ],
)
def test_both_ways_answer_alike(first: bytes, status: bytes) -> None:
    app = embedws.App("both")
    echo, _ = echo_handlers()
    app.add_websocket_route(echo, "/ws")

    @app.get("/page")
    def page(request: object) -> embedws.HTTPResponse:
        return embedws.response.text("page")

    upgrade = (
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    refused = upgrade.replace(b"Host: 127.0.0.1", b"Host: evil.example")
    foreign = upgrade.replace(
        b"Upgrade: websocket\r\n", b"Upgrade: websocket\r\nOrigin: http://evil.example\r\n"
    )
    with serving(app) as server:
        for request, expected in ((upgrade, status), (refused, b"403"), (foreign, b"403")):
            answer = _exchange(server.port, first + request, 2 if first else 1)
            last = answer.rsplit(b"HTTP/1.1 ", 1)[-1]
            assert last.startswith(expected), answer
