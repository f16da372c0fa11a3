"""Shared fixtures: real servers on 127.0.0.1:0, real clients, time in units of MS."""

from __future__ import annotations

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
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

import embedws

#: One millisecond, scaled for slow machines (EMBEDWS_TESTS_TIMEOUT_FACTOR=3).
MS = 0.001 * float(os.environ.get("EMBEDWS_TESTS_TIMEOUT_FACTOR", "1"))


#: How much earlier than asked, by ``time.monotonic()``, a server's timer may
#: fire: uvloop's loop clock counts whole milliseconds, read once per pass of
#: the loop. Lower bounds on a server's timeouts allow for it.
EARLY = 0.002


def seconds(value: float) -> float:
    """``value`` seconds as a time bound, scaled like `MS` (tests/test_timeouts.py checks)."""
    return value * 1000 * MS


#: Handler kinds every behavioural test runs with.
KINDS = ("async", "thread", "greenlet")


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """The kind of handler under test: ``async def``, or ``def`` in thread or greenlet mode."""
    return str(request.param)


def add_handler(
    app: embedws.App,
    uri: str,
    kind: str,
    sync_fn: Callable[..., Any],
    async_fn: Callable[..., Any],
    **options: Any,
) -> None:
    """Register the handler of this kind (the two forms do the same thing)."""
    if kind == "async":
        app.add_websocket_route(async_fn, uri, **options)
    else:
        app.add_websocket_route(sync_fn, uri, mode=kind, **options)


