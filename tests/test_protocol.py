"""Protocol-level behaviour with a raw client: close codes for bad frames, UTF-8,
limits, and the two adjustments embedws makes to the Sans-I/O layer."""

from __future__ import annotations

import struct
import threading
import zlib
from typing import Any

import pytest
from websockets.frames import Opcode

import embedws

from .conftest import RawClient, add_handler, echo_handlers, raw_frame, seconds, serving

TEXT, BINARY, CONT, CLOSE, PING, PONG = 1, 2, 0, 8, 9, 10


@pytest.fixture
def echo_server(kind: str) -> Any:
    app = embedws.App("protocol", config={"WEBSOCKET_MAX_SIZE": 1000})
    add_handler(app, "/", kind, *echo_handlers())
    with serving(app) as server:
        yield server


def texts(frames: list[Any]) -> list[Any]:
    return [bytes(f.data) for f in frames if f.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)]


def test_a_close_frame_between_fragments_is_answered_normally(echo_server: Any) -> None:
    """Autobahn 7.1.5; the stock Sans-I/O layer would answer 1002."""
    peer = RawClient(echo_server.port)
    peer.send_frame(TEXT, b"frag1", fin=False)
    peer.send_frame(CLOSE, struct.pack("!H", 1000))
    peer.send_frame(CONT, b"frag2", fin=True)
    assert peer.close_code() == 1000
    peer.close()


def test_a_code_point_split_across_fragments_is_valid(echo_server: Any) -> None:
    peer = RawClient(echo_server.port)
    peer.send_frame(TEXT, "é".encode()[:1], fin=False)
    peer.send_frame(CONT, "é".encode()[1:] + "☃".encode()[:2], fin=False)
    peer.send_frame(CONT, "☃".encode()[2:], fin=True)
    frames = peer.events(until_close=False)
    assert texts(frames) == ["é☃".encode()]
    peer.close()


@pytest.mark.parametrize(
    "fragments",
    [
        [b"\xff"],
        [b"ok \xce", b"\xff rest"],  # invalid across the boundary
        [b"\xf0\x9f", b"\x98"],  # truncated at the end of the message
        [b"\xed\xa0\x80"],  # a surrogate
    ],
)
def test_invalid_utf8_closes_1007(echo_server: Any, fragments: list[bytes]) -> None:
    peer = RawClient(echo_server.port)
    for index, fragment in enumerate(fragments):
        opcode = TEXT if index == 0 else CONT
        peer.send_frame(opcode, fragment, fin=index == len(fragments) - 1)
    assert peer.close_code() == 1007
    peer.close()


def test_invalid_utf8_fails_at_the_first_bad_fragment(echo_server: Any) -> None:
    peer = RawClient(echo_server.port)
    peer.send_frame(TEXT, b"\xc0\xaf", fin=False)  # the message never ends
    assert peer.close_code() == 1007
    peer.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (raw_frame(TEXT, b"x", rsv=4), 1002),
        (raw_frame(3, b"x"), 1002),  # reserved opcode
        (raw_frame(0xB, b"x"), 1002),  # reserved control opcode
        (raw_frame(TEXT, b"unmasked", mask=False), 1002),
        (raw_frame(CONT, b"nothing to continue"), 1002),
        (raw_frame(PING, b"x" * 126), 1002),  # control frame too long
        (raw_frame(PING, b"x", fin=False), 1002),  # fragmented control frame
        (raw_frame(CLOSE, struct.pack("!H", 1004)), 1002),  # reserved close code
        (raw_frame(CLOSE, b"\x03"), 1002),  # one-byte close payload
    ],
)
def test_protocol_errors_close_with_the_right_code(
    echo_server: Any, frame: bytes, code: int
) -> None:
    peer = RawClient(echo_server.port)
    peer.send_raw(frame)
    assert peer.close_code() == code
    peer.close()


def test_a_header_declaring_2_63_bytes_closes_1009_at_once(echo_server: Any) -> None:
    peer = RawClient(echo_server.port)
    peer.send_raw(bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 2**63 - 1) + b"\x00" * 4)
    assert peer.close_code(timeout=seconds(2)) == 1009
    peer.close()


def test_a_ping_flood_gets_its_pongs_and_the_connection_survives(echo_server: Any) -> None:
    peer = RawClient(echo_server.port)
    peer.send_raw(b"".join(raw_frame(PING, b"%d" % i) for i in range(2000)))
    peer.send_frame(TEXT, b"still alive")
    pongs, texts_seen = 0, list[Any]()
    while not texts_seen:
        frames = peer.events(until_close=False)
        assert frames
        pongs += sum(1 for f in frames if f.opcode is Opcode.PONG)
        texts_seen += texts(frames)
    assert pongs == 2000 and texts_seen == [b"still alive"]
    peer.close()


def test_a_reset_in_the_middle_of_a_message_wakes_the_handler(kind: str) -> None:
    outcome: list[Any] = []
    done = threading.Event()

    def handler(request: Any, ws: Any) -> None:
        try:
            ws.recv()
        except embedws.WebsocketClosed as exc:
            outcome.append(exc.code)
        done.set()

    async def ahandler(request: Any, ws: Any) -> None:
        try:
            await ws.recv()
        except embedws.WebsocketClosed as exc:
            outcome.append(exc.code)
        done.set()

    app = embedws.App("reset")
    add_handler(app, "/", kind, handler, ahandler)
    with serving(app) as server:
        peer = RawClient(server.port)
        peer.send_frame(BINARY, b"half", fin=False)
        peer.sock.setsockopt(
            __import__("socket").SOL_SOCKET, __import__("socket").SO_LINGER, struct.pack("ii", 1, 0)
        )
        peer.close()  # RST
        assert done.wait(seconds(5))
    assert outcome == [1006]


def test_many_tiny_fragments_within_the_limit_are_accepted(kind: str) -> None:
    app = embedws.App("fragments", config={"WEBSOCKET_MAX_SIZE": 200_000})
    add_handler(app, "/", kind, *echo_handlers())
    with serving(app) as server:
        peer = RawClient(server.port)
        count = 100_000
        frames = [raw_frame(BINARY, b"a", fin=False)]
        frames += [raw_frame(CONT, b"b", fin=False)] * (count - 2)
        frames.append(raw_frame(CONT, b"c", fin=True))
        peer.send_raw(b"".join(frames))
        received = b""
        while len(received) < count:
            got = texts(peer.events(until_close=False, timeout=seconds(10)))
            assert got
            received += b"".join(got)
        assert received == b"a" + b"b" * (count - 2) + b"c"
        peer.close()


def test_a_deflate_bomb_closes_1009_without_inflating_it() -> None:
    app = embedws.App(
        "bomb", config={"WEBSOCKET_COMPRESSION": "deflate", "WEBSOCKET_MAX_SIZE": 100_000}
    )
    app.add_websocket_route(echo_handlers()[0], "/")
    with serving(app) as server:
        peer = RawClient(server.port, extra="Sec-WebSocket-Extensions: permessage-deflate\r\n")
        assert b"permessage-deflate" in peer.response_head
        compressor = zlib.compressobj(wbits=-15)
        bomb = compressor.compress(b"\x00" * 50_000_000) + compressor.flush(zlib.Z_SYNC_FLUSH)
        assert len(bomb) < 100_000
        peer.send_frame(BINARY, bomb[:-4], rsv=4)  # RSV1: compressed
        assert peer.close_code() == 1009
        peer.close()
