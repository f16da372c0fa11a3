"""HTTP request and header containers (pure: no I/O).

A `Request` is built once per HTTP request or websocket handshake by the
HTTP front from what h11 parsed. Derived views (``headers``, ``args``,
``cookies``, ``json()``) are computed on first use, because most handlers never
touch most of them and a websocket keeps its request for its whole life.
`check_head()` refuses the heads h11 accepts but no route should see.
"""

from __future__ import annotations

import json as jsonlib
import uuid
from collections.abc import Iterable, Iterator, Mapping
from http.cookies import SimpleCookie
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, TypeVar, overload
from urllib.parse import parse_qsl, unquote

from .errors import BadRequest
from .routing import check_path
from .security import split_host

if TYPE_CHECKING:
    from .config import Config
    from .routing import Route

__all__ = ["Args", "Headers", "Request", "check_head"]

_T = TypeVar("_T")


class Headers:
    """Case-insensitive multidict of HTTP headers; keeps order and original case.

    ``headers["x"]`` and ``get`` return the first value; ``getall`` every value.
    Thread contract: not synchronized; a request's headers are read-only in practice.
    """

    __slots__ = ("_items",)
    __hash__ = None  # type: ignore[assignment]  # mutable

    def __init__(
        self, items: Iterable[tuple[str, str]] | Mapping[str, str] | Headers | None = None
    ) -> None:
        if items is None:
            self._items: list[tuple[str, str]] = []
        elif isinstance(items, Headers):
            self._items = list(items._items)
        elif isinstance(items, Mapping):
            self._items = list(items.items())
        else:
            self._items = list(items)

    @classmethod
    def from_raw(cls, raw: Iterable[tuple[bytes, bytes]]) -> Headers:
        """Build from (name, value) byte pairs as they came off the wire."""
        headers = cls()
        headers._items = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in raw]
        return headers

    @overload
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: _T) -> str | _T: ...
    def get(self, name: str, default: object = None) -> object:
        """The first value of ``name``, or ``default``."""
        name = name.lower()
        for key, value in self._items:
            if key.lower() == name:
                return value
        return default

    def getall(self, name: str) -> list[str]:
        """Every value of ``name``, in order (empty if none)."""
        name = name.lower()
        return [value for key, value in self._items if key.lower() == name]

    getlist = getall

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __setitem__(self, name: str, value: str) -> None:
        """Replace every value of ``name`` with ``value``."""
        lowered = name.lower()
        self._items = [(k, v) for k, v in self._items if k.lower() != lowered]
        self._items.append((name, value))

    def __delitem__(self, name: str) -> None:
        lowered = name.lower()
        kept = [(k, v) for k, v in self._items if k.lower() != lowered]
        if len(kept) == len(self._items):
            raise KeyError(name)
        self._items = kept

    def add(self, name: str, value: str) -> None:
        """Add a value, keeping the ones already there (``Set-Cookie``)."""
        self._items.append((name, value))

    def setdefault(self, name: str, value: str) -> str:
        current = self.get(name)
        if current is None:
            self._items.append((name, value))
            return value
        return current

    def pop(self, name: str, default: str | None = None) -> str | None:
        value = self.get(name, default)
        lowered = name.lower()
        self._items = [(k, v) for k, v in self._items if k.lower() != lowered]
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[str]:
        return [key for key, _ in self._items]

    def items(self) -> list[tuple[str, str]]:
        """Every (name, value) pair, duplicates included."""
        return list(self._items)

    def values(self) -> list[str]:
        return [value for _, value in self._items]

    def encode(self) -> list[tuple[bytes, bytes]]:
        """(name, value) byte pairs for the wire."""
        return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self._items]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return self._items == other._items
        return NotImplemented

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class Args(dict[str, list[str]]):
    """Query-string arguments: ``get`` gives the first value, ``getlist`` all."""

    @overload  # type: ignore[override]
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: _T) -> str | _T: ...
    def get(self, name: str, default: object = None) -> object:
        values = super().get(name)
        return values[0] if values else default

    def getlist(self, name: str, default: list[str] | None = None) -> list[str]:
        values = super().get(name)
        if values is None:
            return [] if default is None else default
        return list(values)


