"""Origin and Host checks: the defences of a server on someone's desktop (pure).

Three attacks reach a server that listens on 127.0.0.1 from a web page the
user happens to visit:

* Cross-site websocket hijacking: the page opens ``ws://127.0.0.1:port`` itself.
  Browsers send ``Origin`` with every websocket handshake, so the server lets in
  its own origin only, and the origins ``WEBSOCKET_ORIGINS`` names. Not every
  loopback origin: other local programs (a dev server, a previewer,
  ``python -m http.server`` in a downloads folder) serve pages nobody vetted,
  which is why Jupyter and Tornado accept only the page's own origin too.
* Cross-site requests: the page posts a form (or a ``text/plain`` fetch, which
  needs no CORS preflight) to an HTTP route. Requests with an unsafe method are
  checked against the same origin policy; without ``Origin``, against
  ``Sec-Fetch-Site``.
* DNS rebinding: the page's own name is made to resolve to 127.0.0.1, so the
  request is same-origin; but its ``Host`` is the foreign name, so the server
  refuses Host values that are not loopback names (``ALLOWED_HOSTS``).

Requests without ``Origin`` (nor ``Sec-Fetch-Site``) do not come from a browser
page and pass the origin check (any local program can connect to a loopback
port anyway).

Both checks trust only a ``Host`` that `split_host()` parses: a lenient
reading would let ``127.0.0.1:evil.com`` pass for a loopback name. The HTTP
front refuses any other value with 400 before either check runs.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Collection
from urllib.parse import urlsplit

from .routing import normalize_host

__all__ = [
    "LOOPBACK_ORIGINS",
    "SAFE_METHODS",
    "cross_site_refused",
    "host_allowed",
    "is_loopback_address",
    "is_loopback_name",
    "is_secure",
    "origin_allowed",
    "rebinding_guard_warning",
    "split_host",
]

#: The ``WEBSOCKET_ORIGINS`` entry that lets in pages of every loopback origin
#: (``http://localhost:3000``, ``http://127.0.0.1:5173``...): for development.
LOOPBACK_ORIGINS = "loopback"

#: Methods a cross-site page may use: they must not change anything (RFC 9110 §9.2.1).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}

# RFC 9110 §7.2 Host = uri-host [ ":" port ], narrowed to what clients send: a
# reg-name (IPv4 addresses are made of its characters) or an IPv6 literal; no
# percent-encoding, no zone identifier, no IPvFuture.
_HOST = re.compile(r"(?:([A-Za-z0-9._-]+)|\[([0-9A-Fa-f:.]+)\])(?::([0-9]{1,5}))?")


@functools.lru_cache(maxsize=1024)  # few distinct Hosts: parsed once each
def split_host(value: str) -> tuple[str, int | None] | None:
    """(host, port) of a ``Host`` header value, or ``None`` if it is not ``host[:port]``.

    The host is a name (letters, digits, ``-``, ``.``, ``_``), an IPv4 address or
    an ``[IPv6]`` address, lowercased, brackets kept; the port (1 to 5 digits, at
    most 65535) is ``None`` when absent. Anything else is refused, surrounding
    spaces included: ``127.0.0.1:evil.com``, ``localhost:``, ``a@b``, ``[::1].x``.
    """
    found = _HOST.fullmatch(value)
    if found is None:
        return None
    name, ipv6, port = found.groups()
    number = int(port) if port is not None else None
    if number is not None and number > 65535:
        return None
    if ipv6 is not None:
        try:
            ipaddress.IPv6Address(ipv6)
        except ValueError:
            return None
        return f"[{ipv6.lower()}]", number
    return name.lower(), number


@functools.lru_cache(maxsize=1024)
def is_loopback_name(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ``[::1]`` (already normalized, no port)."""
    if host == "localhost":
        return True
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return is_loopback_address(host)


def is_loopback_address(address: str) -> bool:
    """True if ``address`` is a literal loopback IP address."""
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _split_host_port(value: str, default_port: int) -> tuple[str, int] | None:
    """(normalized host, port) of a Host header value, or None if it is not valid."""
    parsed = split_host(value)
    if parsed is None:
        return None
    host, port = parsed
    return normalize_host(host), default_port if port is None else port


