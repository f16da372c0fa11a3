"""Routes and the router (pure: no I/O).

A route's URI is a path with parameters, ``/chat/<room>`` or
``/items/<id:int>``; the types are ``str`` (default, no slash), ``int``,
``float``, ``alpha``, ``slug``, ``path`` (slashes allowed), ``uuid``, or a
regular expression. Values reach the handler percent-decoded and converted to
their type.

Parameters are matched on the raw path and decoded afterwards, so a value can
hold what its pattern never saw: ``%2F`` decodes to ``/``. A value a handler
might join to a directory must not leave it, hence: only a ``path`` parameter
ever holds a ``/``, and it never holds a ``..`` segment, a leading ``/`` or a
NUL; no parameter holds a NUL. A value that breaks these rules does not match
(404). `check_path()` refuses (400) the request paths that no route should
see at all: dot segments, raw or percent-encoded, and NUL.

Lookup order: routes without parameters first (a dict), then the others in
the order they were added. A route with ``host=`` only matches requests whose
Host header (port ignored) is one of its hosts.
"""

from __future__ import annotations

import inspect
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote, unquote, urlencode

from .errors import BadRequest, MethodNotAllowed, NotFound, RouteError

__all__ = [
    "Route",
    "RouteKind",
    "Router",
    "check_path",
    "hosts_tuple",
    "make_uri",
    "normalize_host",
]

RouteKind = Literal["websocket", "http"]

_TYPES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "str": (r"[^/]+", str),
    "int": (r"-?\d+", int),
    "float": (r"-?(?:\d+(?:\.\d*)?|\.\d+)", float),
    "alpha": (r"[A-Za-z]+", str),
    "slug": (r"[a-z0-9]+(?:-[a-z0-9]+)*", str),
    "path": (r"[^/].*?", str),
    "uuid": (
        r"[A-Fa-f0-9]{8}-[A-Fa-f0-9]{4}-[A-Fa-f0-9]{4}-[A-Fa-f0-9]{4}-[A-Fa-f0-9]{12}",
        uuid.UUID,
    ),
}

_PARAM = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)(?::([^>]+))?>")

# A "." or ".." segment (RFC 3986 §3.3) of a decoded path or parameter value.
_DOT_SEGMENT = re.compile(r"(?:^|/)\.\.?(?:/|$)")
_DOT_DOT_SEGMENT = re.compile(r"(?:^|/)\.\.(?:/|$)")
_ENCODED_DOT = re.compile(r"%2[eE]")


def check_path(path: str) -> None:
    """Refuse a request path that has a dot segment or a NUL byte.

    ``path`` is the raw path of the request target (percent-encoded, no query).
    Browsers resolve ``.`` and ``..`` segments before sending, so only a
    hand-made request has one; it is refused rather than resolved, whether it is
    written out (``/a/../b``) or its dots percent-encoded (``/a/%2e%2e/b``).

    Raises:
        BadRequest: the path has a dot segment or a NUL byte (``%00``).
    """
    candidate = path
    if "%" in path:
        lowered = path.lower()
        if "%00" in lowered:
            raise BadRequest(f"the request path {path!r} holds a NUL byte (%00)")
        # Segments are what the raw "/" separate (RFC 3986 §3.3): an encoded
        # "." may make one a dot segment, an encoded "/" does not split one
        # (``..%2Fx`` is one segment, and no parameter but a ``path`` one
        # takes a "/", nor a ``path`` one a ".." after decoding).
        if "%2e" in lowered:
            candidate = _ENCODED_DOT.sub(".", path)
    if ("/." in candidate or candidate[:1] == ".") and _DOT_SEGMENT.search(candidate):
        raise BadRequest(
            f"the request path {path!r} has a dot segment ('.' or '..', perhaps "
            "percent-encoded); browsers resolve those before sending, so this request was "
            "made by hand: send the path without them"
        )


