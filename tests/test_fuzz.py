"""Property-based tests (hypothesis) of the route matcher, the request path, the
assembler under random fragmentation, and the encodings of ``send``."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import embedws
from embedws.errors import MethodNotAllowed, NotFound
from embedws.message import Fragments, encode_message
from embedws.routing import Route, Router

from .conftest import RawClient, echo_handlers, raw_http, serving

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# A parameter never holds a NUL, and a `path` parameter never a ".." segment
# (test_request_hardening.py): those do not match.
segment = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="/\x00"),
    min_size=1,
    max_size=20,
)


def route(uri: str, **options: Any) -> Route:
    return Route(kind="websocket", uri=uri, handler=lambda *a, **k: None, name=uri, **options)


# the route matcher ----------------------------------------------------------------------


@FUZZ
@given(room=segment, number=st.integers(-(10**12), 10**12), ident=st.uuids())
def test_built_paths_match_back_to_their_parameters(
    room: str, number: int, ident: uuid.UUID
) -> None:
    r = route("/chat/<room>/<n:int>/<id:uuid>")
    path = r.build({"room": room, "n": number, "id": ident})
    assert r.match(path) == {"room": room, "n": number, "id": ident}


@FUZZ
@given(parts=st.lists(segment.filter(lambda part: part != ".."), min_size=1, max_size=5))
def test_path_parameters_take_slashes(parts: list[str]) -> None:
    r = route("/files/<rest:path>")
    rest = "/".join(parts)
    assert r.match(r.build({"rest": rest})) == {"rest": rest}


@FUZZ
@given(path=st.text(max_size=60), method=st.sampled_from(["GET", "POST", "HEAD", "PUT"]))
def test_the_router_only_ever_finds_or_says_why_not(path: str, method: str) -> None:
    router = Router()
    for uri in ("/", "/a/<x>", "/b/<n:int>", "/c/<p:path>", "/d/<s:slug>", "/e/<f:float>"):
        router.add(route(uri))
        router.add(Route(kind="http", uri=uri, handler=lambda r: None, name="h" + uri))
    for kind in ("websocket", "http"):
        try:
            found, params = router.find(path, "localhost", kind, method)
        except (NotFound, MethodNotAllowed):
            continue
        assert found.kind == kind
        assert isinstance(params, dict)


# the request path through a live server ------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    app = embedws.App("fuzz", config={"WEBSOCKET_MAX_SIZE": 2**16})
    _, aecho = echo_handlers()  # async: a module-scoped server keeps no handler threads
    app.add_websocket_route(aecho, "/ws")
    app.add_websocket_route(aecho, "/ws/<room>", name="room")

    @app.route("/page", methods=("GET", "POST"))
    async def page(request: Any) -> Any:
        return embedws.response.text(f"{len(request.body)} {dict(request.args)}")

    with serving(app) as running:
        yield running


def exchange(port: int, data: bytes) -> bytes:
    return raw_http(port, data, half_close=True)


token = st.text(st.sampled_from("abcXYZ-_09/%?&=."), max_size=30)


@FUZZ
@given(
    method=st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"G\x00T", b""]),
    target=token.map(lambda t: ("/" + t).encode()),
    headers=st.lists(
        st.tuples(
            st.sampled_from(
                [
                    b"Host",
                    b"Upgrade",
                    b"Connection",
                    b"Sec-WebSocket-Key",
                    b"Sec-WebSocket-Version",
                    b"Origin",
                    b"Content-Length",
                    b"X-\xff",
                ]
            ),
            st.binary(max_size=30),
        ),
        max_size=8,
    ),
    body=st.binary(max_size=50),
)
def test_any_request_gets_a_well_formed_answer_and_the_server_lives(
    server: Any, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    lines = [method + b" " + target + b" HTTP/1.1"] + [k + b": " + v for k, v in headers]
    answer = exchange(server.port, b"\r\n".join(lines) + b"\r\n\r\n" + body)
    if answer:
        status = int(answer.split(b" ", 2)[1])
        assert 100 <= status < 600
        assert status < 500, answer[:300]  # bad input is the client's fault, never a crash


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes_never_hurt_the_server(server: Any, data: bytes) -> None:
    answer = exchange(server.port, data)
    assert not answer or answer.startswith(b"HTTP/1.1 ")
    assert b" 500 " not in answer[:20]


# the assembler, fed random fragmentations ----------------------------------------------


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return pieces


@FUZZ
@given(
    text=st.text(max_size=300),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
    binary=st.booleans(),
)
def test_any_fragmentation_reassembles_the_message(
    server: Any, text: str, cuts: list[int], binary: bool
) -> None:
    payload = text.encode()
    pieces = split(payload, cuts)
    peer = RawClient(server.port, "/ws")
    try:
        for index, piece in enumerate(pieces):
            opcode = (2 if binary else 1) if index == 0 else 0
            peer.send_frame(opcode, piece, fin=index == len(pieces) - 1)
        received = b""
        while True:
            frames = peer.events(until_close=False)
            assert frames, "no echo"
            data_frames = [f for f in frames if f.opcode.value in (0, 1, 2)]
            received += b"".join(bytes(f.data) for f in data_frames)
            if data_frames and data_frames[-1].fin:
                break
        assert received == payload
    finally:
        peer.close()


@FUZZ
@given(
    prefix=st.text(max_size=20),
    bad=st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"]),
    cuts=st.lists(st.integers(0, 10_000), max_size=6),
)
def test_invalid_utf8_anywhere_in_any_fragmentation_closes_1007(
    server: Any, prefix: str, bad: bytes, cuts: list[int]
) -> None:
    payload = prefix.encode() + bad
    pieces = split(payload, cuts)
    peer = RawClient(server.port, "/ws")
    try:
        for index, piece in enumerate(pieces):
            peer.send_frame(1 if index == 0 else 0, piece, fin=index == len(pieces) - 1)
        assert peer.close_code() == 1007
    finally:
        peer.close()


# send encodings -----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=10,
)


@FUZZ
def _whole_payload(value: Any, encoding: str = "text") -> bytes:
    payload = encode_message(value, encoding)[1]
    assert isinstance(payload, bytes)  # small values are never fragmented
    return payload


@given(value=st.text() | st.binary() | json_values)
def test_encodings(value: Any) -> None:
    if isinstance(value, str):
        assert encode_message(value) == (True, value.encode())
        assert encode_message(value, "bytes") == (False, value.encode())
        assert json.loads(_whole_payload(value, "json")) == value
    elif isinstance(value, bytes):
        assert encode_message(value) == (False, value)
        assert encode_message(bytearray(value)) == (False, value)
        assert encode_message(memoryview(value)) == (False, value)
    elif isinstance(value, (dict, list)):
        assert encode_message(value)[0] and json.loads(_whole_payload(value)) == value
    else:
        assert json.loads(_whole_payload(value, "json")) == value


@FUZZ
@given(parts=st.lists(st.text(), min_size=1, max_size=8) | st.lists(st.binary(), min_size=1))
def test_iterables_become_one_fragmented_message(parts: list[Any]) -> None:
    is_text, payload = encode_message(iter(parts))
    assert isinstance(payload, Fragments)
    assert is_text == isinstance(parts[0], str)
    joined = b"".join(payload)
    expected = "".join(parts).encode() if is_text else b"".join(parts)
    assert joined == expected


def test_mixed_fragments_are_refused() -> None:
    with pytest.raises(TypeError, match="mixes"):
        encode_message(iter(["a", b"b"]))
    with pytest.raises(TypeError):
        encode_message(iter([1, 2]))
    with pytest.raises(ValueError, match="encoding"):
        encode_message("x", "utf-16")
