"""The synchronous facade: blocking websockets, servers on a background loop thread."""

from __future__ import annotations

from .client import ClientWebsocket, Connect, connect
from .greenlets import sleep
from .loop import PingWaiter
from .server import Server
from .websocket import Websocket

__all__ = [
    "ClientWebsocket",
    "Connect",
    "PingWaiter",
    "Server",
    "Websocket",
    "connect",
    "sleep",
]