def echo_handlers() -> tuple[Callable[..., Any], Callable[..., Any]]:
    def echo(request: Any, ws: Any) -> None:
        for message in ws:
            ws.send(message)

    async def aecho(request: Any, ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    return echo, aecho


# The start of the programs that tests run in a subprocess: an echo app on "/".
ECHO_PROGRAM = """
import sys
import embedws

app = embedws.App("program")

@app.websocket("/")
def echo(request, ws):
    for message in ws:
        ws.send(message)
"""


@contextlib.contextmanager
def serving(app: embedws.App, **config: Any) -> Iterator[embedws.sync.Server]:
    """Serve ``app`` on a free loopback port for the block; stop afterwards."""
    config.setdefault("GRACEFUL_SHUTDOWN_TIMEOUT", seconds(5))
    with app.serve(port=0, **config) as server:
        yield server


def client(url: str, **kwargs: Any) -> ClientConnection:
    """A `websockets` sync client, the independent peer."""
    kwargs.setdefault("open_timeout", seconds(5))
    kwargs.setdefault("close_timeout", seconds(5))
    kwargs.setdefault("legacy", True)  # a connection, usable with or without `with`
    connection = ws_connect(url, **kwargs)
    assert isinstance(connection, ClientConnection)
    return connection


def time_stop_under_clients(
    server: embedws.sync.Server, script: str, count: int, *, ready: str, timeout: float
) -> tuple[float, str, str]:
    """Time ``server.stop()`` while a client process holds ``count`` connections.

    ``script`` runs as ``python -c script URL COUNT`` and prints ``ready`` once it
    is connected; returns (seconds ``stop()`` took, its stdout, its stderr).
    """
    with subprocess.Popen(
        [sys.executable, "-c", script, server.url, str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == ready
            started = time.monotonic()
            server.stop()
            elapsed = time.monotonic() - started
            out, err = process.communicate(timeout=timeout)
        finally:
            server.stop()
            process.kill()
    return elapsed, out, err


def raw_http(
    port: int,
    data: bytes,
    *,
    timeout: float = seconds(5.0),
    read_all: bool = True,
    half_close: bool = False,
) -> bytes:
    """Send raw bytes to the server and return everything it answers until it closes.

    ``half_close`` ends the sending side after ``data`` (the server sees EOF);
    a server that answered and closed before taking all of ``data`` is no error then.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        if half_close:
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        else:
            sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not read_all:
                break
        return b"".join(chunks)


def status_of(response: bytes) -> int:
    """The status code of a raw HTTP response."""
    return int(response.split(b" ", 2)[1])


def upgrade_request(
    path: str = "/", *, host: str = "127.0.0.1", extra: str = "", version: str = "13"
) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: {version}\r\n{extra}\r\n"
    ).encode()


class LogWaiter(logging.Handler):
    """Collects ``embedws`` records and lets a test wait for one (logging is async)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.records.append(record)
            self._changed.notify_all()

    def wait_for(
        self, text: str, *, level: int = logging.DEBUG, timeout: float = seconds(5.0)
    ) -> logging.LogRecord:
        def found() -> logging.LogRecord | None:
            for record in self.records:
                message = record.getMessage() + (record.exc_text or "")
                if record.levelno >= level and text in message:
                    return record
            return None

        with self._changed:
            if not self._changed.wait_for(lambda: found() is not None, timeout):
                seen = [r.getMessage() for r in self.records]
                raise AssertionError(f"no log record containing {text!r}; saw {seen}")
            record = found()
            assert record is not None
            return record

    def messages(self) -> list[str]:
        with self._changed:
            return [r.getMessage() for r in self.records]


@pytest.fixture
def logs() -> Iterator[LogWaiter]:
    """Records of the ``embedws`` loggers (delivered by the logging thread)."""
    waiter = LogWaiter()
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(waiter)
    try:
        yield waiter
    finally:
        root.removeHandler(waiter)
        root.setLevel(previous)


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Every test leaves no embedws thread behind (of those it started)."""
    before = set(threading.enumerate())
    yield
    leftover = [
        t
        for t in threading.enumerate()
        if t.name.startswith("embedws") and t.is_alive() and t not in before
    ]
    for thread in leftover:
        thread.join(seconds(5))
    alive = [t.name for t in leftover if t.is_alive()]
    assert not alive, f"threads left running: {alive}"


class RawClient:
    """A websocket client over a plain socket that can send any bytes, valid or not.

    Incoming frames are parsed by the `websockets` Sans-I/O client protocol, so
    what the test reads is what a real client would see.
    """

    def __init__(
        self, port: int, path: str = "/", *, extra: str = "", rcvbuf: int | None = None
    ) -> None:
        from websockets.client import ClientProtocol
        from websockets.protocol import State
        from websockets.uri import parse_uri

        self.sock = socket.socket()
        if rcvbuf is not None:  # before connecting, or the window is already large
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(seconds(5))
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(upgrade_request(path, extra=extra))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            assert chunk, "connection closed during the handshake"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        self.response_head = head
        self.protocol = ClientProtocol(
            parse_uri(f"ws://127.0.0.1{path}"), state=State.OPEN, max_size=None
        )

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(
        self, opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = True
    ) -> None:
        self.sock.sendall(raw_frame(opcode, payload, fin=fin, rsv=rsv, mask=mask))

    def events(
        self, *, until_close: bool = True, timeout: float = seconds(5.0), answer: bool = True
    ) -> list[Any]:
        """Frames received until a close frame (or EOF), answered like a client would
        (pongs, the close reply) unless ``answer`` is false."""
        import time

        from websockets.frames import Frame, Opcode

        deadline = time.monotonic() + timeout
        frames: list[Any] = []
        while time.monotonic() < deadline:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                data = b""
            if data:
                self.protocol.receive_data(data)
            else:
                self.protocol.receive_eof()
            for out in self.protocol.data_to_send():
                if not answer:
                    continue
                try:
                    if out:
                        self.sock.sendall(out)
                    else:  # the protocol's end of stream: half-close, as a client does
                        self.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            if not data:
                break
            new = [e for e in self.protocol.events_received() if isinstance(e, Frame)]
            frames.extend(new)
            if frames and not until_close:
                break
            if any(f.opcode is Opcode.CLOSE for f in new) and not answer:
                break  # a mute client does not wait for the end of the stream
        return frames

    def close_code(self, timeout: float = seconds(5.0), *, answer: bool = True) -> int | None:
        from websockets.frames import Close, Opcode

        for frame in self.events(timeout=timeout, answer=answer):
            if frame.opcode is Opcode.CLOSE:
                return Close.parse(frame.data).code
        return None

    def close(self) -> None:
        self.sock.close()


def raw_frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = True
) -> bytes:
    """One frame, as bytes; may be invalid on purpose (tests of protocol abuse only)."""
    import struct

    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    length = len(payload)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    # A zero masking key leaves the payload as it is.
    return head + (b"\x00\x00\x00\x00" if mask else b"") + payload


class RedisServer:
    """Debian's ``redis-server`` on a free loopback port, no persistence; killable."""

    def __init__(self, workdir: str, extra: tuple[str, ...] = ()) -> None:
        self.extra = extra  # more redis-server options (a cluster node's)
        with socket.socket() as probe:  # a free port; redis binds it right after
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import redis

        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.workdir,
                "--daemonize",
                "no",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Waiting for another program to be ready: poll, with a deadline.
        deadline = time.monotonic() + 10_000 * MS
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=seconds(1))
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server did not start on {self.port}") from None
                    time.sleep(seconds(0.01))
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL, as a crash: clients see their connections reset."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(seconds(10))
            self.process = None

    def client(self) -> Any:
        """A redis-py sync client to this server (close it)."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=seconds(5))


class RedisClusterServers:
    """A Redis Cluster of three masters, no replicas: Debian's ``redis-server``, killable nodes."""

    def __init__(self, workdir: str, size: int = 3) -> None:
        self.nodes: list[RedisServer] = []
        for _ in range(size):
            node = RedisServer(workdir)
            with socket.socket() as probe:  # the bus port: by default port + 10000, maybe > 65535
                probe.bind(("127.0.0.1", 0))
                bus = int(probe.getsockname()[1])
            node.extra = (
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                os.path.join(workdir, f"nodes-{node.port}.conf"),
                "--cluster-port",
                str(bus),
            )
            self.nodes.append(node)
        # A seed node: redis-py's cluster client learns the others from it.
        self.url = f"redis://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=seconds(30),
        )
        self.wait_ok()

    def wait_ok(self) -> None:
        """Poll ``CLUSTER INFO`` on every node until each says ``cluster_state:ok``."""
        deadline = time.monotonic() + seconds(20)
        for node in self.nodes:
            r = node.client()
            try:
                while r.execute_command("CLUSTER INFO").get("cluster_state") != "ok":
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"cluster not ok on {node.port}")
                    time.sleep(seconds(0.01))
            finally:
                r.close()

    def owner(self, channel: str) -> RedisServer:
        """The node that owns ``channel``'s hash slot (from ``CLUSTER SLOTS``)."""
        from redis.crc import key_slot

        slot = key_slot(channel.encode())
        r = self.nodes[0].client()
        try:
            ranges = r.execute_command("CLUSTER SLOTS")
        finally:
            r.close()
        for first, last, master, *_replicas in ranges:
            if first <= slot <= last:
                port = int(master[1])
                return next(node for node in self.nodes if node.port == port)
        raise AssertionError(f"no node owns slot {slot}")

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()


