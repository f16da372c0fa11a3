"""Accepting connections, and what happens when descriptors run out.

Theory of operation
-------------------
asyncio's own accept loop (``loop.create_server``) meets ``accept()`` failing
for lack of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM) by calling the loop's
exception handler and retrying a second later. Up to Python 3.13 it also keeps
calling ``accept()`` after the first failure of a pass (CPython gh-151615): each
retry logs up to ``backlog`` (100) tracebacks and schedules as many retries, so
a server out of descriptors logged thousands of errors, and served nobody until
its idle sockets timed out. That loop cannot be told "room was made, retry
now", and filtering the exception handler would work only on the loops we
create, not on an application's under ``aio.serve``. So asyncio still creates
the listening sockets (``start_serving=False``), and an `Acceptor` accepts
on them: where the loop can watch a socket (``add_reader``: selector loops,
uvloop) it accepts whenever one is readable, as asyncio's own loop does;
elsewhere (the proactor loop on Windows, or ``EMBEDWS_FAST_ACCEPT=0``) it runs
an accept loop on ``sock_accept``, which every event loop has. Either way
``connect_accepted_socket`` serves what was accepted, or, for plain TCP on
asyncio's own selector loop, the loop's transport is made at once
(``EMBEDWS_FAST_CONNECT``, see ``Acceptor._serve``). It works on a duplicate
of each listening socket (``dup()`` is the public way to a socket that an
``asyncio.Server`` owns) and closes it with the server.

The accept loops of one server (one per listening socket) share an
`AcceptBackoff`. When ``accept()`` fails for lack of resources:

* the first failure logs one WARNING: what ran out, how many connections are
  open, what to do. Later failures are only counted until none has happened
  for ``QUIET_PERIOD`` seconds; then one INFO record sums the episode up.
* a failure closes a few idle HTTP connections, idle longest first
  (``Server.close_idle_http``), and the accept is retried once the loop has
  closed their sockets. When there was nothing to close, or the retry failed
  too (a TLS socket closes a pass later; or the descriptors went elsewhere),
  the loop waits first: 10 ms, doubling up to 1 s until an accept succeeds.

Thread contract: everything here runs on the event loop thread.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import socket
import ssl as ssl_module
import sys
from collections.abc import Callable, Coroutine
from typing import Protocol

from ..switches import FAST_ACCEPT, FAST_CONNECT
from .runtime import sleep

if sys.platform != "win32":
    import resource

__all__ = [
    "CONNECTION_ERRORS",
    "OUT_OF_RESOURCES",
    "AcceptBackoff",
    "Acceptor",
    "IdleSince",
    "RoomMaker",
    "next_idle_rank",
]

logger = logging.getLogger("embedws.server")

#: Idle connections closed per failed accept: enough for the connections
#: queued on the listening socket to get in a few at a time, far from all.
CLOSE_PER_FAILURE = 8
MIN_DELAY = 0.01
MAX_DELAY = 1.0
#: An episode of failures is over after this many seconds without one.
QUIET_PERIOD = 5.0
#: The listening sockets' queue length (asyncio's default).
BACKLOG = 100
#: Accepts in a row after which the accept loop lets the event loop go on.
ACCEPT_BATCH = 100


#: When a connection began to wait (an HTTP connection for a request, a TLS
#: connection for its handshake): (loop time, rank). The rank orders waits
#: that a coarse loop clock sees begin at the same time (uvloop's counts whole
#: milliseconds), so that the one waiting longest is closed first.
IdleSince = tuple[float, int]
next_idle_rank: Callable[[], int] = itertools.count().__next__


def _errnos(*names: str) -> frozenset[int]:
    return frozenset(getattr(errno, name) for name in names if hasattr(errno, name))


# The WSA codes are what Windows sockets report.
_PROCESS_DESCRIPTORS = _errnos("EMFILE", "WSAEMFILE")
_SYSTEM_DESCRIPTORS = _errnos("ENFILE")
OUT_OF_RESOURCES = _PROCESS_DESCRIPTORS | _SYSTEM_DESCRIPTORS | _errnos("ENOBUFS", "ENOMEM")

# accept(2) on Linux: errors of the connection being accepted, not of the
# listening socket, to be treated as "try again".
CONNECTION_ERRORS = _errnos(
    "ECONNABORTED",
    "EPROTO",
    "ENETDOWN",
    "ENOPROTOOPT",
    "EHOSTDOWN",
    "ENONET",
    "EHOSTUNREACH",
    "EOPNOTSUPP",
    "ENETUNREACH",
    "EPERM",  # firewall rules
)


class RoomMaker(Protocol):
    """What the accept loops need of the server (``embedws.aio.Server``)."""

    def close_idle_http(self, count: int) -> int: ...
    def open_connection_count(self) -> int: ...


class AcceptBackoff:
    """What one server's accept loops do while resources run out.

    Thread contract: the event loop thread only.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, server: RoomMaker) -> None:
        self._loop = loop
        self._server = server
        self._delay = MIN_DELAY
        self._started: float | None = None  # loop time of the episode's first failure
        self._last_failure = 0.0
        self._failures = 0  # in this episode
        self._closed = 0  # idle connections closed to make room, in this episode
        self._made_room = False  # the last failure closed some; nothing accepted since
        self._waited = False  # ...and a retry after that failed too: waited
        self._timer: asyncio.TimerHandle | None = None

    def accepted(self) -> None:
        """An accept succeeded."""
        self._made_room = self._waited = False
        self._delay = MIN_DELAY

    async def make_room(self, exc: OSError, sock: socket.socket) -> None:
        """After ``accept()`` on ``sock`` failed with ``exc``: make room, or wait.

        Logs the first failure of an episode; returns when the accept is worth
        retrying.
        """
        self._failures += 1
        self._last_failure = self._loop.time()
        if self._started is None:
            self._started = self._last_failure
            logger.warning(
                "cannot accept connections on %s: %s. %d connections are open. Idle HTTP "
                "connections are closed to make room, those idle longest first, and accepting "
                "is retried; failures are not logged again until it works. %s",
                _address_of(sock),
                _what_ran_out(exc),
                self._server.open_connection_count(),
                _what_to_do(exc),
            )
            self._timer = self._loop.call_later(QUIET_PERIOD, self._maybe_over)
        if self._made_room and not self._waited:
            self._waited = True
            await self._wait()
            return
        closed = self._server.close_idle_http(CLOSE_PER_FAILURE)
        self._closed += closed
        self._made_room = closed > 0
        self._waited = False
        if closed:
            # The loop closes their sockets in callbacks that run before this
            # task resumes.
            await sleep(self._loop, 0)
        else:
            await self._wait()

    async def _wait(self) -> None:
        await sleep(self._loop, self._delay)
        self._delay = min(self._delay * 2, MAX_DELAY)

    def _maybe_over(self) -> None:
        assert self._started is not None
        quiet = self._loop.time() - self._last_failure
        if quiet < QUIET_PERIOD:
            self._timer = self._loop.call_later(QUIET_PERIOD - quiet, self._maybe_over)
            return
        logger.info(
            "accepting connections again: %d accepts failed for lack of resources in %.1f s; "
            "%d idle HTTP connections were closed to make room",
            self._failures,
            self._last_failure - self._started,
            self._closed,
        )
        self._timer = self._started = None
        self._failures = self._closed = 0

    def close(self) -> None:
        """Forget the episode in progress (the server is closing)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _what_ran_out(exc: OSError) -> str:
    code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    if exc.errno in _PROCESS_DESCRIPTORS:
        if sys.platform == "win32":
            return f"the process is out of file descriptors ({code})"
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return f"the process is out of file descriptors ({code}; RLIMIT_NOFILE is {limit})"
    if exc.errno in _SYSTEM_DESCRIPTORS:
        return f"the system is out of file descriptors ({code})"
    return f"the system is out of memory for sockets ({code})"


def _what_to_do(exc: OSError) -> str:
    if exc.errno in _PROCESS_DESCRIPTORS:
        return (
            "To serve more connections, raise the limit: `ulimit -n` in the shell that starts "
            "the program, LimitNOFILE= in a systemd unit, or "
            "resource.setrlimit(resource.RLIMIT_NOFILE, ...) in the program."
        )
    if exc.errno in _SYSTEM_DESCRIPTORS:
        return "Raise the system-wide limit (fs.file-max on Linux), or close files elsewhere."
    return "Free memory, or lower MAX_CONNECTIONS."


def _address_of(sock: socket.socket) -> str:
    name = sock.getsockname()
    if isinstance(name, tuple):
        return f"{name[0]}:{name[1]}"
    return str(name)


class Acceptor:
    """Accepts connections on the listening sockets of one ``asyncio.Server``.

    Stands in for it in ``embedws.aio.Server`` (``sockets``, ``close``,
    ``wait_closed``). The ``asyncio.Server`` must not be serving
    (``start_serving=False``).

    Thread contract: the event loop thread only.
    """

    def __init__(
        self,
        server: asyncio.Server,
        factory: Callable[[], asyncio.BaseProtocol],
        backoff: AcceptBackoff,
        *,
        ssl: ssl_module.SSLContext | None = None,
        ssl_handshake_timeout: float | None = None,
    ) -> None:
        self._server = server
        self._factory = factory
        self._backoff = backoff
        self._ssl = ssl
        self._ssl_handshake_timeout = ssl_handshake_timeout
        self._loop = server.get_loop()
        # Accepted, not served yet (in the TLS handshake): task -> when it was accepted.
        self._connecting: dict[asyncio.Task[None], IdleSince] = {}
        self._sockets = [sock.dup() for sock in server.sockets]
        # The accept loops (portable path), and the waits after a failure (watched path).
        self._tasks: set[asyncio.Task[None]] = set()
        self._watched: set[socket.socket] = set()
        self._closed = False
        # Plain TCP on an asyncio selector loop: transports made at once (see _serve).
        self._make_transport: Callable[..., asyncio.BaseTransport] | None = None
        if FAST_CONNECT and ssl is None and isinstance(self._loop, asyncio.SelectorEventLoop):
            self._make_transport = getattr(self._loop, "_make_socket_transport", None)
        for sock in self._sockets:
            sock.setblocking(False)
            sock.listen(BACKLOG)  # what the asyncio.Server does when it starts serving
            if not (FAST_ACCEPT and self._watch(sock)):
                self._start(self._accept(sock))

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets (as ``asyncio.Server.sockets``)."""
        return self._server.sockets

    @property
    def pending(self) -> int:
        """TLS connections accepted and not served yet (in the TLS handshake)."""
        return len(self._connecting)

    def handshakes(self) -> list[tuple[IdleSince, Callable[[], object]]]:
        """TLS handshakes in progress: (when accepted, what aborts it).

        A handshake takes a round trip or two; one still going on when
        descriptors run out is most likely a client that sent nothing, and
        would hold its descriptor for ``WEBSOCKET_TIMEOUT``. Without TLS, a
        connection waits here for one pass of the loop: none is listed.
        """
        if self._ssl is None:
            return []
        return [(since, task.cancel) for task, since in self._connecting.items()]

    def close(self) -> None:
        """Stop accepting and close the listening sockets."""
        self._closed = True
        for sock in list(self._watched):
            self._unwatch(sock)
        for task in self._tasks:
            task.cancel()
        # Closed after the cancelled accepts have stopped watching them (in
        # callbacks that the cancellations scheduled).
        for sock in self._sockets:
            self._loop.call_soon(sock.close)
        self._server.close()
        self._backoff.close()

    async def wait_closed(self) -> None:
        """Wait until the accept loops are over."""
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _start(self, coro: Coroutine[None, None, None]) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, sock: socket.socket) -> None:
        """The portable path: an accept loop on ``sock_accept``."""
        loop = self._loop
        in_a_row = 0
        while True:
            try:
                conn, address = await loop.sock_accept(sock)
            except OSError as exc:
                await self._after_failure(exc, sock)
                continue
            self._serve(conn, address)
            in_a_row += 1
            if in_a_row == ACCEPT_BATCH:  # a flood of connections must not starve the loop
                in_a_row = 0
                await asyncio.sleep(0)

    # The watched path (FAST_ACCEPT). What it buys: the listening socket stays
    # registered with the selector, as under asyncio's own accept loop, so a
    # connection costs one accept() call. The portable loop pays, per
    # connection, an accept() that fails with EAGAIN, registering and
    # unregistering the socket (two epoll_ctl calls) and a future and a task
    # step to resume it: 8% of the server's instructions for a whole websocket
    # connection (1,011 K against 1,101 K; bench/instructions.py,
    # embedws-async+EMBEDWS_FAST_ACCEPT=0).
    # It needs add_reader(), which the proactor loop (Windows) lacks.

    def _watch(self, sock: socket.socket) -> bool:
        """Accept whenever ``sock`` is readable; False if the loop cannot watch sockets."""
        try:
            self._loop.add_reader(sock.fileno(), self._accept_ready, sock)
        except NotImplementedError:
            return False
        self._watched.add(sock)
        return True

    def _unwatch(self, sock: socket.socket) -> None:
        self._watched.discard(sock)
        self._loop.remove_reader(sock.fileno())

    def _accept_ready(self, sock: socket.socket) -> None:
        if self._closed:  # closed earlier in this pass of the loop
            return
        # Up to ACCEPT_BATCH: if more wait, the socket is still readable and the
        # loop comes back after the rest of its pass (a flood cannot starve it).
        for _ in range(ACCEPT_BATCH):
            try:
                conn, address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in CONNECTION_ERRORS:
                    continue
                # Not watched while the failure is handled (the retries are the
                # failure handling's, not the selector's), then watched again.
                self._unwatch(sock)
                self._start(self._rewatch_after(exc, sock))
                return
            conn.setblocking(False)
            self._serve(conn, address)

    async def _rewatch_after(self, exc: OSError, sock: socket.socket) -> None:
        await self._after_failure(exc, sock)
        if not self._closed:
            self._watch(sock)

    # Both paths ------------------------------------------------------------------

    async def _after_failure(self, exc: OSError, sock: socket.socket) -> None:
        """``accept()`` on ``sock`` failed: return when it is worth retrying."""
        if exc.errno in OUT_OF_RESOURCES:
            await self._backoff.make_room(exc, sock)
        elif exc.errno not in CONNECTION_ERRORS:
            # Unknown, and maybe lasting: slow down rather than spin.
            logger.error("accept() on %s failed", _address_of(sock), exc_info=exc)
            await asyncio.sleep(MAX_DELAY)

    # The fast path of _serve (FAST_CONNECT). What it buys: a plain TCP connection
    # gets its transport at once, from the loop method asyncio's own accept loop
    # calls, instead of through connect_accepted_socket, a coroutine that costs a
    # task, two steps of it and a future per connection, and asks the socket for
    # the peer's address that accept() gave: 7% of the server's instructions for
    # a whole websocket connection (921 K against 992 K, bench/instructions.py,
    # embedws-async+EMBEDWS_FAST_CONNECT=0) and one system call. The method is
    # protected (asyncio's selector loops have had it, with this signature, since
    # 3.4), so only asyncio's own selector loop takes this path; uvloop, the
    # proactor loop and TLS take the public one.

    def _serve(self, conn: socket.socket, address: object) -> None:
        """Serve an accepted (non-blocking) connection."""
        self._backoff.accepted()
        make_transport = self._make_transport
        if make_transport is not None:
            try:
                make_transport(conn, self._factory(), extra={"peername": address})
            except Exception as exc:  # what connect_accepted_socket's failures get
                logger.debug("connection lost before it was served: %r", exc)
                conn.close()
            return
        task = self._loop.create_task(self._connect(conn))
        if self._ssl is not None:
            # Only TLS handshakes last long enough to be worth closing when
            # descriptors run out (handshakes()); a plain connection is
            # served one pass of the loop after its accept.
            self._connecting[task] = (self._loop.time(), next_idle_rank())
            task.add_done_callback(self._connecting.pop)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(
                self._factory,
                conn,
                ssl=self._ssl,
                ssl_handshake_timeout=self._ssl_handshake_timeout,
            )
        except Exception as exc:  # a failed TLS handshake, a reset
            logger.debug("connection lost before it was served: %r", exc)
            conn.close()
