"""Joining the fragments of one websocket message (pure: no I/O, no threads).

The ``websockets`` Sans-I/O layer hands over frames, and checks their order
(a continuation frame only within a fragmented message). What it leaves to us
is joining the data of a fragmented message, and checking that a text
message is UTF-8 (RFC 6455 §8.1: close 1007 otherwise).

One `Assembler` holds one fragmented message while it arrives:

* the fragments of a binary message go into one ``bytearray``, never a list of
  frames, so a message of 65,536 one-byte fragments (Autobahn 9.x) costs its
  size and no more;
* a text message is decoded as it arrives, by an incremental UTF-8 decoder
  into a ``StringIO``, so invalid UTF-8 fails at the first bad byte, even when
  a character is split between two fragments, instead of after the whole
  message was buffered.

The size limit is the Sans-I/O layer's (``max_size``, checked per frame against
the message so far), so the assembler needs none of its own.
"""

from __future__ import annotations

import codecs
import io

__all__ = ["Assembler", "InvalidUTF8"]

_utf8_decoder = codecs.getincrementaldecoder("utf-8")


class InvalidUTF8(ValueError):
    """A text message is not valid UTF-8 (the connection closes with 1007).

    Attributes:
        reason: what the decoder found wrong.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid UTF-8: {reason}")
        self.reason = reason


class Assembler:
    """One fragmented message, from its first frame to its last.

    Thread contract: one connection's, on its event loop.
    """

    __slots__ = ("_binary", "_decoder", "_text")

    def __init__(self, is_text: bool) -> None:
        self._binary: bytearray | None = None if is_text else bytearray()
        self._text: io.StringIO | None = io.StringIO() if is_text else None
        self._decoder = _utf8_decoder() if is_text else None

    @property
    def is_text(self) -> bool:
        return self._text is not None

    def add(self, data: bytes | bytearray, fin: bool) -> str | bytes | None:
        """Add one fragment; the whole message once ``fin``, else ``None``.

        Raises:
            InvalidUTF8: a text message is not UTF-8 (from its first bad byte).
        """
        binary = self._binary
        if binary is not None:
            binary += data
            return bytes(binary) if fin else None
        assert self._decoder is not None and self._text is not None
        try:
            self._text.write(self._decoder.decode(data, fin))
        except UnicodeDecodeError as exc:
            raise InvalidUTF8(exc.reason) from None
        return self._text.getvalue() if fin else None