def _parse_origin(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a serialized origin, or None if it is not one."""
    # An origin is scheme://host[:port] and nothing else; refuse look-alikes
    # with credentials, paths or odd characters instead of guessing.
    if "@" in origin or "\\" in origin or any(c.isspace() for c in origin):
        return None
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return parts.scheme, host, port if port is not None else _DEFAULT_PORTS[parts.scheme]


def is_secure(tls: bool, forwarded_proto: str | None, proxies_count: int) -> bool:
    """Whether the client reached the server over TLS.

    ``forwarded_proto`` (``X-Forwarded-Proto``) counts only behind trusted
    proxies (``PROXIES_COUNT`` > 0): a TLS-terminating proxy talks plain HTTP.
    """
    if tls:
        return True
    if proxies_count > 0 and forwarded_proto is not None:
        last = forwarded_proto.split(",")[-1].strip().lower()
        return last in ("https", "wss")
    return False


def origin_allowed(
    origin: str | None,
    host_header: str,
    *,
    tls: bool,
    allowed: str | Collection[str] | None,
) -> bool:
    """The ``WEBSOCKET_ORIGINS`` decision for one request.

    The page's own origin (host and port of the ``Host`` header) always
    passes; loopback names count as one host (a page of
    ``http://localhost:8000`` talking to ``ws://127.0.0.1:8000``: the same
    server). Other origins pass when ``allowed`` names them, or names
    `LOOPBACK_ORIGINS` and they are loopback; ``"*"`` lets in any.

    Args:
        origin: the ``Origin`` header, ``None`` when absent.
        host_header: the ``Host`` header.
        tls: whether the client reached the server over TLS (default port
            443; see `is_secure()`).
        allowed: the ``WEBSOCKET_ORIGINS`` value.
    """
    if origin is None or allowed == "*":
        return True
    parsed = _parse_origin(origin.strip())
    if parsed is not None:
        _scheme, host, port = parsed
        own = _split_host_port(host_header, 443 if tls else 80)
        if own is not None and own[1] == port and _same_host(own[0], host):
            return True
    if allowed is None:
        return False
    wanted = origin.strip().rstrip("/").lower()
    for entry in allowed:
        if entry == LOOPBACK_ORIGINS:
            if parsed is not None and is_loopback_name(parsed[1]):
                return True
        elif wanted == entry.strip().rstrip("/").lower():
            return True
    return False


def _same_host(a: str, b: str) -> bool:
    # Loopback names are one host: the port tells the servers apart.
    return a == b or (is_loopback_name(a) and is_loopback_name(b))


def cross_site_refused(
    method: str,
    origin: str | None,
    fetch_site: str | None,
    host_header: str,
    *,
    tls: bool,
    allowed: str | Collection[str] | None,
) -> bool:
    """Whether an HTTP request is a cross-site request the origin policy refuses.

    Only unsafe methods are checked (a page may link to, or GET, anything).
    ``Origin`` decides as for websockets; browsers send it with every POST
    (a form too). Without it, ``Sec-Fetch-Site`` tells a page of another
    origin (``cross-site``, or ``same-site``: another port or subdomain).

    Args:
        method: the request method.
        origin: the ``Origin`` header, ``None`` when absent.
        fetch_site: the ``Sec-Fetch-Site`` header, ``None`` when absent.
        host_header: the ``Host`` header.
        tls: as for `origin_allowed()`.
        allowed: the ``WEBSOCKET_ORIGINS`` value.
    """
    if method in SAFE_METHODS or allowed == "*":
        return False
    if origin is not None:
        return not origin_allowed(origin, host_header, tls=tls, allowed=allowed)
    return fetch_site is not None and fetch_site.strip().lower() in ("cross-site", "same-site")


def host_allowed(
    host_header: str | None,
    *,
    allowed: str | Collection[str] | None,
    loopback_only: bool,
    named_hosts: Collection[str],
) -> bool:
    """The ``ALLOWED_HOSTS`` decision (the DNS-rebinding guard) for one request.

    Args:
        host_header: the ``Host`` header, ``None`` when absent (HTTP/1.0).
        allowed: the ``ALLOWED_HOSTS`` value.
        loopback_only: whether every listening address is a loopback address.
        named_hosts: the hosts routes name with ``host=``.
    """
    if allowed == "*":
        return True
    if allowed is None and not loopback_only:
        return True
    if host_header is None:
        # No Host header: not a browser (browsers always send one), so not a
        # rebinding page either.
        return True
    parsed = split_host(host_header)
    if parsed is None:
        return False
    host = normalize_host(parsed[0])
    if is_loopback_name(host) or host in named_hosts:
        return True
    if allowed is None:
        return False
    for value in allowed:
        entry = normalize_host(value)
        if entry.startswith(".") and (host == entry[1:] or host.endswith(entry)):
            return True
        if host == entry:
            return True
    return False


def rebinding_guard_warning(
    addresses: Collection[str], allowed: str | Collection[str] | None
) -> str | None:
    """What to tell the user when the DNS-rebinding guard is off, or ``None``.

    With ``ALLOWED_HOSTS`` unset, the guard is on only while every listening
    address is loopback: a server reachable from the network answers to
    whatever names point at it, so any Host passes. That is silent unless
    said once, at start.

    Args:
        addresses: the listening addresses (IP literals; Unix sockets left out).
        allowed: the ``ALLOWED_HOSTS`` value.
    """
    exposed = [address for address in addresses if not is_loopback_address(address)]
    if allowed is not None or not exposed:
        return None
    return (
        f"listening on {', '.join(exposed)} with ALLOWED_HOSTS unset: the DNS-rebinding guard "
        "is off, and requests naming any host are served. Set ALLOWED_HOSTS to the names "
        "this server is reached by (a list; '.example.com' for subdomains) to turn it on."
    )
