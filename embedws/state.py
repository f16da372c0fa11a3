"""The state of one side of a websocket connection."""

from __future__ import annotations

import enum

__all__ = ["State"]


class State(enum.IntEnum):
    """CONNECTING → OPEN → CLOSING (sent a close frame) → CLOSED (TCP gone).

    Thread contract: an enum value; read it on any thread.
    """

    CONNECTING = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3
