"""Start, stop and run servers from code that is not async.

``app.start()`` runs the async server on the shared loop thread and returns a
`Server` handle once the socket listens; ``app.serve()`` is the same as a
context manager; ``app.run()`` blocks until Ctrl-C / SIGTERM or ``stop()``.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType, TracebackType
from typing import Any

from ..aio.server import ServedApp
from ..aio.server import Server as AsyncServer
from ..aio.server import serve as aio_serve
from ..tls import SSLArg
from .bridge import LoopThread, close_at_exit
from .client import ClientWebsocket, connect
from .runner import in_handler_thread

__all__ = ["Server", "run", "run_until_stopped", "start"]


class Server:
    """A server running on the background loop thread.

    Thread contract: every method is safe from any thread. ``stop()`` called on
    the loop thread, from a handler or from a listener starts the shutdown and
    returns at once; elsewhere it returns when the shutdown is complete. A
    server still running when the interpreter exits is stopped as by ``stop()``.
    """

    def __init__(self, loop_thread: LoopThread, server: AsyncServer) -> None:
        self._loop_thread = loop_thread
        self._server = server
        self._closed = threading.Event()  # the async shutdown is complete
        self._finished = threading.Event()  # threads joined, loop thread released
        self._finish_lock = threading.Lock()  # guards _finishing
        self._finishing = False
        loop_thread.crossing.call(self._watch_closed)
        close_at_exit(self, server=True)

    def close_at_exit(self) -> None:
        if not self._finished.is_set():
            self.stop()

    def _watch_closed(self) -> None:
        task = self._server.loop.create_task(self._server.wait_closed())
        task.add_done_callback(self._on_closed)

    def _on_closed(self, _task: object) -> None:
        # However the server stopped (stop(), app.stop(), a listener), release
        # its threads and the loop thread; not here: this is the loop thread.
        self._closed.set()
        if self._claim_finish():
            threading.Thread(target=self._finish, name="embedws-stop", daemon=True).start()

    def _claim_finish(self) -> bool:
        """True for the one caller that will run `_finish()`."""
        with self._finish_lock:
            if self._finishing:
                return False
            self._finishing = True
            return True

    @property
    def async_server(self) -> AsyncServer:
        """The server on the loop (``embedws.aio.Server``)."""
        return self._server

    @property
    def port(self) -> int:
        """The listening port."""
        return self._server.port

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:port`` (``wss://`` with TLS)."""
        return self._server.url

    @property
    def urls(self) -> list[str]:
        """The URL of every listening address (a host list listens on several)."""
        return self._server.urls

    @property
    def config(self) -> Any:
        """The configuration this server runs with."""
        return self._server.config

    @property
    def sockets(self) -> list[socket.socket]:
        return self._server.sockets

    def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully: close 1001 to every websocket, wait for handlers.

        Args:
            timeout: at most this many seconds (default: the server's
                ``GRACEFUL_SHUTDOWN_TIMEOUT`` plus the closing handshake).
        """
        if self._loop_thread.on_loop_thread() or in_handler_thread():
            self._server.close_threadsafe()
            return  # _on_closed finishes once the shutdown is done
        config = self._server.config
        if timeout is None:
            timeout = config.GRACEFUL_SHUTDOWN_TIMEOUT + config.WEBSOCKET_TIMEOUT + 5
        if not self._claim_finish():
            self._finished.wait(timeout)
            return
        self._server.close_threadsafe()
        self._finish(timeout)

    def _finish(self, timeout: float | None = None) -> None:
        config = self._server.config
        if timeout is None:
            timeout = config.GRACEFUL_SHUTDOWN_TIMEOUT + config.WEBSOCKET_TIMEOUT + 5
        deadline = time.monotonic() + timeout
        try:
            self._closed.wait(max(deadline - time.monotonic(), 0))
            # The shutdown already waited GRACEFUL_SHUTDOWN_TIMEOUT for the
            # handlers: threads still running now are stuck, and abandoned.
            self._server.join_handlers(min(max(deadline - time.monotonic(), 0.1), 1.0))
        finally:
            self._loop_thread.release()
            self._finished.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped; ``False`` if ``timeout`` passed first."""
        return self._closed.wait(timeout)

    def serve_forever(self) -> None:
        """Block until the server stops (``stop()`` from another thread, or a signal)."""
        self._closed.wait()

    def connect(self, path: str = "/", **options: Any) -> ClientWebsocket:
        """An open sync client of ``path`` on this server (see [`connect()`][embedws.sync.connect]).

        ``ws = server.connect("/ws")`` or ``with server.connect("/ws") as ws:``.
        """
        return connect(self.url + path, **options)

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<sync.Server {self.url}>"


def start(
    app: ServedApp,
    host: str | Sequence[str] | None = "127.0.0.1",
    port: int = 0,
    *,
    ssl: SSLArg = None,
    sock: socket.socket | None = None,
    unix: str | None = None,
    **config: Any,
) -> Server:
    """Start serving ``app`` on the background loop thread; return once listening.

    Raises:
        OSError: the address cannot be bound.
        RuntimeError: called on the loop thread (it would deadlock).
    """
    running = LoopThread.running()
    if running is not None:
        running.check_can_block("app.start()")
    loop_thread = LoopThread.acquire()
    try:
        server = loop_thread.run(
            aio_serve(app, host, port, ssl=ssl, sock=sock, unix=unix, **config).start()
        )
    except BaseException:
        loop_thread.release()
        raise
    return Server(loop_thread, server)


def run(start_server: Callable[[], Server]) -> None:
    """Start a server, then block until it stops or, on the main thread, Ctrl-C / SIGTERM.

    A signal that comes while the server is starting (its listeners may take
    a while) is kept until it has started, then stops it gracefully: an
    interrupted start would leave a server running with nobody to stop it. A
    second signal during the start interrupts it.
    """
    main = threading.current_thread() is threading.main_thread()
    if not main:
        server = start_server()
    else:
        interrupted: list[int] = []

        def defer(signum: int, frame: FrameType | None) -> None:
            if interrupted:
                raise KeyboardInterrupt
            interrupted.append(signum)

        # A signal the program was started with ignored (SIGINT for a job that
        # a shell put in the background) stays ignored, as Python leaves it.
        previous = {
            sig: signal.signal(sig, defer)
            for sig in (signal.SIGINT, signal.SIGTERM)
            if signal.getsignal(sig) is not signal.SIG_IGN
        }
        try:
            server = start_server()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if interrupted:
            server.stop()
            return
    run_until_stopped(server)


def run_until_stopped(server: Server) -> None:
    """Block until ``server`` stops or, on the main thread, Ctrl-C / SIGTERM; then stop it."""
    previous: Any = None
    main = threading.current_thread() is threading.main_thread()
    if main:
        previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        server.stop()


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
