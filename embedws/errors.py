"""Exceptions raised by embedws.

Every exception embedws raises derives from `EmbedwsError`; exceptions of
the libraries underneath (``websockets``, ``h11``, ``anyio``) are translated at
the edge where they occur and kept as ``__cause__``. Timeouts raise the builtin
`TimeoutError`.

Thread contract: exceptions are plain values; raise, catch and read them on
any thread.

```text
EmbedwsError
├── WebsocketClosed                 (.code, .reason, .sent_code, .sent_reason)
│   ├── ConnectionClosedOK          both sides closed with 1000 or 1001
│   └── ConnectionClosedError       anything else
├── ConcurrencyError                (also RuntimeError) two readers at once
├── ConfigError                     (also ValueError) unknown key, wrong type
├── RouteError                      (also ValueError) bad or duplicate route
├── BrokerError                     scale-out: a publish to Redis failed, or was refused
├── ConnectError                    (also OSError) a client could not connect
│   ├── InvalidURI                  (also ValueError) not a ws:// or wss:// URI
│   ├── NameResolutionError         the host name does not resolve
│   ├── ConnectionRefused           nothing listens at that address
│   ├── TLSError                    TLS failed: certificate not trusted, wrong host...
│   ├── ProxyError                  the proxy refused the tunnel or failed
│   ├── HandshakeTimeout            (also TimeoutError) no answer within open_timeout
│   └── InvalidHandshake            the server did not accept the websocket
│       └── InvalidStatus           (.status, .headers, .body) a non-101 answer
└── HTTPException                   (.status_code) turned into an HTTP answer
    ├── BadRequest                  400
    ├── Unauthorized                401
    ├── Forbidden                   403
    ├── NotFound                    404
    ├── MethodNotAllowed            405
    ├── RequestTimeout              408
    ├── PayloadTooLarge             413
    ├── UpgradeRequired             426
    ├── HeaderFieldsTooLarge        431
    ├── ServerError                 500
    └── ServiceUnavailable          503
```
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "BadRequest",
    "BrokerError",
    "ConcurrencyError",
    "ConfigError",
    "ConnectError",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "ConnectionRefused",
    "EmbedwsError",
    "Forbidden",
    "HTTPException",
    "HandshakeTimeout",
    "HeaderFieldsTooLarge",
    "InvalidHandshake",
    "InvalidStatus",
    "InvalidURI",
    "MethodNotAllowed",
    "NameResolutionError",
    "NotFound",
    "PayloadTooLarge",
    "ProxyError",
    "RequestTimeout",
    "RouteError",
    "ServerError",
    "ServiceUnavailable",
    "TLSError",
    "Unauthorized",
    "UpgradeRequired",
    "WebsocketClosed",
]

#: Close codes that mean "closed normally" on both sides.
OK_CLOSE_CODES = frozenset({1000, 1001})

_CLOSE_EXPLANATIONS = {
    1000: "OK",
    1001: "going away",
    1002: "protocol error",
    1003: "unsupported data",
    1005: "no status received",
    1006: "abnormal closure",
    1007: "invalid frame payload data",
    1008: "policy violation",
    1009: "message too big",
    1010: "mandatory extension",
    1011: "internal error",
    1012: "service restart",
    1013: "try again later",
    1014: "bad gateway",
    1015: "TLS failure",
}


def describe_close(code: int, reason: str = "") -> str:
    """Return ``"1001 (going away) server stopping"`` for a close code and reason.

    Thread contract: a pure function; call it from any thread.
    """
    if 3000 <= code < 4000:
        explanation = "registered"
    elif 4000 <= code < 5000:
        explanation = "private use"
    else:
        explanation = _CLOSE_EXPLANATIONS.get(code, "unknown")
    text = f"{code} ({explanation})"
    return f"{text} {reason}" if reason else text


class EmbedwsError(Exception):
    """Root of every exception embedws raises.

    Thread contract: a plain value, like every exception here; use it on any thread.
    """


class WebsocketClosed(EmbedwsError):
    """The websocket is closed; raised by ``send``, ``recv``, ``ping`` afterwards.

    Attributes:
        code: close code received from the peer (1006 when none came).
        reason: close reason received from the peer.
        sent_code: close code this side sent, or ``None`` if it sent none.
        sent_reason: close reason this side sent.

    Thread contract: a plain value; the thread that called ``send`` or ``recv``
    gets it, and may hand it to any other.
    """

    def __init__(
        self,
        code: int = 1006,
        reason: str = "",
        *,
        sent_code: int | None = None,
        sent_reason: str = "",
    ) -> None:
        self.code = code
        self.reason = reason
        self.sent_code = sent_code
        self.sent_reason = sent_reason
        message = f"websocket closed: received {describe_close(code, reason)}"
        if sent_code is not None:
            message += f"; sent {describe_close(sent_code, sent_reason)}"
        super().__init__(message)

    @staticmethod
    def make(code: int, reason: str, sent_code: int | None, sent_reason: str) -> WebsocketClosed:
        """Build the subclass that fits the codes: OK when both are 1000/1001."""
        ok = code in OK_CLOSE_CODES and (sent_code is None or sent_code in OK_CLOSE_CODES)
        cls = ConnectionClosedOK if ok else ConnectionClosedError
        return cls(code, reason, sent_code=sent_code, sent_reason=sent_reason)


class ConnectionClosedOK(WebsocketClosed):
    """The websocket closed normally (1000 or 1001)."""


class ConnectionClosedError(WebsocketClosed):
    """The websocket closed with an error code, or without a closing handshake."""


class ConcurrencyError(EmbedwsError, RuntimeError):
    """Two coroutines or threads tried to ``recv`` on one websocket at once."""


class ConfigError(EmbedwsError, ValueError):
    """A configuration key is unknown or its value has the wrong type."""


class RouteError(EmbedwsError, ValueError):
    """A route is malformed, duplicated, or ``url_for`` cannot build it."""


class BrokerError(EmbedwsError):
    """A broadcast could not be published to the other processes (Redis), or was refused.

    Raised by ``broadcast`` when a message is larger than the broker's
    ``max_message_size``, by an `embedws.Emitter` whose publish failed
    twice, and, with ``RedisBroker(on_error="raise")``, by the next broadcast
    after a publish failed (see `embedws.RedisBroker`).
    """


class ConnectError(EmbedwsError, OSError):
    """A client could not open its websocket connection."""


class InvalidURI(ConnectError, ValueError):
    """The URI given to ``connect`` is not a ``ws://`` or ``wss://`` URI."""


