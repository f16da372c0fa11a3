"""TLS contexts for servers and clients (pure: no sockets).

Clients verify servers against certifi's CA bundle with hostname checks on,
unless given a context of their own. Servers take an ``SSLContext`` or a
``{"cert": path, "key": path}`` mapping (``"password"`` optional).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

import certifi

__all__ = ["SSLArg", "client_context", "server_context"]

SSLArg = ssl.SSLContext | Mapping[str, Any] | None


def server_context(value: SSLArg) -> ssl.SSLContext | None:
    """The server's TLS context from what ``start``/``serve`` were given.

    Raises:
        ValueError: a mapping without ``cert``.
    """
    if value is None or isinstance(value, ssl.SSLContext):
        return value
    if "cert" not in value:
        raise ValueError('ssl= takes an SSLContext or {"cert": ..., "key": ...}')
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(value["cert"], value.get("key"), value.get("password"))
    return context


def client_context() -> ssl.SSLContext:
    """A verifying client context trusting certifi's CA bundle."""
    return ssl.create_default_context(cafile=certifi.where())
