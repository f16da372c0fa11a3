"""The synchronous facade: blocking websockets, servers on a background loop thread."""

from __future__ import annotations

from .loop import PingWaiter
from .runner import sleep
from .server import Server
from .websocket import Websocket

__all__ = ["PingWaiter", "Server", "Websocket", "sleep"]