class NameResolutionError(ConnectError):
    """The host name of the URI (or of the proxy) does not resolve."""


class ConnectionRefused(ConnectError):
    """Nothing accepts connections at that address and port."""


class TLSError(ConnectError):
    """The TLS handshake failed, for example on a certificate the client does not trust."""


class HandshakeTimeout(ConnectError, TimeoutError):
    """The connection was not open within ``open_timeout`` seconds."""


class ProxyError(ConnectError):
    """The proxy refused the tunnel or could not be reached."""


class InvalidHandshake(ConnectError):
    """The opening handshake failed."""


class InvalidStatus(InvalidHandshake):
    """The server answered the opening handshake with something other than 101.

    Attributes:
        status: the HTTP status code.
        headers: the response headers.
        body: the response body, at most 1 MiB.
    """

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        snippet = body[:200].decode("utf-8", "replace").strip()
        message = f"server rejected the websocket connection: HTTP {status}"
        super().__init__(f"{message}: {snippet}" if snippet else message)


class HTTPException(EmbedwsError):
    """An error that becomes an HTTP response with ``status_code``.

    Raise one from an HTTP handler or ``on_request`` middleware to answer with
    that status; the message becomes the body.
    """

    status_code = 500

    def __init__(self, message: str = "", *, status_code: int | None = None) -> None:
        if status_code is not None:
            self.status_code = status_code
        super().__init__(message)


class BadRequest(HTTPException):
    """400 Bad Request."""

    status_code = 400


class Unauthorized(HTTPException):
    """401 Unauthorized."""

    status_code = 401


class Forbidden(HTTPException):
    """403 Forbidden."""

    status_code = 403


class NotFound(HTTPException):
    """404 Not Found."""

    status_code = 404


class MethodNotAllowed(HTTPException):
    """405 Method Not Allowed."""

    status_code = 405


class RequestTimeout(HTTPException):
    """408 Request Timeout."""

    status_code = 408


class PayloadTooLarge(HTTPException):
    """413 Content Too Large."""

    status_code = 413


class UpgradeRequired(HTTPException):
    """426 Upgrade Required."""

    status_code = 426


class HeaderFieldsTooLarge(HTTPException):
    """431 Request Header Fields Too Large."""

    status_code = 431


class ServerError(HTTPException):
    """500 Internal Server Error."""

    status_code = 500


class ServiceUnavailable(HTTPException):
    """503 Service Unavailable."""

    status_code = 503
