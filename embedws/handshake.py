"""The accept-or-refuse decisions for a request, before any handler runs (pure).

The HTTP front asks, in this order: is the Host allowed (for every request, in
``http.py``); for a plain HTTP request, is it a cross-site request with an
unsafe method; for an upgrade, is the Origin allowed, is the version 13.
The ``websockets`` Sans-I/O layer then validates the key and negotiates
extensions; `subprotocol_selector()` gives it our subprotocol rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from websockets.http11 import Request as WSRequest
from websockets.streams import StreamReader
from websockets.typing import Subprotocol

from .config import Config
from .request import Request
from .response import HTTPResponse, error_response
from .security import cross_site_refused, is_secure, origin_allowed

__all__ = [
    "is_upgrade",
    "parse_upgrade",
    "refuse_cross_site",
    "refuse_upgrade",
    "subprotocol_selector",
]

SUPPORTED_VERSION = "13"


def is_upgrade(request: Request) -> bool:
    """True if the request asks to switch to the websocket protocol."""
    upgrade = request.header(b"upgrade")
    return upgrade is not None and b"websocket" in upgrade.lower()


def parse_upgrade(head: bytes) -> WSRequest | None:
    """A whole upgrade request head, parsed by ``websockets``' own parser; None: leave it to h11.

    A fast path (switch ``EMBEDWS_FAST_UPGRADES``; ``embedws/aio/http.py``
    takes it for the first request of a connection): h11 parses a browser's
    upgrade for about 107 K instructions more than this parser, and the
    request this gives goes to ``ServerProtocol.accept`` as it is, without
    converting headers: together 12% of a whole handshake's server
    instructions (``bench/instructions.py``: 1,250 K to 1,103 K). It is taken
    only for heads that both parsers read alike and h11 would accept
    (``tests/test_upgrade_parse.py`` checks that on random heads): ``GET``
    over HTTP/1.1, a target of visible ASCII characters, exactly one Host
    header, no body headers, every line ending in CRLF, every header name a
    token and every value free of control characters. Any other head,
    including every one this parser refuses, goes to h11 as before.
    """
    reader = StreamReader()
    reader.feed_data(head)
    parser = WSRequest.parse(reader.read_line)
    try:
        next(parser)
    except StopIteration as done:
        request: WSRequest = done.value
    except Exception:  # a head this parser refuses: h11's to answer, as before
        return None
    else:
        return None  # incomplete
    if request.method != "GET" or request.protocol != "HTTP/1.1":
        return None
    if not request.path or not request.path.isprintable():
        return None
    headers = request.headers
    upgrade = headers.get_all("Upgrade")
    if (
        len(headers.get_all("Host")) != 1
        or "Content-Length" in headers
        or "Transfer-Encoding" in headers
        or not upgrade
        or "websocket" not in upgrade[0].lower()  # as is_upgrade() reads it
    ):
        return None
    return request


def refuse_upgrade(
    request: Request, config: Config, *, tls: bool, error_format: str | None
) -> HTTPResponse | None:
    """An error response if this handshake must be refused, else ``None``."""
    origin = request.header(b"origin")
    if origin is not None and not origin_allowed(
        origin.decode("latin-1"),
        request.host,
        tls=_secure(request, config, tls),
        allowed=config.WEBSOCKET_ORIGINS,
    ):
        assert origin is not None
        return error_response(
            403,
            f"origin {origin.decode('latin-1')!r} may not open websockets here. "
            "To allow it, add it to the WEBSOCKET_ORIGINS configuration key.",
            error_format,
        )
    version = request.header(b"sec-websocket-version")
    if version is None or version.strip() != SUPPORTED_VERSION.encode():
        response = error_response(
            426,
            f"unsupported Sec-WebSocket-Version {version!r}; this server speaks version "
            f"{SUPPORTED_VERSION}",
            error_format,
        )
        response.headers["Sec-WebSocket-Version"] = SUPPORTED_VERSION
        response.headers["Upgrade"] = "websocket"
        return response
    return None


def refuse_cross_site(
    request: Request, config: Config, *, tls: bool, error_format: str | None
) -> HTTPResponse | None:
    """A 403 if this HTTP request is a cross-site one the origin policy refuses, else ``None``.

    The cross-site request forgery guard of HTTP routes: a page of another
    origin may not POST (PUT, DELETE...) here, whatever the content type.
    """
    if request.method in ("GET", "HEAD"):  # the common case, without decoding anything
        return None
    origin = request.header(b"origin")
    fetch_site = request.header(b"sec-fetch-site")
    if not cross_site_refused(
        request.method,
        origin.decode("latin-1") if origin is not None else None,
        fetch_site.decode("latin-1") if fetch_site is not None else None,
        request.host,
        tls=_secure(request, config, tls),
        allowed=config.WEBSOCKET_ORIGINS,
    ):
        return None
    source = f"origin {origin.decode('latin-1')!r}" if origin is not None else "another site"
    return error_response(
        403,
        f"a page of {source} may not send {request.method} requests here. To allow it, "
        "add its origin to the WEBSOCKET_ORIGINS configuration key.",
        error_format,
    )


def _secure(request: Request, config: Config, tls: bool) -> bool:
    proto = request.header(b"x-forwarded-proto")
    return is_secure(
        tls, proto.decode("latin-1") if proto is not None else None, config.PROXIES_COUNT
    )


def subprotocol_selector(
    preferred: Sequence[str] | None,
) -> Callable[[Any, Sequence[Subprotocol]], Subprotocol | None]:
    """The server's subprotocol choice: its first preference the client offered.

    No subprotocol in common, or none offered, accepts the connection without
    one (the stock Sans-I/O rule answers 400 instead).
    """
    preferences = tuple(Subprotocol(p) for p in preferred or ())

    def select(_protocol: Any, offered: Sequence[Subprotocol]) -> Subprotocol | None:
        for candidate in preferences:
            if candidate in offered:
                return candidate
        return None

    return select