class Request:
    """An HTTP request or a websocket opening handshake.

    Thread contract: built on the event loop; read it from any thread. ``ctx``
    is the handler's own namespace and is not synchronized.
    """

    __slots__ = (
        "method",
        "path",
        "query_string",
        "scheme",
        "http_version",
        "raw_headers",
        "app",
        "route",
        "match_info",
        "body",
        "ip",
        "port",
        "_config",
        "_first",
        "_headers",
        "_args",
        "_cookies",
        "_ctx",
        "_id",
    )

    def __init__(
        self,
        method: str,
        target: bytes,
        raw_headers: list[tuple[bytes, bytes]],
        *,
        scheme: str = "http",
        http_version: str = "1.1",
        peer: tuple[str, int] | None = None,
        app: Any = None,
        config: Config | None = None,
    ) -> None:
        self.method = method
        raw_path, _, query = target.partition(b"?")
        self.path = raw_path.decode("latin-1")
        self.query_string = query.decode("latin-1")
        self.scheme = scheme
        self.http_version = http_version
        self.raw_headers = raw_headers
        self.app = app
        self.route: Route | None = None
        self.match_info: dict[str, Any] = {}
        self.body = b""
        self.ip, self.port = peer if peer else ("", 0)
        self._config = config
        self._headers: Headers | None = None
        self._first: dict[bytes, bytes] | None = None  # name -> first value, for header()
        self._args: Args | None = None
        self._cookies: dict[str, str] | None = None
        self._ctx: SimpleNamespace | None = None
        self._id: uuid.UUID | None = None

    @property
    def headers(self) -> Headers:
        """The request headers, a case-insensitive multidict."""
        if self._headers is None:
            self._headers = Headers.from_raw(self.raw_headers)
        return self._headers

    def header(self, name: bytes) -> bytes | None:
        """Fast lookup of one header (its first value) by its lowercase byte name."""
        first = self._first
        if first is None:
            first = self._first = {}
            for key, value in self.raw_headers:
                first.setdefault(key, value)
        return first.get(name)

    @property
    def args(self) -> Args:
        """The query string as a multidict (``get`` first value, ``getlist`` all)."""
        if self._args is None:
            args = Args()
            for key, value in parse_qsl(self.query_string, keep_blank_values=True):
                args.setdefault(key, []).append(value)
            self._args = args
        return self._args

    @property
    def host(self) -> str:
        """The ``Host`` header, port included ("" when absent)."""
        value = self.header(b"host")
        return value.decode("latin-1") if value is not None else ""

    @property
    def url(self) -> str:
        """The full URL of the request."""
        query = f"?{self.query_string}" if self.query_string else ""
        return f"{self.scheme}://{self.host}{self.path}{query}"

    @property
    def cookies(self) -> dict[str, str]:
        """Cookies sent by the client."""
        if self._cookies is None:
            cookies: dict[str, str] = {}
            for value in self.headers.getall("cookie"):
                jar: SimpleCookie = SimpleCookie()
                try:
                    jar.load(value)
                except Exception:  # a malformed cookie header is ignored, as browsers do
                    continue
                cookies.update({name: morsel.value for name, morsel in jar.items()})
            self._cookies = cookies
        return self._cookies

    @property
    def remote_addr(self) -> str:
        """The client address given by trusted proxies, or "".

        Only read from ``REAL_IP_HEADER`` or ``X-Forwarded-For`` when
        ``PROXIES_COUNT`` > 0: otherwise any client could forge it.
        """
        config = self._config
        if config is None or config.PROXIES_COUNT <= 0:
            return ""
        if config.REAL_IP_HEADER:
            return (self.headers.get(config.REAL_IP_HEADER) or "").strip()
        forwarded = ",".join(self.headers.getall("x-forwarded-for"))
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if len(hops) >= config.PROXIES_COUNT:
            return hops[-config.PROXIES_COUNT]
        return ""

    @property
    def client_ip(self) -> str:
        """``remote_addr`` when trusted proxies give one, else the peer's ``ip``."""
        return self.remote_addr or self.ip

    @property
    def id(self) -> uuid.UUID:
        """A unique id for this request (``X-Request-ID`` is not trusted)."""
        if self._id is None:
            self._id = uuid.uuid4()
        return self._id

    @property
    def ctx(self) -> SimpleNamespace:
        """A free namespace: middleware puts things here for the handler."""
        if self._ctx is None:
            self._ctx = SimpleNamespace()
        return self._ctx

    @property
    def name(self) -> str | None:
        """The name of the matched route."""
        return self.route.name if self.route is not None else None

    @property
    def unquoted_path(self) -> str:
        return unquote(self.path)

    def json(self) -> Any:
        """The body parsed as JSON (``None`` for an empty body).

        Raises:
            BadRequest: the body is not valid JSON.
        """
        if not self.body:
            return None
        try:
            return jsonlib.loads(self.body)
        except ValueError as exc:
            raise BadRequest(f"invalid JSON body: {exc}") from exc

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path}>"


def check_head(request: Request) -> None:
    """Refuse a request head that cannot be served as it is written.

    In this order: a ``Host`` that is not ``host[:port]`` (before any other
    check: the Host and Origin checks would otherwise read it leniently); both
    ``Content-Length`` and ``Transfer-Encoding`` (RFC 9112 §6.3: the framing is
    ambiguous, the mark of request smuggling; h11 alone would let
    Transfer-Encoding win); a path with a dot segment or a NUL
    (`check_path()`). h11 has already refused what it
    checks itself: two Host headers, conflicting lengths, other codings.

    Raises:
        BadRequest: the head is one of those; the caller answers 400 and closes.
    """
    host = request.header(b"host")
    if host is not None and split_host(host.decode("latin-1")) is None:
        raise BadRequest(
            f"invalid Host header {host.decode('latin-1')!r}: expected host[:port], where host "
            "is a name, an IPv4 address or an [IPv6] address and port a number up to 65535"
        )
    if request.header(b"transfer-encoding") is not None and (
        request.header(b"content-length") is not None
    ):
        raise BadRequest(
            "a request may not carry both Content-Length and Transfer-Encoding (RFC 9112 §6.3)"
        )
    check_path(request.path)