def normalize_host(host: str) -> str:
    """Lowercase a Host value and drop its port (``[::1]:80`` → ``[::1]``)."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    name, _, _port = host.partition(":")
    return name.rstrip(".")


@dataclass(eq=False)
class Route:
    """One route: a URI pattern bound to a handler.

    Thread contract: immutable once the app serves.
    """

    kind: RouteKind
    uri: str
    handler: Callable[..., Any]
    name: str
    methods: frozenset[str] = frozenset({"GET"})
    hosts: tuple[str, ...] | None = None
    strict_slashes: bool = False
    subprotocols: tuple[str, ...] | None = None
    error_format: str | None = None
    mode: str | None = None
    is_async: bool = False
    # (name, converter, whether the value may hold "/": only a `path` parameter's may)
    params: list[tuple[str, Callable[[str], Any], bool]] = field(default_factory=list)
    pattern: re.Pattern[str] | None = None

    def __post_init__(self) -> None:
        original = inspect.unwrap(self.handler)
        self.is_async = inspect.iscoroutinefunction(self.handler) or inspect.iscoroutinefunction(
            original
        )
        self._compile()

    def _compile(self) -> None:
        parts: list[str] = []
        position = 0
        for match in _PARAM.finditer(self.uri):
            parts.append(re.escape(self.uri[position : match.start()]))
            name, kind = match.group(1), match.group(2) or "str"
            if kind in _TYPES:
                regex, convert = _TYPES[kind]
            else:
                try:
                    re.compile(kind)
                except re.error as exc:
                    raise RouteError(
                        f"route {self.uri!r}: parameter <{name}:{kind}> has an unknown type "
                        f"and is not a valid regular expression ({exc})"
                    ) from None
                regex, convert = kind, str
            if any(name == existing for existing, _, _ in self.params):
                raise RouteError(f"route {self.uri!r}: parameter {name!r} appears twice")
            parts.append(f"(?P<{name}>{regex})")
            self.params.append((name, convert, kind == "path"))
            position = match.end()
        parts.append(re.escape(self.uri[position:]))
        if self.params:
            body = "".join(parts)
            if not self.strict_slashes and body.endswith("/") and len(body) > 1:
                body = body[:-1]
            suffix = "" if self.strict_slashes else "/?"
            self.pattern = re.compile(f"{body}{suffix}")

    @property
    def static(self) -> bool:
        return self.pattern is None

    def static_paths(self) -> list[str]:
        """The exact paths a parameterless route answers."""
        if self.strict_slashes or self.uri == "/":
            return [self.uri]
        bare = self.uri.rstrip("/") or "/"
        return [bare, bare + "/"]

    def match(self, path: str) -> dict[str, Any] | None:
        """Converted parameters if ``path`` matches, else ``None``.

        A decoded value that would hold a ``/`` (any type but ``path``), a
        ``..`` segment or a leading ``/`` (``path``), or a NUL does not match.
        """
        if self.pattern is None:
            return {} if path in self.static_paths() else None
        found = self.pattern.fullmatch(path)
        if found is None:
            return None
        values: dict[str, Any] = {}
        for name, convert, slashes in self.params:
            value = found.group(name)
            if "%" in value:  # else unquote would return it as it is: spare the call
                value = unquote(value)
            if "\x00" in value:
                return None
            if slashes:
                if value[:1] == "/" or (".." in value and _DOT_DOT_SEGMENT.search(value)):
                    return None
            elif "/" in value:
                return None
            try:
                values[name] = convert(value)
            except ValueError:
                return None
        return values

    def matches_host(self, host: str) -> bool:
        return self.hosts is None or normalize_host(host) in self.hosts

    def build(self, params: dict[str, Any]) -> str:
        """The path of this route with ``params`` filled in; extras become the query."""
        remaining = dict(params)
        path = self.uri

        def fill(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in remaining:
                raise RouteError(f"url_for({self.name!r}) needs a value for {name!r}")
            value = str(remaining.pop(name))
            safe = "/" if (match.group(2) or "str") == "path" else ""
            return quote(value, safe=safe)

        path = _PARAM.sub(fill, path)
        if remaining:
            path += "?" + urlencode(remaining, doseq=True)
        return path


class Router:
    """Finds the route of a request. Thread contract: add routes before serving."""

    def __init__(self) -> None:
        self.routes: list[Route] = []
        self._static: dict[str, list[Route]] = {}
        self._dynamic: list[Route] = []
        self._names: dict[str, Route] = {}

    def add(self, route: Route) -> Route:
        if not route.uri.startswith("/"):
            raise RouteError(f"route {route.uri!r} must start with '/'")
        named = self._names.get(route.name)
        if named is not None and inspect.unwrap(named.handler) is not inspect.unwrap(route.handler):
            # One handler may serve several URLs (url_for gives the first);
            # two handlers may not share a name.
            raise RouteError(
                f"another handler already has a route named {route.name!r}; give this one name=..."
            )
        for other in self.routes:
            if (
                other.kind == route.kind
                and other.uri == route.uri
                and other.hosts == route.hosts
                and other.methods & route.methods
            ):
                methods = ", ".join(sorted(other.methods & route.methods))
                raise RouteError(f"route {route.uri!r} ({methods}) is defined twice")
        self.routes.append(route)
        self._names.setdefault(route.name, route)
        if route.static:
            for path in route.static_paths():
                self._static.setdefault(path, []).append(route)
        else:
            self._dynamic.append(route)
        return route

    def named(self, name: str) -> Route:
        try:
            return self._names[name]
        except KeyError:
            raise RouteError(f"no route is named {name!r}") from None

    def _candidates(self, path: str) -> Iterable[tuple[Route, dict[str, Any]]]:
        for route in self._static.get(path, ()):
            yield route, {}
        for route in self._dynamic:
            params = route.match(path)
            if params is not None:
                yield route, params

    def find(
        self, path: str, host: str, kind: RouteKind, method: str = "GET"
    ) -> tuple[Route, dict[str, Any]]:
        """The route for a request.

        Raises:
            NotFound: no route of any kind has this path (on this host).
            MethodNotAllowed: an HTTP route has the path but not the method.
        """
        wrong_method: set[str] = set()
        for route, params in self._candidates(path):
            if route.kind != kind or not route.matches_host(host):
                continue
            head_of_get = method == "HEAD" and "GET" in route.methods
            if kind == "http" and method not in route.methods and not head_of_get:
                wrong_method |= route.methods
                continue
            return route, params
        if wrong_method:
            raise MethodNotAllowed(
                f"method {method} is not allowed for {path}; allowed: "
                + ", ".join(sorted(wrong_method))
            )
        raise NotFound(f"no route for {path}")

    def has_kind(self, path: str, host: str, kind: RouteKind) -> bool:
        return any(
            route.kind == kind and route.matches_host(host) for route, _ in self._candidates(path)
        )

    def named_hosts(self) -> frozenset[str]:
        """Every host some route names with ``host=`` (for the DNS-rebinding guard)."""
        return frozenset(host for route in self.routes for host in route.hosts or ())


def make_uri(
    uri: str,
    *,
    prefix: str = "",
    version: int | str | float | None = None,
    version_prefix: str = "/v",
) -> str:
    """Join a version prefix, a blueprint prefix and a route URI."""
    if not uri.startswith("/"):
        uri = "/" + uri
    path = prefix.rstrip("/") + uri if prefix else uri
    if version is not None:
        path = f"{version_prefix.rstrip('/')}{version}" + path
    return path


def hosts_tuple(host: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """A route's ``host=`` option as normalized names (``None``: any host)."""
    if host is None:
        return None
    values = [host] if isinstance(host, str) else list(host)
    return tuple(normalize_host(value) for value in values)
