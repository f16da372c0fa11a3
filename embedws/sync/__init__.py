"""The synchronous facade: blocking websockets, servers on a background loop thread."""

from __future__ import annotations

from .bridge import PingWaiter
from .bridge.greenlets import sleep
from .client import ClientWebsocket, Reconnect, connect, reconnect
from .server import Server
from .websocket import Websocket

__all__ = [
    "ClientWebsocket",
    "PingWaiter",
    "Reconnect",
    "Server",
    "Websocket",
    "connect",
    "reconnect",
    "sleep",
]
