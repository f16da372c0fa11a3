"""Origin and Host checks: the defences of a server on someone's desktop (pure).

Two attacks reach a server that listens on 127.0.0.1 from a web page the user
happens to visit:

* Cross-site websocket hijacking: the page opens ``ws://127.0.0.1:port`` itself.
  Browsers send ``Origin`` with every websocket handshake, so the server refuses
  origins that are neither its own nor loopback (``WEBSOCKET_ORIGINS``).
* DNS rebinding: the page's own name is made to resolve to 127.0.0.1, so the
  request is same-origin; but its ``Host`` is the foreign name, so the server
  refuses Host values that are not loopback names (``ALLOWED_HOSTS``).

Requests without ``Origin`` do not come from a browser page and pass the origin
check (any local program can connect to a loopback port anyway).

Both checks trust only a ``Host`` that :func:`split_host` parses: a lenient
reading would let ``127.0.0.1:evil.com`` pass for a loopback name. The HTTP
front refuses any other value with 400 before either check runs.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection
from urllib.parse import urlsplit

from .routing import normalize_host

__all__ = [
    "host_allowed",
    "is_loopback_address",
    "is_loopback_name",
    "origin_allowed",
    "split_host",
]

_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}

# RFC 9110 §7.2 Host = uri-host [ ":" port ], narrowed to what clients send: a
# reg-name (IPv4 addresses are made of its characters) or an IPv6 literal; no
# percent-encoding, no zone identifier, no IPvFuture.
_HOST = re.compile(r"(?:([A-Za-z0-9._-]+)|\[([0-9A-Fa-f:.]+)\])(?::([0-9]{1,5}))?")


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


def origin_allowed(
    origin: str | None,
    host_header: str,
    *,
    tls: bool,
    allowed: str | Collection[str] | None,
) -> bool:
    """The ``WEBSOCKET_ORIGINS`` decision for one handshake.

    Args:
        origin: the ``Origin`` header, ``None`` when absent.
        host_header: the ``Host`` header.
        tls: whether the server connection is TLS (default port 443).
        allowed: the ``WEBSOCKET_ORIGINS`` value.
    """
    if origin is None or allowed == "*":
        return True
    if allowed is not None:
        wanted = origin.strip().rstrip("/").lower()
        return any(wanted == entry.strip().rstrip("/").lower() for entry in allowed)
    parsed = _parse_origin(origin.strip())
    if parsed is None:
        return False
    _scheme, host, port = parsed
    if is_loopback_name(host):
        return True
    own = _split_host_port(host_header, 443 if tls else 80)
    return own is not None and own == (host, port)


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
