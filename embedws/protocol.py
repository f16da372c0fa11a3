"""The two adjustments embedws makes to the ``websockets`` Sans-I/O protocol.

Pinned to the supported ``websockets`` range (see ``pyproject.toml``) and
covered by tests (``tests/test_protocol.py``) and by the Autobahn run:

* A close frame in the middle of a fragmented message ends that message and is
  answered normally. RFC 6455 §5.4 allows control frames between fragments; the
  stock layer fails the connection with 1002 instead (Autobahn case 7.1.5).
* A wrong ``Sec-WebSocket-Version`` is answered with 426 and the supported
  version (in ``handshake.py``, before the Sans-I/O layer sees the request).
"""

from __future__ import annotations

from websockets.client import ClientProtocol as _ClientProtocol
from websockets.frames import CLOSE, Frame
from websockets.server import ServerProtocol as _ServerProtocol

__all__ = ["ClientProtocol", "ServerProtocol"]


class ServerProtocol(_ServerProtocol):
    """The Sans-I/O server protocol with the close-between-fragments adjustment."""

    def recv_frame(self, frame: Frame) -> None:
        if frame.opcode is CLOSE and self.current_size is not None:
            self.current_size = None  # the partial message is dropped
        super().recv_frame(frame)


class ClientProtocol(_ClientProtocol):
    """The Sans-I/O client protocol with the close-between-fragments adjustment."""

    def recv_frame(self, frame: Frame) -> None:
        if frame.opcode is CLOSE and self.current_size is not None:
            self.current_size = None
        super().recv_frame(frame)
