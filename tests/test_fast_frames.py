"""The fast path for whole data frames reads what the Sans-I/O parser reads.

``Connection._read_whole_frames`` reads whole text and binary frames without
the ``websockets`` parser. These tests feed the same bytes, cut at the same
places, to a connection with the fast path and to one without it, and compare
everything a peer or a handler can see: the messages delivered, the bytes the
server wrote back (pongs, close frames), its close code and the protocol's
state. The streams are random (hypothesis): valid and invalid frames of every
kind, lengths around the 7-, 16- and 64-bit encodings, masked or not, RSV
bits, invalid UTF-8, messages over ``max_size``.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.protocol import OPEN
from websockets.uri import parse_uri

from embedws.aio.connection import Connection, Settings, protocol_logger
from embedws.protocol import ClientProtocol, ServerProtocol

MAX_SIZE = 1000  # under 64 KiB: the fast path meets frames over the limit


class Collected:
    """A consumer that keeps what the connection delivers."""

    def __init__(self) -> None:
        self.messages: list[str | bytes] = []
        self.closed = False

    def put(self, message: str | bytes) -> int:
        self.messages.append(message)
        return 0  # never pause reading: the test reads everything

    def close(self) -> None:
        self.closed = True

    def set_writable(self, writable: bool) -> None:
        pass

    def pending(self) -> int:
        return 0


def frame(
    opcode: int, payload: bytes, *, fin: bool, rsv: int, mask: bytes | None, width: int
) -> bytes:
    """One frame as bytes, its length written in ``width`` bits (7, 16 or 64) when it fits."""
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mask_bit = 0x80 if mask is not None else 0
    length = len(payload)
    if width == 7 and length < 126:
        head += bytes([mask_bit | length])
    elif width <= 16 and length < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    if mask is None:
        return head + payload
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


payloads = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=20).map(str.encode),
    st.sampled_from([b"\xff\xfe", "é".encode()[:1], b"ok\xc3"]),  # invalid UTF-8
    st.integers(min_value=120, max_value=130).map(lambda n: b"x" * n),
    st.sampled_from([b"y" * 65_535, b"z" * 65_536]),
    st.integers(min_value=MAX_SIZE - 1, max_value=MAX_SIZE + 1).map(lambda n: b"m" * n),
)

frames = st.builds(
    frame,
    st.sampled_from([0x1, 0x1, 0x2, 0x2, 0x0, 0x9, 0xA, 0x8, 0x3, 0xB]),
    payloads,
    fin=st.booleans() | st.just(True),
    rsv=st.sampled_from([0, 0, 0, 0, 1, 4]),
    mask=st.sampled_from([b"\x00\x00\x00\x00", b"\x12\x34\x56\x78", None, b"\xff\x00\xff\x00"]),
    width=st.sampled_from([7, 7, 16, 64]),
)


def frames_in(data: bytes, *, masked: bool) -> list[tuple[int, bytes]]:
    """The frames a peer reads in ``data`` (a client's masks differ every time: unmasked)."""
    reader: Any = (
        ServerProtocol(state=OPEN)
        if masked
        else ClientProtocol(parse_uri("ws://peer/"), state=OPEN)
    )
    reader.receive_data(data)
    return [(int(event.opcode), bytes(event.data)) for event in reader.events_received()]


def run(chunks: list[bytes], *, fast: bool, client: bool = False) -> dict[str, Any]:
    """Feed ``chunks`` to a server (or client) connection, one by one; what a peer could see."""
    loop = asyncio.new_event_loop()
    ours, peer = socket.socketpair()
    try:
        protocol: Any
        if client:
            protocol = ClientProtocol(
                parse_uri("ws://peer/"), max_size=MAX_SIZE, state=OPEN, logger=protocol_logger
            )
        else:
            protocol = ServerProtocol(max_size=MAX_SIZE, state=OPEN, logger=protocol_logger)
        conn = Connection(protocol, Settings(ping_interval=None, max_queue=10**6), loop)
        collected = Collected()
        conn.set_consumer(collected)

        async def feed() -> None:
            await loop.connect_accepted_socket(lambda: conn, ours)
            if not fast:
                conn._fast_frames = False  # the Sans-I/O parser for every frame
            for chunk in chunks:
                if chunk and not conn.lost:
                    conn.data_received(chunk)

        loop.run_until_complete(feed())
        peer.setblocking(False)
        written = b""
        try:
            while chunk := peer.recv(1 << 20):
                written += chunk
        except BlockingIOError:
            pass
        return {
            "messages": collected.messages,
            "written": frames_in(written, masked=client),
            "state": protocol.state,
            "close_sent": protocol.close_sent,
            "failed": not conn.open,
        }
    finally:
        peer.close()
        conn.abort()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


ZERO = b"\x00\x00\x00\x00"


def whole(opcode: int, size: int, width: int = 16) -> bytes:
    return frame(opcode, b"m" * size, fin=True, rsv=0, mask=ZERO, width=width)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# The edges, always: the size limit, each length encoding, a frame cut short.
@example([whole(0x1, MAX_SIZE), whole(0x2, MAX_SIZE + 1)], [], False)
@example([whole(0x2, MAX_SIZE), whole(0x1, MAX_SIZE + 1)], [3], False)
@example([whole(0x1, 125, 7), whole(0x2, 126, 16), whole(0x2, 0, 64)], [], False)
@example([whole(0x1, 10), whole(0x9, 3, 7), whole(0x2, 10)], [2, 9, 14], False)
@given(
    st.lists(frames, max_size=6),
    st.lists(st.integers(min_value=0, max_value=200_000), max_size=4),
    st.booleans(),
)
def test_the_fast_path_sees_what_the_parser_sees(
    parts: list[bytes], cuts: list[int], client: bool
) -> None:
    stream = b"".join(parts)
    points = [0, *sorted({min(c, len(stream)) for c in cuts}), len(stream)]
    chunks = [stream[start:end] for start, end in itertools.pairwise(points)]
    fast = run(chunks, fast=True, client=client)
    # What the parser answers depends on where the network cut the stream:
    # given several frames at once it reports a protocol error of a later one
    # before an invalid UTF-8 text of an earlier one (UTF-8 is checked after
    # it). The fast path must answer as the parser does for the same chunks,
    # or for the stream cut at every frame.
    assert fast in (run(chunks, fast=False, client=client), run(parts, fast=False, client=client))


def test_the_common_frames_take_the_fast_path() -> None:
    """The fast path is used at all (else the comparison above proves nothing)."""
    mask = b"\x01\x02\x03\x04"
    stream = frame(0x1, b"hello", fin=True, rsv=0, mask=mask, width=7) + frame(
        0x2, b"\x00" * 300, fin=True, rsv=0, mask=mask, width=16
    )
    loop = asyncio.new_event_loop()
    ours, peer = socket.socketpair()
    try:
        protocol = ServerProtocol(max_size=MAX_SIZE, state=OPEN, logger=protocol_logger)
        conn = Connection(protocol, Settings(ping_interval=None), loop)
        collected = Collected()
        conn.set_consumer(collected)

        async def feed() -> None:
            await loop.connect_accepted_socket(lambda: conn, ours)
            # What is left for the parser: nothing.
            assert conn._read_whole_frames(stream) == b""

        loop.run_until_complete(feed())
        assert collected.messages == ["hello", b"\x00" * 300]
        assert not protocol.reader.buffer
    finally:
        peer.close()
        conn.abort()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
