"""The synchronous facade: blocking websockets, servers on a background loop thread."""

from __future__ import annotations

from .greenlets import sleep
from .loop import PingWaiter
from .server import Server
from .websocket import Websocket

__all__ = ["PingWaiter", "Server", "Websocket", "sleep"]