@pytest.fixture
def redis_server(tmp_path: Any) -> Iterator[RedisServer]:
    """A fresh ``redis-server`` for the test (skipped, with the reason, if none is installed)."""
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (scripts/install-system-deps installs it)")
    pytest.importorskip("redis", reason="redis-py is not installed (the embedws[redis] extra)")
    server = RedisServer(str(tmp_path))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def redis_cluster(tmp_path: Any) -> Iterator[RedisClusterServers]:
    """A fresh three-node Redis Cluster for the test (skipped, with the reason, without Redis)."""
    import shutil

    for program in ("redis-server", "redis-cli"):
        if shutil.which(program) is None:
            pytest.skip(f"{program} is not installed (scripts/install-system-deps installs it)")
    pytest.importorskip("redis", reason="redis-py is not installed (the embedws[redis] extra)")
    cluster = RedisClusterServers(str(tmp_path))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.kill()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Scale pytest-timeout's per-test limit (ini, ``--timeout`` or a marker) like `MS`."""
    if seconds(1) == 1:
        return
    option = config.getoption("timeout", None) or config.getini("timeout") or 0
    for item in items:
        marker = item.get_closest_marker("timeout")
        base = option
        if marker is not None:
            base = marker.args[0] if marker.args else marker.kwargs.get("timeout", option)
        if float(base) > 0:  # 0 turns the limit off; off stays off
            item.add_marker(pytest.mark.timeout(seconds(float(base))), append=False)


#: The event loop the suite runs on: ``asyncio`` (the platform's) or ``uvloop``.
#: An application picks uvloop the same way, by installing its policy before it
#: starts a server: embedws's loop threads then take no selector fast path.
TESTS_LOOP = os.environ.get("EMBEDWS_TESTS_LOOP", "asyncio")


def pytest_configure(config: pytest.Config) -> None:
    if TESTS_LOOP == "uvloop":
        import asyncio

        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    elif TESTS_LOOP != "asyncio":
        raise pytest.UsageError(f"EMBEDWS_TESTS_LOOP must be asyncio or uvloop, not {TESTS_LOOP}")


def pytest_report_header(config: pytest.Config) -> list[str]:
    from embedws import switches

    paths = ", ".join(f"{name}={getattr(switches, name)}" for name in switches.__all__)
    return [f"embedws: loop {TESTS_LOOP}; fast paths {paths}; time factor {seconds(1):g}"]
