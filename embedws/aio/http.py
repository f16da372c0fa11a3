"""The HTTP front: h11 on each new socket until it becomes a websocket.

Theory of operation
-------------------
Every accepted socket starts with an `HTTPConnection` as its
``asyncio.Protocol``. h11 parses requests (keep-alive and pipelining included);
one request is handled at a time, with reading paused meanwhile so a client
cannot make us buffer without bound. A head that cannot be served as written
(``request.check_head``: an invalid Host, both Content-Length and
Transfer-Encoding, a dot segment or NUL in the path) gets 400 and the
connection closes. For each other request, in order:

1. the Host check (``ALLOWED_HOSTS``, the DNS-rebinding guard) → 403;
2. the route (404, 405, or 426 for plain HTTP on a websocket route);
3. for an upgrade: the Origin check (→ 403), the version (→ 426), capacity
   (``MAX_CONNECTIONS``, ``SYNC_HANDLER_THREADS`` → 503);
4. ``on_request`` middleware, which may answer instead;
5. an HTTP handler's response, or for an upgrade the ``websockets`` Sans-I/O
   ``ServerProtocol.accept`` (key validation, extensions, subprotocol), then
   ``on_response`` middleware on the 101.

A fast path for the common case: the first request of a connection, when it
arrives whole and is a plain upgrade, is parsed by ``websockets``' own parser
instead of h11 (``handshake.parse_upgrade`` says what it buys and which heads it
takes) and goes through the same steps; h11 reads it after all, with whatever
followed it, the moment anything but the switch to a websocket needs h11.

After a 101 the transport is handed to a [`Connection`][embedws.aio.Connection]
with ``transport.set_protocol``, and the bytes h11 read past the request are
fed to it. Timers: the request head must arrive within
``min(WEBSOCKET_TIMEOUT, REQUEST_TIMEOUT)``, the whole request within
``REQUEST_TIMEOUT``, and an idle keep-alive connection closes after
``KEEP_ALIVE_TIMEOUT``.

Answers are written whole; while the transport's buffer is above its limit
(the client does not read), the next pipelined request is not read, so a
client holds at most one answer in our memory, and one that does not read for
``WEBSOCKET_WRITE_TIMEOUT`` is dropped.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import h11
from websockets.datastructures import Headers as WSHeaders
from websockets.http11 import Request as WSRequest
from websockets.http11 import Response as WSResponse

from ..errors import BadRequest, HTTPException, NotFound
from ..handshake import is_upgrade, parse_upgrade, refuse_cross_site, refuse_upgrade
from ..protocol import ServerProtocol
from ..request import Request, check_head
from ..response import FileResponse, HTTPResponse, error_response
from ..routing import Route
from ..security import host_allowed
from ..switches import FAST_UPGRADES
from .acceptor import IdleSince, next_idle_rank
from .runtime import release_transport

if TYPE_CHECKING:
    from .server import Server

__all__ = ["HTTPConnection"]

logger = logging.getLogger("embedws.server")

#: Bytes of a file read and written at a time: constant memory per download.
FILE_CHUNK = 256 * 1024

_date_cache: tuple[int, bytes] = (0, b"")


def _http_date() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True).encode())
    return _date_cache[1]


def _upgrade_required(error_format: str | None) -> HTTPResponse:
    response = error_response(
        426, "this URL is a websocket endpoint: connect with a websocket client", error_format
    )
    response.headers["Upgrade"] = "websocket"
    response.headers["Connection"] = "Upgrade"
    return response


class HTTPConnection(asyncio.BufferedProtocol):
    """One client socket while it speaks HTTP/1.1.

    A ``BufferedProtocol`` reading into the server's shared buffer, like
    [`Connection`][embedws.aio.Connection] (h11 copies what it is given).

    Thread contract: runs on the event loop thread only.
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] | None = None
        # Made when first needed: a connection whose upgrade the fast path
        # answers never needs one (see _h11).
        self._h11_conn: h11.Connection | None = None
        # The upgrade fast path (_upgrade_fast): the first request of a
        # connection, parsed without h11, keeps its head and what came after it
        # here until it is either switched to a websocket or given to h11.
        self._fresh = FAST_UPGRADES  # the fast path may still take the first request
        self._fast_head: bytes | None = None
        self._fast_rest = bytearray()
        self._ws_request: WSRequest | None = None
        self._request: Request | None = None
        self._body = bytearray()
        self._busy = False
        self._idle = True  # no byte of the next request has arrived yet
        # Loop time of the first byte of the request being read; while idle,
        # of the start of the wait for the next request.
        self._first_byte = 0.0
        self._idle_rank = 0  # orders idle waits that begin at the same loop time
        self._received = 0  # bytes received since the first byte of the request
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0  # loop time when the request (or the idle wait) times out
        self._write_timer: asyncio.TimerHandle | None = None
        self._writing_paused = False
        self._drain_then_continue = False  # the next request waits for the answer to drain
        self._drained: asyncio.Future[None] | None = None  # a file's next chunk waits
        self._task: asyncio.Task[None] | None = None
        self._detached = False

    @property
    def _h11(self) -> h11.Connection:
        """The h11 connection, first told of a request the fast path parsed, if any."""
        if self._fast_head is not None:
            self._catch_up()
        conn = self._h11_conn
        return self._new_h11() if conn is None else conn

    def _new_h11(self) -> h11.Connection:
        conn = self._h11_conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self.server.config.REQUEST_MAX_HEADER_SIZE
        )
        return conn

    # asyncio callbacks --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports implement the
        # interface without deriving from asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = (str(peer[0]), int(peer[1]))
        if not self.server.track_http(self):
            self.transport.abort()
            return
        self._first_byte = self.server.loop.time()
        self._idle_rank = next_idle_rank()
        config = self.server.config
        self._set_timer(min(config.WEBSOCKET_TIMEOUT, config.REQUEST_TIMEOUT))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.server.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.server.read_buffer[:nbytes])  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if self._idle:
            self._idle = False
            self._first_byte = self.server.loop.time()
            self._received = 0
            config = self.server.config
            self._set_timer(min(config.WEBSOCKET_TIMEOUT, config.REQUEST_TIMEOUT))
        self._received += len(data)
        if self._fast_head is not None:  # an upgrade parsed without h11 is being answered
            self._fast_rest += data
            return
        if self._fresh:
            self._fresh = False
            data = bytes(data)
            if self._upgrade_fast(data):
                return
        self._h11.receive_data(data)
        if not self._busy:
            self._next_event()

    def eof_received(self) -> bool | None:
        self._h11.receive_data(b"")
        if not self._busy:
            self._next_event()
        return True  # keep the transport open to finish an answer in progress

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._wake_drained()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        if not self._detached:
            self.server.untrack_http(self)
        release_transport(self.transport)
        if exc is not None:
            logger.debug("HTTP connection from %s lost: %r", self.peer, exc)

    # Reading requests -----------------------------------------------------------

    def _next_event(self) -> None:
        conn = self._h11
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._refuse(exc.error_status_hint, f"malformed request: {exc}")
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                if not self._start_request(event):
                    return
            elif isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) > self.server.config.REQUEST_MAX_SIZE:
                    self._refuse(413, "request body too large")
                    return
            elif isinstance(event, h11.EndOfMessage):
                self._dispatch()
                return
            elif isinstance(event, h11.ConnectionClosed):
                self._close()
                return

    def _upgrade_fast(self, data: bytes) -> bool:
        """Answer a first request that is a whole upgrade head without h11; False: not one.

        The fast path of ``handshake.parse_upgrade`` (which says what it buys
        and when it is taken). What the client sent after the head waits in
        ``_fast_rest``: the websocket's first bytes once switched; or, for any
        other answer (a refusal, a middleware's response), h11 reads the head
        and the rest (``_catch_up``) and everything goes on as on h11's path.
        """
        if not data.startswith(b"GET "):
            return False
        end = data.find(b"\r\n\r\n") + 4
        if end < 4 or end > self.server.config.REQUEST_MAX_HEADER_SIZE:
            return False
        ws_request = parse_upgrade(data[:end])
        if ws_request is None:
            return False
        server = self.server
        request = Request(
            "GET",
            ws_request.path.encode("ascii"),
            [
                (name.lower().encode("ascii"), value.encode("latin-1"))
                for name, value in ws_request.headers.raw_items()
            ],
            scheme="https" if server.tls else "http",
            peer=self.peer,
            app=server.app,
            config=server.config,
        )
        try:
            check_head(request)
        except BadRequest:
            return False  # h11's path refuses it, as for any head
        self._fast_head = data[:end]
        self._fast_rest += data[end:]
        self._ws_request = ws_request
        self._request = request
        self._body.clear()
        self._dispatch()
        return True

    def _catch_up(self) -> None:
        """Give h11 the request the fast path parsed, and what followed it."""
        head, rest = self._fast_head, self._fast_rest
        assert head is not None
        self._fast_head, self._fast_rest, self._ws_request = None, bytearray(), None
        conn = self._new_h11() if self._h11_conn is None else self._h11_conn
        conn.receive_data(head)
        events: list[object] = []
        try:
            events += (conn.next_event(), conn.next_event())
        except h11.RemoteProtocolError as exc:  # parse_upgrade let through what h11 refuses
            events.append(exc)
        if [type(event) for event in events] != [h11.Request, h11.EndOfMessage]:
            logger.error("h11 reads an upgrade head otherwise than parse_upgrade: %r", events)
            if self.transport is not None:
                self.transport.abort()
            return
        if rest:
            conn.receive_data(bytes(rest))

    def _start_request(self, event: h11.Request) -> bool:
        server = self.server
        self._request = Request(
            event.method.decode("ascii"),
            event.target,
            list(event.headers),  # (lowercase name, value) pairs
            scheme="https" if server.tls else "http",
            http_version=event.http_version.decode("ascii"),
            peer=self.peer,
            app=server.app,
            config=server.config,
        )
        self._body.clear()
        # The whole request, counted from its first byte: REQUEST_TIMEOUT.
        elapsed = server.loop.time() - self._first_byte
        self._set_timer(max(server.config.REQUEST_TIMEOUT - elapsed, 0))
        # h11 bounds only a head that arrives in pieces; one that arrives whole
        # is measured here (unless all that came is less than the limit).
        limit = server.config.REQUEST_MAX_HEADER_SIZE
        if self._received > limit:
            head_size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
            if head_size > limit:
                self._refuse(431, "request header fields too large")
                return False
        try:
            check_head(self._request)
        except BadRequest as exc:
            self._refuse(400, str(exc))
            return False
        length = self._request.header(b"content-length")
        if length is not None and length.isdigit() and int(length) > server.config.REQUEST_MAX_SIZE:
            self._refuse(413, "request body too large")
            return False
        return True

    def _dispatch(self) -> None:
        request = self._request
        assert request is not None and self.transport is not None
        request.body = bytes(self._body)
        self._body.clear()
        self._busy = True
        self._cancel_timer()
        if not self.server.has_middleware and self._answer_now(request):
            return
        # Nothing more is read while the answer is awaited: h11 would buffer
        # every pipelined request meanwhile. (An answer given now needs no
        # pause, nor the two system calls it costs.)
        self.transport.pause_reading()
        self._task = self.server.loop.create_task(self._respond(request))

    # Answering ------------------------------------------------------------------

    def _answer_now(self, request: Request) -> bool:
        """Answer, without a task, a request that needs no await; False if it does.

        With no middleware to await, the Host refusal and the whole websocket
        upgrade are plain calls: a task per handshake (and a pass of the loop
        to start it) would cost more than the rest of the upgrade's own code.
        """
        response: HTTPResponse | None
        try:
            refusal = self._host_refusal(request)
            if refusal is not None:
                response, close = refusal, True
            elif is_upgrade(request):
                response, close = self._upgrade_now(request)
            else:
                return False
        except Exception as exc:
            response, close = self._failure(request, exc)
        if response is not None:
            self._write_response(request, response, close=close)
        return True

    async def _respond(self, request: Request) -> None:
        close = False
        try:
            response, close = await self._handle(request)
        except Exception as exc:
            response, close = self._failure(request, exc)
        if response is not None:
            await self._send(request, response, close=close)

    def _failure(self, request: Request, exc: Exception) -> tuple[HTTPResponse, bool]:
        """The answer to a request whose handling raised ``exc``: (response, close after)."""
        if isinstance(exc, HTTPException):
            message = str(exc) or "error"
            return error_response(exc.status_code, message, self._format(request.route)), False
        logger.error("error while handling %s %s", request.method, request.path, exc_info=exc)
        return error_response(500, "internal server error", self._format(request.route)), True

    def _format(self, route: Route | None) -> str | None:
        if route is not None and route.error_format is not None:
            return route.error_format
        return self.server.error_format

    async def _handle(self, request: Request) -> tuple[HTTPResponse | None, bool]:
        """Route and answer one request: (response, or None if upgraded; close after)."""
        server = self.server
        config = server.config
        refusal = self._host_refusal(request)
        if refusal is not None:
            return refusal, True
        if is_upgrade(request):
            return await self._upgrade(request)
        refusal = refuse_cross_site(
            request, config, tls=server.tls, error_format=server.error_format
        )
        if refusal is not None:
            return refusal, False
        if server.connection_count() > config.MAX_CONNECTIONS:
            return error_response(
                503, "the server is at capacity; retry later", server.error_format
            ), True
        try:
            route, params = server.router.find(request.path, request.host, "http", request.method)
        except NotFound:
            if server.router.has_kind(request.path, request.host, "websocket"):
                return _upgrade_required(server.error_format), False
            raise
        # A websocket endpoint comes before a catch-all such as app.static("/", ...).
        if route.params and server.router.has_kind(request.path, request.host, "websocket"):
            return _upgrade_required(server.error_format), False
        request.route, request.match_info = route, params
        early = await server.run_request_middleware(request)
        if early is not None:
            return early, False
        runner = server.runner_for(route)
        result = await runner.call(route.handler, request, **params)
        if not isinstance(result, HTTPResponse):
            raise TypeError(
                f"HTTP handler {route.name} returned {type(result).__name__}, "
                "not an HTTPResponse (use embedws.response.text/html/json/...)"
            )
        return result, False

    def _host_refusal(self, request: Request) -> HTTPResponse | None:
        """403 when the Host is not served here (the DNS-rebinding guard)."""
        server = self.server
        host = request.header(b"host")
        if host_allowed(
            host.decode("latin-1") if host is not None else None,
            allowed=server.config.ALLOWED_HOSTS,
            loopback_only=server.loopback_only,
            named_hosts=server.named_hosts,
        ):
            return None
        message = (
            f"host {request.host!r} is not served here. To allow it, add it to the "
            "ALLOWED_HOSTS configuration key."
        )
        return error_response(403, message, server.error_format)

    def _upgrade_checks(
        self, request: Request
    ) -> tuple[Route, dict[str, Any], HTTPResponse | None]:
        """Route an upgrade and check it before middleware: (route, params, refusal)."""
        server = self.server
        route, params = server.router.find(request.path, request.host, "websocket")
        request.route, request.match_info = route, params
        request.scheme = "wss" if server.tls else "ws"
        fmt = self._format(route)
        refusal = refuse_upgrade(request, server.config, tls=server.tls, error_format=fmt)
        if refusal is None and server.over_capacity(route):
            refusal = error_response(503, "the server is at capacity; retry later", fmt)
        return route, params, refusal

    def _accept(self, request: Request, route: Route) -> tuple[ServerProtocol, WSResponse]:
        """The Sans-I/O layer's answer to the handshake: key, extensions, subprotocol."""
        protocol = self.server.make_protocol(route)
        ws_request = self._ws_request  # the fast path's, or one made of the h11 request
        if ws_request is None:
            ws_request = WSRequest(
                path=request.path + (f"?{request.query_string}" if request.query_string else ""),
                headers=WSHeaders(
                    (k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers
                ),
                method=request.method,
                protocol=f"HTTP/{request.http_version}",
            )
        return protocol, protocol.accept(ws_request)

    def _refused_handshake(self, ws_response: WSResponse, route: Route) -> HTTPResponse:
        body = ws_response.body.decode("utf-8", "replace").strip()
        return error_response(ws_response.status_code, body, self._format(route))

    def _upgrade_now(self, request: Request) -> tuple[HTTPResponse | None, bool]:
        """The whole upgrade when no middleware runs: (refusal, close) or (None, False)."""
        route, params, refusal = self._upgrade_checks(request)
        if refusal is not None:
            return refusal, True
        protocol, ws_response = self._accept(request, route)
        if ws_response.status_code != 101:
            return self._refused_handshake(ws_response, route), True
        self._switch(request, route, params, protocol, ws_response.serialize())
        return None, False

    async def _upgrade(self, request: Request) -> tuple[HTTPResponse | None, bool]:
        server = self.server
        route, params, refusal = self._upgrade_checks(request)
        if refusal is not None:
            return refusal, True
        early = await server.run_request_middleware(request)
        if early is not None:
            return early, True
        protocol, ws_response = self._accept(request, route)
        if ws_response.status_code != 101:
            return self._refused_handshake(ws_response, route), True
        response = HTTPResponse(b"", 101, list(ws_response.headers.raw_items()))
        await server.run_response_middleware(request, response)
        # Middleware awaited: the server may be stopping, or full, by now.
        fmt = self._format(route)
        if server.closing or self.transport is None or self.transport.is_closing():
            return error_response(503, "the server is shutting down", fmt), True
        if server.over_capacity(route):
            return error_response(503, "the server is at capacity; retry later", fmt), True
        head = WSResponse(101, "Switching Protocols", WSHeaders(response.headers.items()))
        self._switch(request, route, params, protocol, head.serialize())
        return None, False

    def _switch(
        self,
        request: Request,
        route: Route,
        params: dict[str, Any],
        protocol: ServerProtocol,
        head: bytes,
    ) -> None:
        """Hand the socket over to a websocket connection, which writes the 101 ``head``."""
        assert self.transport is not None
        if self._fast_head is not None:  # h11 never saw this request
            trailing = bytes(self._fast_rest)
            self._fast_head, self._fast_rest, self._ws_request = None, bytearray(), None
        else:
            trailing, _closed = self._h11.trailing_data
        self._detached = True
        self._cancel_timer()
        server = self.server
        server.untrack_http(self)
        server.accept_websocket(
            self.transport, protocol, request, route, params, head, bytes(trailing)
        )

    async def _send(self, request: Request, response: HTTPResponse, *, close: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        response = await self.server.run_response_middleware(request, response)
        if isinstance(response, FileResponse):
            await self._send_file(request, response, close=close)
            return
        self._write_response(request, response, close=close)

    def _write_response(self, request: Request, response: HTTPResponse, *, close: bool) -> None:
        """Write a response whose body is in memory; then close, or read the next request."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        conn = self._h11
        close = close or self.server.closing
        status = response.status
        headers = response.headers.encode()
        names = {name.lower() for name, _ in headers}
        if b"content-length" not in names and status >= 200 and status not in (204, 304):
            headers.append((b"content-length", str(len(response.body)).encode()))
        if b"date" not in names:
            headers.append((b"date", _http_date()))
        if close:
            headers.append((b"connection", b"close"))
        try:
            data = conn.send(
                h11.Response(status_code=status, headers=headers, reason=response.reason.encode())
            )
            if response.body and request.method != "HEAD":
                data += conn.send(h11.Data(data=response.body)) or b""
            data += conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError as exc:
            logger.error("cannot send the response to %s %s: %s", request.method, request.path, exc)
            transport.abort()
            return
        transport.write(data or b"")
        self._after_response(close)

    def _after_response(self, close: bool) -> None:
        """The answer is written: close, or read the next request."""
        conn = self._h11
        if close or conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
            self._close()
            return
        conn.start_next_cycle()
        self._request = None
        if self._writing_paused:
            # The client reads its answers slower than it asks: the next
            # (pipelined) request waits until this answer has drained, so
            # answers never pile up in memory (resume_writing goes on).
            self._drain_then_continue = True
            return
        self._next_request()

    async def _send_file(self, request: Request, response: FileResponse, *, close: bool) -> None:
        """Send a file, streamed in chunks as the client takes them (constant memory).

        The file is read on a hook thread (off the loop), a chunk at a time;
        the next chunk is read only once the transport's buffer has drained
        below its limit, and a client that stops reading is dropped by the
        write timer, as for any answer.
        """
        transport = self.transport
        assert transport is not None
        server = self.server
        close = close or server.closing
        plan = response.plan(request.method, request.headers)
        handle: BinaryIO | None = None
        if plan.length and request.method != "HEAD":
            try:
                opened: BinaryIO = await server.run_blocking(open, response.path, "rb")
                handle = opened
                if plan.offset:
                    await server.run_blocking(opened.seek, plan.offset)
            except OSError as exc:  # gone, or unreadable, since it was found
                if handle is not None:
                    handle.close()
                logger.debug("cannot send %s: %s", response.path, exc)
                await self._send(
                    request,
                    error_response(404, "file not found", self._format(request.route)),
                    close=close,
                )
                return
        headers = [*response.headers.encode()]
        headers += [(name.encode(), value.encode("latin-1")) for name, value in plan.headers]
        if plan.status != 304:
            headers.append((b"content-length", str(plan.length).encode()))
        headers.append((b"date", _http_date()))
        if close:
            headers.append((b"connection", b"close"))
        conn = self._h11
        try:
            status_line = h11.Response(
                status_code=plan.status, headers=headers, reason=HTTPStatus(plan.status).phrase
            )
            transport.write(conn.send(status_line) or b"")
            if handle is not None and not await self._stream(handle, plan.length):
                return  # the client went, or the file shrank: the connection is closed
            transport.write(conn.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError as exc:
            logger.error("cannot send the file for %s %s: %s", request.method, request.path, exc)
            transport.abort()
            return
        finally:
            if handle is not None:
                handle.close()
        self._after_response(close)

    async def _stream(self, handle: BinaryIO, length: int) -> bool:
        """Write ``length`` bytes of ``handle``; False if the connection ended first."""
        transport = self.transport
        assert transport is not None
        remaining = length
        while remaining:
            chunk = await self.server.run_blocking(handle.read, min(FILE_CHUNK, remaining))
            if transport.is_closing():
                return False
            if not chunk:
                logger.warning("a file shrank while it was sent; closing the connection")
                transport.abort()
                return False
            for piece in self._h11.send_with_data_passthrough(h11.Data(data=chunk)) or ():
                transport.write(piece)
            remaining -= len(chunk)
            if self._writing_paused:
                drained = self._drained = self.server.loop.create_future()
                await drained
            if transport.is_closing():
                return False
        return True

    def _next_request(self) -> None:
        transport = self.transport
        assert transport is not None
        self._busy = False
        self._idle = True
        self._first_byte = self.server.loop.time()  # for a request already buffered
        self._idle_rank = next_idle_rank()
        self._set_timer(self.server.config.KEEP_ALIVE_TIMEOUT)
        transport.resume_reading()
        self._next_event()

    # Write backpressure -----------------------------------------------------------

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self._write_timer is None:
            self._write_timer = self.server.loop.call_later(
                self.server.config.WEBSOCKET_WRITE_TIMEOUT, self._write_timed_out
            )

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        self._wake_drained()
        if self._drain_then_continue:
            self._drain_then_continue = False
            self._next_request()

    def _wake_drained(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def _write_timed_out(self) -> None:
        # Also after close(): a transport closes only once its buffer is sent.
        self._write_timer = None
        logger.info(
            "HTTP client %s stopped reading for %.3g s; dropping it",
            self.peer,
            self.server.config.WEBSOCKET_WRITE_TIMEOUT,
        )
        if self.transport is not None:
            self.transport.abort()

    def _refuse(self, status: int, message: str) -> None:
        """Answer a request we could not read, then close."""
        transport = self.transport
        self._busy = True
        self._cancel_timer()
        if transport is None or transport.is_closing():
            return
        response = error_response(status, message, self.server.error_format)
        headers = [
            *response.headers.encode(),
            (b"content-length", str(len(response.body)).encode()),
            (b"connection", b"close"),
        ]
        try:
            data = (
                self._h11.send(
                    h11.Response(
                        status_code=status, headers=headers, reason=response.reason.encode()
                    )
                )
                or b""
            )
            data += self._h11.send(h11.Data(data=response.body)) or b""
            data += self._h11.send(h11.EndOfMessage()) or b""
            transport.write(data)
        except h11.LocalProtocolError:
            pass
        self._close()

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def idle_since(self) -> IdleSince | None:
        """Since when this connection has waited for a request.

        ``None`` unless it is idle: no request begun, nothing left to write.
        """
        transport = self.transport
        if (
            self._busy
            or not self._idle
            or transport is None
            or transport.is_closing()
            or transport.get_write_buffer_size()
            or (self._h11_conn is not None and self._h11_conn.trailing_data[0])  # pipelined
        ):
            return None
        return (self._first_byte, self._idle_rank)

    def abort(self) -> None:
        """Close now, without waiting for a graceful end (frees the descriptor at once)."""
        if self.transport is not None:
            self.transport.abort()

    def close_if_idle(self) -> bool:
        """Close now unless a request is being answered (server shutdown)."""
        if self._busy:
            return False
        self._close()
        return True

    # Timers ---------------------------------------------------------------------

    def _set_timer(self, delay: float) -> None:
        """Time out ``delay`` seconds from now (replacing the deadline set before).

        A deadline that moves later keeps the timer already armed, which
        re-arms itself when it fires early: a request that arrives in one
        piece moves its deadline three times (connection, first byte, head)
        and would otherwise make and cancel three timers.
        """
        loop = self.server.loop
        deadline = loop.time() + delay
        self._deadline = deadline
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(deadline, self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        loop = self.server.loop
        if loop.time() < self._deadline:  # the deadline moved later meanwhile
            self._timer = loop.call_at(self._deadline, self._timed_out)
            return
        if self._busy or self.transport is None:
            return
        if self._idle:
            self._close()  # nothing was sent: idle keep-alive, or a silent client
        else:
            logger.debug("request from %s timed out", self.peer)
            self._refuse(408, "request timed out")

    def __repr__(self) -> str:
        return f"<HTTPConnection {self.peer}>"
