"""The async core: serve an app on the running event loop; async websockets."""

from __future__ import annotations

from .client import connect
from .connection import Connection, Websocket
from .server import Server, serve

__all__ = ["Connection", "Server", "Websocket", "connect", "serve"]
