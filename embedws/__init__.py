"""embedws: host websocket endpoints from any Python program.

Sync (``def``) and async (``async def``) handlers in one `App`; a
background event loop thread for programs that are not async; the same core
on your own loop with [`embedws.aio.serve()`][embedws.aio.serve].
"""

from __future__ import annotations

from . import aio, errors, response, sync
from .aio.broker import AsyncEmitter, RedisBroker
from .aio.registry import Connections, Room
from .app import App, Blueprint
from .config import Config
from .errors import BrokerError, ConcurrencyError, EmbedwsError, WebsocketClosed
from .request import Headers, Request
from .response import HTTPResponse
from .routing import Route
from .state import State
from .sync.broker import Emitter

__all__ = [
    "App",
    "AsyncEmitter",
    "Blueprint",
    "BrokerError",
    "ConcurrencyError",
    "Config",
    "Connections",
    "EmbedwsError",
    "Emitter",
    "HTTPResponse",
    "Headers",
    "RedisBroker",
    "Request",
    "Room",
    "Route",
    "State",
    "WebsocketClosed",
    "__version__",
    "aio",
    "errors",
    "response",
    "sync",
]

__version__ = "0.1.0"
